/* Tests of the TLS contexts: certificates generated with the openssl CLI, contexts built
 * from config structs, and real handshakes between memory BIOs for SNI, verification and
 * the minimum version. */
#include "config.h"
#include "tls.h"

#include <check.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char test_dir[] = "/tmp/popgate-test-tls-XXXXXX";

/*
 * ca.pem signs server.pem (localhost, 127.0.0.1) and other.pem (other.example); ca2.pem is
 * an unrelated CA; wrong.key belongs to no certificate; enc.key needs a passphrase. The
 * private openssl.cnf keeps the system's from changing what gets generated.
 */
static const char GENERATE[] =
    "set -e\n"
    "cat > gen.cnf <<'EOF'\n"
    "[req]\n"
    "distinguished_name = dn\n"
    "prompt = no\n"
    "[dn]\n"
    "CN = unused\n"
    "[ca]\n"
    "basicConstraints = critical,CA:TRUE\n"
    "keyUsage = critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier = hash\n"
    "[localhost]\n"
    "basicConstraints = CA:FALSE\n"
    "subjectAltName = DNS:localhost,IP:127.0.0.1\n"
    "[other]\n"
    "basicConstraints = CA:FALSE\n"
    "subjectAltName = DNS:other.example\n"
    "EOF\n"
    "export OPENSSL_CONF=gen.cnf\n"
    "EC='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes'\n"
    "openssl req -x509 -config gen.cnf -extensions ca $EC -keyout ca.key -out ca.pem -days 2 "
    "-subj '/CN=popgate test CA'\n"
    "openssl req -x509 -config gen.cnf -extensions ca $EC -keyout ca2.key -out ca2.pem -days 2 "
    "-subj '/CN=popgate other CA'\n"
    "for n in localhost other; do\n"
    "  f=$n; [ $n = localhost ] && f=server; cn=$n; [ $n = other ] && cn=other.example\n"
    "  openssl req -new -config gen.cnf $EC -keyout $f.key -out $f.csr -subj /CN=$cn\n"
    "  openssl x509 -req -in $f.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
    "-extfile gen.cnf -extensions $n -out $f.pem\n"
    "done\n"
    "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out wrong.key\n"
    "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -aes128 -pass pass:secret "
    "-out enc.key\n"
    "echo 'not a certificate' > junk.pem\n"
    ": > big.pem\n"
    "mkdir -p adir\n";

static const char *const GENERATED[] = {
    "gen.cnf",    "ca.key",     "ca.pem",    "ca.srl",    "ca2.key",   "ca2.pem",   "server.key",
    "server.csr", "server.pem", "other.key", "other.csr", "other.pem", "wrong.key", "enc.key",
    "junk.pem",   "gen.log",    "both.pem",  "big.pem",   NULL};

static struct config_cert server_cert = {"server.pem", "server.key"};
static struct config_cert other_cert = {"other.pem", "other.key"};

static struct config_listener listener(struct config_cert *certs, size_t n)
{
    struct config_listener l;
    memset(&l, 0, sizeof(l));
    l.tls = CONFIG_TLS_IMPLICIT;
    l.certs = certs;
    l.ncerts = n;
    l.min_version = TLS1_2_VERSION;
    l.security_level = -1;
    l.plaintext_auth = CONFIG_PLAINTEXT_LOOPBACK;
    return l;
}

static struct config_upstream upstream(const char *ca_file)
{
    struct config_upstream u;
    memset(&u, 0, sizeof(u));
    u.name = (char *)"main";
    u.host = (char *)"localhost";
    u.port = 993;
    u.tls = CONFIG_TLS_IMPLICIT;
    u.verify = true;
    u.ca_file = (char *)ca_file;
    u.verify_name = (char *)"localhost";
    u.min_version = TLS1_2_VERSION;
    return u;
}

static SSL_CTX *server_ctx(const struct config_listener *l)
{
    char err[1024] = "";
    SSL_CTX *ctx = tls_server_ctx_new(l, err, sizeof(err));
    ck_assert_msg(ctx != NULL, "server context: %s", err);
    return ctx;
}

static SSL_CTX *client_ctx(const struct config_upstream *u)
{
    char err[1024] = "";
    SSL_CTX *ctx = tls_client_ctx_new(u, err, sizeof(err));
    ck_assert_msg(ctx != NULL, "client context: %s", err);
    return ctx;
}

