/* The admin listener: one HTTP/1.x request per connection, answered from memory, never blocking. */
#include "admin.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"

#define ADMIN_BACKLOG 64
/* A request line and headers larger than this are not a scraper's: the connection closes. */
#define ADMIN_REQUEST_MAX 8192
/* Seconds a client gets to send its whole request, and again to take the answer. */
#define ADMIN_TIMEOUT 5.0
/* Open admin connections; a connection accepted beyond this is closed at once. */
#define ADMIN_MAX_CONNS    64
#define ADMIN_ACCEPT_BURST 16
#define ADMIN_EMFILE_PAUSE 0.5
/* After the answer, unread request bytes are drained for a while before close(), so the
 * kernel does not answer them with a RST that could destroy the answer in flight. */
#define ADMIN_LINGER_TIMEOUT 2.0
#define ADMIN_LINGER_MAX     65536
#define ADMIN_METHOD_MAX     32

#define TEXT_PLAIN      "text/plain; charset=utf-8"
#define PROMETHEUS_TEXT "text/plain; version=0.0.4; charset=utf-8"

enum admin_conn_state {
    ADMIN_READING,
    ADMIN_WRITING,
    ADMIN_LINGERING,
};

struct admin_conn {
    struct admin *admin;
    struct admin_conn *prev, *next;
    int fd;
    enum admin_conn_state state;
    ev_io io;
    ev_timer timer;
    size_t in_len;
    size_t drained;
    char *out;
    size_t out_len, out_off;
    char in[ADMIN_REQUEST_MAX];
};

struct admin {
    struct ev_loop *loop;
    int fd;
    uint16_t port;
    ev_io io;
    ev_timer pause;
    struct admin_conn *conns;
    unsigned nconns;
};

enum parse_result {
    PARSE_MORE,
    PARSE_DONE,
    PARSE_BAD,
};

struct request {
    bool is_get_or_head;
    bool is_head;
    const char *path; /* into the connection's buffer; not NUL-terminated */
    size_t path_len;
};

static int set_nonblock_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -1;
    return fcntl(fd, F_SETFD, FD_CLOEXEC);
}

static bool is_tchar(unsigned char ch)
{
    /* RFC 9110 token characters */
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* "METHOD SP request-target SP HTTP/1.x" (without its line end). */
static bool parse_request_line(const char *line, size_t len, struct request *r)
{
    size_t i = 0;
    while (i < len && is_tchar((unsigned char)line[i]))
        i++;
    if (i == 0 || i > ADMIN_METHOD_MAX || i >= len || line[i] != ' ')
        return false;
    size_t method_len = i;
    r->is_head = method_len == 4 && memcmp(line, "HEAD", 4) == 0;
    r->is_get_or_head = r->is_head || (method_len == 3 && memcmp(line, "GET", 3) == 0);

    const char *target = line + ++i;
    while (i < len && line[i] > ' ' && line[i] < 0x7f)
        i++;
    size_t target_len = (size_t)(line + i - target);
    if (target_len == 0 || i >= len || line[i] != ' ')
        return false;
    i++;
    /* Exactly "HTTP/1." and one digit; HTTP/2 and later do not start this way. */
    if (len - i != 8 || memcmp(line + i, "HTTP/1.", 7) != 0 || line[len - 1] < '0' ||
        line[len - 1] > '9')
        return false;

    /* absolute-form (RFC 9112 3.2.2): a server must accept it; only the path matters. */
    static const char *const schemes[] = {"http://", "https://"};
    for (size_t s = 0; s < 2; s++) {
        size_t n = strlen(schemes[s]);
        if (target_len >= n && strncasecmp(target, schemes[s], n) == 0) {
            const char *slash = memchr(target + n, '/', target_len - n);
            if (slash == NULL) {
                target = "/";
                target_len = 1;
            } else {
                target_len -= (size_t)(slash - target);
                target = slash;
            }
            break;
        }
    }
    if (target[0] != '/' && !(target_len == 1 && target[0] == '*'))
        return false;
    size_t path_len = 0;
    while (path_len < target_len && target[path_len] != '?' && target[path_len] != '#')
        path_len++;
    r->path = target;
    r->path_len = path_len;
    return true;
}

/*
 * Looks at the bytes received so far. PARSE_BAD as soon as the request line is
 * complete and malformed; PARSE_DONE once the empty line that ends the headers has
 * arrived. Bare LF line ends are accepted as well as CRLF, and empty lines before the
 * request line are skipped (RFC 9112 2.2).
 */
static enum parse_result parse_request(const char *buf, size_t len, struct request *r)
{
    size_t start = 0;
    while (start < len && (buf[start] == '\r' || buf[start] == '\n'))
        start++;
    const char *lf = memchr(buf + start, '\n', len - start);
    if (lf == NULL)
        return PARSE_MORE;
    size_t line_end = (size_t)(lf - buf);
    size_t line_len = line_end - start;
    if (line_len > 0 && buf[start + line_len - 1] == '\r')
        line_len--;
    if (!parse_request_line(buf + start, line_len, r))
        return PARSE_BAD;
    for (size_t i = line_end; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        size_t j = i + 1;
        if (j < len && buf[j] == '\r')
            j++;
        if (j < len && buf[j] == '\n')
            return PARSE_DONE;
    }
    return PARSE_MORE;
}

static void conn_free(struct admin_conn *c)
{
    struct admin *a = c->admin;
    ev_io_stop(a->loop, &c->io);
    ev_timer_stop(a->loop, &c->timer);
    close(c->fd);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    a->nconns--;
    free(c->out);
    free(c);
}

static void conn_watch(struct admin_conn *c, int events, double timeout)
{
    struct ev_loop *loop = c->admin->loop;
    ev_io_stop(loop, &c->io);
    ev_io_set(&c->io, c->fd, events);
    ev_io_start(loop, &c->io);
    ev_timer_stop(loop, &c->timer);
    ev_timer_set(&c->timer, timeout, 0);
    ev_timer_start(loop, &c->timer);
}

/* Drains what the client still sends after the answer; frees c at EOF, error or cap. */
static void conn_linger(struct admin_conn *c)
{
    for (;;) {
        char sink[4096];
        ssize_t n = recv(c->fd, sink, sizeof(sink), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0 || (c->drained += (size_t)n) > ADMIN_LINGER_MAX) {
            conn_free(c);
            return;
        }
    }
}

/* Sends what is left of the answer; then half-closes and lingers. May free c. */
static void conn_write(struct admin_conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (c->state != ADMIN_WRITING) {
                c->state = ADMIN_WRITING;
                conn_watch(c, EV_WRITE, ADMIN_TIMEOUT);
            }
            return;
        }
        if (n <= 0) {
            conn_free(c);
            return;
        }
        c->out_off += (size_t)n;
    }
    free(c->out);
    c->out = NULL;
    if (shutdown(c->fd, SHUT_WR) < 0) {
        conn_free(c);
        return;
    }
    c->state = ADMIN_LINGERING;
    conn_watch(c, EV_READ, ADMIN_LINGER_TIMEOUT);
    conn_linger(c);
}

