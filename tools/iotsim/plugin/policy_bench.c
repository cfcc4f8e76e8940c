/*
 * policy_bench.c - the cost of one ACL decision of the iotsim broker plugin
 * (policy.h), for `make bench` (tools/bench/iotsim.py builds and runs it).
 *
 * Usage: policy_bench <principal file> <client id> <rounds>
 *        then one request per stdin line: "<action mask> <resource ARN>", the
 *        resource percent-encoded as a principal-file field
 * Prints one line per request: "<median ns> <p99 ns> <allowed 0|1>", the
 * median and 99th percentile over <rounds> batches of 1000 decisions, then
 * "stat <median ns> <p99 ns>": the stat() of the principal file the plugin
 * makes at every check, then "parsed <status> <rules>": what the plugin read
 * (the tests compare it with tools/iotsim/policy.py). A malformed principal
 * file: "malformed" and exit status 3, as the plugin then grants nothing.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "policy.h"

#define BATCH 1000

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	char status[32], line[2048], *text, *resource, *end;
	struct pol_set set = {NULL, 0};
	volatile bool sink = false;
	double *samples, start;
	unsigned long mask;
	long size, rounds;
	size_t n;
	FILE *f;
	int i, r;

	if(argc != 4){
		fprintf(stderr, "usage: %s <principal file> <client id> <rounds>\n", argv[0]);
		return 2;
	}
	rounds = strtol(argv[3], NULL, 10);
	if(rounds < 1 || rounds > 100000) return 2;
	f = fopen(argv[1], "rb");
	if(!f) return 2;
	fseek(f, 0, SEEK_END);
	size = ftell(f);
	rewind(f);
	text = malloc((size_t)size + 1);
	samples = malloc(sizeof(double) * (size_t)rounds);
	if(!text || !samples) return 2;
	n = fread(text, 1, (size_t)size, f);
	text[n] = '\0';
	fclose(f);
	if(!pol_parse_principal(text, argv[2], status, sizeof(status), &set)){
		printf("malformed\n");
		return 3;
	}
	while(fgets(line, sizeof(line), stdin)){
		line[strcspn(line, "\n")] = '\0';
		mask = strtoul(line, &end, 10);
		if(end == line || *end != ' ') continue;
		resource = end + 1;
		if(!pol_decode_field(resource)) continue;
		for(r = 0; r < rounds; r++){
			start = now_ns();
			for(i = 0; i < BATCH; i++) sink ^= pol_allowed(&set, (unsigned)mask, resource);
			samples[r] = (now_ns() - start) / BATCH;
		}
		qsort(samples, (size_t)rounds, sizeof(double), cmp_double);
		printf("%.1f %.1f %d\n", samples[rounds / 2], samples[(rounds * 99) / 100],
				pol_allowed(&set, (unsigned)mask, resource) ? 1 : 0);
		fflush(stdout);
	}
	for(r = 0; r < rounds; r++){
		struct stat st;

		start = now_ns();
		for(i = 0; i < BATCH; i++) sink ^= stat(argv[1], &st) == 0;
		samples[r] = (now_ns() - start) / BATCH;
	}
	qsort(samples, (size_t)rounds, sizeof(double), cmp_double);
	printf("stat %.1f %.1f\n", samples[rounds / 2], samples[(rounds * 99) / 100]);
	printf("parsed %s %zu\n", status, set.count);
	(void)sink;
	pol_set_free(&set);
	free(samples);
	free(text);
	return 0;
}
