/*
 * iotsim_plugin.c - mosquitto 2.0 plugin (plugin API v5) that makes mosquitto
 * behave like AWS IoT Core: certificate status, AWS IoT policies, AWS's
 * message-broker limits and per-connection replies for fleet provisioning.
 *
 * Build:  gcc -shared -fPIC -O2 -Wall -Wextra -Werror \
 *             -o build/iotsim_plugin.so tools/iotsim/plugin/iotsim_plugin.c -lcrypto
 * Config: plugin build/iotsim_plugin.so
 *         plugin_opt_principals_dir <STATE>/principals
 *         plugin_opt_region local            (the ARN's region, default "local")
 *         plugin_opt_account 000000000000    (the ARN's account)
 *         plugin_opt_connect_interval_ms 1000 (AWS's quotas below; 0 turns
 *         plugin_opt_publish_rate 100          one off, for a test that is
 *         plugin_opt_subscribe_filters 8       not about it)
 *         (with use_identity_as_username false and allow_anonymous false, so
 *         that MOSQ_EVT_BASIC_AUTH sees every connection)
 *
 * Identity. Every client connects over TLS with a client certificate. Its
 * certificateId is the lowercase hex SHA-256 of the certificate DER (as AWS).
 * The service's registry writes one principal file per certificate,
 * <principals_dir>/<first 2 hex>/<certificateId> (policy.h documents the format): its
 * status and its policies compiled to allow/deny rules. A status change
 * rewrites one small file, so its cost does not depend on how many
 * certificates exist. The status decides the role:
 *   SERVICE  the provisioning service: everything allowed, no policy
 *   ACTIVE, CLAIM  AWS policy evaluation (the claim is an ordinary certificate
 *            with a policy attached; CLAIM only marks it in listings)
 *   anything else, no file: CONNACK "not authorised"
 * Each connection keeps its own rules (with ${iot:ClientId} expanded); at
 * every ACL check the plugin stat()s the connection's principal file and
 * reloads it when it changed, so a revocation or a policy change applies to a
 * connected client at its next publish, subscribe or delivery.
 *
 * Policy (AWS's decisions, evaluated in policy.h):
 *   - iot:Connect on client/<client id> at CONNECT; refused: CONNACK 5.
 *   - iot:Publish on topic/<topic>, and iot:RetainPublish too for a retained
 *     publish or Will; denied: the message is dropped and the client
 *     disconnected, as AWS does.
 *   - iot:Subscribe on topicfilter/<filter>; denied: SUBACK 0x80.
 *   - iot:Receive on topic/<topic> at every delivery (replies included);
 *     denied: that delivery is dropped.
 *   - "iotsim", "iotsim/..." and "$SYS/..." exist on no AWS endpoint: only
 *     SERVICE may use them, whatever a policy says. Provisioning response
 *     topics are AWS's to publish (also stops forging a reply with a Will).
 * AWS's limits (the quotas page, cited in docs/iotsim.md): client id <= 128
 * bytes (else CONNACK 5); topic and filter <= 256 bytes with at most 7 '/'
 * (a publish beyond: disconnect; a filter: SUBACK 0x80); payload <= 128 KiB
 * (disconnect); at most 50 subscriptions per connection (SUBACK 0x80);
 * QoS 0 and 1 only (a QoS 2 publish or subscription: the connection is closed
 * without an acknowledgement; AWS sends none); one accepted CONNECT per second
 * per client id (a faster one is closed before CONNACK, the connection that
 * holds the id stays); 100 publishes per second per connection, in and out
 * together (the excess is discarded); at most 8 filters per SUBSCRIBE (the
 * connection is closed). mosquitto 2.0 shows a plugin no packet boundaries:
 * the filters of one SUBSCRIBE are those checked for that client in one
 * broker loop iteration (a TLS record carries one packet from a usual client).
 *
 * Per-connection delivery (MOSQ_EVT_MESSAGE). Every accepted connection gets
 * a serial number, unique for the life of the broker.
 *   - A publish from a non-SERVICE client to "$aws/..." is rewritten to
 *       iotsim/req/<hex(client id)>/<serial>/<certificateId>/<original topic>
 *     (payload unchanged, retain cleared). The service subscribes to
 *     iotsim/req/#.
 *   - The service answers on iotsim/reply/<hex(client id)>/<serial>/<topic>.
 *     It reaches that client only while the connection with that serial is
 *     the one holding the client id (a connection that took the id over never
 *     sees the old connection's answers), only if it holds a matching
 *     subscription (AWS delivers only to subscribers), and only if its policy
 *     allows iot:Receive. The QoS is the lower of 1 and the subscription's.
 *   - iotsim/kick/<hex(client id)>/<serial> disconnects that connection.
 *   - Any other message a client publishes is routed as usual, and a copy goes
 *     to iotsim/rule/<hex(client id)>/<serial>/<certificateId>/<topic> for the
 *     service's rules engine (AWS IoT rules see every message).
 *   - Reply and kick messages are never routed. A malformed internal topic
 *     is dropped with a warning.
 *
 * Disconnects requested from inside a callback are queued and carried out on
 * the next MOSQ_EVT_TICK, from the broker's main loop, so that no client
 * context is torn down while mosquitto is still handling one of its packets.
 * The plugin never logs payloads.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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

#include "policy.h"

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
#define CLIENT_BUCKETS 4096
#define FRESH_NS 50000000L /* 50 ms */
#define STATUS_LEN 32
#define PRINCIPAL_MAX_BYTES (1024 * 1024)