/* Queues the whole answer (headers, and body unless HEAD) and starts sending. May free c. */
static void conn_respond(struct admin_conn *c, int status, const char *reason, const char *type,
                         const char *body, size_t body_len, bool head, const char *extra)
{
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    if (gmtime_r(&now, &tm) == NULL ||
        strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm) == 0)
        date[0] = '\0';
    char header[512];
    int n = snprintf(header, sizeof(header),
                     "HTTP/1.1 %d %s\r\n"
                     "Date: %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n"
                     "%s"
                     "Connection: close\r\n"
                     "\r\n",
                     status, reason, date, type, body_len, extra);
    if (n < 0 || (size_t)n >= sizeof(header)) {
        conn_free(c);
        return;
    }
    size_t send_body = head ? 0 : body_len;
    c->out = malloc((size_t)n + send_body + 1);
    if (c->out == NULL) {
        conn_free(c);
        return;
    }
    memcpy(c->out, header, (size_t)n);
    if (send_body > 0)
        memcpy(c->out + n, body, send_body);
    c->out_len = (size_t)n + send_body;
    c->out_off = 0;
    conn_write(c);
}

static void conn_respond_text(struct admin_conn *c, int status, const char *reason,
                              const char *text, bool head, const char *extra)
{
    conn_respond(c, status, reason, TEXT_PLAIN, text, strlen(text), head, extra);
}

static bool path_is(const struct request *r, const char *path)
{
    return r->path_len == strlen(path) && memcmp(r->path, path, r->path_len) == 0;
}

static void conn_answer(struct admin_conn *c, const struct request *r)
{
    static const char allow[] = "Allow: GET, HEAD\r\n";
    bool is_metrics = path_is(r, "/metrics");
    if (!is_metrics && !path_is(r, "/healthz")) {
        conn_respond_text(c, 404, "Not Found", "not found\n", r->is_head, "");
        return;
    }
    if (!r->is_get_or_head) {
        conn_respond_text(c, 405, "Method Not Allowed", "method not allowed\n", false, allow);
        return;
    }
    if (!is_metrics) {
        conn_respond_text(c, 200, "OK", "ok\n", r->is_head, "");
        return;
    }
    char *text = metrics_render();
    if (text == NULL) {
        conn_respond_text(c, 500, "Internal Server Error", "out of memory\n", r->is_head, "");
        return;
    }
    conn_respond(c, 200, "OK", PROMETHEUS_TEXT, text, strlen(text), r->is_head, "");
    free(text);
}

