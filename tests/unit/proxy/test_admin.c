/* Tests of the admin listener: real sockets against a loop stepped by the test. */
#include "admin.h"

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"

#define RESPONSE_MAX 65536

static struct ev_loop *loop;
static struct admin *adm;
static uint16_t port;

enum end {
    END_EOF,     /* the server closed (after its answer, if any) */
    END_RESET,   /* the server reset the connection */
    END_TIMEOUT, /* the connection is still open when the wait ended */
};

struct response {
    enum end end;
    char raw[RESPONSE_MAX];
    size_t len;
    int status;
    const char *body; /* into raw */
    size_t body_len;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs the server's loop for about seconds, without ever blocking in it. */
static void pump(double seconds)
{
    double until = now() + seconds;
    do {
        ev_run(loop, EVRUN_NOWAIT);
        (void)poll(NULL, 0, 2);
    } while (now() < until);
}

/*
 * The server's send(2), replaced for this executable: a definition here takes
 * precedence over libc's for admin.c, which is linked in statically. With
 * send_chunk set, every other call fails with EAGAIN and the others send at most
 * send_chunk bytes, so the partial-write path runs however large the kernel's
 * buffers are. The test's own client writes with sendto(2), which is not affected.
 */
static size_t send_chunk;
static unsigned send_calls, send_eagains;

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    if (send_chunk > 0) {
        if (send_calls++ % 2 == 0) {
            send_eagains++;
            errno = EAGAIN;
            return -1;
        }
        if (len > send_chunk)
            len = send_chunk;
    }
    return sendto(fd, buf, len, flags, NULL, 0);
}

static void setup(void)
{
    send_chunk = 0;
    loop = ev_loop_new(EVFLAG_AUTO);
    ck_assert_ptr_nonnull(loop);
    struct config_listener cl = {.address_text = (char *)"127.0.0.1:0"};
    struct sockaddr_in *sin = (struct sockaddr_in *)&cl.addr;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin->sin_port = 0;
    cl.addr_len = sizeof(*sin);
    const char *error = NULL;
    adm = admin_open(loop, &cl, &error);
    ck_assert_msg(adm != NULL, "admin_open: %s", error);
    port = admin_port(adm);
    ck_assert_uint_ne(port, 0);
}

static void teardown(void)
{
    admin_free(&adm);
    ck_assert_ptr_null(adm);
    ev_loop_destroy(loop);
    loop = NULL;
}

/* A blocking client socket with timeouts, so a bug cannot hang the test. */
static int client_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct timeval tv = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* Loopback connects complete from the backlog, before the loop accepts. */
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    return fd;
}

static void client_send(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = sendto(fd, data, len, MSG_NOSIGNAL, NULL, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) /* the server may close on us (oversized request): not the sender's fault */
            return;
        data += n;
        len -= (size_t)n;
    }
}

/* Reads what has arrived without blocking; returns false once the connection ended. */
static bool client_poll(int fd, struct response *r)
{
    for (;;) {
        if (r->len == sizeof(r->raw))
            ck_abort_msg("response too large");
        ssize_t n = recv(fd, r->raw + r->len, sizeof(r->raw) - r->len, MSG_DONTWAIT);
        if (n > 0) {
            r->len += (size_t)n;
            continue;
        }
        if (n == 0) {
            r->end = END_EOF;
            return false;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            r->end = END_TIMEOUT;
            return true;
        }
        ck_assert_msg(errno == ECONNRESET, "recv: %s", strerror(errno));
        r->end = END_RESET;
        return false;
    }
}

/* Steps the loop and reads until the server closes or seconds pass. */
static void client_wait(int fd, struct response *r, double seconds)
{
    double until = now() + seconds;
    while (client_poll(fd, r) && now() < until) {
        ev_run(loop, EVRUN_NOWAIT);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        (void)poll(&p, 1, 2);
    }
}