/* AWS IoT Core message broker quotas (docs/iotsim.md cites them). */
#define AWS_MAX_CLIENT_ID 128
#define AWS_MAX_TOPIC 256
#define AWS_MAX_SLASHES 7
#define AWS_MAX_PAYLOAD (128 * 1024)
#define AWS_MAX_SUBSCRIPTIONS 50
#define AWS_CONNECT_INTERVAL_MS 1000 /* Connect requests per second per client ID: 1 */
#define AWS_PUBLISH_RATE 100         /* Publish requests per second per connection */
#define AWS_SUBSCRIBE_FILTERS 8      /* Maximum subscriptions per subscribe request */
#define RECENT_SWEEP_BUCKETS 16      /* connect-rate entries looked at per tick */

/* What the MESSAGE callback returns to drop a message. On mosquitto 2.0.11
 * (Debian 2.0.11-1.2+deb12u2) MOSQ_ERR_ACL_DENIED drops it without routing
 * and still acknowledges a QoS 1 publish; the connection stays up
 * (tests/host/test_iotsim_broker.py checks this). */
#define DROP_MESSAGE MOSQ_ERR_ACL_DENIED

/* What an ACL or auth callback returns to close the connection without
 * answering the packet: mosquitto 2.0.11 disconnects on any result other
 * than success, denied (and, at CONNECT, "auth", which sends CONNACK 5).
 * tests/host/test_iotsim_broker.py checks this. */
#define CLOSE_CONNECTION MOSQ_ERR_UNKNOWN

enum role { ROLE_NONE = 0, ROLE_POLICY, ROLE_SERVICE };

/* A subscription the plugin knows a client holds (for "deliver only to
 * subscribers" and the per-connection limit). */
struct sub {
	struct sub *next;
	char *filter; /* without any $share/<group>/ prefix */
	int qos;
};

/* What one connection may do: its certificate's principal file, as loaded. */
struct grant {
	char cert_id[ID_HEX_LEN + 1];
	char status[STATUS_LEN];
	enum role role;
	struct pol_set rules; /* ${iot:ClientId} expanded for this connection */
	bool loaded;
	bool fresh; /* loaded within one timestamp tick of its last write */
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
};

struct client {
	struct client *next;
	char *id;
	const struct mosquitto *owner; /* the connection holding the id, NULL when none */
	uint64_t serial;               /* that connection's serial */
	struct grant grant;
	struct sub *subs;
	unsigned nsubs;
	double pub_tokens;             /* the connection's publish bucket */
	struct timespec pub_stamp;
	struct timespec drop_logged;   /* last "discarded" log line (one a second) */
	uint64_t sub_tick;             /* the loop iteration of the last filter checked */
	unsigned sub_filters;          /* filters checked in that iteration */
};

/* When a client id last connected, for the CONNECT rate (kept apart from
 * struct client, which a clean session forgets at once). */
struct recent {
	struct recent *next;
	struct timespec at;
	char id[]; /* allocated with the node */
};

struct kick {
	struct kick *next;
	char *id;
	uint64_t serial;
};

static struct {
	mosquitto_plugin_id_t *pid;
	char *dir;
	char *arn_prefix; /* "arn:aws:iot:<region>:<account>:" */
	size_t arn_prefix_len;
	uint64_t next_serial;
	struct client *clients[CLIENT_BUCKETS];
	struct kick *kicks;
	struct recent *recent[CLIENT_BUCKETS];
	unsigned sweep_bucket;
	uint64_t tick;            /* broker loop iterations so far */
	long connect_interval_ms; /* 0: the quota is off */
	double publish_rate;      /* 0: off */
	unsigned subscribe_filters; /* 0: off */
	/* Client ids with a reply queued in this main-loop iteration (mosquitto
	 * routes them by client id at the start of the next one). */
	struct kick *replied;
	/* The connection that disconnected last and what it was granted:
	 * mosquitto checks a Will's topic after MOSQ_EVT_DISCONNECT. */
	const struct mosquitto *gone;
	struct grant gone_grant;
} g;

static long long ns_between(const struct timespec *a, const struct timespec *b)
{
	return (long long)(b->tv_sec - a->tv_sec) * 1000000000LL + (b->tv_nsec - a->tv_nsec);
}

/* ---- principal files --------------------------------------------------- */

static void grant_clear(struct grant *gr)
{
	pol_set_free(&gr->rules);
	gr->loaded = false;
	gr->status[0] = '\0';
	gr->role = ROLE_NONE;
}

static enum role role_of_status(const char *status)
{
	if(!strcmp(status, "SERVICE")) return ROLE_SERVICE;
	if(!strcmp(status, "ACTIVE") || !strcmp(status, "CLAIM")) return ROLE_POLICY;
	return ROLE_NONE;
}

/* Bring gr up to date with its principal file for client_id. The service
 * replaces the file by rename, so a new inode, size or mtime means new
 * content; inodes are reused and timestamps advance once per kernel tick, so
 * a file loaded within FRESH_NS of its mtime is read again at the next check. */