static void conn_read(struct admin_conn *c)
{
    ssize_t n;
    do
        n = recv(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n <= 0) {
        /* The client gave up (or reset) before its request was whole. */
        conn_free(c);
        return;
    }
    c->in_len += (size_t)n;
    struct request r;
    switch (parse_request(c->in, c->in_len, &r)) {
    case PARSE_DONE:
        ev_io_stop(c->admin->loop, &c->io);
        conn_answer(c, &r);
        return;
    case PARSE_BAD:
        ev_io_stop(c->admin->loop, &c->io);
        conn_respond_text(c, 400, "Bad Request", "bad request\n", false, "");
        return;
    case PARSE_MORE:
        if (c->in_len == sizeof(c->in))
            conn_free(c);
        return;
    }
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    struct admin_conn *c = w->data;
    switch (c->state) {
    case ADMIN_READING:
        conn_read(c);
        break;
    case ADMIN_WRITING:
        conn_write(c);
        break;
    case ADMIN_LINGERING:
        conn_linger(c);
        break;
    }
}

static void conn_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    conn_free(w->data);
}

static void conn_start(struct admin *a, int fd)
{
    struct admin_conn *c = malloc(sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->admin = a;
    c->fd = fd;
    c->state = ADMIN_READING;
    c->in_len = 0;
    c->drained = 0;
    c->out = NULL;
    c->out_len = c->out_off = 0;
    c->prev = NULL;
    c->next = a->conns;
    if (a->conns != NULL)
        a->conns->prev = c;
    a->conns = c;
    a->nconns++;
    ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
    c->io.data = c;
    ev_timer_init(&c->timer, conn_timeout_cb, ADMIN_TIMEOUT, 0);
    c->timer.data = c;
    ev_io_start(a->loop, &c->io);
    ev_timer_start(a->loop, &c->timer);
}

static void pause_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct admin *a = w->data;
    ev_io_start(loop, &a->io);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct admin *a = w->data;
    for (int i = 0; i < ADMIN_ACCEPT_BURST; i++) {
        int fd = accept(a->fd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                char q[LOG_VALUE_MAX];
                log_line(LOG_ERROR, "event=admin_accept_failed reason=%s",
                         log_str(q, sizeof(q), strerror(errno)));
                ev_io_stop(loop, &a->io);
                ev_timer_set(&a->pause, ADMIN_EMFILE_PAUSE, 0);
                ev_timer_start(loop, &a->pause);
            }
            return;
        }
        if (a->nconns >= ADMIN_MAX_CONNS || set_nonblock_cloexec(fd) < 0) {
            close(fd);
            continue;
        }
        conn_start(a, fd);
    }
}

struct admin *admin_open(struct ev_loop *loop, const struct config_listener *cl,
                         const char **error_r)
{
    struct admin *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        *error_r = "out of memory";
        return NULL;
    }
    a->fd = socket(cl->addr.ss_family, SOCK_STREAM, 0);
    if (a->fd < 0) {
        *error_r = strerror(errno);
        free(a);
        return NULL;
    }
    int one = 1;
    (void)setsockopt(a->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (cl->addr.ss_family == AF_INET6)
        (void)setsockopt(a->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof(bound);
    if (bind(a->fd, (const struct sockaddr *)&cl->addr, cl->addr_len) < 0 ||
        listen(a->fd, ADMIN_BACKLOG) < 0 || set_nonblock_cloexec(a->fd) < 0 ||
        getsockname(a->fd, (struct sockaddr *)&bound, &bound_len) < 0) {
        *error_r = strerror(errno);
        close(a->fd);
        free(a);
        return NULL;
    }
    if (bound.ss_family == AF_INET6)
        a->port = ntohs(((const struct sockaddr_in6 *)&bound)->sin6_port);
    else
        a->port = ntohs(((const struct sockaddr_in *)&bound)->sin_port);
    a->loop = loop;
    ev_io_init(&a->io, accept_cb, a->fd, EV_READ);
    a->io.data = a;
    ev_init(&a->pause, pause_cb);
    a->pause.data = a;
    ev_io_start(loop, &a->io);
    return a;
}

uint16_t admin_port(const struct admin *a)
{
    return a->port;
}

void admin_free(struct admin **ap)
{
    struct admin *a = *ap;
    if (a == NULL)
        return;
    while (a->conns != NULL)
        conn_free(a->conns);
    ev_io_stop(a->loop, &a->io);
    ev_timer_stop(a->loop, &a->pause);
    close(a->fd);
    free(a);
    *ap = NULL;
}