/* The reason a server context fails with. */
static const char *server_fails(const struct config_listener *l)
{
    static char err[1024];
    strcpy(err, "unset");
    SSL_CTX *ctx = tls_server_ctx_new(l, err, sizeof(err));
    ck_assert_msg(ctx == NULL, "built");
    ck_assert_msg(ERR_peek_error() == 0, "OpenSSL error queue left behind");
    return err;
}

static const char *client_fails(const struct config_upstream *u)
{
    static char err[1024];
    strcpy(err, "unset");
    SSL_CTX *ctx = tls_client_ctx_new(u, err, sizeof(err));
    ck_assert_msg(ctx == NULL, "built");
    ck_assert_msg(ERR_peek_error() == 0, "OpenSSL error queue left behind");
    return err;
}

struct handshake {
    bool ok;
    int version;
    long verify_result;
    char peer_cn[128];
};

/*
 * One handshake between a client of cctx and a server of sctx, through a BIO pair: sni is
 * the name the client asks for (or NULL), host the name it verifies (or NULL).
 */
static struct handshake handshake(SSL_CTX *sctx, SSL_CTX *cctx, const char *sni, const char *host)
{
    struct handshake h;
    memset(&h, 0, sizeof(h));
    SSL *s = SSL_new(sctx);
    SSL *c = SSL_new(cctx);
    ck_assert_ptr_nonnull(s);
    ck_assert_ptr_nonnull(c);
    BIO *sb = NULL, *cb = NULL;
    ck_assert_int_eq(BIO_new_bio_pair(&sb, 0, &cb, 0), 1);
    SSL_set_bio(s, sb, sb);
    SSL_set_bio(c, cb, cb);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
    if (sni != NULL)
        ck_assert_int_eq(SSL_set_tlsext_host_name(c, sni), 1);
    if (host != NULL)
        ck_assert_int_eq(SSL_set1_host(c, host), 1);

    bool c_done = false, s_done = false, failed = false;
    for (int round = 0; round < 64 && !failed && !(c_done && s_done); round++) {
        SSL *side[2] = {c, s};
        bool *done[2] = {&c_done, &s_done};
        for (int k = 0; k < 2 && !failed; k++) {
            if (*done[k])
                continue;
            int r = SSL_do_handshake(side[k]);
            if (r == 1) {
                *done[k] = true;
                continue;
            }
            int e = SSL_get_error(side[k], r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                failed = true;
        }
    }
    ERR_clear_error();
    h.ok = c_done && s_done && !failed;
    h.version = SSL_version(c);
    h.verify_result = SSL_get_verify_result(c);
    X509 *peer = SSL_get1_peer_certificate(c);
    if (peer != NULL) {
        X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, h.peer_cn,
                                  sizeof(h.peer_cn));
        X509_free(peer);
    }
    SSL_free(c);
    SSL_free(s);
    return h;
}

/* A client that trusts ca.pem. */
static SSL_CTX *trusting_client(void)
{
    struct config_upstream u = upstream("ca.pem");
    return client_ctx(&u);
}

