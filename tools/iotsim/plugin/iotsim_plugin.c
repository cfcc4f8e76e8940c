/*
 * iotsim_plugin.c - mosquitto 2.0 plugin (plugin API v5) that makes mosquitto
 * behave like AWS IoT Core for fleet provisioning.
 *
 * Build:  gcc -shared -fPIC -O2 -Wall -Wextra -Werror \
 *             -o build/iotsim_plugin.so tools/iotsim/plugin/iotsim_plugin.c -lcrypto
 * Config: plugin build/iotsim_plugin.so
 *         plugin_opt_status_file <STATE>/certs.status
 *         (with use_identity_as_username false and allow_anonymous false, so
 *         that MOSQ_EVT_BASIC_AUTH sees every connection)
 *
 * Identity. Every client connects over TLS with a client certificate. Its
 * certificateId is the lowercase hex SHA-256 of the certificate DER (as AWS).
 * The status of each known certificate comes from the status file, one line
 * per certificate, "<certificateId> <STATUS>\n", written atomically by the
 * provisioning service and re-read here whenever its inode, size or mtime
 * changes. STATUS decides the role:
 *   SERVICE  the provisioning service      CLAIM  the shared claim certificate
 *   ACTIVE   a device (role DEVICE)        anything else / unknown: no role
 * A connection without a role is refused (CONNACK "not authorised"). The status
 * is looked up again at every ACL check, so a certificate revoked while
 * connected is denied and disconnected at its next publish/subscribe/delivery.
 *
 * Policy (MOSQ_EVT_ACL_CHECK).
 *   - "iotsim" and "iotsim/..." are internal: only SERVICE may publish,
 *     subscribe to or receive them.
 *   - CLAIM may subscribe only to the provisioning response topics
 *       $aws/certificates/create/{json|cbor}/{accepted|rejected}
 *       $aws/certificates/create-from-csr/{json|cbor}/{accepted|rejected}
 *       $aws/provisioning-templates/<name>/provision/{json|cbor}/{accepted|rejected}
 *     (<name>: 1-36 of [0-9A-Za-z_-]); anything else gets SUBACK 0x80. It may
 *     publish only to the three request topics (the same without the last
 *     level); any other publish is denied and the client is disconnected, as
 *     AWS does on a policy violation.
 *   - DEVICE may use any non-internal topic, except publishing to a
 *     provisioning response topic (reserved, as on AWS; this also stops a
 *     device from forging a reply through its Will message).
 *
 * Per-connection delivery (MOSQ_EVT_MESSAGE).
 *   - A publish from a non-SERVICE client to "$aws/..." is rewritten to
 *       iotsim/req/<hex(client id)>/<certificateId>/<original topic>
 *     (payload unchanged, retain cleared). The service subscribes to
 *     iotsim/req/#. hex() is the lowercase hex of the client id's bytes, so
 *     any client id is safe inside a topic.
 *   - A publish from SERVICE to iotsim/reply/<hex(client id)>/<response topic>
 *     is delivered to that one client only, with
 *     mosquitto_broker_publish_copy(client id, response topic, ...), and only
 *     if the client holds a subscription matching the response topic (AWS
 *     delivers responses only to subscribers; mosquitto's publish_copy would
 *     deliver regardless, so the plugin tracks subscriptions itself). The QoS
 *     is the lower of 1 and the matching subscription's QoS.
 *   - A publish from SERVICE to iotsim/kick/<hex(client id)> disconnects that
 *     client.
 *   - Reply and kick messages are then dropped (never routed). A malformed
 *     internal topic (bad hex, missing parts, invalid response topic) is
 *     dropped with a warning.
 *
 * Disconnects requested from inside a callback are queued and carried out on
 * the next MOSQ_EVT_TICK, from the broker's main loop, so that no client
 * context is torn down while mosquitto is still handling one of its packets.
 * The plugin never logs payloads.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#if defined(__has_include)
#if __has_include(<mosquitto.h>)
#include <mosquitto.h>
#define IOTSIM_HAVE_MOSQUITTO_H 1
#endif
#endif

#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#ifndef IOTSIM_HAVE_MOSQUITTO_H
/* Debian's mosquitto-dev ships only the broker and plugin headers; these
 * values and prototypes are libmosquitto's stable ABI (mosquitto.h, 2.0). */