/* Splits raw into status and body, checking the framing every answer must have. */
static void parse_response(struct response *r)
{
    r->raw[r->len < sizeof(r->raw) ? r->len : sizeof(r->raw) - 1] = '\0';
    ck_assert_msg(r->len > 12 && memcmp(r->raw, "HTTP/1.1 ", 9) == 0, "no status line: '%.40s'",
                  r->raw);
    r->status = atoi(r->raw + 9);
    const char *end = strstr(r->raw, "\r\n\r\n");
    ck_assert_ptr_nonnull(end);
    r->body = end + 4;
    r->body_len = r->len - (size_t)(r->body - r->raw);
    ck_assert_msg(strstr(r->raw, "\r\nConnection: close\r\n") < end, "no Connection: close");
    const char *cl = strstr(r->raw, "\r\nContent-Length: ");
    ck_assert_msg(cl != NULL && cl < end, "no Content-Length");
}

static const char *header_value(const struct response *r, const char *name)
{
    static char value[256];
    char needle[64];
    snprintf(needle, sizeof(needle), "\r\n%s: ", name);
    const char *h = strstr(r->raw, needle);
    if (h == NULL || h > r->body)
        return NULL;
    h += strlen(needle);
    size_t n = strcspn(h, "\r");
    snprintf(value, sizeof(value), "%.*s", (int)n, h);
    return value;
}

static struct response *exchange_len(const char *request, size_t len)
{
    static struct response r;
    memset(&r, 0, sizeof(r));
    int fd = client_connect();
    client_send(fd, request, len);
    client_wait(fd, &r, 3);
    close(fd);
    ck_assert_msg(r.end == END_EOF, "connection not closed cleanly after '%.30s'", request);
    parse_response(&r);
    return &r;
}

static struct response *exchange(const char *request)
{
    return exchange_len(request, strlen(request));
}

/* The status of a request whose answer has no body to look at. */
static int status_of(const char *request)
{
    struct response *r = exchange(request);
    ck_assert_uint_eq(r->body_len, strtoul(header_value(r, "Content-Length"), NULL, 10));
    return r->status;
}

