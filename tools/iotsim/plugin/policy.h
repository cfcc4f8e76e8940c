/*
 * policy.h - iotsim's AWS IoT policy decision, header-only (no mosquitto
 * dependency), shared by the broker plugin and the ACL-decision benchmark
 * (tools/iotsim/plugin/policy_bench.c).
 *
 * The provisioning service compiles every certificate's policies (AWS policy
 * documents: Effect, Action, Resource, the supported Conditions and thing
 * policy variables) into a principal file (tools/iotsim/policy.py); what
 * reaches C is a list of rules
 *
 *     allow|deny <action mask> <resource pattern>
 *
 * where the pattern is a full resource ARN with '*' (any run of characters,
 * '/' included, as AWS) and '?' (one character) as wildcards and '\x' for a
 * literal x. The only variable left in a pattern is ${iot:ClientId}, which
 * pol_expand() replaces per connection (escaped, so a client id's '*' is a
 * literal star, never a wildcard).
 *
 * pol_allowed() is AWS's evaluation: an explicit deny wins, otherwise any
 * matching allow grants, otherwise the default is deny.
 */
#ifndef IOTSIM_POLICY_H
#define IOTSIM_POLICY_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define POL_CONNECT 1u
#define POL_PUBLISH 2u
#define POL_SUBSCRIBE 4u
#define POL_RECEIVE 8u
#define POL_RETAIN_PUBLISH 16u /* iot:RetainPublish: a retained publish or Will needs it too */
#define POL_ALL (POL_CONNECT | POL_PUBLISH | POL_SUBSCRIBE | POL_RECEIVE | POL_RETAIN_PUBLISH)

#define POL_CLIENT_ID_VAR "${iot:ClientId}"

struct pol_rule {
	bool deny;
	unsigned actions;
	char *pattern;
};

struct pol_set {
	struct pol_rule *rules;
	size_t count;
};

/* Does s match the pattern p ('*', '?', '\x')? Linear in practice: one
 * backtrack point (the last '*'), as for IAM-style globs. */
static inline bool pol_glob(const char *p, const char *s)
{
	const char *star_p = NULL, *star_s = NULL;

	while(*s){
		if(*p == '*'){
			while(*p == '*') p++;
			if(!*p) return true;
			star_p = p;
			star_s = s;
			continue;
		}
		if(*p == '\\' && p[1]){
			if(p[1] == *s){
				p += 2;
				s++;
				continue;
			}
		}else if(*p && (*p == '?' || *p == *s)){
			p++;
			s++;
			continue;
		}
		if(!star_p) return false;
		p = star_p;
		s = ++star_s;
	}
	while(*p == '*') p++;
	return *p == '\0';
}

/* AWS's decision for one request: explicit deny wins, then any allow, else deny. */
static inline bool pol_allowed(const struct pol_set *set, unsigned action, const char *resource)
{
	bool allowed = false;
	size_t i;

	for(i = 0; i < set->count; i++){
		const struct pol_rule *r = &set->rules[i];
		if(!(r->actions & action)) continue;
		if(r->deny){
			if(pol_glob(r->pattern, resource)) return false;
		}else if(!allowed && pol_glob(r->pattern, resource)){
			allowed = true;
		}
	}
	return allowed;
}

/* pattern with every ${iot:ClientId} replaced by client_id, its '*', '?' and
 * '\' escaped; a new string (NULL when out of memory). */
static inline char *pol_expand(const char *pattern, const char *client_id)
{
	const size_t var_len = strlen(POL_CLIENT_ID_VAR);
	size_t n = 0, id_len = strlen(client_id), i;
	const char *p;
	char *out, *o;

	for(p = pattern; (p = strstr(p, POL_CLIENT_ID_VAR)); p += var_len) n++;
	out = malloc(strlen(pattern) + n * 2 * id_len + 1);
	if(!out) return NULL;
	o = out;
	for(p = pattern; *p;){
		if(!strncmp(p, POL_CLIENT_ID_VAR, var_len)){
			for(i = 0; i < id_len; i++){
				if(client_id[i] == '*' || client_id[i] == '?' || client_id[i] == '\\') *o++ = '\\';
				*o++ = client_id[i];
			}
			p += var_len;
		}else{
			*o++ = *p++;
		}
	}
	*o = '\0';
	return out;
}

static inline void pol_set_free(struct pol_set *set)
{
	size_t i;

	for(i = 0; i < set->count; i++) free(set->rules[i].pattern);
	free(set->rules);
	set->rules = NULL;
	set->count = 0;
}

/* Append one rule (pattern copied and expanded for client_id). */
static inline bool pol_set_add(struct pol_set *set, bool deny, unsigned actions,
		const char *pattern, const char *client_id)
{
	struct pol_rule *rules = realloc(set->rules, (set->count + 1) * sizeof(*rules));
	char *expanded;

	if(!rules) return false;
	set->rules = rules;
	expanded = pol_expand(pattern, client_id);
	if(!expanded) return false;
	rules[set->count].deny = deny;
	rules[set->count].actions = actions & POL_ALL;
	rules[set->count].pattern = expanded;
	set->count++;
	return true;
}