enum {
	MOSQ_ERR_SUCCESS = 0,
	MOSQ_ERR_NOMEM = 1,
	MOSQ_ERR_INVAL = 3,
	MOSQ_ERR_NOT_FOUND = 6,
	MOSQ_ERR_AUTH = 11,
	MOSQ_ERR_ACL_DENIED = 12,
	MOSQ_ERR_UNKNOWN = 13,
	MOSQ_ERR_PLUGIN_DEFER = 17,
};
#define MOSQ_LOG_INFO (1 << 0)
#define MOSQ_LOG_NOTICE (1 << 1)
#define MOSQ_LOG_WARNING (1 << 2)
#define MOSQ_LOG_ERR (1 << 3)
#define MOSQ_LOG_DEBUG (1 << 4)
int mosquitto_topic_matches_sub(const char *sub, const char *topic, bool *result);
int mosquitto_pub_topic_check(const char *topic);
#endif

#define ID_HEX_LEN 64 /* SHA-256 in hex */
#define MAX_TOPIC_LEN 65535
#define CLIENT_BUCKETS 1024
#define FRESH_NS 50000000L /* 50 ms */
#define FRESH_RELOAD_NS 10000000L /* re-read a fresh file at most every 10 ms */

/* What the MESSAGE callback returns to drop a message. On mosquitto 2.0.11
 * (Debian 2.0.11-1.2+deb12u2) MOSQ_ERR_ACL_DENIED drops it without routing
 * and still acknowledges a QoS 1 publish; the connection stays up
 * (tests/host/test_iotsim_broker.py checks this). */
#define DROP_MESSAGE MOSQ_ERR_ACL_DENIED

enum status {
	ST_UNKNOWN = 0,
	ST_ACTIVE,
	ST_INACTIVE,
	ST_PENDING_ACTIVATION,
	ST_REVOKED,
	ST_CLAIM,
	ST_SERVICE,
};

enum role { ROLE_NONE = 0, ROLE_DEVICE, ROLE_CLAIM, ROLE_SERVICE };

static const struct {
	const char *name;
	enum status status;
} STATUS_NAMES[] = {
	{"ACTIVE", ST_ACTIVE},
	{"INACTIVE", ST_INACTIVE},
	{"PENDING_ACTIVATION", ST_PENDING_ACTIVATION},
	{"REVOKED", ST_REVOKED},
	{"CLAIM", ST_CLAIM},
	{"SERVICE", ST_SERVICE},
};

struct status_entry {
	char id[ID_HEX_LEN];
	unsigned line; /* later lines win over earlier ones for the same id */
	enum status status;
};

/* A subscription the plugin knows a client holds (for "deliver only to
 * subscribers"). */
struct sub {
	struct sub *next;
	char *filter; /* without any $share/<group>/ prefix */
	int qos;
};

struct client {
	struct client *next;
	char *id;
	const struct mosquitto *owner; /* connection that last authenticated */
	char cert_id[ID_HEX_LEN + 1];  /* its certificate */
	struct sub *subs;
};

struct kick {
	struct kick *next;
	char *id;
};

static struct {
	mosquitto_plugin_id_t *pid;
	char *status_path;
	/* identity of the status file last loaded */
	bool loaded;
	bool fresh; /* loaded within one timestamp tick of its last write */
	struct timespec loaded_at; /* CLOCK_MONOTONIC */
	bool missing_logged;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
	struct status_entry *entries;
	size_t count;
	struct client *clients[CLIENT_BUCKETS];
	struct kick *kicks;
	/* The connection that disconnected last and its certificate: mosquitto
	 * checks a Will's topic after MOSQ_EVT_DISCONNECT, when the TLS session
	 * (and so the certificate) may already be gone. */
	const struct mosquitto *gone;
	char gone_cert_id[ID_HEX_LEN + 1];
} g;

static const char *status_name(enum status s)
{
	size_t i;

	for(i = 0; i < sizeof(STATUS_NAMES) / sizeof(STATUS_NAMES[0]); i++){
		if(STATUS_NAMES[i].status == s) return STATUS_NAMES[i].name;
	}
	return "UNKNOWN";
}

static enum role role_of_status(enum status s)
{
	switch(s){
		case ST_SERVICE: return ROLE_SERVICE;
		case ST_CLAIM: return ROLE_CLAIM;
		case ST_ACTIVE: return ROLE_DEVICE;
		default: return ROLE_NONE;
	}
}

