/* libFuzzer target for config_load: any bytes give a config or well-formed error lines.
 *
 *   clang -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -g -O1 \
 *       -fsanitize=fuzzer,address,undefined -Iproxy tests/fuzz/fuzz_config.c proxy/config.c \
 *       proxy/tls.c proxy/user_map.c mapping/uidl.c -Imapping \
 *       $(pkg-config --cflags --libs jansson openssl) -o fuzz_config
 *   ./fuzz_config -max_total_time=60 tests/fuzz/seeds/config
 */
#include "config.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * config_load resolves upstream names. Fuzzed names must not reach DNS (slow, and a
 * flood of queries), so this binary replaces getaddrinfo with a numeric-only one that
 * also knows "localhost". A definition in the executable wins over libc's.
 */
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    (void)hints;
    union {
        struct sockaddr_in sin;
        struct sockaddr_in6 sin6;
    } sa;
    socklen_t len;
    memset(&sa, 0, sizeof(sa));
    int port = service != NULL ? atoi(service) : 0;
    if (node == NULL)
        return EAI_NONAME;
    if (strcmp(node, "localhost") == 0)
        node = "127.0.0.1";
    if (inet_pton(AF_INET, node, &sa.sin.sin_addr) == 1) {
        sa.sin.sin_family = AF_INET;
        sa.sin.sin_port = htons((uint16_t)port);
        len = sizeof(sa.sin);
    } else if (inet_pton(AF_INET6, node, &sa.sin6.sin6_addr) == 1) {
        sa.sin6.sin6_family = AF_INET6;
        sa.sin6.sin6_port = htons((uint16_t)port);
        len = sizeof(sa.sin6);
    } else {
        return EAI_NONAME;
    }
    struct addrinfo *ai = calloc(1, sizeof(*ai) + sizeof(sa));
    if (ai == NULL)
        return EAI_MEMORY;
    ai->ai_family = ((struct sockaddr *)&sa)->sa_family;
    ai->ai_socktype = SOCK_STREAM;
    ai->ai_addrlen = len;
    ai->ai_addr = (struct sockaddr *)(ai + 1);
    memcpy(ai->ai_addr, &sa, len);
    *res = ai;
    return 0;
}

void freeaddrinfo(struct addrinfo *res)
{
    while (res != NULL) {
        struct addrinfo *next = res->ai_next;
        free(res);
        res = next;
    }
}

static char input_path[] = "/tmp/popgate-fuzz-config-XXXXXX";

static void remove_input(void)
{
    unlink(input_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    int fd = mkstemp(input_path);
    if (fd < 0) {
        perror("mkstemp");
        abort();
    }
    close(fd);
    atexit(remove_input);
    return 0;
}

static void check_errors(const char *errors)
{
    unsigned lines = 0;
    const char *last_line = errors;
    for (const char *p = errors; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        /* One error is one printable line: input bytes arrive escaped. */
        if ((c < 0x20 && c != '\n') || c == 0x7f)
            abort();
        if (c == '\n') {
            lines++;
            if (p[1] != '\0')
                last_line = p + 1;
        }
    }
    if (lines == 0 || errors[strlen(errors) - 1] != '\n')
        abort();
    unsigned count = 0;
    char tail[64];
    /* Every line is one error, except a user map's "N more errors" line, which stands
     * for N: the count is at least the lines above it. */
    if (sscanf(last_line, "popgate: %u error", &count) != 1 || count + 1 < lines)
        abort();
    snprintf(tail, sizeof(tail), " in %s\n", input_path);
    size_t len = strlen(last_line), tail_len = strlen(tail);
    if (len < tail_len || strcmp(last_line + len - tail_len, tail) != 0)
        abort();
}

static void check_config(const struct config *cfg)
{
    if (cfg->nlisteners == 0 || cfg->nupstreams == 0 || cfg->nroutes == 0 ||
        cfg->state_dir == NULL || cfg->state_dir[0] == '\0')
        abort();
    for (size_t i = 0; i < cfg->nlisteners; i++)
        if (cfg->listeners[i].addr_len == 0 || cfg->listeners[i].address_text == NULL)
            abort();
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct config_upstream *u = &cfg->upstreams[i];
        if (u->port == 0 || u->naddrs == 0 || (u->tls != CONFIG_TLS_NONE && u->tls_ctx == NULL) ||
            config_upstream_find(cfg, u->name) != u)
            abort();
    }
    size_t defaults = 0;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct config_route *r = &cfg->routes[i];
        if (r->upstream != config_upstream_find(cfg, r->upstream_name) || r->upstream == NULL)
            abort();
        /* Exactly one selector. */
        if ((int)r->is_default + (r->user != NULL) + (r->domain != NULL) + (r->match != NULL) != 1)
            abort();
        defaults += r->is_default;
    }
    const struct config_limits *l = &cfg->limits;
    if (defaults > 1 || l->idle_timeout < 600 || l->auth_timeout < 10 || l->output_buffer < 4096 ||
        l->max_bad_commands < 1)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FILE *f = fopen(input_path, "wb");
    if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    char *errors = NULL;
    struct config *cfg = config_load(input_path, &errors);
    if ((cfg == NULL) == (errors == NULL))
        abort();
    if (cfg != NULL)
        check_config(cfg);
    else
        check_errors(errors);
    free(errors);
    config_free(&cfg);
    return 0;
}
