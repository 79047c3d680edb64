/* Tests of metrics: slots written by forked workers add up, survive retire, render as Prometheus
 * text. */
#include "metrics.h"

#include <check.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_SAMPLES  256
#define MAX_FAMILIES 32

struct family {
    char name[96];
    char type[16];
    bool has_help;
};

struct sample {
    char name[96];
    char labels[96];
    double value;
};

struct exposition {
    struct family families[MAX_FAMILIES];
    size_t nfamilies;
    struct sample samples[MAX_SAMPLES];
    size_t nsamples;
};

static const char *const families_expected[] = {
    "popgate_sessions_active",        "popgate_sessions_total",
    "popgate_logins_total",           "popgate_upstream_errors_total",
    "popgate_retrieved_bytes_total",  "popgate_retrieved_messages_total",
    "popgate_deleted_messages_total", "popgate_login_duration_seconds",
    "popgate_config_reloads_total",   "popgate_workers",
    "popgate_start_time_seconds",
};

static const char *const result_names[] = {
    "quit",          "client_closed",  "timeout",        "auth_failed", "upstream_error",
    "update_failed", "update_partial", "bad_commands",   "tls_failed",  "proxy_refused",
    "shutdown",      "client_error",   "internal_error",
};

static const char *const upstream_names[] = {
    "no", "auth", "connect", "timeout", "protocol", "closed", "internal",
};

static const char *const le_values[] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
};

static struct family *family_find(struct exposition *e, const char *name)
{
    for (size_t i = 0; i < e->nfamilies; i++)
        if (strcmp(e->families[i].name, name) == 0)
            return &e->families[i];
    return NULL;
}

static struct family *family_get(struct exposition *e, const char *name)
{
    struct family *f = family_find(e, name);
    if (f != NULL)
        return f;
    ck_assert_uint_lt(e->nfamilies, MAX_FAMILIES);
    f = &e->families[e->nfamilies++];
    ck_assert_uint_lt(strlen(name), sizeof(f->name));
    strcpy(f->name, name);
    return f;
}

static bool is_metric_name(const char *s, size_t len)
{
    if (len == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':'))
        return false;
    for (size_t i = 1; i < len; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':'))
            return false;
    return true;
}

/* label="value"(,label="value")*, values without escapes (ours never need them). */
static bool is_label_set(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        size_t name = i;
        while (i < len && s[i] != '=')
            i++;
        if (i == len || !is_metric_name(s + name, i - name) || ++i == len || s[i++] != '"')
            return false;
        while (i < len && s[i] != '"' && s[i] != '\\' && s[i] != '\n')
            i++;
        if (i == len || s[i++] != '"')
            return false;
        if (i < len && s[i++] != ',')
            return false;
    }
    return true;
}

/* The family a sample belongs to: histograms own name_bucket, name_sum, name_count. */
static struct family *sample_family(struct exposition *e, const char *name)
{
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(name), sn = strlen(suffixes[i]);
        if (n > sn && strcmp(name + n - sn, suffixes[i]) == 0) {
            char base[96];
            snprintf(base, sizeof(base), "%.*s", (int)(n - sn), name);
            struct family *f = family_find(e, base);
            if (f != NULL && strcmp(f->type, "histogram") == 0)
                return f;
        }
    }
    return family_find(e, name);
}