/* ---- status file ------------------------------------------------------ */

static int entry_cmp_id(const void *a, const void *b)
{
	return memcmp(((const struct status_entry *)a)->id, ((const struct status_entry *)b)->id, ID_HEX_LEN);
}

static int entry_cmp(const void *a, const void *b)
{
	const struct status_entry *x = a, *y = b;
	int c = memcmp(x->id, y->id, ID_HEX_LEN);

	if(c) return c;
	return (x->line > y->line) - (x->line < y->line);
}

static bool is_lower_hex(const char *s, size_t n)
{
	size_t i;

	for(i = 0; i < n; i++){
		if(!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
	}
	return true;
}

/* Parse "<64 lowercase hex> <STATUS>" lines. Blank lines and '#' comments are
 * skipped; other malformed lines are counted and skipped. */
static int parse_status(char *buf, size_t len, struct status_entry **out, size_t *out_count)
{
	struct status_entry *entries = NULL, *e;
	size_t count = 0, cap = 0, bad = 0, i, j, w;
	unsigned line = 0;
	char *p = buf, *end = buf + len, *nl, *name;

	while(p < end){
		nl = memchr(p, '\n', (size_t)(end - p));
		if(!nl) nl = end;
		*nl = '\0';
		line++;
		if(nl > p && nl[-1] == '\r') nl[-1] = '\0';
		if(p[0] == '\0' || p[0] == '#'){
			p = nl + 1;
			continue;
		}
		name = p + ID_HEX_LEN + 1;
		if((size_t)(nl - p) <= ID_HEX_LEN + 1 || p[ID_HEX_LEN] != ' ' || !is_lower_hex(p, ID_HEX_LEN)){
			bad++;
			p = nl + 1;
			continue;
		}
		for(i = 0; i < sizeof(STATUS_NAMES) / sizeof(STATUS_NAMES[0]); i++){
			if(!strcmp(name, STATUS_NAMES[i].name)) break;
		}
		if(i == sizeof(STATUS_NAMES) / sizeof(STATUS_NAMES[0])){
			bad++;
			p = nl + 1;
			continue;
		}
		if(count == cap){
			cap = cap ? cap * 2 : 64;
			e = realloc(entries, cap * sizeof(*entries));
			if(!e){
				free(entries);
				return MOSQ_ERR_NOMEM;
			}
			entries = e;
		}
		memcpy(entries[count].id, p, ID_HEX_LEN);
		entries[count].line = line;
		entries[count].status = STATUS_NAMES[i].status;
		count++;
		p = nl + 1;
	}
	if(bad){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"iotsim: %s: skipped %zu malformed line(s); expected '<certificateId> <STATUS>'",
				g.status_path, bad);
	}
	/* The service writes the file sorted by id; sort only when it is not. */
	for(i = 1; i < count && entry_cmp_id(&entries[i - 1], &entries[i]) < 0; i++){}
	if(count > 1 && i < count){
		qsort(entries, count, sizeof(*entries), entry_cmp);
		/* Keep the last line of each run of equal ids. */
		for(i = 0, w = 0; i < count; i = j){
			for(j = i + 1; j < count && !memcmp(entries[j].id, entries[i].id, ID_HEX_LEN); j++){}
			entries[w++] = entries[j - 1];
		}
		count = w;
	}
	*out = entries;
	*out_count = count;
	return MOSQ_ERR_SUCCESS;
}

static long long ns_between(const struct timespec *a, const struct timespec *b)
{
	return (long long)(b->tv_sec - a->tv_sec) * 1000000000LL + (b->tv_nsec - a->tv_nsec);
}

static void status_clear(void)
{
	free(g.entries);
	g.entries = NULL;
	g.count = 0;
}

/* Re-read the status file if it changed since the last load. The service
 * replaces it by rename, so a new inode, size or mtime means new content. An
 * inode can be reused, and file timestamps advance only once per kernel tick
 * (several ms), so a file loaded within FRESH_NS of its mtime is read again,
 * at most every FRESH_RELOAD_NS (the service may rewrite it hundreds of times a
 * second during a burst), until a load happens after that window. */