/*
 * Decode one percent-encoded field in place (see tools/iotsim/policy.py,
 * encode_field): only bytes 0x21-0x7e may stand raw, '%' must start %XX
 * (upper-case hex) and %00 is refused, so a decoded field is a C string
 * holding exactly the value the writer encoded. False when malformed.
 */
static inline bool pol_decode_field(char *field)
{
	static const char HEXU[] = "0123456789ABCDEF";
	const char *hi, *lo;
	char *in = field, *out = field;
	unsigned char c;

	for(; *in; in++){
		c = (unsigned char)*in;
		if(c < 0x21 || c > 0x7e) return false;
		if(c == '%'){
			if(!in[1] || !in[2]) return false;
			hi = strchr(HEXU, in[1]);
			lo = strchr(HEXU, in[2]);
			if(!hi || !lo) return false;
			c = (unsigned char)((hi - HEXU) << 4 | (lo - HEXU));
			if(c == 0) return false;
			in += 2;
		}
		*out++ = (char)c;
	}
	*out = '\0';
	return true;
}

/* Split line (NUL-terminated, no '\n') at single spaces into at most max
 * fields, each decoded in place; returns the number of fields, 0 when
 * malformed (more than max fields included). */
static inline size_t pol_fields(char *line, char **fields, size_t max)
{
	size_t n = 0;
	char *sp;

	for(;;){
		if(n == max) return 0;
		fields[n++] = line;
		sp = strchr(line, ' ');
		if(sp) *sp = '\0';
		if(!pol_decode_field(fields[n - 1])) return 0;
		if(!sp) return n;
		line = sp + 1;
	}
}

/* A decimal action mask no larger than POL_ALL. */
static inline bool pol_mask(const char *s, unsigned *out)
{
	unsigned long v = 0;

	if(!*s || strlen(s) > 3 || strspn(s, "0123456789") != strlen(s)) return false;
	v = strtoul(s, NULL, 10);
	if(v > POL_ALL) return false;
	*out = (unsigned)v;
	return true;
}

/*
 * Parse a principal file (tools/iotsim/policy.py, render_principal): one
 * record a line, a fixed number of percent-encoded fields a record,
 * separated by single spaces, every line ending in '\n':
 *
 *     iotsim-principal 2
 *     status <STATUS>
 *     default                      rules for a client id that names no attached thing
 *     allow|deny <mask> <pattern>
 *     thing <name>                 rules when the client id is <name>, a thing
 *     allow|deny <mask> <pattern>  attached to this certificate
 *
 * Keeps the status in status (size status_len) and the rules of the section
 * that applies to client_id in set. Returns false when anything is malformed
 * (the caller then grants nothing): no value can start a record of its own.
 */
static inline bool pol_parse_principal(char *text, const char *client_id, char *status,
		size_t status_len, struct pol_set *set)
{
	char *line, *next, *f[3];
	size_t n, count = 0;
	bool have_thing = false, in_thing = false, in_default = false;
	struct pol_set dflt = {NULL, 0}, thing = {NULL, 0};
	unsigned mask;

	status[0] = '\0';
	for(line = text; *line; line = next, count++){
		next = strchr(line, '\n');
		if(!next) goto bad; /* every record ends with a line break */
		*next++ = '\0';
		if(count == 0){
			if(strcmp(line, "iotsim-principal 2")) goto bad;
			continue;
		}
		n = pol_fields(line, f, 3);
		if(count == 1){
			/* the status first, exactly once */
			if(n != 2 || strcmp(f[0], "status") || !f[1][0] || strlen(f[1]) >= status_len) goto bad;
			strcpy(status, f[1]);
		}else if(count == 2){
			if(n != 1 || strcmp(f[0], "default")) goto bad;
			in_default = true;
		}else if(n == 2 && !strcmp(f[0], "thing")){
			in_default = false;
			in_thing = !strcmp(f[1], client_id);
			if(in_thing && have_thing) goto bad; /* one section per thing */
			if(in_thing) have_thing = true;
		}else if(n == 3 && (!strcmp(f[0], "allow") || !strcmp(f[0], "deny"))){
			if(!pol_mask(f[1], &mask)) goto bad;
			if(in_thing){
				if(!pol_set_add(&thing, f[0][0] == 'd', mask, f[2], client_id)) goto bad;
			}else if(in_default){
				if(!pol_set_add(&dflt, f[0][0] == 'd', mask, f[2], client_id)) goto bad;
			}
		}else{
			goto bad;
		}
	}
	if(count < 3) goto bad;
	if(have_thing){
		*set = thing;
		pol_set_free(&dflt);
	}else{
		*set = dflt;
		pol_set_free(&thing);
	}
	return true;
bad:
	pol_set_free(&dflt);
	pol_set_free(&thing);
	status[0] = '\0';
	return false;
}

#endif