static void grant_refresh(struct grant *gr, const char *client_id)
{
	char path[4096];
	struct stat st;
	struct timespec now;
	FILE *f;
	char *buf;
	size_t n;
	struct pol_set rules = {NULL, 0};
	char status[STATUS_LEN];

	if(snprintf(path, sizeof(path), "%s/%.2s/%s", g.dir, gr->cert_id, gr->cert_id) >= (int)sizeof(path)){
		grant_clear(gr);
		return;
	}
	if(stat(path, &st) != 0){
		grant_clear(gr);
		return;
	}
	if(gr->loaded && !gr->fresh && st.st_dev == gr->dev && st.st_ino == gr->ino
			&& st.st_size == gr->size && st.st_mtim.tv_sec == gr->mtime.tv_sec
			&& st.st_mtim.tv_nsec == gr->mtime.tv_nsec){
		return;
	}
	if(st.st_size < 0 || st.st_size > PRINCIPAL_MAX_BYTES) goto bad;
	f = fopen(path, "rb");
	if(!f){
		grant_clear(gr);
		return;
	}
	if(fstat(fileno(f), &st) != 0 || st.st_size < 0 || st.st_size > PRINCIPAL_MAX_BYTES){
		fclose(f);
		goto bad;
	}
	buf = malloc((size_t)st.st_size + 1);
	if(!buf){
		fclose(f);
		goto bad;
	}
	n = fread(buf, 1, (size_t)st.st_size, f);
	fclose(f);
	buf[n] = '\0';
	if(memchr(buf, '\0', n) || !pol_parse_principal(buf, client_id, status, sizeof(status), &rules)){
		free(buf);
		goto bad;
	}
	free(buf);
	pol_set_free(&gr->rules);
	gr->rules = rules;
	memcpy(gr->status, status, sizeof(status));
	gr->role = role_of_status(status);
	gr->loaded = true;
	gr->dev = st.st_dev;
	gr->ino = st.st_ino;
	gr->size = (off_t)n;
	gr->mtime = st.st_mtim;
	clock_gettime(CLOCK_REALTIME, &now);
	gr->fresh = ns_between(&st.st_mtim, &now) < FRESH_NS;
	return;
bad:
	mosquitto_log_printf(MOSQ_LOG_WARNING,
			"iotsim: principal file %s is unreadable or malformed; the certificate gets no access",
			path);
	grant_clear(gr);
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

/* ---- clients ------------------------------------------------------------ */

/* A zeroed node of size bytes whose string member (at offset) holds a copy of
 * text; NULL when out of memory. */
static void *node_with_string(size_t size, size_t offset, const char *text)
{
	char *node = calloc(1, size), *copy = strdup(text);

	if(!node || !copy){
		free(node);
		free(copy);
		return NULL;
	}
	memcpy(node + offset, &copy, sizeof(copy));
	return node;
}

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
	c = node_with_string(sizeof(*c), offsetof(struct client, id), id);
	if(!c) return NULL;
	c->next = *head;
	*head = c;
	return c;
}

static void subs_free(struct client *c)
{
	struct sub *s, *next;

	for(s = c->subs; s; s = next){
		next = s->next;
		free(s->filter);
		free(s);
	}
	c->subs = NULL;
	c->nsubs = 0;
}

static void client_free(struct client *c)
{
	subs_free(c);
	grant_clear(&c->grant);
	free(c->id);
	free(c);
}

static void client_forget(const char *id)
{
	struct client **pp = &g.clients[bucket_of(id)], *c;

	for(; (c = *pp); pp = &c->next){
		if(!strcmp(c->id, id)){
			*pp = c->next;
			client_free(c);
			return;
		}
	}
}

/* ---- AWS's rate quotas ------------------------------------------------ */

static void monotonic_now(struct timespec *ts)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
}

/* May client_id connect now? One accepted CONNECT per connect_interval_ms
 * per client id; a refused attempt does not count, so a client that backs
 * off gets in once the interval has passed. Records the accepted one. */
static bool connect_rate_ok(const char *client_id)
{
	struct recent **head = &g.recent[bucket_of(client_id)], *r;
	struct timespec now;

	if(g.connect_interval_ms <= 0) return true;
	monotonic_now(&now);
	for(r = *head; r; r = r->next){
		if(!strcmp(r->id, client_id)) break;
	}
	if(r && ns_between(&r->at, &now) < g.connect_interval_ms * 1000000LL) return false;
	if(!r){
		size_t n = strlen(client_id) + 1;

		if(!(r = malloc(sizeof(*r) + n))) return false;
		memcpy(r->id, client_id, n);
		r->next = *head;
		*head = r;
	}
	r->at = now;
	return true;
}

/* Forget the connect times that no longer matter, a few buckets per tick. */
static void recent_sweep(void)
{
	struct recent **pp, *r;
	struct timespec now;
	unsigned i;

	monotonic_now(&now);
	for(i = 0; i < RECENT_SWEEP_BUCKETS; i++){
		g.sweep_bucket = (g.sweep_bucket + 1) % CLIENT_BUCKETS;
		for(pp = &g.recent[g.sweep_bucket]; (r = *pp);){
			if(ns_between(&r->at, &now) >= g.connect_interval_ms * 1000000LL){
				*pp = r->next;
				free(r);
			}else{
				pp = &r->next;
			}
		}
	}
}

static void recent_free(void)
{
	struct recent *r;
	size_t i;

	for(i = 0; i < CLIENT_BUCKETS; i++){
		while((r = g.recent[i])){
			g.recent[i] = r->next;
			free(r);
		}
	}
}

/* Take one publish from the connection's bucket (publish_rate a second,
 * bursts of as many); false when it is empty: AWS discards that publish. */
static bool publish_rate_ok(struct client *c, const char *direction, const char *topic)
{
	struct timespec now;

	if(g.publish_rate <= 0 || !c) return true;
	monotonic_now(&now);
	c->pub_tokens += g.publish_rate * (double)ns_between(&c->pub_stamp, &now) / 1e9;
	if(c->pub_tokens > g.publish_rate) c->pub_tokens = g.publish_rate;
	c->pub_stamp = now;
	if(c->pub_tokens >= 1.0){
		c->pub_tokens -= 1.0;
		return true;
	}
	if(ns_between(&c->drop_logged, &now) >= 1000000000LL){
		c->drop_logged = now;
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: client '%s' is over AWS IoT's %g publishes per second per connection; "
				"discarding (%s '%.300s' and others this second)", c->id, g.publish_rate, direction, topic);
	}
	return false;
}