static void status_refresh(void)
{
	struct stat st;
	FILE *f;
	char *buf;
	size_t n;
	struct status_entry *entries;
	size_t count;
	struct timespec now;

	if(stat(g.status_path, &st) != 0){
		if(!g.missing_logged){
			mosquitto_log_printf(MOSQ_LOG_WARNING,
					"iotsim: cannot read certificate status file %s: %s; refusing every client until it exists",
					g.status_path, strerror(errno));
			g.missing_logged = true;
		}
		status_clear();
		g.loaded = false;
		return;
	}
	clock_gettime(CLOCK_MONOTONIC, &now);
	if(g.loaded && st.st_dev == g.dev && st.st_ino == g.ino && st.st_size == g.size
			&& st.st_mtim.tv_sec == g.mtime.tv_sec && st.st_mtim.tv_nsec == g.mtime.tv_nsec
			&& (!g.fresh || ns_between(&g.loaded_at, &now) < FRESH_RELOAD_NS)){
		return;
	}
	f = fopen(g.status_path, "rb");
	if(!f){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "iotsim: cannot open %s: %s",
				g.status_path, strerror(errno));
		return; /* keep the previous table */
	}
	if(fstat(fileno(f), &st) != 0 || st.st_size < 0){
		fclose(f);
		return;
	}
	buf = malloc((size_t)st.st_size + 1);
	if(!buf){
		fclose(f);
		return;
	}
	n = fread(buf, 1, (size_t)st.st_size, f);
	fclose(f);
	buf[n] = '\0';
	if(parse_status(buf, n, &entries, &count) != MOSQ_ERR_SUCCESS){
		free(buf);
		return;
	}
	free(buf);
	status_clear();
	g.entries = entries;
	g.count = count;
	g.loaded = true;
	g.missing_logged = false;
	g.dev = st.st_dev;
	g.ino = st.st_ino;
	g.size = (off_t)n;
	g.mtime = st.st_mtim;
	g.loaded_at = now;
	clock_gettime(CLOCK_REALTIME, &now);
	g.fresh = ns_between(&st.st_mtim, &now) < FRESH_NS;
	mosquitto_log_printf(MOSQ_LOG_DEBUG, "iotsim: loaded %zu certificate status(es) from %s",
			count, g.status_path);
}

static enum status status_lookup(const char *cert_id)
{
	struct status_entry key, *e;

	status_refresh();
	if(!g.count) return ST_UNKNOWN;
	memcpy(key.id, cert_id, ID_HEX_LEN);
	key.line = 0;
	e = bsearch(&key, g.entries, g.count, sizeof(key), entry_cmp_id);
	return e ? e->status : ST_UNKNOWN;
}

/* ---- identity --------------------------------------------------------- */

static const char HEX[] = "0123456789abcdef";

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
	size_t i;

	for(i = 0; i < n; i++){
		out[2 * i] = HEX[in[i] >> 4];
		out[2 * i + 1] = HEX[in[i] & 0x0f];
	}
}

static int hex_value(char c)
{
	if(c >= '0' && c <= '9') return c - '0';
	if(c >= 'a' && c <= 'f') return c - 'a' + 10;
	return -1;
}

/* certificateId (64 hex chars + NUL) of the client's TLS certificate. */
static bool client_cert_id(const struct mosquitto *client, char out[ID_HEX_LEN + 1])
{
	X509 *cert = mosquitto_client_certificate(client);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	int ok;

	if(!cert) return false;
	ok = X509_digest(cert, EVP_sha256(), md, &len);
	X509_free(cert);
	if(!ok || len != 32) return false;
	hex_encode(md, len, out);
	out[ID_HEX_LEN] = '\0';
	return true;
}

/* The client's role right now, from its certificate and the status file.
 * *live is false when the connection's certificate is no longer available
 * (the connection is closing: a Will being checked) and the identity came
 * from what the plugin recorded. */
static struct client *client_find(const char *id, bool create);

static enum role client_role(const struct mosquitto *client, char cert_id[ID_HEX_LEN + 1], bool *live)
{
	const char *client_id;
	struct client *c;

	*live = client_cert_id(client, cert_id);
	if(!*live){
		client_id = mosquitto_client_id(client);
		c = client_id ? client_find(client_id, false) : NULL;
		if(c && c->owner == client && c->cert_id[0]){
			memcpy(cert_id, c->cert_id, sizeof(c->cert_id));
		}else if(g.gone == client && g.gone_cert_id[0]){
			memcpy(cert_id, g.gone_cert_id, sizeof(g.gone_cert_id));
		}else{
			strcpy(cert_id, "(none)");
			return ROLE_NONE;
		}
	}
	return role_of_status(status_lookup(cert_id));
}