/* Parses the text exposition format 0.0.4 strictly enough to catch what Prometheus rejects. */
static void parse_exposition(const char *text, struct exposition *e)
{
    memset(e, 0, sizeof(*e));
    size_t len = strlen(text);
    ck_assert_uint_gt(len, 0);
    ck_assert_int_eq(text[len - 1], '\n');
    for (const char *line = text; *line != '\0';) {
        const char *nl = strchr(line, '\n');
        ck_assert_ptr_nonnull(nl);
        char buf[256];
        ck_assert_int_lt(nl - line, (long)sizeof(buf));
        memcpy(buf, line, (size_t)(nl - line));
        buf[nl - line] = '\0';
        line = nl + 1;

        if (strncmp(buf, "# HELP ", 7) == 0) {
            char *name = buf + 7, *sp = strchr(name, ' ');
            ck_assert_ptr_nonnull(sp);
            *sp = '\0';
            ck_assert_msg(is_metric_name(name, strlen(name)), "bad name %s", name);
            struct family *f = family_get(e, name);
            ck_assert_msg(!f->has_help, "second HELP for %s", name);
            ck_assert_msg(sp[1] != '\0', "empty HELP for %s", name);
            f->has_help = true;
            continue;
        }
        if (strncmp(buf, "# TYPE ", 7) == 0) {
            char *name = buf + 7, *sp = strchr(name, ' ');
            ck_assert_ptr_nonnull(sp);
            *sp = '\0';
            const char *type = sp + 1;
            ck_assert_msg(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                              strcmp(type, "histogram") == 0,
                          "type %s", type);
            struct family *f = family_get(e, name);
            ck_assert_msg(f->type[0] == '\0', "second TYPE for %s", name);
            for (size_t i = 0; i < e->nsamples; i++)
                ck_assert_msg(sample_family(e, e->samples[i].name) != f,
                              "TYPE of %s after its samples", name);
            strcpy(f->type, type);
            continue;
        }
        ck_assert_msg(buf[0] != '#' && buf[0] != '\0', "unexpected line '%s'", buf);

        ck_assert_uint_lt(e->nsamples, MAX_SAMPLES);
        struct sample *s = &e->samples[e->nsamples++];
        size_t name_len = strcspn(buf, "{ ");
        ck_assert_msg(is_metric_name(buf, name_len), "bad sample name in '%s'", buf);
        ck_assert_uint_lt(name_len, sizeof(s->name));
        memcpy(s->name, buf, name_len);
        const char *p = buf + name_len;
        if (*p == '{') {
            const char *close = strchr(p, '}');
            ck_assert_ptr_nonnull(close);
            size_t labels_len = (size_t)(close - p - 1);
            ck_assert_msg(is_label_set(p + 1, labels_len), "bad labels in '%s'", buf);
            ck_assert_uint_lt(labels_len, sizeof(s->labels));
            memcpy(s->labels, p + 1, labels_len);
            p = close + 1;
        }
        ck_assert_msg(*p == ' ', "no space before the value in '%s'", buf);
        char *end;
        s->value = strtod(p + 1, &end);
        ck_assert_msg(end != p + 1 && *end == '\0', "bad value in '%s'", buf);

        struct family *f = sample_family(e, s->name);
        ck_assert_msg(f != NULL && f->has_help && f->type[0] != '\0',
                      "sample %s without HELP and TYPE", s->name);
        for (size_t i = 0; i + 1 < e->nsamples; i++)
            ck_assert_msg(strcmp(e->samples[i].name, s->name) != 0 ||
                              strcmp(e->samples[i].labels, s->labels) != 0,
                          "duplicate series %s{%s}", s->name, s->labels);
    }
    for (size_t i = 0; i < sizeof(families_expected) / sizeof(families_expected[0]); i++) {
        struct family *f = family_find(e, families_expected[i]);
        ck_assert_msg(f != NULL && f->has_help && f->type[0] != '\0', "family %s missing",
                      families_expected[i]);
    }
}

/* The value of one series; fails the test when absent. */
static double value_of(const struct exposition *e, const char *name, const char *labels)
{
    for (size_t i = 0; i < e->nsamples; i++)
        if (strcmp(e->samples[i].name, name) == 0 && strcmp(e->samples[i].labels, labels) == 0)
            return e->samples[i].value;
    ck_abort_msg("series %s{%s} missing", name, labels);
    return -1;
}

static double labelled(const struct exposition *e, const char *name, const char *label,
                       const char *value)
{
    char labels[96];
    snprintf(labels, sizeof(labels), "%s=\"%s\"", label, value);
    return value_of(e, name, labels);
}

static struct exposition *render_parsed(void)
{
    static struct exposition e;
    char *text = metrics_render();
    ck_assert_ptr_nonnull(text);
    parse_exposition(text, &e);
    free(text);
    return &e;
}