START_TEST(test_server_ctx_policy)
{
    struct config_listener l = listener(&server_cert, 1);
    SSL_CTX *ctx = server_ctx(&l);
    ck_assert_int_eq(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
    uint64_t want_opts =
        SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE;
    ck_assert((SSL_CTX_get_options(ctx) & want_opts) == want_opts);
    long want_mode = SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                     SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER;
    ck_assert((SSL_CTX_get_mode(ctx) & want_mode) == want_mode);
    ck_assert_int_eq(SSL_CTX_get_session_cache_mode(ctx), SSL_SESS_CACHE_OFF);
    ck_assert_ptr_nonnull(SSL_CTX_get0_certificate(ctx));
    /* The default security level is OpenSSL's, whatever this build makes it. */
    SSL_CTX *plain = SSL_CTX_new(TLS_server_method());
    ck_assert_int_eq(SSL_CTX_get_security_level(ctx), SSL_CTX_get_security_level(plain));
    SSL_CTX_free(plain);
    tls_ctx_free(ctx);
    tls_ctx_free(NULL);
}
END_TEST

START_TEST(test_security_level_and_version)
{
    struct config_listener l = listener(&server_cert, 1);

    /* Below TLS 1.2 the level defaults to 0, or OpenSSL 3 would refuse TLS 1.0 anyway. */
    l.min_version = TLS1_VERSION;
    SSL_CTX *ctx = server_ctx(&l);
    ck_assert_int_eq(SSL_CTX_get_min_proto_version(ctx), TLS1_VERSION);
    ck_assert_int_eq(SSL_CTX_get_security_level(ctx), 0);
    tls_ctx_free(ctx);

    l.min_version = TLS1_1_VERSION;
    ctx = server_ctx(&l);
    ck_assert_int_eq(SSL_CTX_get_min_proto_version(ctx), TLS1_1_VERSION);
    ck_assert_int_eq(SSL_CTX_get_security_level(ctx), 0);
    tls_ctx_free(ctx);

    /* An explicit level wins. */
    l.min_version = TLS1_VERSION;
    l.security_level = 3;
    ctx = server_ctx(&l);
    ck_assert_int_eq(SSL_CTX_get_security_level(ctx), 3);
    tls_ctx_free(ctx);

    l.min_version = TLS1_3_VERSION;
    l.security_level = 0;
    ctx = server_ctx(&l);
    ck_assert_int_eq(SSL_CTX_get_min_proto_version(ctx), TLS1_3_VERSION);
    ck_assert_int_eq(SSL_CTX_get_security_level(ctx), 0);
    tls_ctx_free(ctx);

    /* "@SECLEVEL" in ciphers wins over the derived 0, not over an explicit level. */
    l.min_version = TLS1_VERSION;
    l.security_level = -1;
    l.ciphers = (char *)"DEFAULT:@SECLEVEL=2";
    ctx = server_ctx(&l);
    ck_assert_int_eq(SSL_CTX_get_security_level(ctx), 2);
    tls_ctx_free(ctx);
    l.security_level = 1;
    ctx = server_ctx(&l);
    ck_assert_int_eq(SSL_CTX_get_security_level(ctx), 1);
    tls_ctx_free(ctx);

    /* A P-256 key is 128 bits: too small for level 4, and the load says so. */
    l.ciphers = NULL;
    l.security_level = 4;
    ck_assert_str_eq(server_fails(&l), "cannot load certificate \"server.pem\": ee key too small");
}
END_TEST

START_TEST(test_key_mismatch)
{
    struct config_cert c = {"server.pem", "wrong.key"};
    struct config_listener l = listener(&c, 1);
    ck_assert_str_eq(server_fails(&l),
                     "key \"wrong.key\" does not match certificate \"server.pem\"");
    /* The key of another certificate is a mismatch too. */
    c.key = (char *)"other.key";
    ck_assert_str_eq(server_fails(&l),
                     "key \"other.key\" does not match certificate \"server.pem\"");
}
END_TEST

START_TEST(test_unreadable_files)
{
    struct config_cert c = {"missing.pem", "server.key"};
    struct config_listener l = listener(&c, 1);
    ck_assert_str_eq(server_fails(&l),
                     "cannot load certificate \"missing.pem\": No such file or directory");
    c.cert = (char *)"server.pem";
    c.key = (char *)"/nonexistent/server.key";
    ck_assert_str_eq(server_fails(&l),
                     "cannot load key \"/nonexistent/server.key\": No such file or directory");
    c.key = (char *)"adir";
    ck_assert_str_eq(server_fails(&l), "cannot load key \"adir\": not a regular file");
    c.key = (char *)"server.key";
    c.cert = (char *)"junk.pem";
    ck_assert_str_eq(
        server_fails(&l),
        "cannot load certificate \"junk.pem\": no PEM certificate found (no start line)");
    c.cert = (char *)"server.pem";
    c.key = (char *)"junk.pem";
    ck_assert_str_eq(server_fails(&l),
                     "cannot load key \"junk.pem\": no PEM private key found (unsupported)");
    /* A certificate where the key should be. */
    c.key = (char *)"ca.pem";
    ck_assert_str_eq(server_fails(&l),
                     "cannot load key \"ca.pem\": no PEM private key found (unsupported)");
    /* A key that wants a passphrase fails rather than prompting. */
    c.key = (char *)"enc.key";
    ck_assert_str_eq(server_fails(&l),
                     "cannot load key \"enc.key\": it is encrypted, and popgate asks for no "
                     "passphrase (store the key unencrypted, readable only by popgate)");
    /* A key file that also holds the certificate is fine. */
    ck_assert_int_eq(system("cat server.pem server.key > both.pem"), 0);
    c.cert = (char *)"both.pem";
    c.key = (char *)"both.pem";
    tls_ctx_free(server_ctx(&l));
    /* Huge "regular" files (think /proc/kcore) are not read. */
    ck_assert_int_eq(truncate("big.pem", 17 * 1024 * 1024), 0);
    c.cert = (char *)"big.pem";
    ck_assert_str_eq(server_fails(&l), "cannot load certificate \"big.pem\": larger than 16 MiB, "
                                       "too large for a PEM file");
    /* A control byte in a name stays escaped, so the reason is one line. */
    c.cert = (char *)"new\nline.pem";
    ck_assert_str_eq(server_fails(&l),
                     "cannot load certificate \"new\\x0aline.pem\": No such file or directory");

    if (geteuid() != 0) {
        ck_assert_int_eq(chmod("wrong.key", 0), 0);
        c.cert = (char *)"server.pem";
        c.key = (char *)"wrong.key";
        ck_assert_str_eq(server_fails(&l), "cannot load key \"wrong.key\": Permission denied");
        ck_assert_int_eq(chmod("wrong.key", 0600), 0);
    }
}
END_TEST

START_TEST(test_bad_ciphers)
{
    struct config_listener l = listener(&server_cert, 1);
    l.ciphers = (char *)"FOO";
    ck_assert_str_eq(server_fails(&l), "invalid ciphers \"FOO\": no cipher match");
    l.ciphers = (char *)"ECDHE-ECDSA-AES128-GCM-SHA256";
    SSL_CTX *ctx = server_ctx(&l);
    tls_ctx_free(ctx);
}
END_TEST

START_TEST(test_no_certificate)
{
    struct config_listener l = listener(NULL, 0);
    ck_assert_str_eq(server_fails(&l), "no certificate");
}
END_TEST

START_TEST(test_sni)
{
    struct config_cert certs[] = {server_cert, other_cert};
    struct config_listener l = listener(certs, 2);
    SSL_CTX *sctx = server_ctx(&l);
    SSL_CTX *cctx = trusting_client();
    static const struct {
        const char *sni, *host, *cn;
    } cases[] = {
        {"other.example", "other.example", "other.example"},
        {"localhost", "localhost", "localhost"},
        {"OTHER.example", "other.example", "other.example"}, /* names are case-insensitive */
        {NULL, "localhost", "localhost"},                    /* no SNI: the default */
        {"nope.example", "localhost", "localhost"},          /* unknown: the default */
    };
    for (int max = 0; max < 2; max++) {
        /* TLS 1.3 and TLS 1.2 reach the callback at different points of the handshake. */
        SSL_CTX_set_max_proto_version(cctx, max == 0 ? 0 : TLS1_2_VERSION);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            struct handshake h = handshake(sctx, cctx, cases[i].sni, cases[i].host);
            ck_assert_msg(h.ok, "case %zu: handshake failed (verify %ld)", i, h.verify_result);
            ck_assert_int_eq(h.verify_result, X509_V_OK);
            ck_assert_str_eq(h.peer_cn, cases[i].cn);
            ck_assert_int_eq(h.version, max == 0 ? TLS1_3_VERSION : TLS1_2_VERSION);
        }
    }
    tls_ctx_free(sctx);

    /* The first matching certificate wins; the order of the list is the preference. */
    struct config_cert swapped[] = {other_cert, server_cert};
    l = listener(swapped, 2);
    sctx = server_ctx(&l);
    struct handshake h = handshake(sctx, cctx, NULL, NULL);
    ck_assert(h.ok);
    ck_assert_str_eq(h.peer_cn, "other.example");
    h = handshake(sctx, cctx, "localhost", "localhost");
    ck_assert(h.ok);
    ck_assert_str_eq(h.peer_cn, "localhost");
    /* Freed with SSL_CTX_free as the header allows: the others go with it (ASan checks). */
    SSL_CTX_free(sctx);
    tls_ctx_free(cctx);
}
END_TEST