/* ---- deferred disconnects -------------------------------------------- */

static void kick_later(const char *client_id)
{
	struct kick *k;

	if(!client_id || !client_id[0]) return;
	for(k = g.kicks; k; k = k->next){
		if(!strcmp(k->id, client_id)) return;
	}
	k = calloc(1, sizeof(*k));
	if(!k) return;
	k->id = strdup(client_id);
	if(!k->id){
		free(k);
		return;
	}
	k->next = g.kicks;
	g.kicks = k;
}

static void kicks_run(void)
{
	struct kick *k;

	while((k = g.kicks)){
		g.kicks = k->next;
		mosquitto_kick_client_by_clientid(k->id, false);
		free(k->id);
		free(k);
	}
}

/* ---- subscriptions held by each client id ---------------------------- */

static unsigned bucket_of(const char *id)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for(; *id; id++){
		h ^= (unsigned char)*id;
		h *= 16777619u;
	}
	return h % CLIENT_BUCKETS;
}

static struct client *client_find(const char *id, bool create)
{
	struct client **head = &g.clients[bucket_of(id)], *c;

	for(c = *head; c; c = c->next){
		if(!strcmp(c->id, id)) return c;
	}
	if(!create) return NULL;
	c = calloc(1, sizeof(*c));
	if(!c) return NULL;
	c->id = strdup(id);
	if(!c->id){
		free(c);
		return NULL;
	}
	c->next = *head;
	*head = c;
	return c;
}

static void subs_free(struct sub *s)
{
	struct sub *next;

	for(; s; s = next){
		next = s->next;
		free(s->filter);
		free(s);
	}
}

static void client_forget(const char *id)
{
	struct client **pp = &g.clients[bucket_of(id)], *c;

	for(; (c = *pp); pp = &c->next){
		if(!strcmp(c->id, id)){
			*pp = c->next;
			subs_free(c->subs);
			free(c->id);
			free(c);
			return;
		}
	}
}

/* "$share/<group>/<filter>" -> "<filter>"; other filters unchanged. */
static const char *strip_share(const char *filter)
{
	const char *p;

	if(strncmp(filter, "$share/", 7)) return filter;
	p = strchr(filter + 7, '/');
	return p ? p + 1 : filter + strlen(filter);
}

static void sub_add(const char *client_id, const char *filter, int qos)
{
	struct client *c = client_find(client_id, true);
	struct sub *s;

	if(!c) return;
	filter = strip_share(filter);
	for(s = c->subs; s; s = s->next){
		if(!strcmp(s->filter, filter)){
			s->qos = qos;
			return;
		}
	}
	s = calloc(1, sizeof(*s));
	if(!s) return;
	s->filter = strdup(filter);
	if(!s->filter){
		free(s);
		return;
	}
	s->qos = qos;
	s->next = c->subs;
	c->subs = s;
}

static void sub_remove(const char *client_id, const char *filter)
{
	struct client *c = client_find(client_id, false);
	struct sub **pp, *s;

	if(!c) return;
	filter = strip_share(filter);
	for(pp = &c->subs; (s = *pp); pp = &s->next){
		if(!strcmp(s->filter, filter)){
			*pp = s->next;
			free(s->filter);
			free(s);
			return;
		}
	}
}

/* Highest QoS of the client's subscriptions matching topic, or -1. */
static int sub_match_qos(const char *client_id, const char *topic)
{
	struct client *c = client_find(client_id, false);
	struct sub *s;
	bool match;
	int best = -1;

	if(!c) return -1;
	for(s = c->subs; s; s = s->next){
		match = false;
		if(mosquitto_topic_matches_sub(s->filter, topic, &match) == MOSQ_ERR_SUCCESS
				&& match && s->qos > best){
			best = s->qos;
		}
	}
	return best;
}

/* ---- topics ----------------------------------------------------------- */

/* If s starts with prefix, the rest of s; else NULL. */
static const char *after(const char *s, const char *prefix)
{
	size_t n = strlen(prefix);

	return strncmp(s, prefix, n) ? NULL : s + n;
}

static bool is_internal(const char *topic)
{
	return !strcmp(topic, "iotsim") || !strncmp(topic, "iotsim/", 7);
}