/* Histogram invariants: every bucket present, non-decreasing, +Inf equals _count. */
static void check_histogram(const struct exposition *e, double count)
{
    double prev = 0;
    for (size_t i = 0; i < sizeof(le_values) / sizeof(le_values[0]); i++) {
        double v = labelled(e, "popgate_login_duration_seconds_bucket", "le", le_values[i]);
        ck_assert_double_ge(v, prev);
        prev = v;
    }
    ck_assert_double_eq(prev, count);
    ck_assert_double_eq(value_of(e, "popgate_login_duration_seconds_count", ""), count);
}

/* Every label value is present; those not listed in nonzero (NULL-terminated) are 0. */
static void check_zeros(const struct exposition *e, const char *name, const char *label,
                        const char *const *values, size_t n, const char *const *nonzero)
{
    for (size_t i = 0; i < n; i++) {
        bool expect_zero = true;
        for (const char *const *z = nonzero; *z != NULL; z++)
            expect_zero = expect_zero && strcmp(values[i], *z) != 0;
        double v = labelled(e, name, label, values[i]);
        if (expect_zero)
            ck_assert_msg(v == 0, "%s{%s=\"%s\"} is %g", name, label, values[i], v);
    }
}

/* Runs first, before any metrics_init: nothing may crash and everything reads zero. */
START_TEST(test_noop_before_init)
{
    metrics_attach(0);
    metrics_session_start();
    metrics_session_end(METRICS_RESULT_QUIT);
    metrics_login(METRICS_LOGIN_OK, 0.1);
    metrics_upstream_error(METRICS_UPSTREAM_CONNECT);
    metrics_bytes_retrieved(10);
    metrics_messages_retrieved(1);
    metrics_messages_deleted(1);
    metrics_config_reload(true);
    metrics_retire(0);
    metrics_slot_in_use(0, true);
    struct exposition *e = render_parsed();
    for (size_t i = 0; i < e->nsamples; i++)
        ck_assert_msg(e->samples[i].value == 0, "%s{%s} = %g before init", e->samples[i].name,
                      e->samples[i].labels, e->samples[i].value);
    check_zeros(e, "popgate_sessions_total", "result", result_names,
                sizeof(result_names) / sizeof(result_names[0]), (const char *const[]){NULL});
    check_histogram(e, 0);
}
END_TEST

START_TEST(test_result_from_name)
{
    for (size_t i = 0; i < sizeof(result_names) / sizeof(result_names[0]); i++)
        ck_assert_int_eq(metrics_result_from_name(result_names[i]), (int)i);
    ck_assert_int_eq(metrics_result_from_name("quit"), METRICS_RESULT_QUIT);
    ck_assert_int_eq(metrics_result_from_name("update_partial"), METRICS_RESULT_UPDATE_PARTIAL);
    ck_assert_int_eq(metrics_result_from_name("QUIT"), METRICS_RESULT_INTERNAL_ERROR);
    ck_assert_int_eq(metrics_result_from_name("nonsense"), METRICS_RESULT_INTERNAL_ERROR);
    ck_assert_int_eq(metrics_result_from_name(""), METRICS_RESULT_INTERNAL_ERROR);
    ck_assert_int_eq(metrics_result_from_name(NULL), METRICS_RESULT_INTERNAL_ERROR);
}
END_TEST

static void run_worker(unsigned slot, void (*work)(void))
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        metrics_attach(slot);
        work();
        _exit(0);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void worker_one(void)
{
    for (int i = 0; i < 3; i++)
        metrics_session_start();
    metrics_session_end(METRICS_RESULT_QUIT);
    metrics_session_end(METRICS_RESULT_QUIT); /* one session stays open when it dies */
    metrics_login(METRICS_LOGIN_OK, 0.003);
    metrics_login(METRICS_LOGIN_OK, 0.2);
    metrics_login(METRICS_LOGIN_AUTH_FAILED, 7.0);
    metrics_login(METRICS_LOGIN_TEMP_FAILED, 20.0);
    metrics_upstream_error(METRICS_UPSTREAM_CONNECT);
    metrics_upstream_error(METRICS_UPSTREAM_CONNECT);
    metrics_bytes_retrieved(1000);
    metrics_messages_retrieved(2);
    metrics_messages_deleted(1);
}