/* One more filter in the client's current SUBSCRIBE; false past the quota. */
static bool subscribe_filters_ok(struct client *c)
{
	if(!g.subscribe_filters || !c) return true;
	if(c->sub_tick != g.tick){
		c->sub_tick = g.tick;
		c->sub_filters = 0;
	}
	return ++c->sub_filters <= g.subscribe_filters;
}

/* The record of the connection behind this ACL/message event, or NULL. For a
 * Will checked after MOSQ_EVT_DISCONNECT, what that connection was granted. */
static struct grant *grant_of(const struct mosquitto *client, struct client **out)
{
	const char *client_id = mosquitto_client_id(client);
	struct client *c = client_id ? client_find(client_id, false) : NULL;

	*out = NULL;
	if(c && c->owner == client){
		*out = c;
		grant_refresh(&c->grant, c->id);
		return &c->grant;
	}
	if(client == g.gone && g.gone_grant.cert_id[0] && client_id){
		grant_refresh(&g.gone_grant, client_id);
		return &g.gone_grant;
	}
	return NULL;
}

/* ---- deferred disconnects -------------------------------------------- */

static void kick_later(const char *client_id, uint64_t serial)
{
	struct kick *k;

	if(!client_id || !client_id[0]) return;
	for(k = g.kicks; k; k = k->next){
		if(!strcmp(k->id, client_id) && k->serial == serial) return;
	}
	k = node_with_string(sizeof(*k), offsetof(struct kick, id), client_id);
	if(!k) return;
	k->serial = serial;
	k->next = g.kicks;
	g.kicks = k;
}

static void kicks_run(void)
{
	struct kick *k;
	struct client *c;

	while((k = g.kicks)){
		g.kicks = k->next;
		/* Only the connection that earned the kick: a newer connection that
		 * took over the client id in the meantime stays. */
		c = client_find(k->id, false);
		if(c && c->owner && c->serial == k->serial){
			mosquitto_kick_client_by_clientid(k->id, false);
		}
		free(k->id);
		free(k);
	}
}

/* ---- replies queued in this main-loop iteration ------------------------ */

/* (The list reuses struct kick: a client id; its serial is unused here.) */

static bool replied_now(const char *client_id)
{
	struct kick *r;

	for(r = g.replied; r; r = r->next){
		if(!strcmp(r->id, client_id)) return true;
	}
	return false;
}

/* O(1); a client id may appear twice (the list lives one loop iteration). */
static void replied_add(const char *client_id)
{
	struct kick *r;

	r = node_with_string(sizeof(*r), offsetof(struct kick, id), client_id);
	if(!r) return;
	r->next = g.replied;
	g.replied = r;
}

static void replied_clear(void)
{
	struct kick *r;

	while((r = g.replied)){
		g.replied = r->next;
		free(r->id);
		free(r);
	}
}

/* ---- subscriptions held by each client id ---------------------------- */

/* "$share/<group>/<filter>" -> "<filter>"; other filters unchanged. */
static const char *strip_share(const char *filter)
{
	const char *p;

	if(strncmp(filter, "$share/", 7)) return filter;
	p = strchr(filter + 7, '/');
	return p ? p + 1 : filter + strlen(filter);
}

static struct sub *sub_find(struct client *c, const char *filter)
{
	struct sub *s;

	for(s = c->subs; s; s = s->next){
		if(!strcmp(s->filter, filter)) return s;
	}
	return NULL;
}

static void sub_add(struct client *c, const char *filter, int qos)
{
	struct sub *s;

	filter = strip_share(filter);
	if((s = sub_find(c, filter))){
		s->qos = qos;
		return;
	}
	s = node_with_string(sizeof(*s), offsetof(struct sub, filter), filter);
	if(!s) return;
	s->qos = qos;
	s->next = c->subs;
	c->subs = s;
	c->nsubs++;
}

static void sub_remove(struct client *c, const char *filter)
{
	struct sub **pp, *s;

	filter = strip_share(filter);
	for(pp = &c->subs; (s = *pp); pp = &s->next){
		if(!strcmp(s->filter, filter)){
			*pp = s->next;
			free(s->filter);
			free(s);
			c->nsubs--;
			return;
		}
	}
}

/* Highest QoS of the client's subscriptions matching topic, or -1. */
static int sub_match_qos(const struct client *c, const char *topic)
{
	struct sub *s;
	bool match;
	int best = -1;

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

/* Topics that exist on no AWS endpoint: iotsim's own and mosquitto's $SYS. */
static bool is_internal(const char *topic)
{
	return !strcmp(topic, "iotsim") || !strncmp(topic, "iotsim/", 7)
		|| !strcmp(topic, "$SYS") || !strncmp(topic, "$SYS/", 5);
}

/* A fleet-provisioning response topic (".../accepted" or ".../rejected"). */
static bool is_provisioning_response(const char *topic)
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
	return !strcmp(fmt_end, "/accepted") || !strcmp(fmt_end, "/rejected");
}

/* AWS's topic limits: <= 256 bytes, <= 7 forward slashes (Basic Ingest's
 * "$aws/rules/<rule>/" prefix does not count). NULL when within them, else
 * what is wrong. */