/* A fleet-provisioning request topic (response == false) or response topic
 * (response == true: ".../accepted" or ".../rejected"), exactly. */
static bool is_provisioning_topic(const char *topic, bool response)
{
	static const char TEMPLATE_CHARS[] =
		"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-";
	const char *rest, *fmt_end;
	size_t n;

	if((rest = after(topic, "$aws/certificates/create/")) == NULL
			&& (rest = after(topic, "$aws/certificates/create-from-csr/")) == NULL){
		rest = after(topic, "$aws/provisioning-templates/");
		if(!rest) return false;
		n = strspn(rest, TEMPLATE_CHARS);
		if(n < 1 || n > 36 || rest[n] != '/') return false;
		rest = after(rest + n + 1, "provision/");
		if(!rest) return false;
	}
	if((fmt_end = after(rest, "json")) == NULL && (fmt_end = after(rest, "cbor")) == NULL){
		return false;
	}
	if(!response) return fmt_end[0] == '\0';
	return !strcmp(fmt_end, "/accepted") || !strcmp(fmt_end, "/rejected");
}

/* Decode the lowercase hex client id at s, ending at '/' or NUL, into a new
 * NUL-terminated string; *end points past it. NULL when malformed (empty, odd
 * length, non-hex, or a NUL byte inside). */
static char *hex_client_id(const char *s, const char **end)
{
	const char *e = strchr(s, '/');
	size_t n, i;
	char *id;
	int hi, lo;

	if(!e) e = s + strlen(s);
	n = (size_t)(e - s);
	if(n == 0 || n % 2) return NULL;
	id = malloc(n / 2 + 1);
	if(!id) return NULL;
	for(i = 0; i < n / 2; i++){
		hi = hex_value(s[2 * i]);
		lo = hex_value(s[2 * i + 1]);
		if(hi < 0 || lo < 0 || (hi == 0 && lo == 0)){
			free(id);
			return NULL;
		}
		id[i] = (char)(hi << 4 | lo);
	}
	id[n / 2] = '\0';
	*end = e;
	return id;
}

/* ---- callbacks -------------------------------------------------------- */

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *client_id = mosquitto_client_id(ed->client);
	char cert_id[ID_HEX_LEN + 1];
	enum status st;
	struct client *c;

	(void)event;
	(void)userdata;
	if(!client_id) client_id = "";
	if(!client_cert_id(ed->client, cert_id)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: refused client '%s' from %s: no client certificate",
				client_id, mosquitto_client_address(ed->client));
		return MOSQ_ERR_AUTH;
	}
	st = status_lookup(cert_id);
	if(role_of_status(st) == ROLE_NONE){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: refused client '%s': certificate %s is %s",
				client_id, cert_id, status_name(st));
		return MOSQ_ERR_AUTH;
	}
	/* A clean session starts with no subscriptions; a persistent one keeps
	 * what the plugin knew about the previous connection. */
	if(mosquitto_client_clean_session(ed->client)) client_forget(client_id);
	c = client_find(client_id, true);
	if(c){
		c->owner = ed->client;
		memcpy(c->cert_id, cert_id, sizeof(c->cert_id));
	}
	mosquitto_log_printf(MOSQ_LOG_INFO, "iotsim: client '%s' connected as %s (certificate %s)",
			client_id, status_name(st), cert_id);
	return MOSQ_ERR_SUCCESS;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	const char *client_id = mosquitto_client_id(ed->client);
	struct client *c;

	(void)event;
	(void)userdata;
	if(!client_id) return MOSQ_ERR_SUCCESS;
	c = client_find(client_id, false);
	/* Only the connection that owns the entry may clear it: a refused or
	 * superseded connection with the same client id must not. */
	if(c && c->owner == ed->client){
		g.gone = ed->client;
		memcpy(g.gone_cert_id, c->cert_id, sizeof(c->cert_id));
		if(mosquitto_client_clean_session(ed->client)){
			client_forget(client_id);
		}else{
			c->owner = NULL;
		}
	}
	return MOSQ_ERR_SUCCESS;
}