START_TEST(test_healthz)
{
    struct response *r = exchange("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    ck_assert_int_eq(r->status, 200);
    ck_assert_uint_eq(r->body_len, 3);
    ck_assert_mem_eq(r->body, "ok\n", 3);
    ck_assert_str_eq(header_value(r, "Content-Length"), "3");

    r = exchange("HEAD /healthz HTTP/1.0\r\n\r\n");
    ck_assert_int_eq(r->status, 200);
    ck_assert_uint_eq(r->body_len, 0);
    ck_assert_str_eq(header_value(r, "Content-Length"), "3");

    /* Bare LF line ends, an empty line before the request, absolute-form, a query. */
    ck_assert_int_eq(status_of("GET /healthz HTTP/1.0\n\n"), 200);
    ck_assert_int_eq(status_of("\r\nGET /healthz HTTP/1.1\r\n\r\n"), 200);
    ck_assert_int_eq(status_of("GET http://localhost:9110/healthz HTTP/1.1\r\n\r\n"), 200);
    ck_assert_int_eq(status_of("GET /healthz?verbose=1 HTTP/1.1\r\n\r\n"), 200);
}
END_TEST

/* Every line of the body is a comment or "name[{labels}] value". */
static void check_exposition(const char *body, size_t len)
{
    ck_assert_uint_gt(len, 0);
    ck_assert_int_eq(body[len - 1], '\n');
    size_t samples = 0;
    for (const char *line = body; line < body + len;) {
        const char *nl = memchr(line, '\n', (size_t)(body + len - line));
        ck_assert_ptr_nonnull(nl);
        char buf[512];
        ck_assert_int_lt(nl - line, (long)sizeof(buf));
        memcpy(buf, line, (size_t)(nl - line));
        buf[nl - line] = '\0';
        line = nl + 1;
        if (strncmp(buf, "# HELP popgate_", 15) == 0 || strncmp(buf, "# TYPE popgate_", 15) == 0)
            continue;
        ck_assert_msg(strncmp(buf, "popgate_", 8) == 0, "line '%s'", buf);
        const char *sp = strrchr(buf, ' ');
        ck_assert_ptr_nonnull(sp);
        char *end;
        (void)strtod(sp + 1, &end);
        ck_assert_msg(end != sp + 1 && *end == '\0', "value in '%s'", buf);
        samples++;
    }
    ck_assert_uint_gt(samples, 40);
}

START_TEST(test_metrics)
{
    ck_assert_int_eq(metrics_init(2), 0);
    metrics_attach(0);
    metrics_session_start();
    metrics_bytes_retrieved(12345);
    metrics_login(METRICS_LOGIN_OK, 0.02);

    struct response *r = exchange("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
    ck_assert_int_eq(r->status, 200);
    ck_assert_str_eq(header_value(r, "Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
    ck_assert_uint_eq(r->body_len, strtoul(header_value(r, "Content-Length"), NULL, 10));
    check_exposition(r->body, r->body_len);
    ck_assert_ptr_nonnull(strstr(r->body, "\npopgate_retrieved_bytes_total 12345\n"));
    ck_assert_ptr_nonnull(strstr(r->body, "\npopgate_sessions_active 1\n"));
    ck_assert_ptr_nonnull(
        strstr(r->body, "\npopgate_login_duration_seconds_bucket{le=\"0.025\"} 1\n"));

    /* The answer follows the counters. */
    metrics_bytes_retrieved(1);
    r = exchange("GET /metrics?name[]=x HTTP/1.0\r\n\r\n");
    ck_assert_int_eq(r->status, 200);
    ck_assert_ptr_nonnull(strstr(r->body, "\npopgate_retrieved_bytes_total 12346\n"));

    r = exchange("HEAD /metrics HTTP/1.1\r\n\r\n");
    ck_assert_int_eq(r->status, 200);
    ck_assert_uint_eq(r->body_len, 0);
    ck_assert_uint_gt(strtoul(header_value(r, "Content-Length"), NULL, 10), 1000);
    metrics_retire(0);
}
END_TEST

/* The answer arrives whole when the server can only write it in pieces, to a client that
 * reads a little at a time. */
START_TEST(test_partial_writes)
{
    send_chunk = 100;
    send_calls = send_eagains = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    int small = 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    client_send(fd, "GET /metrics HTTP/1.1\r\n\r\n", 25);
    pump(0.05);
    static struct response r;
    memset(&r, 0, sizeof(r));
    double until = now() + 3;
    for (;;) {
        ev_run(loop, EVRUN_NOWAIT);
        ssize_t n = recv(fd, r.raw + r.len, 200, MSG_DONTWAIT);
        if (n == 0)
            break;
        if (n > 0)
            r.len += (size_t)n;
        ck_assert(n > 0 || errno == EAGAIN);
        ck_assert(now() < until);
        (void)poll(NULL, 0, 1);
    }
    close(fd);
    send_chunk = 0;
    parse_response(&r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(r.body_len, strtoul(header_value(&r, "Content-Length"), NULL, 10));
    check_exposition(r.body, r.body_len);
    ck_assert_uint_gt(send_eagains, 20);
}
END_TEST

START_TEST(test_not_found)
{
    ck_assert_int_eq(status_of("GET /nope HTTP/1.1\r\n\r\n"), 404);
    ck_assert_int_eq(status_of("GET / HTTP/1.1\r\n\r\n"), 404);
    ck_assert_int_eq(status_of("GET /metricsx HTTP/1.1\r\n\r\n"), 404);
    ck_assert_int_eq(status_of("GET /healthz/ HTTP/1.1\r\n\r\n"), 404);
    ck_assert_int_eq(status_of("GET /HEALTHZ HTTP/1.1\r\n\r\n"), 404);
    ck_assert_int_eq(status_of("POST /nope HTTP/1.1\r\n\r\n"), 404);
    struct response *r = exchange("HEAD /nope HTTP/1.1\r\n\r\n");
    ck_assert_int_eq(r->status, 404);
    ck_assert_uint_eq(r->body_len, 0);
}
END_TEST

START_TEST(test_method_not_allowed)
{
    struct response *r = exchange("POST /metrics HTTP/1.1\r\nContent-Type: text/plain\r\n"
                                  "Content-Length: 11\r\n\r\nhello world");
    ck_assert_int_eq(r->status, 405);
    ck_assert_str_eq(header_value(r, "Allow"), "GET, HEAD");
    ck_assert_int_eq(status_of("DELETE /healthz HTTP/1.1\r\n\r\n"), 405);
    ck_assert_int_eq(status_of("get /healthz HTTP/1.1\r\n\r\n"), 405); /* methods are cased */
    ck_assert_int_eq(status_of("PUT /metrics?x HTTP/1.0\r\n\r\n"), 405);
}
END_TEST

START_TEST(test_bad_request)
{
    ck_assert_int_eq(status_of("garbage\r\n\r\n"), 400);
    ck_assert_int_eq(status_of("GET /healthz\r\n\r\n"), 400);
    ck_assert_int_eq(status_of("GET /healthz HTTP/2.0\r\n\r\n"), 400);
    ck_assert_int_eq(status_of("GET /healthz HTTP/1.10\r\n\r\n"), 400);
    ck_assert_int_eq(status_of("GET /healthz http/1.1\r\n\r\n"), 400);
    ck_assert_int_eq(status_of("GET  /healthz HTTP/1.1\r\n\r\n"), 400);
    ck_assert_int_eq(status_of("GET healthz HTTP/1.1\r\n\r\n"), 400);
    ck_assert_int_eq(status_of("GET /heal\x01thz HTTP/1.1\r\n\r\n"), 400);
    ck_assert_int_eq(status_of("G(T /healthz HTTP/1.1\r\n\r\n"), 400);
    /* A TLS ClientHello, NUL bytes and all. */
    ck_assert_int_eq(exchange_len("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n", 13)->status,
                     400);
    ck_assert_int_eq(exchange_len("GET /healthz\0 HTTP/1.1\r\n\r\n", 26)->status, 400);

    /* A malformed request line is answered at once, without waiting for the headers. */
    static struct response r;
    memset(&r, 0, sizeof(r));
    int fd = client_connect();
    client_send(fd, "hello there\r\n", 13);
    client_wait(fd, &r, 1);
    close(fd);
    ck_assert_int_eq(r.end, END_EOF);
    parse_response(&r);
    ck_assert_int_eq(r.status, 400);
}
END_TEST

START_TEST(test_split_request)
{
    static const char *const parts[] = {"G", "ET /hea", "lthz HTTP/1.1\r", "\nHost: x\r\n", "\r"};
    static struct response r;
    memset(&r, 0, sizeof(r));
    int fd = client_connect();
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        client_send(fd, parts[i], strlen(parts[i]));
        client_wait(fd, &r, 0.15);
        ck_assert_msg(r.end == END_TIMEOUT && r.len == 0, "answer before the request ended");
    }
    client_send(fd, "\n", 1);
    client_wait(fd, &r, 2);
    close(fd);
    ck_assert_int_eq(r.end, END_EOF);
    parse_response(&r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_mem_eq(r.body, "ok\n", 3);
}
END_TEST

static char *request_with_header(size_t header_bytes)
{
    const char *start = "GET /healthz HTTP/1.1\r\nX-Filler: ";
    char *req = malloc(header_bytes + 1);
    ck_assert_ptr_nonnull(req);
    size_t n = strlen(start);
    memcpy(req, start, n);
    memset(req + n, 'a', header_bytes - n - 4);
    memcpy(req + header_bytes - 4, "\r\n\r\n", 5);
    return req;
}

START_TEST(test_oversized_request)
{
    /* 8 KiB exactly still fits. */
    char *req = request_with_header(8192);
    ck_assert_int_eq(status_of(req), 200);
    free(req);

    req = request_with_header(9 * 1024);
    static struct response r;
    memset(&r, 0, sizeof(r));
    int fd = client_connect();
    client_send(fd, req, strlen(req));
    free(req);
    client_wait(fd, &r, 2);
    close(fd);
    ck_assert_int_ne(r.end, END_TIMEOUT);
    ck_assert_uint_eq(r.len, 0);

    /* Endless bytes without a line end: dropped at the cap too. */
    memset(&r, 0, sizeof(r));
    fd = client_connect();
    char junk[4096];
    memset(junk, 'x', sizeof(junk));
    for (int i = 0; i < 3; i++) {
        client_send(fd, junk, sizeof(junk));
        pump(0.02);
    }
    client_wait(fd, &r, 2);
    close(fd);
    ck_assert_int_ne(r.end, END_TIMEOUT);
    ck_assert_uint_eq(r.len, 0);
}
END_TEST

START_TEST(test_slow_clients_time_out)
{
    static struct response silent, partial;
    memset(&silent, 0, sizeof(silent));
    memset(&partial, 0, sizeof(partial));
    int fd_silent = client_connect();
    int fd_partial = client_connect();
    client_send(fd_partial, "GET /healthz HTTP/1.1\r\nHost: x\r\n", 32);
    double start = now();
    bool silent_open = true, partial_open = true;
    double silent_closed = 0, partial_closed = 0;
    while ((silent_open || partial_open) && now() - start < 8) {
        pump(0.01);
        if (silent_open && !client_poll(fd_silent, &silent)) {
            silent_open = false;
            silent_closed = now() - start;
        }
        if (partial_open && !client_poll(fd_partial, &partial)) {
            partial_open = false;
            partial_closed = now() - start;
        }
    }
    close(fd_silent);
    close(fd_partial);
    ck_assert_msg(!silent_open && !partial_open, "slow clients still connected after 8 s");
    ck_assert_uint_eq(silent.len, 0);
    ck_assert_uint_eq(partial.len, 0);
    ck_assert_double_ge(silent_closed, 4.5);
    ck_assert_double_le(silent_closed, 6.5);
    ck_assert_double_ge(partial_closed, 4.5);
    ck_assert_double_le(partial_closed, 6.5);
}
END_TEST

START_TEST(test_connection_limit)
{
    enum { N = 64 + 1 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = client_connect();
        ev_run(loop, EVRUN_NOWAIT); /* accept in connect order, never letting the backlog fill */
    }
    pump(0.2);
    static struct response r;
    for (int i = 0; i < N; i++) {
        memset(&r, 0, sizeof(r));
        bool open = client_poll(fds[i], &r);
        /* Accepted in connect order: the first 64 wait for a request, the last is refused. */
        ck_assert_msg(open == (i < N - 1), "connection %d %s", i, open ? "open" : "closed");
        ck_assert_uint_eq(r.len, 0);
    }
    /* A request on an accepted one is still served. */
    client_send(fds[0], "GET /healthz HTTP/1.1\r\n\r\n", 25);
    memset(&r, 0, sizeof(r));
    client_wait(fds[0], &r, 2);
    parse_response(&r);
    ck_assert_int_eq(r.status, 200);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    pump(0.2);
    /* Their places are free again. */
    ck_assert_int_eq(status_of("GET /healthz HTTP/1.1\r\n\r\n"), 200);
}
END_TEST

START_TEST(test_free_with_open_connections)
{
    int fd = client_connect();
    client_send(fd, "GET /hea", 8);
    pump(0.05);
    admin_free(&adm);
    static struct response r;
    memset(&r, 0, sizeof(r));
    client_wait(fd, &r, 1);
    close(fd);
    ck_assert_int_ne(r.end, END_TIMEOUT);
    ck_assert_uint_eq(r.len, 0);
}
END_TEST

START_TEST(test_port_in_use)
{
    struct config_listener cl = {.address_text = (char *)"127.0.0.1"};
    struct sockaddr_in *sin = (struct sockaddr_in *)&cl.addr;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin->sin_port = htons(port);
    cl.addr_len = sizeof(*sin);
    const char *error = NULL;
    struct admin *second = admin_open(loop, &cl, &error);
    ck_assert_ptr_null(second);
    ck_assert_ptr_nonnull(error);
    ck_assert_str_eq(error, strerror(EADDRINUSE));
}
END_TEST

static Suite *admin_suite(void)
{
    Suite *s = suite_create("admin");
    TCase *tc = tcase_create("http");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_healthz);
    tcase_add_test(tc, test_metrics);
    tcase_add_test(tc, test_partial_writes);
    tcase_add_test(tc, test_not_found);
    tcase_add_test(tc, test_method_not_allowed);
    tcase_add_test(tc, test_bad_request);
    tcase_add_test(tc, test_split_request);
    tcase_add_test(tc, test_oversized_request);
    tcase_add_test(tc, test_slow_clients_time_out);
    tcase_add_test(tc, test_connection_limit);
    tcase_add_test(tc, test_free_with_open_connections);
    tcase_add_test(tc, test_port_in_use);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(admin_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