static const char *topic_limit_error(const char *topic)
{
	size_t slashes = 0;
	const char *p;

	if(strlen(topic) > AWS_MAX_TOPIC) return "is longer than 256 bytes";
	for(p = topic; *p; p++){
		if(*p == '/') slashes++;
	}
	if(!strncasecmp(topic, "$aws/rules/", 11) && slashes >= 3) slashes -= 3;
	if(slashes > AWS_MAX_SLASHES) return "has more than 7 forward slashes";
	return NULL;
}

/* The policy decision for one request: kind is "client/", "topic/" or
 * "topicfilter/". */
static bool policy_allows(const struct grant *gr, unsigned action, const char *kind, const char *name)
{
	char buf[1024];
	size_t k = strlen(kind), n = strlen(name);

	if(gr->role == ROLE_SERVICE) return true;
	if(gr->role != ROLE_POLICY) return false;
	if(g.arn_prefix_len + k + n + 1 > sizeof(buf)) return false;
	memcpy(buf, g.arn_prefix, g.arn_prefix_len);
	memcpy(buf + g.arn_prefix_len, kind, k);
	memcpy(buf + g.arn_prefix_len + k, name, n + 1);
	return pol_allowed(&gr->rules, action, buf);
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

/* A decimal serial at s ending at '/' or NUL; false when malformed. */
static bool parse_serial(const char *s, uint64_t *out, const char **end)
{
	char *e;
	unsigned long long v;

	if(*s < '0' || *s > '9') return false;
	errno = 0;
	v = strtoull(s, &e, 10);
	if(errno || (*e != '/' && *e != '\0')) return false;
	*out = (uint64_t)v;
	*end = e;
	return true;
}

/* ---- callbacks -------------------------------------------------------- */

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *client_id = mosquitto_client_id(ed->client);
	struct grant gr;
	struct client *c;

	(void)event;
	(void)userdata;
	memset(&gr, 0, sizeof(gr));
	if(!client_id) client_id = "";
	if(!client_cert_id(ed->client, gr.cert_id)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: refused client '%s' from %s: no client certificate",
				client_id, mosquitto_client_address(ed->client));
		return MOSQ_ERR_AUTH;
	}
	if(strlen(client_id) > AWS_MAX_CLIENT_ID){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: refused a client with a %zu-byte client id: AWS IoT allows at most %d bytes",
				strlen(client_id), AWS_MAX_CLIENT_ID);
		return MOSQ_ERR_AUTH;
	}
	if(client_id[0] == '$'){
		/* AWS: "$ is reserved for AWS IoT generated client IDs". */
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: refused client '%.130s': client ids starting with $ are reserved by AWS IoT",
				client_id);
		return MOSQ_ERR_AUTH;
	}
	grant_refresh(&gr, client_id);
	if(gr.role == ROLE_NONE){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: refused client '%s': certificate %s is %s",
				client_id, gr.cert_id, gr.status[0] ? gr.status : "unknown");
		grant_clear(&gr);
		return MOSQ_ERR_AUTH;
	}
	if(!policy_allows(&gr, POL_CONNECT, "client/", client_id)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: refused client '%s': the policies of certificate %s do not allow iot:Connect on client/%s",
				client_id, gr.cert_id, client_id);
		grant_clear(&gr);
		return MOSQ_ERR_AUTH;
	}
	c = client_find(client_id, false);
	if(c && c->owner && c->grant.role == ROLE_SERVICE && gr.role != ROLE_SERVICE){
		/* iotsim's own connection exists on no AWS endpoint: no device may take it over. */
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: refused client '%s': the client id is iotsim's own (certificate %s)", client_id, gr.cert_id);
		grant_clear(&gr);
		return MOSQ_ERR_AUTH;
	}
	if(replied_now(client_id)){
		/* mosquitto routes a queued reply by client id at its next loop
		 * iteration: a connection that takes the id now (over a live
		 * connection, or after the old one closed in this same iteration)
		 * would receive the old connection's answer. Close it before
		 * CONNACK, a failure that can pass: the client retries. */
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: closed a CONNECT of client '%s' for now: a reply to the connection it would take over is in flight",
				client_id);
		grant_clear(&gr);
		return CLOSE_CONNECTION;
	}
	if(!connect_rate_ok(client_id)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: closed a CONNECT of client '%s' before CONNACK: AWS IoT allows one CONNECT per "
				"second per client id (retry with back-off)", client_id);
		grant_clear(&gr);
		return CLOSE_CONNECTION;
	}
	if(c && c->owner && c->owner != ed->client){
		/* A takeover: mosquitto closes the old connection next and checks its
		 * Will with what that connection was granted. */
		grant_clear(&g.gone_grant);
		g.gone = c->owner;
		g.gone_grant = c->grant;
		memset(&c->grant, 0, sizeof(c->grant));
	}
	/* A clean session starts with no subscriptions; a persistent one keeps
	 * what the plugin knew about the previous connection. */
	if(c && mosquitto_client_clean_session(ed->client)){
		client_forget(client_id);
		c = NULL;
	}
	if(!c) c = client_find(client_id, true);
	if(!c){
		grant_clear(&gr);
		return MOSQ_ERR_NOMEM;
	}
	grant_clear(&c->grant);
	c->grant = gr;
	c->owner = ed->client;
	c->serial = ++g.next_serial;
	c->pub_tokens = g.publish_rate; /* a new connection starts with a full bucket */
	monotonic_now(&c->pub_stamp);
	mosquitto_log_printf(MOSQ_LOG_INFO,
			"iotsim: client '%s' connected as %s (certificate %s, connection %" PRIu64 ")",
			client_id, gr.status, gr.cert_id, c->serial);
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
		grant_clear(&g.gone_grant);
		g.gone = ed->client;
		g.gone_grant = c->grant;
		memset(&c->grant, 0, sizeof(c->grant));
		if(mosquitto_client_clean_session(ed->client)){
			client_forget(client_id);
		}else{
			c->owner = NULL;
		}
	}
	return MOSQ_ERR_SUCCESS;
}