static int acl_claim(const char *client_id, const char *topic, int access, bool live)
{
	switch(access){
		case MOSQ_ACL_SUBSCRIBE:
		case MOSQ_ACL_READ:
			return is_provisioning_topic(topic, true) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_WRITE:
			if(is_provisioning_topic(topic, false)) return MOSQ_ERR_SUCCESS;
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					"iotsim: claim client '%s' published to '%s', which the claim policy does not allow; disconnecting it",
					client_id, topic);
			if(live) kick_later(client_id);
			return MOSQ_ERR_ACL_DENIED;
		default: /* unsubscribing is always harmless */
			return MOSQ_ERR_SUCCESS;
	}
}

static int acl_device(const char *topic, int access)
{
	if(access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_SUCCESS;
	if(access == MOSQ_ACL_SUBSCRIBE) topic = strip_share(topic);
	if(is_internal(topic)) return MOSQ_ERR_ACL_DENIED;
	if(access == MOSQ_ACL_WRITE && is_provisioning_topic(topic, true)) return MOSQ_ERR_ACL_DENIED;
	return MOSQ_ERR_SUCCESS;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *client_id = mosquitto_client_id(ed->client);
	char cert_id[ID_HEX_LEN + 1];
	enum role role;
	bool live;
	int rc;

	(void)event;
	(void)userdata;
	if(!client_id || !ed->topic) return MOSQ_ERR_ACL_DENIED;
	role = client_role(ed->client, cert_id, &live);
	switch(role){
		case ROLE_SERVICE:
			rc = MOSQ_ERR_SUCCESS;
			break;
		case ROLE_CLAIM:
			rc = acl_claim(client_id, ed->topic, ed->access, live);
			break;
		case ROLE_DEVICE:
			rc = acl_device(ed->topic, ed->access);
			break;
		default:
			if(live){
				mosquitto_log_printf(MOSQ_LOG_NOTICE,
						"iotsim: client '%s' (certificate %s) is no longer allowed to connect; disconnecting it",
						client_id, cert_id);
				kick_later(client_id);
			}
			return MOSQ_ERR_ACL_DENIED;
	}
	if(rc == MOSQ_ERR_SUCCESS){
		if(ed->access == MOSQ_ACL_SUBSCRIBE){
			sub_add(client_id, ed->topic, ed->qos);
		}else if(ed->access == MOSQ_ACL_UNSUBSCRIBE){
			sub_remove(client_id, ed->topic);
		}
	}
	return rc;
}

/* iotsim/reply/<hex client id>/<response topic> from the service. */
static void deliver_reply(const char *rest, const struct mosquitto_evt_message *ed)
{
	const char *end, *topic;
	char *client_id = hex_client_id(rest, &end);
	int qos, rc;

	if(!client_id || end[0] != '/' || end[1] == '\0'){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"iotsim: dropped reply on malformed topic '%s'; expected iotsim/reply/<hex client id>/<topic>",
				ed->topic);
		free(client_id);
		return;
	}
	topic = end + 1;
	if(mosquitto_pub_topic_check(topic) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"iotsim: dropped reply to '%s': '%s' is not a valid topic to publish to",
				client_id, topic);
		free(client_id);
		return;
	}
	qos = sub_match_qos(client_id, topic);
	if(qos < 0){
		mosquitto_log_printf(MOSQ_LOG_INFO,
				"iotsim: reply on '%s' not delivered: client '%s' is not connected or not subscribed to it",
				topic, client_id);
		free(client_id);
		return;
	}
	rc = mosquitto_broker_publish_copy(client_id, topic, (int)ed->payloadlen, ed->payload,
			qos > 1 ? 1 : qos, false, NULL);
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "iotsim: could not queue reply to '%s' on '%s' (error %d)",
				client_id, topic, rc);
	}
	free(client_id);
}

/* iotsim/kick/<hex client id> from the service. */
static void kick_request(const char *rest, const char *full_topic)
{
	const char *end;
	char *client_id = hex_client_id(rest, &end);

	if(!client_id || end[0] != '\0'){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"iotsim: dropped kick on malformed topic '%s'; expected iotsim/kick/<hex client id>",
				full_topic);
		free(client_id);
		return;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "iotsim: disconnecting client '%s' at the service's request",
			client_id);
	kick_later(client_id);
	free(client_id);
}