START_TEST(test_sni_bad_second_certificate)
{
    struct config_cert certs[] = {server_cert, {"other.pem", "missing.key"}};
    struct config_listener l = listener(certs, 2);
    ck_assert_str_eq(server_fails(&l),
                     "cannot load key \"missing.key\": No such file or directory");
}
END_TEST

START_TEST(test_client_verify)
{
    struct config_listener l = listener(&server_cert, 1);
    SSL_CTX *sctx = server_ctx(&l);

    struct config_upstream u = upstream("ca.pem");
    SSL_CTX *cctx = client_ctx(&u);
    ck_assert_int_eq(SSL_CTX_get_verify_mode(cctx), SSL_VERIFY_PEER);
    ck_assert_int_eq(SSL_CTX_get_min_proto_version(cctx), TLS1_2_VERSION);
    long want_mode = SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                     SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER;
    ck_assert((SSL_CTX_get_mode(cctx) & want_mode) == want_mode);
    struct handshake h = handshake(sctx, cctx, "localhost", "localhost");
    ck_assert(h.ok);
    ck_assert_int_eq(h.verify_result, X509_V_OK);
    /* OpenSSL 3's SSL_set1_host takes an IP literal too and checks the IP SAN, so a
     * verify_name (or host) of "127.0.0.1" works as given. */
    h = handshake(sctx, cctx, NULL, "127.0.0.1");
    ck_assert(h.ok);
    ck_assert_int_eq(h.verify_result, X509_V_OK);
    h = handshake(sctx, cctx, NULL, "127.0.0.2");
    ck_assert(!h.ok);
    ck_assert_int_eq(h.verify_result, X509_V_ERR_IP_ADDRESS_MISMATCH);
    /* The right CA but the wrong name. */
    h = handshake(sctx, cctx, "localhost", "imap.example");
    ck_assert(!h.ok);
    ck_assert_int_eq(h.verify_result, X509_V_ERR_HOSTNAME_MISMATCH);
    tls_ctx_free(cctx);

    /* Another CA: refused. */
    u.ca_file = (char *)"ca2.pem";
    cctx = client_ctx(&u);
    h = handshake(sctx, cctx, "localhost", "localhost");
    ck_assert(!h.ok);
    ck_assert_int_eq(h.verify_result, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
    tls_ctx_free(cctx);

    /* The system store does not know the test CA either. */
    u.ca_file = NULL;
    cctx = client_ctx(&u);
    h = handshake(sctx, cctx, "localhost", "localhost");
    ck_assert(!h.ok);
    tls_ctx_free(cctx);

    /* verify false: anything goes, on purpose. */
    u.ca_file = (char *)"ca2.pem";
    u.verify = false;
    cctx = client_ctx(&u);
    ck_assert_int_eq(SSL_CTX_get_verify_mode(cctx), SSL_VERIFY_NONE);
    h = handshake(sctx, cctx, "localhost", "localhost");
    ck_assert(h.ok);
    tls_ctx_free(cctx);
    tls_ctx_free(sctx);
}
END_TEST

START_TEST(test_client_ca_file_errors)
{
    struct config_upstream u = upstream("missing-ca.pem");
    ck_assert_str_eq(client_fails(&u),
                     "cannot load CA file \"missing-ca.pem\": No such file or directory");
    u.ca_file = (char *)"junk.pem";
    ck_assert_str_eq(client_fails(&u),
                     "cannot load CA file \"junk.pem\": no certificate or crl found");
    u.ca_file = (char *)"adir";
    ck_assert_str_eq(client_fails(&u), "cannot load CA file \"adir\": not a regular file");
    /* Without verification the CA file is not read. */
    u.verify = false;
    SSL_CTX *ctx = client_ctx(&u);
    tls_ctx_free(ctx);
}
END_TEST

START_TEST(test_min_version_handshakes)
{
    struct config_listener strict = listener(&server_cert, 1);
    struct config_listener legacy = listener(&server_cert, 1);
    legacy.min_version = TLS1_VERSION;
    SSL_CTX *strict_ctx = server_ctx(&strict);
    SSL_CTX *legacy_ctx = server_ctx(&legacy);

    /* An old printer: TLS 1.0 only, at level 0 as such clients need in OpenSSL 3. */
    SSL_CTX *old = SSL_CTX_new(TLS_client_method());
    ck_assert_ptr_nonnull(old);
    SSL_CTX_set_min_proto_version(old, TLS1_VERSION);
    SSL_CTX_set_max_proto_version(old, TLS1_VERSION);
    ck_assert_int_eq(SSL_CTX_set_cipher_list(old, "DEFAULT:@SECLEVEL=0"), 1);
    SSL_CTX_set_verify(old, SSL_VERIFY_NONE, NULL);

    struct handshake h = handshake(legacy_ctx, old, NULL, NULL);
    ck_assert(h.ok);
    ck_assert_int_eq(h.version, TLS1_VERSION);
    h = handshake(strict_ctx, old, NULL, NULL);
    ck_assert(!h.ok);

    /* An upstream side with TLS 1.3 as its minimum refuses a TLS 1.2 server. */
    struct config_listener tls12 = listener(&server_cert, 1);
    SSL_CTX *tls12_ctx = server_ctx(&tls12);
    SSL_CTX_set_max_proto_version(tls12_ctx, TLS1_2_VERSION);
    struct config_upstream u = upstream("ca.pem");
    u.min_version = TLS1_3_VERSION;
    SSL_CTX *cctx = client_ctx(&u);
    ck_assert_int_eq(SSL_CTX_get_min_proto_version(cctx), TLS1_3_VERSION);
    h = handshake(tls12_ctx, cctx, "localhost", "localhost");
    ck_assert(!h.ok);
    h = handshake(strict_ctx, cctx, "localhost", "localhost");
    ck_assert(h.ok);
    ck_assert_int_eq(h.version, TLS1_3_VERSION);
    tls_ctx_free(cctx);

    /* An upstream allowed TLS 1.0 gets level 0 too, and only that upstream. */
    u.min_version = TLS1_VERSION;
    cctx = client_ctx(&u);
    ck_assert_int_eq(SSL_CTX_get_security_level(cctx), 0);
    tls_ctx_free(cctx);
    u.min_version = TLS1_2_VERSION;
    cctx = client_ctx(&u);
    SSL_CTX *plain = SSL_CTX_new(TLS_client_method());
    ck_assert_int_eq(SSL_CTX_get_security_level(cctx), SSL_CTX_get_security_level(plain));
    SSL_CTX_free(plain);
    tls_ctx_free(cctx);

    SSL_CTX_free(old);
    tls_ctx_free(tls12_ctx);
    tls_ctx_free(strict_ctx);
    tls_ctx_free(legacy_ctx);
}
END_TEST

START_TEST(test_version_names)
{
    ck_assert_str_eq(tls_version_name(TLS1_VERSION), "TLSv1");
    ck_assert_str_eq(tls_version_name(TLS1_1_VERSION), "TLSv1.1");
    ck_assert_str_eq(tls_version_name(TLS1_2_VERSION), "TLSv1.2");
    ck_assert_str_eq(tls_version_name(TLS1_3_VERSION), "TLSv1.3");
    ck_assert_str_eq(tls_version_name(SSL3_VERSION), "SSLv3");
    ck_assert_str_eq(tls_version_name(0x7f00), "unknown");
}
END_TEST

static Suite *tls_suite(void)
{
    Suite *s = suite_create("tls");
    TCase *tc = tcase_create("server");
    tcase_add_test(tc, test_server_ctx_policy);
    tcase_add_test(tc, test_security_level_and_version);
    tcase_add_test(tc, test_key_mismatch);
    tcase_add_test(tc, test_unreadable_files);
    tcase_add_test(tc, test_bad_ciphers);
    tcase_add_test(tc, test_no_certificate);
    tcase_add_test(tc, test_sni);
    tcase_add_test(tc, test_sni_bad_second_certificate);
    suite_add_tcase(s, tc);
    tc = tcase_create("client");
    tcase_add_test(tc, test_client_verify);
    tcase_add_test(tc, test_client_ca_file_errors);
    tcase_add_test(tc, test_min_version_handshakes);
    tcase_add_test(tc, test_version_names);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (mkdtemp(test_dir) == NULL || chdir(test_dir) != 0) {
        perror(test_dir);
        return EXIT_FAILURE;
    }
    FILE *sh = popen("sh > gen.log 2>&1", "w");
    if (sh == NULL || fputs(GENERATE, sh) < 0 || pclose(sh) != 0) {
        fprintf(stderr, "generating certificates with openssl failed; see %s/gen.log\n", test_dir);
        return EXIT_FAILURE;
    }
    SRunner *sr = srunner_create(tls_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    for (size_t i = 0; GENERATED[i] != NULL; i++)
        unlink(GENERATED[i]);
    rmdir("adir");
    if (chdir("/") != 0 || rmdir(test_dir) != 0)
        perror(test_dir);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