static void worker_restarted(void)
{
    metrics_session_start();
    metrics_session_end(METRICS_RESULT_QUIT);
    metrics_login(METRICS_LOGIN_OK, 0.5);
    metrics_bytes_retrieved(1);
}

START_TEST(test_slots_add_up_and_survive_retire)
{
    ck_assert_int_eq(metrics_init(3), 0);

    /* The master has no slot: worker-side calls do nothing there. */
    metrics_session_start();
    metrics_login(METRICS_LOGIN_OK, 1);

    run_worker(1, worker_one);
    struct exposition *e = render_parsed();
    ck_assert_double_eq(value_of(e, "popgate_sessions_active", ""), 1);
    ck_assert_double_eq(value_of(e, "popgate_workers", ""), 1);
    ck_assert_double_eq(labelled(e, "popgate_sessions_total", "result", "quit"), 2);
    check_histogram(e, 4);

    metrics_attach(0);
    metrics_session_start();
    metrics_session_start();
    metrics_session_end(METRICS_RESULT_TIMEOUT);
    metrics_session_end(metrics_result_from_name("proxy_refused"));
    metrics_session_start();
    metrics_login(METRICS_LOGIN_OK, 0.005);  /* on the bound: le="0.005" */
    metrics_login(METRICS_LOGIN_OK, 0.0051); /* just above: le="0.01" */
    metrics_upstream_error(METRICS_UPSTREAM_NO);
    metrics_bytes_retrieved(500);
    metrics_messages_retrieved(3);
    metrics_config_reload(true);
    metrics_config_reload(false);
    metrics_config_reload(true);

    metrics_retire(1);
    metrics_retire(1); /* a second retire of a zeroed slot adds nothing */
    metrics_retire(99);

    e = render_parsed();
    /* The dead worker's open session vanished with it; slot 0 has 1 open. */
    ck_assert_double_eq(value_of(e, "popgate_sessions_active", ""), 1);
    ck_assert_double_eq(value_of(e, "popgate_workers", ""), 1);
    ck_assert_double_eq(labelled(e, "popgate_sessions_total", "result", "quit"), 2);
    ck_assert_double_eq(labelled(e, "popgate_sessions_total", "result", "timeout"), 1);
    ck_assert_double_eq(labelled(e, "popgate_sessions_total", "result", "proxy_refused"), 1);
    /* Every result label is present, at zero where nothing happened. */
    check_zeros(e, "popgate_sessions_total", "result", result_names,
                sizeof(result_names) / sizeof(result_names[0]),
                (const char *const[]){"quit", "timeout", "proxy_refused", NULL});
    ck_assert_double_eq(labelled(e, "popgate_logins_total", "result", "ok"), 4);
    ck_assert_double_eq(labelled(e, "popgate_logins_total", "result", "auth_failed"), 1);
    ck_assert_double_eq(labelled(e, "popgate_logins_total", "result", "temp_failed"), 1);
    ck_assert_double_eq(labelled(e, "popgate_upstream_errors_total", "class", "connect"), 2);
    ck_assert_double_eq(labelled(e, "popgate_upstream_errors_total", "class", "no"), 1);
    check_zeros(e, "popgate_upstream_errors_total", "class", upstream_names,
                sizeof(upstream_names) / sizeof(upstream_names[0]),
                (const char *const[]){"connect", "no", NULL});
    ck_assert_double_eq(value_of(e, "popgate_retrieved_bytes_total", ""), 1500);
    ck_assert_double_eq(value_of(e, "popgate_retrieved_messages_total", ""), 5);
    ck_assert_double_eq(value_of(e, "popgate_deleted_messages_total", ""), 1);
    ck_assert_double_eq(labelled(e, "popgate_config_reloads_total", "result", "ok"), 2);
    ck_assert_double_eq(labelled(e, "popgate_config_reloads_total", "result", "failed"), 1);
    ck_assert_double_gt(value_of(e, "popgate_start_time_seconds", ""), 1.6e9);

    /* Logins: 0.003 0.005 | 0.0051 | 0.2 | 7 | 20 */
    check_histogram(e, 6);
    const char *bucket = "popgate_login_duration_seconds_bucket";
    ck_assert_double_eq(labelled(e, bucket, "le", "0.005"), 2);
    ck_assert_double_eq(labelled(e, bucket, "le", "0.01"), 3);
    ck_assert_double_eq(labelled(e, bucket, "le", "0.1"), 3);
    ck_assert_double_eq(labelled(e, bucket, "le", "0.25"), 4);
    ck_assert_double_eq(labelled(e, bucket, "le", "5"), 4);
    ck_assert_double_eq(labelled(e, bucket, "le", "10"), 5);
    ck_assert_double_eq(labelled(e, bucket, "le", "+Inf"), 6);
    ck_assert_double_eq_tol(value_of(e, "popgate_login_duration_seconds_sum", ""),
                            0.003 + 0.2 + 7 + 20 + 0.005 + 0.0051, 1e-6);

    /* A replacement worker in the same slot: counters keep growing. */
    run_worker(1, worker_restarted);
    metrics_retire(1);
    e = render_parsed();
    ck_assert_double_eq(labelled(e, "popgate_sessions_total", "result", "quit"), 3);
    ck_assert_double_eq(labelled(e, "popgate_logins_total", "result", "ok"), 5);
    ck_assert_double_eq(value_of(e, "popgate_retrieved_bytes_total", ""), 1501);
    check_histogram(e, 7);
    ck_assert_double_eq(value_of(e, "popgate_sessions_active", ""), 1);

    /* The master can mark slots; retire frees them. */
    metrics_slot_in_use(2, true);
    e = render_parsed();
    ck_assert_double_eq(value_of(e, "popgate_workers", ""), 2);
    metrics_retire(2);
    metrics_retire(0);
    e = render_parsed();
    ck_assert_double_eq(value_of(e, "popgate_workers", ""), 0);
    ck_assert_double_eq(value_of(e, "popgate_sessions_active", ""), 0);
    ck_assert_double_eq(labelled(e, "popgate_sessions_total", "result", "timeout"), 1);

    /* Retiring our own slot detached us: recording is a no-op again. */
    metrics_bytes_retrieved(7);
    e = render_parsed();
    ck_assert_double_eq(value_of(e, "popgate_retrieved_bytes_total", ""), 1501);
}
END_TEST