static int acl_write(struct client *c, const struct grant *gr, const char *client_id,
		const struct mosquitto_evt_acl_check *ed, bool live)
{
	const char *why;
	char reason[160];

	if(gr->role == ROLE_SERVICE) return MOSQ_ERR_SUCCESS; /* iotsim's own plumbing */
	if(ed->qos > 1){
		/* AWS: "does not support publishing or subscribing with QoS level 2";
		 * its broker sends no PUBACK (here: no PUBREC either). */
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: client '%s' published to '%.300s' with QoS 2, which AWS IoT does not support; "
				"closing the connection", client_id, ed->topic);
		return CLOSE_CONNECTION;
	}
	why = topic_limit_error(ed->topic);
	if(why){
		snprintf(reason, sizeof(reason), "the topic %s (AWS IoT quota)", why);
	}else if(ed->payloadlen > AWS_MAX_PAYLOAD){
		snprintf(reason, sizeof(reason), "the payload of %" PRIu32 " bytes exceeds AWS IoT's 128 KB",
				ed->payloadlen);
	}else if(is_internal(ed->topic) || is_provisioning_response(ed->topic)){
		snprintf(reason, sizeof(reason), "the topic is reserved");
	}else if(!policy_allows(gr, POL_PUBLISH, "topic/", ed->topic)){
		snprintf(reason, sizeof(reason), "its policies do not allow iot:Publish on it");
	}else if(ed->retain && !policy_allows(gr, POL_RETAIN_PUBLISH, "topic/", ed->topic)){
		snprintf(reason, sizeof(reason), "it is retained and its policies do not allow iot:RetainPublish on it");
	}else{
		return live && !publish_rate_ok(c, "from it on", ed->topic) ? DROP_MESSAGE : MOSQ_ERR_SUCCESS;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			"iotsim: client '%s' (certificate %s) published to '%.300s', refused: %s; disconnecting it",
			client_id, gr->cert_id, ed->topic, reason);
	if(live && c) kick_later(client_id, c->serial);
	return MOSQ_ERR_ACL_DENIED;
}

static int acl_subscribe(struct client *c, const struct grant *gr, const char *client_id,
		const struct mosquitto_evt_acl_check *ed)
{
	const char *filter = strip_share(ed->topic);
	const char *why;

	if(gr->role == ROLE_SERVICE) return MOSQ_ERR_SUCCESS;
	if(ed->qos > 1){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: client '%s' subscribed to '%.300s' with QoS 2, which AWS IoT does not support; "
				"closing the connection without a SUBACK", client_id, ed->topic);
		return CLOSE_CONNECTION;
	}
	if(!subscribe_filters_ok(c)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: client '%s' sent a SUBSCRIBE with more than %u filters, AWS IoT's limit; "
				"closing the connection", client_id, g.subscribe_filters);
		return CLOSE_CONNECTION;
	}
	why = topic_limit_error(ed->topic);
	if(why){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: client '%s' subscription to '%.300s' refused: the filter %s (AWS IoT quota)",
				client_id, ed->topic, why);
		return MOSQ_ERR_ACL_DENIED;
	}
	if(is_internal(filter)) return MOSQ_ERR_ACL_DENIED;
	if(!policy_allows(gr, POL_SUBSCRIBE, "topicfilter/", ed->topic)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: client '%s' subscription to '%.300s' refused: its policies do not allow iot:Subscribe on it",
				client_id, ed->topic);
		return MOSQ_ERR_ACL_DENIED;
	}
	if(c && !sub_find(c, filter) && c->nsubs >= AWS_MAX_SUBSCRIPTIONS){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: client '%s' subscription to '%.300s' refused: it holds %d subscriptions, AWS IoT's limit per connection",
				client_id, ed->topic, AWS_MAX_SUBSCRIPTIONS);
		return MOSQ_ERR_ACL_DENIED;
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *client_id = mosquitto_client_id(ed->client);
	struct client *c;
	struct grant *gr;
	bool live;
	int rc;

	(void)event;
	(void)userdata;
	if(!client_id || !ed->topic) return MOSQ_ERR_ACL_DENIED;
	gr = grant_of(ed->client, &c);
	live = c != NULL;
	if(!gr) return MOSQ_ERR_ACL_DENIED;
	if(gr->role == ROLE_NONE){
		if(live){
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					"iotsim: client '%s' (certificate %s) is no longer allowed to connect; disconnecting it",
					client_id, gr->cert_id);
			kick_later(client_id, c->serial);
		}
		return MOSQ_ERR_ACL_DENIED;
	}
	switch(ed->access){
		case MOSQ_ACL_WRITE:
			return acl_write(c, gr, client_id, ed, live);
		case MOSQ_ACL_SUBSCRIBE:
			rc = acl_subscribe(c, gr, client_id, ed);
			if(rc == MOSQ_ERR_SUCCESS && c) sub_add(c, ed->topic, ed->qos);
			return rc;
		case MOSQ_ACL_UNSUBSCRIBE:
			if(c) sub_remove(c, ed->topic);
			return MOSQ_ERR_SUCCESS;
		case MOSQ_ACL_READ:
			if(gr->role == ROLE_SERVICE) return MOSQ_ERR_SUCCESS;
			if(is_internal(ed->topic)) return MOSQ_ERR_ACL_DENIED;
			if(!policy_allows(gr, POL_RECEIVE, "topic/", ed->topic)) return MOSQ_ERR_ACL_DENIED;
			return publish_rate_ok(c, "to it on", ed->topic) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

/* iotsim/reply/<hex client id>/<serial>/<response topic> from the service. */
static void deliver_reply(const char *rest, const struct mosquitto_evt_message *ed)
{
	const char *end, *topic;
	char *client_id = hex_client_id(rest, &end);
	struct client *c;
	uint64_t serial = 0;
	int qos, rc;

	if(!client_id || end[0] != '/' || !parse_serial(end + 1, &serial, &end)
			|| end[0] != '/' || end[1] == '\0'){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"iotsim: dropped reply on malformed topic '%.300s'; expected iotsim/reply/<hex client id>/<connection>/<topic>",
				ed->topic);
		free(client_id);
		return;
	}
	topic = end + 1;
	if(mosquitto_pub_topic_check(topic) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"iotsim: dropped reply to '%s': '%.300s' is not a valid topic to publish to",
				client_id, topic);
		free(client_id);
		return;
	}
	c = client_find(client_id, false);
	if(!c || !c->owner || c->serial != serial){
		mosquitto_log_printf(MOSQ_LOG_INFO,
				"iotsim: reply on '%.300s' not delivered: connection %" PRIu64 " of client '%s' is gone",
				topic, serial, client_id);
		free(client_id);
		return;
	}
	grant_refresh(&c->grant, c->id);
	if(!policy_allows(&c->grant, POL_RECEIVE, "topic/", topic)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotsim: reply on '%.300s' not delivered: the policies of client '%s' do not allow iot:Receive on it",
				topic, client_id);
		free(client_id);
		return;
	}
	if(!publish_rate_ok(c, "to it on", topic)){
		free(client_id);
		return;
	}
	qos = sub_match_qos(c, topic);
	if(qos < 0){
		mosquitto_log_printf(MOSQ_LOG_INFO,
				"iotsim: reply on '%.300s' not delivered: client '%s' is not subscribed to it",
				topic, client_id);
		free(client_id);
		return;
	}
	rc = mosquitto_broker_publish_copy(client_id, topic, (int)ed->payloadlen, ed->payload,
			qos > 1 ? 1 : qos, false, NULL);
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "iotsim: could not queue reply to '%s' on '%.300s' (error %d)",
				client_id, topic, rc);
	}else{
		replied_add(client_id);
	}
	free(client_id);
}