/* $aws/... from a device or claim client -> iotsim/req/<hex id>/<cert id>/<topic> */
static int rewrite_request(struct mosquitto_evt_message *ed, const char *client_id, const char *cert_id)
{
	size_t id_len = strlen(client_id), topic_len = strlen(ed->topic);
	size_t len = strlen("iotsim/req/") + 2 * id_len + 1 + ID_HEX_LEN + 1 + topic_len;
	char *topic, *p;

	if(id_len == 0 || len > MAX_TOPIC_LEN){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"iotsim: dropped request from '%s' on '%s': the internal topic would exceed %d bytes",
				client_id, ed->topic, MAX_TOPIC_LEN);
		return DROP_MESSAGE;
	}
	topic = mosquitto_malloc(len + 1);
	if(!topic) return MOSQ_ERR_NOMEM;
	p = topic;
	memcpy(p, "iotsim/req/", strlen("iotsim/req/"));
	p += strlen("iotsim/req/");
	hex_encode((const unsigned char *)client_id, id_len, p);
	p += 2 * id_len;
	*p++ = '/';
	memcpy(p, cert_id, ID_HEX_LEN);
	p += ID_HEX_LEN;
	*p++ = '/';
	memcpy(p, ed->topic, topic_len + 1);
	/* mosquitto 2.0 takes the new pointer without freeing the old topic. */
	mosquitto_free(ed->topic);
	ed->topic = topic;
	/* A request is an event, never state: a retained one would be replayed
	 * to the service on every resubscribe. */
	ed->retain = false;
	return MOSQ_ERR_SUCCESS;
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	const char *client_id = mosquitto_client_id(ed->client);
	char cert_id[ID_HEX_LEN + 1];
	const char *rest;
	enum role role;
	bool live;

	(void)event;
	(void)userdata;
	if(!client_id || !ed->topic) return DROP_MESSAGE;
	role = client_role(ed->client, cert_id, &live);
	if(role == ROLE_SERVICE){
		if((rest = after(ed->topic, "iotsim/reply/"))){
			deliver_reply(rest, ed);
			return DROP_MESSAGE;
		}
		if((rest = after(ed->topic, "iotsim/kick/"))){
			kick_request(rest, ed->topic);
			return DROP_MESSAGE;
		}
		return MOSQ_ERR_SUCCESS;
	}
	if(role == ROLE_NONE){
		/* The ACL check has already denied it; never route it. */
		return DROP_MESSAGE;
	}
	if(!strncmp(ed->topic, "$aws/", 5)){
		return rewrite_request(ed, client_id, cert_id);
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	kicks_run();
	return MOSQ_ERR_SUCCESS;
}

/* ---- plugin entry points ---------------------------------------------- */

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	int i, rc;

	(void)userdata;
	memset(&g, 0, sizeof(g));
	g.pid = identifier;
	for(i = 0; i < option_count; i++){
		if(!strcmp(options[i].key, "status_file") && options[i].value && options[i].value[0]){
			g.status_path = strdup(options[i].value);
			if(!g.status_path) return MOSQ_ERR_NOMEM;
		}
	}
	if(!g.status_path){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"iotsim: plugin_opt_status_file is not set; add 'plugin_opt_status_file <STATE>/certs.status' to mosquitto.conf");
		return MOSQ_ERR_INVAL;
	}
	status_refresh();
	if((rc = mosquitto_callback_register(g.pid, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL))
			|| (rc = mosquitto_callback_register(g.pid, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL))
			|| (rc = mosquitto_callback_register(g.pid, MOSQ_EVT_MESSAGE, on_message, NULL, NULL))
			|| (rc = mosquitto_callback_register(g.pid, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL))
			|| (rc = mosquitto_callback_register(g.pid, MOSQ_EVT_TICK, on_tick, NULL, NULL))){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotsim: cannot register plugin callbacks (error %d)", rc);
		return rc;
	}
	mosquitto_log_printf(MOSQ_LOG_INFO, "iotsim: plugin ready; certificate status from %s",
			g.status_path);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	struct client *c, *next;
	struct kick *k;
	size_t i;

	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(g.pid, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(g.pid, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(g.pid, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(g.pid, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(g.pid, MOSQ_EVT_TICK, on_tick, NULL);
	for(i = 0; i < CLIENT_BUCKETS; i++){
		for(c = g.clients[i]; c; c = next){
			next = c->next;
			subs_free(c->subs);
			free(c->id);
			free(c);
		}
	}
	while((k = g.kicks)){
		g.kicks = k->next;
		free(k->id);
		free(k);
	}
	status_clear();
	free(g.status_path);
	memset(&g, 0, sizeof(g));
	return MOSQ_ERR_SUCCESS;
}