START_TEST(test_odd_inputs)
{
    ck_assert_int_eq(metrics_init(1), 0);
    metrics_attach(1); /* out of range: still a no-op */
    metrics_bytes_retrieved(5);
    metrics_attach(0);
    metrics_login(METRICS_LOGIN_OK, -1); /* clock went back: counts as 0 */
    metrics_login(METRICS_LOGIN_OK, 0.0 / 0.0);
    metrics_login(METRICS_LOGIN_OK, 1e300);
    metrics_login(METRICS_LOGIN_COUNT, 1); /* not a result: ignored */
    metrics_upstream_error(METRICS_UPSTREAM_COUNT);
    metrics_session_end(METRICS_RESULT_COUNT); /* counted as internal_error */
    struct exposition *e = render_parsed();
    ck_assert_double_eq(value_of(e, "popgate_retrieved_bytes_total", ""), 0);
    ck_assert_double_eq(labelled(e, "popgate_login_duration_seconds_bucket", "le", "0.005"), 2);
    check_histogram(e, 3);
    ck_assert_double_eq(labelled(e, "popgate_sessions_total", "result", "internal_error"), 1);
    ck_assert_double_eq(value_of(e, "popgate_sessions_active", ""), -1);
    ck_assert_int_eq(metrics_init(100000), -1);
}
END_TEST

static Suite *metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("metrics");
    tcase_add_test(tc, test_noop_before_init);
    tcase_add_test(tc, test_result_from_name);
    tcase_add_test(tc, test_slots_add_up_and_survive_retire);
    tcase_add_test(tc, test_odd_inputs);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(metrics_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