/* iotsim/kick/<hex client id>/<serial> from the service. */
static void kick_request(const char *rest, const char *full_topic)
{
	const char *end;
	char *client_id = hex_client_id(rest, &end);
	uint64_t serial = 0;

	if(!client_id || end[0] != '/' || !parse_serial(end + 1, &serial, &end) || end[0] != '\0'){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"iotsim: dropped kick on malformed topic '%.300s'; expected iotsim/kick/<hex client id>/<connection>",
				full_topic);
		free(client_id);
		return;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			"iotsim: disconnecting client '%s' (connection %" PRIu64 ") at the service's request",
			client_id, serial);
	kick_later(client_id, serial);
	free(client_id);
}

/* <prefix><hex(client id)>/<serial>/<certificateId>/<topic> for the service,
 * allocated with mosquitto_malloc; NULL when it would exceed MAX_TOPIC_LEN or
 * memory runs out. */
static char *internal_topic(const char *prefix, const struct client *c, const char *topic)
{
	char serial[24];
	size_t prefix_len = strlen(prefix), id_len = strlen(c->id), topic_len = strlen(topic), serial_len;
	size_t len;
	char *out, *p;

	serial_len = (size_t)snprintf(serial, sizeof(serial), "%" PRIu64, c->serial);
	len = prefix_len + 2 * id_len + 1 + serial_len + 1 + ID_HEX_LEN + 1 + topic_len;
	if(id_len == 0 || len > MAX_TOPIC_LEN || !(out = mosquitto_malloc(len + 1))) return NULL;
	p = out;
	memcpy(p, prefix, prefix_len);
	p += prefix_len;
	hex_encode((const unsigned char *)c->id, id_len, p);
	p += 2 * id_len;
	*p++ = '/';
	memcpy(p, serial, serial_len);
	p += serial_len;
	*p++ = '/';
	memcpy(p, c->grant.cert_id, ID_HEX_LEN);
	p += ID_HEX_LEN;
	*p++ = '/';
	memcpy(p, topic, topic_len + 1);
	return out;
}

/* $aws/... from a client -> iotsim/req/<hex id>/<serial>/<cert id>/<topic> */
static int rewrite_request(struct mosquitto_evt_message *ed, const struct client *c)
{
	char *topic = internal_topic("iotsim/req/", c, ed->topic);

	if(!topic){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"iotsim: dropped request from '%s' on '%.300s': no room for its internal topic",
				c->id, ed->topic);
		return DROP_MESSAGE;
	}
	/* mosquitto 2.0 takes the new pointer without freeing the old topic. */
	mosquitto_free(ed->topic);
	ed->topic = topic;
	/* A request is an event, never state: a retained one would be replayed
	 * to the service on every resubscribe. */
	ed->retain = false;
	return MOSQ_ERR_SUCCESS;
}

/* AWS IoT's rules engine sees every message a device publishes: a copy goes
 * to the service on iotsim/rule/<hex id>/<serial>/<cert id>/<topic> (the
 * certificate id is what the rules' principal() gives), and the message itself
 * is routed as usual. publish_copy duplicates topic and payload. */
