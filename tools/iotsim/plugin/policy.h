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
#define POL_ALL (POL_CONNECT | POL_PUBLISH | POL_SUBSCRIBE | POL_RECEIVE)

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
 * Parse a principal file (see tools/iotsim/policy.py, render_principal):
 *
 *     iotsim-principal 1
 *     status <STATUS>
 *     default                      rules for a client id that names no attached thing
 *     allow|deny <mask> <pattern>
 *     thing <name>                 rules when the client id is <name>, a thing
 *     allow|deny <mask> <pattern>  attached to this certificate
 *
 * Keeps the status word in status (size status_len) and the rules of the
 * section that applies to client_id in set. Returns false when malformed.
 */
static inline bool pol_parse_principal(char *text, const char *client_id, char *status,
		size_t status_len, struct pol_set *set)
{
	char *line, *next, *rest, *end;
	bool have_thing = false, in_thing = false, in_default = false, header = false;
	struct pol_set dflt = {NULL, 0}, thing = {NULL, 0};
	unsigned long mask;
	bool deny;

	status[0] = '\0';
	for(line = text; line && *line; line = next){
		next = strchr(line, '\n');
		if(next) *next++ = '\0';
		if(!header){
			if(strcmp(line, "iotsim-principal 1")) goto bad;
			header = true;
			continue;
		}
		if(!strncmp(line, "status ", 7)){
			if(strlen(line + 7) >= status_len) goto bad;
			strcpy(status, line + 7);
		}else if(!strcmp(line, "default")){
			in_default = true;
			in_thing = false;
		}else if(!strncmp(line, "thing ", 6)){
			in_default = false;
			in_thing = !have_thing && !strcmp(line + 6, client_id);
			if(in_thing) have_thing = true;
		}else if(!strncmp(line, "allow ", 6) || !strncmp(line, "deny ", 5)){
			deny = line[0] == 'd';
			rest = line + (deny ? 5 : 6);
			mask = strtoul(rest, &end, 10);
			if(end == rest || *end != ' ') goto bad;
			if(in_thing){
				if(!pol_set_add(&thing, deny, (unsigned)mask, end + 1, client_id)) goto bad;
			}else if(in_default){
				if(!pol_set_add(&dflt, deny, (unsigned)mask, end + 1, client_id)) goto bad;
			}
		}else if(line[0]){
			goto bad;
		}
	}
	if(!header || !status[0]) goto bad;
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