static void forward_to_rules(const struct mosquitto_evt_message *ed, const struct client *c)
{
	char *topic = internal_topic("iotsim/rule/", c, ed->topic);
	int rc;

	if(!topic){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"iotsim: the rules engine misses a message from '%s' on '%.300s': no room for its internal topic",
				c->id, ed->topic);
		return;
	}
	rc = mosquitto_broker_publish_copy(NULL, topic, (int)ed->payloadlen, ed->payload, 1, false, NULL);
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "iotsim: could not queue a message from '%s' for the rules engine (error %d)",
				c->id, rc);
	}
	mosquitto_free(topic);
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	struct client *c = NULL;
	struct grant *gr = ed->topic ? grant_of(ed->client, &c) : NULL;
	const char *rest;

	(void)event;
	(void)userdata;
	/* No client id, no topic, or no rights: the ACL check has already
	 * denied it; never route it. */
	if(!gr || gr->role == ROLE_NONE) return DROP_MESSAGE;
	if(gr->role == ROLE_SERVICE){
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
	if(!strncmp(ed->topic, "$aws/", 5)){
		if(!c) return DROP_MESSAGE; /* a Will: no connection left to answer */
		return rewrite_request(ed, c);
	}
	if(c) forward_to_rules(ed, c); /* a Will (no connection left) reaches subscribers only */
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	kicks_run();
	/* mosquitto routes the replies queued so far at the start of its next
	 * loop iteration, before it reads any new CONNECT. */
	replied_clear();
	g.tick++;
	recent_sweep();
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

static bool arn_part_ok(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && n <= 64 && strspn(s, "0123456789abcdefghijklmnopqrstuvwxyz-") == n;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	const char *region = "local", *account = "000000000000";
	char *end;
	long v;
	int i, rc;

	(void)userdata;
	memset(&g, 0, sizeof(g));
	g.pid = identifier;
	g.connect_interval_ms = AWS_CONNECT_INTERVAL_MS;
	g.publish_rate = AWS_PUBLISH_RATE;
	g.subscribe_filters = AWS_SUBSCRIBE_FILTERS;
	for(i = 0; i < option_count; i++){
		if(!options[i].value || !options[i].value[0]) continue;
		if(!strcmp(options[i].key, "principals_dir")){
			free(g.dir);
			g.dir = strdup(options[i].value);
			if(!g.dir) return MOSQ_ERR_NOMEM;
		}else if(!strcmp(options[i].key, "region")){
			region = options[i].value;
		}else if(!strcmp(options[i].key, "account")){
			account = options[i].value;
		}else if(!strcmp(options[i].key, "connect_interval_ms") || !strcmp(options[i].key, "publish_rate")
				|| !strcmp(options[i].key, "subscribe_filters")){
			errno = 0;
			v = strtol(options[i].value, &end, 10);
			if(errno || *end || v < 0 || v > 1000000){
				mosquitto_log_printf(MOSQ_LOG_ERR, "iotsim: plugin_opt_%s must be a whole number 0-1000000, got '%s'",
						options[i].key, options[i].value);
				free(g.dir);
				return MOSQ_ERR_INVAL;
			}
			if(options[i].key[0] == 'c') g.connect_interval_ms = v;
			else if(options[i].key[0] == 'p') g.publish_rate = (double)v;
			else g.subscribe_filters = (unsigned)v;
		}
	}
	if(!g.dir){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"iotsim: plugin_opt_principals_dir is not set; add 'plugin_opt_principals_dir <STATE>/principals' to mosquitto.conf");
		return MOSQ_ERR_INVAL;
	}
	if(!arn_part_ok(region) || !arn_part_ok(account)){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"iotsim: plugin_opt_region and plugin_opt_account must be 1-64 of [a-z0-9-]");
		free(g.dir);
		return MOSQ_ERR_INVAL;
	}
	g.arn_prefix_len = strlen("arn:aws:iot:") + strlen(region) + 1 + strlen(account) + 1;
	g.arn_prefix = malloc(g.arn_prefix_len + 1);
	if(!g.arn_prefix){
		free(g.dir);
		return MOSQ_ERR_NOMEM;
	}
	snprintf(g.arn_prefix, g.arn_prefix_len + 1, "arn:aws:iot:%s:%s:", region, account);
	if((rc = mosquitto_callback_register(g.pid, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL))
			|| (rc = mosquitto_callback_register(g.pid, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL))
			|| (rc = mosquitto_callback_register(g.pid, MOSQ_EVT_MESSAGE, on_message, NULL, NULL))
			|| (rc = mosquitto_callback_register(g.pid, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL))
			|| (rc = mosquitto_callback_register(g.pid, MOSQ_EVT_TICK, on_tick, NULL, NULL))){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotsim: cannot register plugin callbacks (error %d)", rc);
		return rc;
	}
	mosquitto_log_printf(MOSQ_LOG_INFO, "iotsim: plugin ready; principals in %s, resources %s...; "
			"quotas: CONNECT every %ld ms per client id, %g publishes/s per connection, %u filters per SUBSCRIBE "
			"(0: off)", g.dir, g.arn_prefix, g.connect_interval_ms, g.publish_rate, g.subscribe_filters);
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
			client_free(c);
		}
	}
	while((k = g.kicks)){
		g.kicks = k->next;
		free(k->id);
		free(k);
	}
	replied_clear();
	recent_free();
	grant_clear(&g.gone_grant);
	free(g.dir);
	free(g.arn_prefix);
	memset(&g, 0, sizeof(g));
	return MOSQ_ERR_SUCCESS;
}
