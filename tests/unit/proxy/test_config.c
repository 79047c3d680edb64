/* Tests of config loading: each broken file gives its exact error text; good files load
 * with their defaults applied. */
#include "config.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <grp.h>
#include <openssl/ssl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "route.h"
#include "user_map.h"

/* The tests run in a fresh folder, so messages name "popgate.json" as given. */
static char test_dir[] = "/tmp/popgate-test-config-XXXXXX";

/* Config texts are written with ' for " to stay readable; no case needs a real '. */
static void write_config(const char *name, const char *text)
{
    FILE *f = fopen(name, "w");
    ck_assert_ptr_nonnull(f);
    for (const char *p = text; *p != '\0'; p++)
        fputc(*p == '\'' ? '"' : *p, f);
    ck_assert_int_eq(fclose(f), 0);
}

static struct config *load_text(const char *text, char **errors_r)
{
    write_config("popgate.json", text);
    return config_load("popgate.json", errors_r);
}

#define LISTENERS "'listeners': [{'address': '127.0.0.1:1110'}]"
#define UPSTREAMS "'upstreams': {'main': {'host': '127.0.0.1', 'port': 143}}"
#define ROUTES    "'routes': [{'default': true, 'upstream': 'main'}]"
#define STATE     "'state': {'dir': '/var/lib/popgate'}"
#define GOOD      "{" LISTENERS ", " UPSTREAMS ", " ROUTES ", " STATE "}"

/* A good config with one section replaced. */
#define WITH_LISTENERS(x) "{'listeners': " x ", " UPSTREAMS ", " ROUTES ", " STATE "}"
#define WITH_ADDRESS(a)   WITH_LISTENERS("[{'address': '" a "'}]")
/* The one listener, with more keys after its address. */
#define WITH_LISTENER(x)  WITH_LISTENERS("[{'address': '127.0.0.1:1110', " x "}]")
#define TLS_PAIR          "'tls': 'implicit', 'cert': 'c.pem', 'key': 'k.pem'"
#define WITH_UPSTREAMS(x) "{" LISTENERS ", 'upstreams': " x ", " ROUTES ", " STATE "}"
#define WITH_MAIN(x)      WITH_UPSTREAMS("{'main': " x "}")
#define WITH_ROUTES(x)    "{" LISTENERS ", " UPSTREAMS ", 'routes': " x ", " STATE "}"
#define WITH_STATE(x)     "{" LISTENERS ", " UPSTREAMS ", " ROUTES ", 'state': " x "}"
#define WITH_LIMITS(x)    "{" LISTENERS ", " UPSTREAMS ", " ROUTES ", " STATE ", 'limits': " x "}"
/* A good config with more top-level keys. */
#define WITH_TOP(x) "{" LISTENERS ", " UPSTREAMS ", " ROUTES ", " STATE ", " x "}"
/* Two upstreams, for routes that pick between them. */
#define UPSTREAMS2                                                                                 \
    "'upstreams': {'imap1': {'host': '127.0.0.1'}, 'imap2': {'host': '127.0.0.1', 'port': 10143}}"
#define WITH_ROUTES2(x) "{" LISTENERS ", " UPSTREAMS2 ", 'routes': " x ", " STATE "}"
#define WITH_PROXIES(x) WITH_LISTENER("'proxy_protocol': true, 'trusted_proxies': " x)

#define F        "popgate.json: "
#define ONE      "popgate: 1 error in popgate.json\n"
#define TWO      "popgate: 2 errors in popgate.json\n"
#define THREE    "popgate: 3 errors in popgate.json\n"
#define ERRORS_N "errors in popgate.json\n"
#define FORMS    "(expected \"IPv4:port\" or \"[IPv6]:port\")"
#define LISTENER_KEYS                                                                              \
    "address, tls, cert, key, certificates, min_version, ciphers, security_level, "                \
    "plaintext_auth, "                                                                             \
    "proxy_protocol, trusted_proxies"
#define UPSTREAM_KEYS "host, port, tls, verify, ca_file, verify_name, min_version, send_client_ip"
#define ROOT_KEYS                                                                                  \
    "listeners, upstreams, routes, state, limits, user_map, workers, user, group, "                \
    "shutdown_timeout, log, admin, mapping"
#define ROUTE_KEYS   "user, domain, match, default, upstream, login, lowercase, mapping"
#define ONE_OF       "(a route has exactly one of \"user\", \"domain\", \"match\" and \"default\")"
#define PLACEHOLDERS "(allowed: %u, %n, %d, %%)"
#define CIDR_FORMS                                                                                 \
    "(expected \"ADDRESS\" or \"ADDRESS/PREFIX\", as in \"192.0.2.0/24\" or \"2001:db8::/32\")"
#define TLS_VALUES "(allowed: \"none\", \"starttls\", \"implicit\")"
#define VERSIONS   "(allowed: \"TLSv1\", \"TLSv1.1\", \"TLSv1.2\", \"TLSv1.3\")"
#define TLS_ONLY   "only used with tls \"starttls\" or \"implicit\""
#define UNUSED     TLS_ONLY " (tls is \"none\", so it would be unused)\n"
#define CERTS_FORM "(expected [{\"cert\": FILE, \"key\": FILE}, ...])"

/* A good config with a top-level "mapping", and one whose third route has one. */
#define WITH_MAPPING(x) WITH_TOP("'mapping': " x)
#define WITH_ROUTE_MAPPING(x)                                                                      \
    WITH_ROUTES("[{'user': 'a@example.com', 'upstream': 'main'}, {'domain': 'example.com', "       \
                "'upstream': 'main'}, {'default': true, 'upstream': 'main', 'mapping': " x "}]")
#define MAPPING_KEYS                                                                               \
    "uidl_format, reuse_xuidl, on_delete, on_retr, window, login_delay, expire, folders"
#define ON_DELETE_VALUES "(allowed: \"expunge\", \"move:FOLDER\", \"flag:KEYWORD\", \"hide\")"
#define ATOM                                                                                       \
    " (a keyword is an IMAP atom: ASCII without spaces, control bytes or any of ( ) { % * \" \\ "  \
    "])\n"
#define M  F "mapping."
#define RM F "routes[2].mapping."
#define FOLDERS_LIST                                                                               \
    "folders: expected a list of 1 to 16 folder names, as in [\"INBOX\", \"Spam\"], got "
#define NO_TEMPLATE_VAR "the template needs %u or %g, or every message gets the same UIDL\n" ONE

struct bad_case {
    const char *name;
    const char *json;
    const char *expected;
};

static const struct bad_case bad_cases[] = {
    /* Syntax: jansson's line and column (the end of the token it stopped at). */
    {"syntax missing comma", "{\n  'listeners': []\n  'upstreams': {}\n}\n",
     "popgate.json:3:13: error: invalid JSON: '}' expected near '\"upstreams\"'\n" ONE},
    {"syntax duplicate key", "{\n  'state': {},\n  'state': {}\n}\n",
     "popgate.json:3:9: error: invalid JSON: duplicate object key near '\"state\"'\n" ONE},
    {"syntax empty file", "",
     "popgate.json:1:0: error: invalid JSON: '[' or '{' expected near end of file\n" ONE},
    {"syntax truncated", "{'listeners': [\n",
     "popgate.json:2:0: error: invalid JSON: ']' expected near end of file\n" ONE},

    /* jansson quotes the raw byte it stopped at; it must not reach a terminal raw. */
    {"syntax control byte escaped", "{'a': 1\x01}",
     "popgate.json:1:8: error: invalid JSON: '}' expected near '\\x01'\n" ONE},

    /* The top level. */
    {"root array", "[]", F "the top level must be an object, got an array\n" ONE},
    {"root empty", "{}",
     F "missing required key \"listeners\"\n" F "missing required key \"upstreams\"\n" F
       "missing required key \"routes\"\n" F "missing required key \"state\"\n"
       "popgate: 4 " ERRORS_N},
    {"root missing routes", "{" LISTENERS ", " UPSTREAMS ", " STATE "}",
     F "missing required key \"routes\"\n" ONE},
    {"root unknown key", "{" LISTENERS ", " UPSTREAMS ", " ROUTES ", " STATE ", 'listener': 1}",
     F "listener: unknown key (allowed: " ROOT_KEYS ")\n" ONE},

    /* Listeners. */
    {"listeners object", WITH_LISTENERS("{}"),
     F "listeners: expected an array, got an object\n" ONE},
    {"listeners empty", WITH_LISTENERS("[]"),
     F "listeners: must not be empty (expected at least one {\"address\": \"IP:port\"})\n" ONE},
    {"listener string", WITH_LISTENERS("['127.0.0.1:110']"),
     F "listeners[0]: expected an object, got string \"127.0.0.1:110\"\n" ONE},
    {"listener no address", WITH_LISTENERS("[{}]"),
     F "listeners[0]: missing required key \"address\"\n" ONE},
    {"listener unknown key", WITH_LISTENERS("[{'address': '127.0.0.1:1110', 'port': 1}]"),
     F "listeners[0].port: unknown key (allowed: " LISTENER_KEYS ")\n" ONE},
    {"address integer", WITH_LISTENERS("[{'address': 110}]"),
     F "listeners[0].address: expected a string, got integer 110\n" ONE},
    {"address empty", WITH_ADDRESS(""), F "listeners[0].address: must not be empty\n" ONE},
    {"address no port", WITH_ADDRESS("1.2.3.4"),
     F "listeners[0].address: \"1.2.3.4\": missing port " FORMS "\n" ONE},
    {"address empty port", WITH_ADDRESS("1.2.3.4:"),
     F "listeners[0].address: \"1.2.3.4:\": missing port " FORMS "\n" ONE},
    {"address port 0", WITH_ADDRESS("1.2.3.4:0"),
     F "listeners[0].address: \"1.2.3.4:0\": port must be between 1 and 65535, got 0 " FORMS
       "\n" ONE},
    {"address port 70000", WITH_ADDRESS("1.2.3.4:70000"),
     F "listeners[0].address: \"1.2.3.4:70000\": port must be between 1 and 65535, got 70000 " FORMS
       "\n" ONE},
    {"address port huge", WITH_ADDRESS("1.2.3.4:99999999999999999999"),
     F "listeners[0].address: \"1.2.3.4:99999999999999999999\": port must be between 1 and 65535, "
       "got 999999999999... " FORMS "\n" ONE},
    {"address port not a number", WITH_ADDRESS("1.2.3.4:pop3"),
     F "listeners[0].address: \"1.2.3.4:pop3\": port \"pop3\" is not a number " FORMS "\n" ONE},
    {"address port signed", WITH_ADDRESS("1.2.3.4:+110"),
     F "listeners[0].address: \"1.2.3.4:+110\": port \"+110\" is not a number " FORMS "\n" ONE},
    {"address ipv6 no port", WITH_ADDRESS("[::1]"),
     F "listeners[0].address: \"[::1]\": missing port " FORMS "\n" ONE},
    {"address ipv6 no brackets", WITH_ADDRESS("::1:110"),
     F "listeners[0].address: \"::1:110\": an IPv6 address needs brackets, as in "
       "\"[::1]:110\"\n" ONE},
    {"address ipv6 unclosed", WITH_ADDRESS("[::1:110"),
     F "listeners[0].address: \"[::1:110\": missing ']' after the IPv6 address " FORMS "\n" ONE},
    {"address ipv6 junk after bracket", WITH_ADDRESS("[::1]110"),
     F "listeners[0].address: \"[::1]110\": expected ':' and a port after ']' " FORMS "\n" ONE},
    {"address ipv6 bad", WITH_ADDRESS("[::g]:110"),
     F "listeners[0].address: \"[::g]:110\": not a numeric IPv6 address " FORMS "\n" ONE},
    {"address ipv4 in brackets", WITH_ADDRESS("[127.0.0.1]:110"),
     F "listeners[0].address: \"[127.0.0.1]:110\": not a numeric IPv6 address " FORMS "\n" ONE},
    {"address host name", WITH_ADDRESS("host:110"),
     F "listeners[0].address: \"host:110\": not a numeric IPv4 address (host names are not "
       "allowed; expected \"IPv4:port\" or \"[IPv6]:port\")\n" ONE},
    {"address no host", WITH_ADDRESS(":110"),
     F "listeners[0].address: \":110\": not a numeric IPv4 address (host names are not "
       "allowed; expected \"IPv4:port\" or \"[IPv6]:port\")\n" ONE},
    {"address short ipv4", WITH_ADDRESS("1.2.3:110"),
     F "listeners[0].address: \"1.2.3:110\": not a numeric IPv4 address (host names are not "
       "allowed; expected \"IPv4:port\" or \"[IPv6]:port\")\n" ONE},
    {"address duplicate",
     WITH_LISTENERS("[{'address': '127.0.0.1:1110'}, {'address': '[::1]:1110'}, "
                    "{'address': '127.0.0.1:01110'}]"),
     F "listeners[2].address: duplicate address \"127.0.0.1:01110\" (the first is "
       "listeners[0])\n" ONE},

    /* Upstreams. */
    {"upstreams array", WITH_UPSTREAMS("[]"),
     F "upstreams: expected an object, got an array\n" ONE},
    {"upstreams empty", WITH_UPSTREAMS("{}"),
     F
     "upstreams: must define at least one upstream (expected {\"NAME\": {\"host\": HOST}})\n" ONE},
    {"upstream string", WITH_MAIN("'127.0.0.1'"),
     F "upstreams.main: expected an object, got string \"127.0.0.1\"\n" ONE},
    {"upstream misspelt key", WITH_MAIN("{'hots': '127.0.0.1'}"),
     F "upstreams.main.hots: unknown key (allowed: " UPSTREAM_KEYS ")\n" F
       "upstreams.main: missing required key \"host\"\n"
       "popgate: 2 " ERRORS_N},
    {"upstream host empty", WITH_MAIN("{'host': ''}"),
     F "upstreams.main.host: must not be empty\n" ONE},
    {"upstream host null", WITH_MAIN("{'host': null}"),
     F "upstreams.main.host: expected a string, got null\n" ONE},
    {"upstream port string", WITH_MAIN("{'host': '127.0.0.1', 'port': '143'}"),
     F "upstreams.main.port: expected an integer, got string \"143\"\n" ONE},
    {"upstream port real", WITH_MAIN("{'host': '127.0.0.1', 'port': 143.5}"),
     F "upstreams.main.port: expected an integer, got real 143.5\n" ONE},
    {"upstream port 0", WITH_MAIN("{'host': '127.0.0.1', 'port': 0}"),
     F "upstreams.main.port: must be between 1 and 65535, got 0\n" ONE},
    {"upstream port 70000", WITH_MAIN("{'host': '127.0.0.1', 'port': 70000}"),
     F "upstreams.main.port: must be between 1 and 65535, got 70000\n" ONE},
    {"upstream tls unknown", WITH_MAIN("{'host': '127.0.0.1', 'tls': 'ssl'}"),
     F "upstreams.main.tls: unknown value \"ssl\" (allowed: \"none\", \"starttls\", "
       "\"implicit\")\n" ONE},
    {"upstream tls boolean", WITH_MAIN("{'host': '127.0.0.1', 'tls': true}"),
     F "upstreams.main.tls: expected a string, got true\n" ONE},
    {"upstream bad name", WITH_UPSTREAMS("{'my imap': {'host': '127.0.0.1'}}"),
     F "upstreams[\"my imap\"]: invalid upstream name (allowed: 1 to 64 letters, digits, '.', "
       "'-', '_')\n" F "routes[0].upstream: unknown upstream \"main\" (defined: my imap)\n"
       "popgate: 2 " ERRORS_N},
    {"upstream control bytes in key", WITH_MAIN("{'host': '127.0.0.1', 'ho\\nst\\u0001': 1}"),
     F "upstreams.main[\"ho\\nst\\x01\"]: unknown key (allowed: " UPSTREAM_KEYS ")\n" ONE},

    /* Listener TLS keys. */
    {"listener tls unknown", WITH_LISTENER("'tls': 'ssl'"),
     F "listeners[0].tls: unknown value \"ssl\" " TLS_VALUES "\n" ONE},
    {"listener tls integer", WITH_LISTENER("'tls': 1"),
     F "listeners[0].tls: expected a string, got integer 1\n" ONE},
    {"listener implicit without certificate", WITH_LISTENER("'tls': 'implicit'"),
     F "listeners[0]: tls \"implicit\" needs \"cert\" and \"key\" or \"certificates\"\n" ONE},
    {"listener starttls without certificate", WITH_LISTENER("'tls': 'starttls'"),
     F "listeners[0]: tls \"starttls\" needs \"cert\" and \"key\" or \"certificates\"\n" ONE},
    {"listener cert without key", WITH_LISTENER("'tls': 'implicit', 'cert': 'c.pem'"),
     F "listeners[0]: \"cert\" needs \"key\" (give both or neither)\n" ONE},
    {"listener key without cert", WITH_LISTENER("'tls': 'starttls', 'key': 'k.pem'"),
     F "listeners[0]: \"key\" needs \"cert\" (give both or neither)\n" ONE},
    {"listener cert empty", WITH_LISTENER("'tls': 'implicit', 'cert': '', 'key': 'k.pem'"),
     F "listeners[0].cert: must not be empty\n" ONE},
    {"listener key integer", WITH_LISTENER("'tls': 'implicit', 'cert': 'c.pem', 'key': 5"),
     F "listeners[0].key: expected a string, got integer 5\n" ONE},
    {"listener certificates empty", WITH_LISTENER("'tls': 'implicit', 'certificates': []"),
     F "listeners[0].certificates: must not be empty " CERTS_FORM "\n" ONE},
    {"listener certificates object",
     WITH_LISTENER("'tls': 'implicit', 'certificates': {'cert': 'c.pem', 'key': 'k.pem'}"),
     F "listeners[0].certificates: expected an array, got an object\n" ONE},
    {"listener certificates entries",
     WITH_LISTENER("'tls': 'implicit', 'certificates': ['c.pem', {'cert': 'c.pem'}, "
                   "{'cert': 'c.pem', 'key': 'k.pem', 'chain': 'x.pem'}, {'cert': '', 'key': 1}]"),
     F "listeners[0].certificates[0]: expected an object {\"cert\": FILE, \"key\": FILE}, got "
       "string \"c.pem\"\n" F "listeners[0].certificates[1]: missing required key \"key\"\n" F
       "listeners[0].certificates[2].chain: unknown key (allowed: cert, key)\n" F
       "listeners[0].certificates[3].cert: must not be empty\n" F
       "listeners[0].certificates[3].key: expected a string, got integer 1\n"
       "popgate: 5 " ERRORS_N},
    {"listener certificates on tls none", WITH_LISTENER("'cert': 'c.pem', 'key': 'k.pem'"),
     F "listeners[0].cert: " UNUSED F "listeners[0].key: " UNUSED "popgate: 2 " ERRORS_N},
    {"listener every TLS key on explicit none",
     WITH_LISTENER("'tls': 'none', 'certificates': [{'cert': 'c.pem', 'key': 'k.pem'}], "
                   "'min_version': 'TLSv1', 'ciphers': 'HIGH', 'security_level': 0, "
                   "'plaintext_auth': 'allow'"),
     F "listeners[0].certificates: " UNUSED F "listeners[0].min_version: " UNUSED F
       "listeners[0].ciphers: " UNUSED F "listeners[0].security_level: " UNUSED
       "popgate: 4 " ERRORS_N},
    {"listener bad tls hides the rest", WITH_LISTENER("'tls': 'TLS', 'cert': 'c.pem'"),
     F "listeners[0].tls: unknown value \"TLS\" " TLS_VALUES "\n" F
       "listeners[0]: \"cert\" needs \"key\" (give both or neither)\n"
       "popgate: 2 " ERRORS_N},
    {"listener min_version unknown", WITH_LISTENER(TLS_PAIR ", 'min_version': 'TLSv1.4'"),
     F "listeners[0].min_version: unknown value \"TLSv1.4\" " VERSIONS "\n" ONE},
    {"listener min_version SSLv3", WITH_LISTENER(TLS_PAIR ", 'min_version': 'SSLv3'"),
     F "listeners[0].min_version: unknown value \"SSLv3\" " VERSIONS "\n" ONE},
    {"listener min_version number", WITH_LISTENER(TLS_PAIR ", 'min_version': 1.2"),
     F "listeners[0].min_version: expected a string, got real 1.2\n" ONE},
    {"listener security_level 6", WITH_LISTENER(TLS_PAIR ", 'security_level': 6"),
     F "listeners[0].security_level: must be between 0 and 5, got 6\n" ONE},
    {"listener security_level -1", WITH_LISTENER(TLS_PAIR ", 'security_level': -1"),
     F "listeners[0].security_level: must be between 0 and 5, got -1\n" ONE},
    {"listener security_level string", WITH_LISTENER(TLS_PAIR ", 'security_level': '0'"),
     F "listeners[0].security_level: expected an integer, got string \"0\"\n" ONE},
    {"listener ciphers empty", WITH_LISTENER(TLS_PAIR ", 'ciphers': ''"),
     F "listeners[0].ciphers: must not be empty\n" ONE},
    {"listener ciphers array", WITH_LISTENER(TLS_PAIR ", 'ciphers': ['HIGH']"),
     F "listeners[0].ciphers: expected a string, got an array\n" ONE},
    {"listener plaintext_auth unknown", WITH_LISTENER("'plaintext_auth': 'never'"),
     F "listeners[0].plaintext_auth: unknown value \"never\" (allowed: \"deny\", \"allow\", "
       "\"loopback\")\n" ONE},
    {"listener plaintext_auth boolean", WITH_LISTENER("'plaintext_auth': false"),
     F "listeners[0].plaintext_auth: expected a string, got false\n" ONE},

    /* Upstream TLS keys. */
    {"upstream verify string",
     WITH_MAIN("{'host': '127.0.0.1', 'tls': 'implicit', 'verify': 'no'}"),
     F "upstreams.main.verify: expected true or false, got string \"no\"\n" ONE},
    {"upstream ca_file empty", WITH_MAIN("{'host': '127.0.0.1', 'tls': 'implicit', 'ca_file': ''}"),
     F "upstreams.main.ca_file: must not be empty\n" ONE},
    {"upstream verify_name integer",
     WITH_MAIN("{'host': '127.0.0.1', 'tls': 'starttls', 'verify_name': 1}"),
     F "upstreams.main.verify_name: expected a string, got integer 1\n" ONE},
    {"upstream min_version unknown",
     WITH_MAIN("{'host': '127.0.0.1', 'tls': 'starttls', 'min_version': 'tls1.2'}"),
     F "upstreams.main.min_version: unknown value \"tls1.2\" " VERSIONS "\n" ONE},
    {"upstream ca_file with tls none",
     WITH_MAIN("{'host': '127.0.0.1', 'tls': 'none', 'ca_file': 'ca.pem'}"),
     F "upstreams.main.ca_file: " TLS_ONLY "\n" ONE},
    {"upstream TLS keys with the default tls",
     WITH_MAIN("{'host': '127.0.0.1', 'verify': false, 'ca_file': 'ca.pem', 'verify_name': 'x', "
               "'min_version': 'TLSv1.3'}"),
     F "upstreams.main.verify: " TLS_ONLY "\n" F "upstreams.main.ca_file: " TLS_ONLY "\n" F
       "upstreams.main.verify_name: " TLS_ONLY "\n" F "upstreams.main.min_version: " TLS_ONLY "\n"
       "popgate: 4 " ERRORS_N},
    {"upstream bad tls hides the rest",
     WITH_MAIN("{'host': '127.0.0.1', 'tls': 'yes', 'ca_file': 'ca.pem'}"),
     F "upstreams.main.tls: unknown value \"yes\" " TLS_VALUES "\n" ONE},

    /* Routes. */
    {"routes object", WITH_ROUTES("{}"), F "routes: expected an array, got an object\n" ONE},
    {"routes empty", WITH_ROUTES("[]"),
     F "routes: must not be empty (expected at least one route, such as {\"default\": true, "
       "\"upstream\": NAME})\n" ONE},
    {"route unknown upstream",
     "{" LISTENERS ", 'upstreams': {'imap1': {'host': '127.0.0.1'}, 'imap2': {'host': "
     "'127.0.0.1'}}, 'routes': [{'user': 'bob', 'upstream': 'imap1'}, {'default': true, "
     "'upstream': 'imap9'}], " STATE "}",
     F "routes[1].upstream: unknown upstream \"imap9\" (defined: imap1, imap2)\n" ONE},
    {"route second default",
     WITH_ROUTES("[{'default': true, 'upstream': 'main'}, {'user': 'bob', 'upstream': 'main'}, "
                 "{'default': true, 'upstream': 'main'}]"),
     F "routes[2]: a second default route (the first is routes[0])\n" ONE},
    {"route default false", WITH_ROUTES("[{'default': false, 'upstream': 'main'}]"),
     F "routes[0].default: must be true or absent, got false\n" ONE},
    {"route default string", WITH_ROUTES("[{'default': 'yes', 'upstream': 'main'}]"),
     F "routes[0].default: expected true, got string \"yes\"\n" ONE},
    {"route default and user",
     WITH_ROUTES("[{'default': true, 'user': 'bob', 'upstream': 'main'}]"),
     F "routes[0]: has both \"user\" and \"default\" " ONE_OF "\n" ONE},
    {"route neither", WITH_ROUTES("[{'upstream': 'main'}]"),
     F "routes[0]: needs one of \"user\", \"domain\", \"match\" or \"default\" (as in "
       "{\"domain\": \"example.com\", \"upstream\": NAME})\n" ONE},
    {"route no upstream", WITH_ROUTES("[{'default': true}]"),
     F "routes[0]: missing required key \"upstream\"\n" ONE},
    {"route user empty", WITH_ROUTES("[{'user': '', 'upstream': 'main'}]"),
     F "routes[0].user: must not be empty\n" ONE},
    {"route user array", WITH_ROUTES("[{'user': ['bob'], 'upstream': 'main'}]"),
     F "routes[0].user: expected a string, got an array\n" ONE},
    {"route user twice",
     WITH_ROUTES("[{'user': 'bob', 'upstream': 'main'}, {'user': 'bob', 'upstream': 'main'}]"),
     F "routes[1].user: a second route for \"bob\" (the first is routes[0])\n" ONE},
    {"route unknown key", WITH_ROUTES("[{'default': true, 'upstream': 'main', 'users': 'x'}]"),
     F "routes[0].users: unknown key (allowed: " ROUTE_KEYS ")\n" ONE},
    {"route without upstreams section", "{" LISTENERS ", " ROUTES ", " STATE "}",
     F "missing required key \"upstreams\"\n" ONE},

    /* State. */
    {"state string", WITH_STATE("'/var/lib/popgate'"),
     F "state: expected an object, got string \"/var/lib/popgate\"\n" ONE},
    {"state no dir", WITH_STATE("{}"), F "state: missing required key \"dir\"\n" ONE},
    {"state dir empty", WITH_STATE("{'dir': ''}"), F "state.dir: must not be empty\n" ONE},
    {"state dir boolean", WITH_STATE("{'dir': false}"),
     F "state.dir: expected a string, got false\n" ONE},
    {"state unknown key", WITH_STATE("{'dir': '/x', 'backend': 'redis'}"),
     F "state.backend: unknown key (allowed: dir)\n" ONE},

    /* Limits. */
    {"limits array", WITH_LIMITS("[]"), F "limits: expected an object, got an array\n" ONE},
    {"limits unknown key", WITH_LIMITS("{'idle': 600}"),
     F "limits.idle: unknown key (allowed: connect_timeout, command_timeout, auth_timeout, "
       "idle_timeout, max_bad_commands, output_buffer, line_length, max_auth_failures, "
       "auth_failure_delay, auth_failure_delay_max, max_connections, max_connections_per_ip, "
       "upstream_keepalive)\n" ONE},
    {"limits new bounds",
     WITH_LIMITS("{'line_length': 254, 'max_auth_failures': 0, 'auth_failure_delay': 61, "
                 "'auth_failure_delay_max': 3601, 'max_connections': 0, "
                 "'max_connections_per_ip': -1, 'upstream_keepalive': 1741}"),
     F "limits.line_length: must be between 255 and 2048 bytes, got 254\n" F
       "limits.max_auth_failures: must be between 1 and 100, got 0\n" F
       "limits.auth_failure_delay: must be between 0 and 60 seconds, got 61\n" F
       "limits.auth_failure_delay_max: must be between 0 and 3600 seconds, got 3601\n" F
       "limits.max_connections: must be between 1 and 1000000, got 0\n" F
       "limits.max_connections_per_ip: must be between 0 and 1000000, got -1\n" F
       "limits.upstream_keepalive: must be between 1 and 1740 seconds, got 1741\n"
       "popgate: 7 " ERRORS_N},
    {"limits delay cap below the delay",
     WITH_LIMITS("{'auth_failure_delay': 10, 'auth_failure_delay_max': 5}"),
     F "limits.auth_failure_delay_max: must be at least auth_failure_delay (10 seconds), got "
       "5\n" ONE},
    {"limits idle too short", WITH_LIMITS("{'idle_timeout': 5}"),
     F "limits.idle_timeout: must be between 600 and 86400 seconds, got 5\n" ONE},
    {"limits idle string", WITH_LIMITS("{'idle_timeout': '600'}"),
     F "limits.idle_timeout: expected an integer, got string \"600\"\n" ONE},
    {"limits every bound",
     WITH_LIMITS("{'connect_timeout': 0, 'command_timeout': 3601, 'auth_timeout': 9, "
                 "'idle_timeout': 86401, 'max_bad_commands': 0, 'output_buffer': 4095}"),
     F "limits.connect_timeout: must be between 1 and 300 seconds, got 0\n" F
       "limits.command_timeout: must be between 1 and 3600 seconds, got 3601\n" F
       "limits.auth_timeout: must be between 10 and 3600 seconds, got 9\n" F
       "limits.idle_timeout: must be between 600 and 86400 seconds, got 86401\n" F
       "limits.max_bad_commands: must be between 1 and 1000, got 0\n" F
       "limits.output_buffer: must be between 4096 and 16777216 bytes, got 4095\n"
       "popgate: 6 " ERRORS_N},
    {"limits upper bounds",
     WITH_LIMITS("{'connect_timeout': 301, 'max_bad_commands': 1001, 'output_buffer': 16777217, "
                 "'auth_timeout': -1}"),
     F "limits.connect_timeout: must be between 1 and 300 seconds, got 301\n" F
       "limits.auth_timeout: must be between 10 and 3600 seconds, got -1\n" F
       "limits.max_bad_commands: must be between 1 and 1000, got 1001\n" F
       "limits.output_buffer: must be between 4096 and 16777216 bytes, got 16777217\n"
       "popgate: 4 " ERRORS_N},

    /* How the process runs. */
    {"workers 0", WITH_TOP("'workers': 0"), F "workers: must be between 1 and 256, got 0\n" ONE},
    {"workers 257", WITH_TOP("'workers': 257"),
     F "workers: must be between 1 and 256, got 257\n" ONE},
    {"workers string", WITH_TOP("'workers': '4'"),
     F "workers: expected an integer, got string \"4\"\n" ONE},
    {"shutdown_timeout negative", WITH_TOP("'shutdown_timeout': -1"),
     F "shutdown_timeout: must be between 0 and 3600 seconds, got -1\n" ONE},
    {"shutdown_timeout 3601", WITH_TOP("'shutdown_timeout': 3601"),
     F "shutdown_timeout: must be between 0 and 3600 seconds, got 3601\n" ONE},
    {"shutdown_timeout real", WITH_TOP("'shutdown_timeout': 1.5"),
     F "shutdown_timeout: expected an integer, got real 1.5\n" ONE},
    {"log unknown", WITH_TOP("'log': 'file'"),
     F "log: unknown value \"file\" (allowed: \"stderr\", \"syslog\")\n" ONE},
    {"log boolean", WITH_TOP("'log': true"), F "log: expected a string, got true\n" ONE},
    {"user unknown", WITH_TOP("'user': 'popgate-no-such-user'"),
     F "user: unknown user \"popgate-no-such-user\"\n" ONE},
    {"user empty", WITH_TOP("'user': ''"), F "user: must not be empty\n" ONE},
    {"user uid", WITH_TOP("'user': 0"), F "user: expected a string, got integer 0\n" ONE},
    {"group without user", WITH_TOP("'group': 'root'"),
     F "group: only used with \"user\" (popgate changes its group only when it changes its "
       "user)\n" ONE},
    {"group unknown", WITH_TOP("'user': 'root', 'group': 'popgate-no-such-group'"),
     F "group: unknown group \"popgate-no-such-group\"\n" ONE},
    {"user and group unknown", WITH_TOP("'user': 'popgate-no-such-user', 'group': 'nope'"),
     F "user: unknown user \"popgate-no-such-user\"\n" F "group: unknown group \"nope\"\n"
       "popgate: 2 " ERRORS_N},
    {"group array", WITH_TOP("'user': 'root', 'group': ['root']"),
     F "group: expected a string, got an array\n" ONE},

    /* The admin listener. */
    {"admin string", WITH_TOP("'admin': '127.0.0.1:9110'"),
     F "admin: expected an object, got string \"127.0.0.1:9110\"\n" ONE},
    {"admin no address", WITH_TOP("'admin': {}"),
     F "admin: missing required key \"address\"\n" ONE},
    {"admin unknown key", WITH_TOP("'admin': {'address': '127.0.0.1:9110', 'tls': 'none'}"),
     F "admin.tls: unknown key (allowed: address)\n" ONE},
    {"admin host name", WITH_TOP("'admin': {'address': 'localhost:9110'}"),
     F "admin.address: \"localhost:9110\": not a numeric IPv4 address (host names are not "
       "allowed; expected \"IPv4:port\" or \"[IPv6]:port\")\n" ONE},
    {"admin no port", WITH_TOP("'admin': {'address': '[::1]'}"),
     F "admin.address: \"[::1]\": missing port " FORMS "\n" ONE},
    {"admin on a POP3 listener", WITH_TOP("'admin': {'address': '127.0.0.1:01110'}"),
     F "admin.address: \"127.0.0.1:01110\" is also the address of listeners[0] (the admin "
       "listener needs an address of its own)\n" ONE},
    {"admin wildcard over a POP3 listener", WITH_TOP("'admin': {'address': '0.0.0.0:1110'}"),
     F "admin.address: \"0.0.0.0:1110\" overlaps listeners[0] \"127.0.0.1:1110\" (the admin "
       "listener needs a port of its own)\n" ONE},
    {"admin under a wildcard POP3 listener",
     WITH_LISTENERS("[{'address': '[::1]:1110'}, {'address': '[::]:110'}], 'admin': {'address': "
                    "'[::1]:110'}"),
     F "admin.address: \"[::1]:110\" overlaps listeners[1] \"[::]:110\" (the admin listener "
       "needs a port of its own)\n" ONE},

    /* The user map file (its line errors are tested with real files below). */
    {"user_map integer", WITH_TOP("'user_map': 1"),
     F "user_map: expected a string, got integer 1\n" ONE},
    {"user_map empty", WITH_TOP("'user_map': ''"), F "user_map: must not be empty\n" ONE},
    {"user_map missing", WITH_TOP("'user_map': 'nope.map'"),
     F "user_map: cannot read \"nope.map\": No such file or directory\n" ONE},
    {"user_map is a folder", WITH_TOP("'user_map': '.'"),
     F "user_map: cannot read \".\": Is a directory\n" ONE},
    {"user_map without upstreams is not read",
     "{" LISTENERS ", 'upstreams': {}, " ROUTES ", " STATE ", 'user_map': 'nope.map'}",
     F
     "upstreams: must define at least one upstream (expected {\"NAME\": {\"host\": HOST}})\n" ONE},

    /* PROXY protocol. */
    {"proxy_protocol string", WITH_LISTENER("'proxy_protocol': 'yes'"),
     F "listeners[0].proxy_protocol: expected true or false, got string \"yes\"\n" ONE},
    {"proxy_protocol without trusted_proxies", WITH_LISTENER("'proxy_protocol': true"),
     F "listeners[0]: \"proxy_protocol\": true needs \"trusted_proxies\" (the addresses of the "
       "load balancers that may send PROXY headers, as in [\"192.0.2.0/24\"])\n" ONE},
    {"proxy_protocol with no trusted proxies", WITH_PROXIES("[]"),
     F "listeners[0].trusted_proxies: must not be empty with \"proxy_protocol\": true (expected "
       "the load balancers' addresses, as in [\"192.0.2.0/24\"])\n" ONE},
    {"trusted_proxies without proxy_protocol", WITH_LISTENER("'trusted_proxies': ['10.0.0.0/8']"),
     F "listeners[0].trusted_proxies: only used with \"proxy_protocol\": true (so it would be "
       "unused)\n" ONE},
    {"trusted_proxies with proxy_protocol false",
     WITH_LISTENER("'proxy_protocol': false, 'trusted_proxies': []"),
     F "listeners[0].trusted_proxies: only used with \"proxy_protocol\": true (so it would be "
       "unused)\n" ONE},
    {"trusted_proxies string", WITH_PROXIES("'10.0.0.0/8'"),
     F "listeners[0].trusted_proxies: expected an array, got string \"10.0.0.0/8\"\n" ONE},
    {"trusted_proxies entries",
     WITH_PROXIES("[5, '', 'proxy.example', '10.0.0.0/33', '2001:db8::/129', '10.0.0.0/', "
                  "'10.0.0.0/8x', '192.0.2.1/24', '2001:db8::1/32', '10.0.0.0/-1', '[::1]/128', "
                  "'10.0.0.0/8', '10.0.0.0/0099999999999999', '0.0.0.1/0']"),
     F
     "listeners[0].trusted_proxies[0]: expected a string, got integer 5\n" F
     "listeners[0].trusted_proxies[1]: must not be empty " CIDR_FORMS "\n" F
     "listeners[0].trusted_proxies[2]: \"proxy.example\": not a numeric IPv4 or IPv6 "
     "address " CIDR_FORMS "\n" F
     "listeners[0].trusted_proxies[3]: \"10.0.0.0/33\": prefix length must be between 0 and 32 "
     "for IPv4, got 33\n" F
     "listeners[0].trusted_proxies[4]: \"2001:db8::/129\": prefix length must be between 0 and "
     "128 for IPv6, got 129\n" F
     "listeners[0].trusted_proxies[5]: \"10.0.0.0/\": missing prefix length after \"/\" " CIDR_FORMS
     "\n" F "listeners[0].trusted_proxies[6]: \"10.0.0.0/8x\": prefix length \"8x\" is not a "
     "number " CIDR_FORMS "\n" F
     "listeners[0].trusted_proxies[7]: \"192.0.2.1/24\": has bits set after the /24 prefix "
     "(did you mean \"192.0.2.0/24\"?)\n" F
     "listeners[0].trusted_proxies[8]: \"2001:db8::1/32\": has bits set after the /32 prefix "
     "(did you mean \"2001:db8::/32\"?)\n" F
     "listeners[0].trusted_proxies[9]: \"10.0.0.0/-1\": prefix length \"-1\" is not a "
     "number " CIDR_FORMS "\n" F
     "listeners[0].trusted_proxies[10]: \"[::1]/128\": not a numeric IPv4 or IPv6 "
     "address " CIDR_FORMS "\n" F
     "listeners[0].trusted_proxies[12]: \"10.0.0.0/0099999999999999\": prefix length must be "
     "between 0 and 32 for IPv4, got 009999999999...\n" F
     "listeners[0].trusted_proxies[13]: \"0.0.0.1/0\": has bits set after the /0 prefix (did "
     "you mean \"0.0.0.0/0\"?)\n"
     "popgate: 13 " ERRORS_N},

    /* send_client_ip. */
    {"send_client_ip integer", WITH_MAIN("{'host': '127.0.0.1', 'send_client_ip': 1}"),
     F "upstreams.main.send_client_ip: expected true or false, got integer 1\n" ONE},

    /* Route selectors. */
    {"route user and domain",
     WITH_ROUTES("[{'user': 'bob', 'domain': 'x.org', 'upstream': 'main'}]"),
     F "routes[0]: has both \"user\" and \"domain\" " ONE_OF "\n" ONE},
    {"route three selectors",
     WITH_ROUTES("[{'default': true, 'match': '*', 'domain': 'x.org', 'upstream': 'main'}]"),
     F "routes[0]: has \"domain\", \"match\" and \"default\" " ONE_OF "\n" ONE},
    {"route four selectors",
     WITH_ROUTES("[{'default': true, 'match': '*', 'domain': 'x.org', 'user': 'bob', "
                 "'upstream': 'main'}]"),
     F "routes[0]: has \"user\", \"domain\", \"match\" and \"default\" " ONE_OF "\n" ONE},
    {"route domain with @", WITH_ROUTES("[{'domain': '@example.com', 'upstream': 'main'}]"),
     F "routes[0].domain: \"@example.com\" must not contain \"@\" (the domain is what follows the "
       "last \"@\" of a user name, as in \"example.com\")\n" ONE},
    {"route domain wildcard", WITH_ROUTES("[{'domain': '*.example.com', 'upstream': 'main'}]"),
     F "routes[0].domain: \"*.example.com\" must not contain \"*\" or \"?\" (for a pattern use "
       "\"match\", as in {\"match\": \"*@*.example.com\"})\n" ONE},
    {"route domain empty", WITH_ROUTES("[{'domain': '', 'upstream': 'main'}]"),
     F "routes[0].domain: must not be empty\n" ONE},
    {"route domain true", WITH_ROUTES("[{'domain': true, 'upstream': 'main'}]"),
     F "routes[0].domain: expected a string, got true\n" ONE},
    {"route match empty", WITH_ROUTES("[{'match': '', 'upstream': 'main'}]"),
     F "routes[0].match: must not be empty\n" ONE},
    {"route match array", WITH_ROUTES("[{'match': ['*'], 'upstream': 'main'}]"),
     F "routes[0].match: expected a string, got an array\n" ONE},
    {"route user twice in another case",
     WITH_ROUTES("[{'user': 'Bob@Example.com', 'upstream': 'main'}, {'default': true, "
                 "'upstream': 'main'}, {'user': 'bob@example.COM', 'upstream': 'main'}]"),
     F "routes[2].user: a second route for \"bob@example.COM\" (the first is routes[0])\n" ONE},
    {"route domain twice in another case",
     WITH_ROUTES("[{'domain': 'example.com', 'upstream': 'main'}, {'domain': 'example.org', "
                 "'upstream': 'main'}, {'domain': 'EXAMPLE.com', 'upstream': 'main'}]"),
     F "routes[2].domain: a second route for \"EXAMPLE.com\" (the first is routes[0])\n" ONE},
    {"route domain unknown upstream",
     WITH_ROUTES2("[{'domain': 'example.com', 'upstream': 'imap3'}]"),
     F "routes[0].upstream: unknown upstream \"imap3\" (defined: imap1, imap2)\n" ONE},

    /* Login templates. */
    {"route login unknown placeholder",
     WITH_ROUTES("[{'default': true, 'upstream': 'main'}, {'match': '*', 'upstream': 'main'}, "
                 "{'domain': 'corp', 'login': '%x@corp', 'upstream': 'main'}]"),
     F "routes[2].login: unknown placeholder \"%x\" in \"%x@corp\" " PLACEHOLDERS "\n" ONE},
    {"route login upper-case placeholder",
     WITH_ROUTES("[{'default': true, 'login': '%U', 'upstream': 'main'}]"),
     F "routes[0].login: unknown placeholder \"%U\" in \"%U\" " PLACEHOLDERS "\n" ONE},
    {"route login lone percent",
     WITH_ROUTES("[{'default': true, 'login': '%u%', 'upstream': 'main'}]"),
     F "routes[0].login: \"%u%\" ends in a lone \"%\" " PLACEHOLDERS "\n" ONE},
    {"route login percent before a UTF-8 character",
     WITH_ROUTES("[{'default': true, 'login': '%\xc3\xa9t\xc3\xa9', 'upstream': 'main'}]"),
     F "routes[0].login: unknown placeholder \"%\xc3\xa9\" in \"%\xc3\xa9t\xc3\xa9\" " PLACEHOLDERS
       "\n" ONE},
    {"route login percent before a control byte",
     WITH_ROUTES("[{'default': true, 'login': '%\\u0001', 'upstream': 'main'}]"),
     F "routes[0].login: unknown placeholder \"%\\x01\" in \"%\\x01\" " PLACEHOLDERS "\n" ONE},
    {"route login empty", WITH_ROUTES("[{'default': true, 'login': '', 'upstream': 'main'}]"),
     F "routes[0].login: must not be empty\n" ONE},
    {"route login integer", WITH_ROUTES("[{'default': true, 'login': 1, 'upstream': 'main'}]"),
     F "routes[0].login: expected a string, got integer 1\n" ONE},
    {"route lowercase string",
     WITH_ROUTES("[{'default': true, 'lowercase': 'yes', 'upstream': 'main'}]"),
     F "routes[0].lowercase: expected true or false, got string \"yes\"\n" ONE},

    /* Every new key wrong at once, each reported. */
    {"several operator errors",
     "{'listeners': [{'address': '127.0.0.1:1110', 'proxy_protocol': true}, {'address': "
     "'127.0.0.1:1111', 'trusted_proxies': ['10.0.0.1/8']}], 'upstreams': {'imap1': {'host': "
     "'127.0.0.1', 'send_client_ip': 'yes'}}, 'routes': [{'domain': 'a@b', 'upstream': "
     "'imap1'}, {'match': '*', 'login': '%s', 'upstream': 'imap1'}, {'user': 'x', 'default': "
     "true, 'upstream': 'imap1'}], " STATE ", 'workers': 0, 'group': 'root', "
     "'shutdown_timeout': 7200, 'log': 'syslog', 'admin': {'address': '127.0.0.1:1111'}, "
     "'user_map': 'missing.map'}",
     F "listeners[0]: \"proxy_protocol\": true needs \"trusted_proxies\" (the addresses of the "
       "load balancers that may send PROXY headers, as in [\"192.0.2.0/24\"])\n" F
       "listeners[1].trusted_proxies[0]: \"10.0.0.1/8\": has bits set after the /8 prefix (did "
       "you mean \"10.0.0.0/8\"?)\n" F
       "listeners[1].trusted_proxies: only used with \"proxy_protocol\": true (so it would be "
       "unused)\n" F "upstreams.imap1.send_client_ip: expected true or false, got string "
       "\"yes\"\n" F
       "routes[0].domain: \"a@b\" must not contain \"@\" (the domain is what follows the last "
       "\"@\" of a user name, as in \"example.com\")\n" F
       "routes[1].login: unknown placeholder \"%s\" in \"%s\" " PLACEHOLDERS "\n" F
       "routes[2]: has both \"user\" and \"default\" " ONE_OF "\n" F
       "workers: must be between 1 and 256, got 0\n" F
       "group: only used with \"user\" (popgate changes its group only when it changes its "
       "user)\n" F "shutdown_timeout: must be between 0 and 3600 seconds, got 7200\n" F
       "admin.address: \"127.0.0.1:1111\" is also the address of listeners[1] (the admin "
       "listener needs an address of its own)\n" F
       "user_map: cannot read \"missing.map\": No such file or directory\n"
       "popgate: 12 " ERRORS_N},

    /* Long values are cut, so one line stays one readable line. */
    {"long value cut",
     WITH_MAIN(
         "{'host': '127.0.0.1', 'tls': "
         "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'}"),
     F "upstreams.main.tls: unknown value "
       "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\" (allowed: "
       "\"none\", \"starttls\", \"implicit\")\n" ONE},
    {"long value cut on a character boundary",
     WITH_MAIN("{'host': '127.0.0.1', 'tls': "
               "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xc3\xa9xyz'}"),
     F "upstreams.main.tls: unknown value "
       "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\" (allowed: "
       "\"none\", \"starttls\", \"implicit\")\n" ONE},

    /* "mapping", at the top level: each key's bad values. */
    {"mapping not object", WITH_MAPPING("[]"), F "mapping: expected an object, got an array\n" ONE},
    {"mapping unknown key", WITH_MAPPING("{'on_delet': 'hide', 'folder': []}"),
     M "on_delet: unknown key (allowed: " MAPPING_KEYS ")\n" M
       "folder: unknown key (allowed: " MAPPING_KEYS ")\npopgate: 2 " ERRORS_N},
    {"uidl_format integer", WITH_MAPPING("{'uidl_format': 5}"),
     M "uidl_format: expected a string, got integer 5\n" ONE},
    {"uidl_format empty", WITH_MAPPING("{'uidl_format': ''}"),
     M "uidl_format: empty template\n" ONE},
    {"uidl_format without uid", WITH_MAPPING("{'uidl_format': '%08Xv'}"),
     M "uidl_format: " NO_TEMPLATE_VAR},
    {"uidl_format unknown variable", WITH_MAPPING("{'uidl_format': '%u-%q'}"),
     M "uidl_format: unknown variable (allowed: %u UID, %v UIDVALIDITY, %g server id, %%)\n" ONE},
    {"uidl_format lone percent", WITH_MAPPING("{'uidl_format': '%u%'}"),
     M "uidl_format: '%' at the end of the template (write %% for a literal '%')\n" ONE},
    {"uidl_format space", WITH_MAPPING("{'uidl_format': '%u %v'}"),
     M "uidl_format: a character outside 0x21..0x7E (space, control or non-ASCII) cannot be "
       "part of a UIDL\n" ONE},
    {"reuse_xuidl string", WITH_MAPPING("{'reuse_xuidl': 'yes'}"),
     M "reuse_xuidl: expected true or false, got string \"yes\"\n" ONE},
    {"reuse_xuidl integer", WITH_MAPPING("{'reuse_xuidl': 1}"),
     M "reuse_xuidl: expected true or false, got integer 1\n" ONE},
    {"on_delete integer", WITH_MAPPING("{'on_delete': 1}"),
     M "on_delete: expected a string, got integer 1\n" ONE},
    {"on_delete unknown", WITH_MAPPING("{'on_delete': 'delete'}"),
     M "on_delete: unknown value \"delete\" " ON_DELETE_VALUES "\n" ONE},
    {"on_delete case", WITH_MAPPING("{'on_delete': 'Expunge'}"),
     M "on_delete: unknown value \"Expunge\" " ON_DELETE_VALUES "\n" ONE},
    {"on_delete empty", WITH_MAPPING("{'on_delete': ''}"),
     M "on_delete: unknown value \"\" " ON_DELETE_VALUES "\n" ONE},
    {"on_delete move without colon", WITH_MAPPING("{'on_delete': 'move'}"),
     M "on_delete: \"move\" needs a folder after \"move:\", as in \"move:Trash\"\n" ONE},
    {"on_delete move empty", WITH_MAPPING("{'on_delete': 'move:'}"),
     M "on_delete: \"move:\" needs a folder after \"move:\", as in \"move:Trash\"\n" ONE},
    {"on_delete move too long",
     WITH_MAPPING("{'on_delete': 'move:"
                  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'}"),
     M "on_delete: the folder in "
       "\"move:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\" must be at most "
       "255 bytes, got 256\n" ONE},
    {"on_delete move LF", WITH_MAPPING("{'on_delete': 'move:a\\nb'}"),
     M "on_delete: the folder in \"move:a\\nb\" must not contain CR, LF or NUL\n" ONE},
    {"on_delete move CR", WITH_MAPPING("{'on_delete': 'move:a\\rb'}"),
     M "on_delete: the folder in \"move:a\\x0db\" must not contain CR, LF or NUL\n" ONE},
    {"on_delete move INBOX", WITH_MAPPING("{'on_delete': 'move:inbox'}"),
     M "on_delete: \"move:inbox\" would move deleted messages back into INBOX, where POP3 shows "
       "them again (name another folder, as in \"move:Trash\")\n" ONE},
    {"on_delete flag without colon", WITH_MAPPING("{'on_delete': 'flag'}"),
     M "on_delete: \"flag\" needs a keyword after \"flag:\", as in \"flag:$POP3Deleted\"\n" ONE},
    {"on_delete flag empty", WITH_MAPPING("{'on_delete': 'flag:'}"),
     M "on_delete: \"flag:\" needs a keyword after \"flag:\", as in \"flag:$POP3Deleted\"\n" ONE},
    {"on_delete flag system", WITH_MAPPING("{'on_delete': 'flag:\\\\Seen'}"),
     M "on_delete: \"flag:\\\\Seen\" names a system flag; on_delete sets a keyword (an IMAP atom "
       "without \"\\\"), as in \"flag:$POP3Deleted\"\n" ONE},
    {"on_delete flag backslash", WITH_MAPPING("{'on_delete': 'flag:a\\\\b'}"),
     M "on_delete: the keyword in \"flag:a\\\\b\" must not contain \"\\\\\"" ATOM ONE},
    {"on_delete flag open paren", WITH_MAPPING("{'on_delete': 'flag:a(b'}"),
     M "on_delete: the keyword in \"flag:a(b\" must not contain \"(\"" ATOM ONE},
    {"on_delete flag close paren", WITH_MAPPING("{'on_delete': 'flag:a)b'}"),
     M "on_delete: the keyword in \"flag:a)b\" must not contain \")\"" ATOM ONE},
    {"on_delete flag brace", WITH_MAPPING("{'on_delete': 'flag:a{5}'}"),
     M "on_delete: the keyword in \"flag:a{5}\" must not contain \"{\"" ATOM ONE},
    {"on_delete flag space", WITH_MAPPING("{'on_delete': 'flag:a b'}"),
     M "on_delete: the keyword in \"flag:a b\" must not contain a space" ATOM ONE},
    {"on_delete flag percent", WITH_MAPPING("{'on_delete': 'flag:a%'}"),
     M "on_delete: the keyword in \"flag:a%\" must not contain \"%\"" ATOM ONE},
    {"on_delete flag star", WITH_MAPPING("{'on_delete': 'flag:*'}"),
     M "on_delete: the keyword in \"flag:*\" must not contain \"*\"" ATOM ONE},
    {"on_delete flag quote", WITH_MAPPING("{'on_delete': 'flag:a\\'b'}"),
     M "on_delete: the keyword in \"flag:a\\\"b\" must not contain \"\\\"\"" ATOM ONE},
    {"on_delete flag bracket", WITH_MAPPING("{'on_delete': 'flag:a]'}"),
     M "on_delete: the keyword in \"flag:a]\" must not contain \"]\"" ATOM ONE},
    {"on_delete flag tab", WITH_MAPPING("{'on_delete': 'flag:a\\tb'}"),
     M "on_delete: the keyword in \"flag:a\\tb\" must not contain byte 0x09" ATOM ONE},
    {"on_delete flag DEL", WITH_MAPPING("{'on_delete': 'flag:a\\u007f'}"),
     M "on_delete: the keyword in \"flag:a\\x7f\" must not contain byte 0x7f" ATOM ONE},
    {"on_delete flag non-ASCII", WITH_MAPPING("{'on_delete': 'flag:caf\xc3\xa9'}"),
     M "on_delete: the keyword in \"flag:caf\xc3\xa9\" must not contain byte 0xc3" ATOM ONE},
    {"on_retr unknown", WITH_MAPPING("{'on_retr': 'read'}"),
     M "on_retr: unknown value \"read\" (allowed: \"none\", \"seen\")\n" ONE},
    {"on_retr boolean", WITH_MAPPING("{'on_retr': true}"),
     M "on_retr: expected a string, got true\n" ONE},
    {"window unknown", WITH_MAPPING("{'window': 'since_login'}"),
     M "window: unknown value \"since_login\" (allowed: \"all\", \"since_first_login\")\n" ONE},
    {"window integer", WITH_MAPPING("{'window': 0}"),
     M "window: expected a string, got integer 0\n" ONE},
    {"login_delay negative", WITH_MAPPING("{'login_delay': -1}"),
     M "login_delay: must be between 0 and 86400 seconds, got -1\n" ONE},
    {"login_delay too big", WITH_MAPPING("{'login_delay': 86401}"),
     M "login_delay: must be between 0 and 86400 seconds, got 86401\n" ONE},
    {"login_delay string", WITH_MAPPING("{'login_delay': '60'}"),
     M "login_delay: expected an integer, got string \"60\"\n" ONE},
    {"login_delay real", WITH_MAPPING("{'login_delay': 1.5}"),
     M "login_delay: expected an integer, got real 1.5\n" ONE},
    {"expire negative", WITH_MAPPING("{'expire': -1}"),
     M "expire: must be between 0 and 36500 days, got -1\n" ONE},
    {"expire too big", WITH_MAPPING("{'expire': 36501}"),
     M "expire: must be between 0 and 36500 days, got 36501\n" ONE},
    {"expire lower-case never", WITH_MAPPING("{'expire': 'never'}"),
     M "expire: expected a number of days (0 to 36500) or \"NEVER\", got string \"never\"\n" ONE},
    {"expire digits as string", WITH_MAPPING("{'expire': '30'}"),
     M "expire: expected a number of days (0 to 36500) or \"NEVER\", got string \"30\"\n" ONE},
    {"expire boolean", WITH_MAPPING("{'expire': false}"),
     M "expire: expected a number of days (0 to 36500) or \"NEVER\", got false\n" ONE},
    {"expire real", WITH_MAPPING("{'expire': 7.0}"),
     M "expire: expected a number of days (0 to 36500) or \"NEVER\", got real 7\n" ONE},
    {"folders empty", WITH_MAPPING("{'folders': []}"), M FOLDERS_LIST "an array\n" ONE},
    {"folders string", WITH_MAPPING("{'folders': 'INBOX'}"),
     M FOLDERS_LIST "string \"INBOX\"\n" ONE},
    {"folders too many",
     WITH_MAPPING("{'folders': ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', "
                  "'n', 'o', 'p', 'q']}"),
     M FOLDERS_LIST "an array\n" ONE},
    {"folders not strings", WITH_MAPPING("{'folders': ['INBOX', 7, null]}"),
     M "folders[1]: expected a folder name (a string), got integer 7\n" M
       "folders[2]: expected a folder name (a string), got null\n" TWO},
    /* (A NUL never gets this far: the JSON reader refuses \u0000.) */
    {"folders bad names", WITH_MAPPING("{'folders': ['', 'a\\r\\nb', 'c\\nd']}"),
     M "folders[0]: the folder name is empty\n" M
       "folders[1]: the folder name contains CR, LF or NUL\n" M
       "folders[2]: the folder name contains CR, LF or NUL\n" THREE},
    {"folders too long",
     WITH_MAPPING("{'folders': ['"
                  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa']}"),
     M "folders[0]: the folder name is longer than 255 bytes\n" ONE},
    /* INBOX is case-insensitive (RFC 3501), other names are not. */
    {"folders inbox twice", WITH_MAPPING("{'folders': ['INBOX', 'Spam', 'inbox']}"),
     M "folders[2]: \"inbox\" is already folders[0]\n" ONE},
    {"folders twice", WITH_MAPPING("{'folders': ['Spam', 'INBOX', 'Spam']}"),
     M "folders[2]: \"Spam\" is already folders[0]\n" ONE},
    {"folders move target",
     WITH_MAPPING("{'folders': ['INBOX', 'Junk'], 'on_delete': 'move:Junk'}"),
     F "mapping: on_delete \"move:Junk\" moves deleted messages into folders[1], where POP3 shows "
       "them again (move them to a folder outside \"folders\")\n" ONE},
    {"mapping several errors",
     WITH_MAPPING("{'uidl_format': '%v', 'on_delete': 'move:', 'window': 'new', "
                  "'login_delay': 86401, 'expire': 'x'}"),
     M "uidl_format: the template needs %u or %g, or every message gets the same UIDL\n" M
       "on_delete: \"move:\" needs a folder after \"move:\", as in \"move:Trash\"\n" M
       "window: unknown value \"new\" (allowed: \"all\", \"since_first_login\")\n" M
       "login_delay: must be between 0 and 86400 seconds, got 86401\n" M
       "expire: expected a number of days (0 to 36500) or \"NEVER\", got string \"x\"\n"
       "popgate: 5 " ERRORS_N},

    /* "mapping" inside a route: the same checks, at the route's path. */
    {"route mapping not object", WITH_ROUTE_MAPPING("'hide'"),
     F "routes[2].mapping: expected an object, got string \"hide\"\n" ONE},
    {"route mapping unknown key", WITH_ROUTE_MAPPING("{'upstream': 'main'}"),
     RM "upstream: unknown key (allowed: " MAPPING_KEYS ")\n" ONE},
    {"route uidl_format", WITH_ROUTE_MAPPING("{'uidl_format': '%v'}"),
     RM "uidl_format: " NO_TEMPLATE_VAR},
    {"route reuse_xuidl", WITH_ROUTE_MAPPING("{'reuse_xuidl': null}"),
     RM "reuse_xuidl: expected true or false, got null\n" ONE},
    {"route on_delete unknown", WITH_ROUTE_MAPPING("{'on_delete': 'trash'}"),
     RM "on_delete: unknown value \"trash\" " ON_DELETE_VALUES "\n" ONE},
    {"route on_delete move", WITH_ROUTE_MAPPING("{'on_delete': 'move:INBOX'}"),
     RM "on_delete: \"move:INBOX\" would move deleted messages back into INBOX, where POP3 shows "
        "them again (name another folder, as in \"move:Trash\")\n" ONE},
    {"route on_delete flag system", WITH_ROUTE_MAPPING("{'on_delete': 'flag:\\\\Deleted'}"),
     RM "on_delete: \"flag:\\\\Deleted\" names a system flag; on_delete sets a keyword (an IMAP "
        "atom without \"\\\"), as in \"flag:$POP3Deleted\"\n" ONE},
    {"route on_delete flag atom", WITH_ROUTE_MAPPING("{'on_delete': 'flag:a b'}"),
     RM "on_delete: the keyword in \"flag:a b\" must not contain a space" ATOM ONE},
    {"route on_retr", WITH_ROUTE_MAPPING("{'on_retr': 'SEEN'}"),
     RM "on_retr: unknown value \"SEEN\" (allowed: \"none\", \"seen\")\n" ONE},
    {"route window", WITH_ROUTE_MAPPING("{'window': 'none'}"),
     RM "window: unknown value \"none\" (allowed: \"all\", \"since_first_login\")\n" ONE},
    {"route login_delay", WITH_ROUTE_MAPPING("{'login_delay': 100000}"),
     RM "login_delay: must be between 0 and 86400 seconds, got 100000\n" ONE},
    {"route expire", WITH_ROUTE_MAPPING("{'expire': 40000}"),
     RM "expire: must be between 0 and 36500 days, got 40000\n" ONE},
    {"route expire string", WITH_ROUTE_MAPPING("{'expire': 'Never'}"),
     RM "expire: expected a number of days (0 to 36500) or \"NEVER\", got string \"Never\"\n" ONE},
    {"route folders", WITH_ROUTE_MAPPING("{'folders': ['INBOX', 'INBOX']}"),
     RM "folders[1]: \"INBOX\" is already folders[0]\n" ONE},
    /* The route's move target against the top-level folders it inherits. */
    {"route move into folders",
     "{" LISTENERS ", " UPSTREAMS ", " STATE ", 'mapping': {'folders': ['INBOX', 'Spam']}, "
     "'routes': [{'default': true, 'upstream': 'main', 'mapping': {'on_delete': 'move:Spam'}}]}",
     F "routes[0].mapping: on_delete \"move:Spam\" moves deleted messages into folders[1], where "
       "POP3 shows them again (move them to a folder outside \"folders\")\n" ONE},
    /* A bad top-level key is reported once, not again for every route that copies it. */
    {"top and route mapping",
     "{" LISTENERS ", " UPSTREAMS ", 'mapping': {'on_retr': 'x'}, 'routes': [{'default': true, "
     "'upstream': 'main', 'mapping': {'window': 'x'}}, {'user': 'b', 'upstream': 'main'}], " STATE
     "}",
     M "on_retr: unknown value \"x\" (allowed: \"none\", \"seen\")\n" F
       "routes[0].mapping.window: unknown value \"x\" (allowed: \"all\", \"since_first_login\")\n"
       "popgate: 2 " ERRORS_N},

    /* Every error in one run, in the order of the sections. */
    {"several errors",
     "{'listeners': [{'address': '1.2.3.4'}, {'address': '[::1]:110'}, {'address': "
     "'[::1]:110'}], 'upstreams': {'imap1': {'host': '127.0.0.1', 'port': 0, 'hots': 'x'}}, "
     "'routes': [{'default': true, 'upstream': 'imap1'}, {'default': true, 'upstream': "
     "'imap2'}], 'limits': {'idle_timeout': 5}}",
     F "missing required key \"state\"\n" F "listeners[0].address: \"1.2.3.4\": missing port " FORMS
       "\n" F
       "listeners[2].address: duplicate address \"[::1]:110\" (the first is listeners[1])\n" F
       "upstreams.imap1.hots: unknown key (allowed: " UPSTREAM_KEYS ")\n" F
       "upstreams.imap1.port: must be between 1 and 65535, got 0\n" F
       "routes[1]: a second default route (the first is routes[0])\n" F
       "routes[1].upstream: unknown upstream \"imap2\" (defined: imap1)\n" F
       "limits.idle_timeout: must be between 600 and 86400 seconds, got 5\n"
       "popgate: 8 " ERRORS_N},
};

START_TEST(test_bad_config)
{
    const struct bad_case *c = &bad_cases[_i];
    char *errors = (char *)"unset";
    struct config *cfg = load_text(c->json, &errors);
    ck_assert_msg(cfg == NULL, "case \"%s\": loaded", c->name);
    ck_assert_msg(errors != NULL, "case \"%s\": no error text", c->name);
    ck_assert_msg(strcmp(errors, c->expected) == 0, "case \"%s\":\n--- got\n%s--- expected\n%s",
                  c->name, errors, c->expected);
    free(errors);
}
END_TEST

START_TEST(test_missing_file)
{
    char *errors = NULL;
    ck_assert_ptr_null(config_load("nope.json", &errors));
    ck_assert_str_eq(errors,
                     "nope.json: error: unable to open nope.json: No such file or directory\n"
                     "popgate: 1 error in nope.json\n");
    free(errors);
}
END_TEST

START_TEST(test_path_as_given)
{
    ck_assert_int_eq(mkdir("conf", 0700), 0);
    write_config("conf/p.json", WITH_LIMITS("{'idle_timeout': 5}"));
    char *errors = NULL;
    ck_assert_ptr_null(config_load("./conf/p.json", &errors));
    ck_assert_str_eq(errors,
                     "./conf/p.json: limits.idle_timeout: must be between 600 and 86400 seconds, "
                     "got 5\npopgate: 1 error in ./conf/p.json\n");
    free(errors);
    ck_assert_int_eq(unlink("conf/p.json"), 0);
    ck_assert_int_eq(rmdir("conf"), 0);
}
END_TEST

START_TEST(test_unresolvable_host)
{
    char *errors = NULL;
    ck_assert_ptr_null(load_text(WITH_MAIN("{'host': 'popgate-test.invalid'}"), &errors));
    const char *want = F "upstreams.main.host: cannot resolve \"popgate-test.invalid\": ";
    ck_assert_msg(strncmp(errors, want, strlen(want)) == 0, "got: %s", errors);
    /* The reason is the resolver's; the line and the count are ours. */
    const char *nl = strchr(errors, '\n');
    ck_assert_ptr_nonnull(nl);
    ck_assert_str_eq(nl + 1, ONE);
    free(errors);
}
END_TEST

START_TEST(test_errors_r_may_be_null)
{
    write_config("popgate.json", "[]");
    ck_assert_ptr_null(config_load("popgate.json", NULL));
    write_config("popgate.json", GOOD);
    struct config *cfg = config_load("popgate.json", NULL);
    ck_assert_ptr_nonnull(cfg);
    config_free(&cfg);
}
END_TEST

START_TEST(test_defaults)
{
    char *errors = (char *)"unset";
    struct config *cfg = load_text(
        "{" LISTENERS ", 'upstreams': {'main': {'host': '127.0.0.1'}}, " ROUTES ", " STATE "}",
        &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    ck_assert_ptr_null(errors);
    ck_assert_str_eq(cfg->path, "popgate.json");

    ck_assert_uint_eq(cfg->nlisteners, 1);
    const struct config_listener *l = &cfg->listeners[0];
    ck_assert_str_eq(l->address_text, "127.0.0.1:1110");
    ck_assert_uint_eq(l->addr_len, sizeof(struct sockaddr_in));
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&l->addr;
    ck_assert_int_eq(sin->sin_family, AF_INET);
    ck_assert_uint_eq(ntohs(sin->sin_port), 1110);
    ck_assert_uint_eq(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK);
    ck_assert_int_eq(l->tls, CONFIG_TLS_NONE);
    ck_assert_ptr_null(l->certs);
    ck_assert_uint_eq(l->ncerts, 0);
    ck_assert_int_eq(l->min_version, TLS1_2_VERSION);
    ck_assert_ptr_null(l->ciphers);
    ck_assert_int_eq(l->security_level, -1);
    ck_assert_int_eq(l->plaintext_auth, CONFIG_PLAINTEXT_LOOPBACK);
    ck_assert_ptr_null(l->tls_ctx);
    ck_assert(!l->proxy_protocol);
    ck_assert_ptr_null(l->trusted_proxies);
    ck_assert_uint_eq(l->ntrusted_proxies, 0);

    ck_assert_uint_eq(cfg->nupstreams, 1);
    const struct config_upstream *u = &cfg->upstreams[0];
    ck_assert_str_eq(u->name, "main");
    ck_assert_str_eq(u->host, "127.0.0.1");
    ck_assert_uint_eq(u->port, 143);
    ck_assert_int_eq(u->tls, CONFIG_TLS_NONE);
    ck_assert(u->verify);
    ck_assert_ptr_null(u->ca_file);
    ck_assert_ptr_null(u->verify_name);
    ck_assert_int_eq(u->min_version, TLS1_2_VERSION);
    ck_assert_ptr_null(u->tls_ctx);
    ck_assert(!u->send_client_ip);
    ck_assert_uint_eq(u->naddrs, 1);
    ck_assert_uint_eq(u->addr_lens[0], sizeof(struct sockaddr_in));
    const struct sockaddr_in *usin = (const struct sockaddr_in *)&u->addrs[0];
    ck_assert_int_eq(usin->sin_family, AF_INET);
    ck_assert_uint_eq(ntohs(usin->sin_port), 143);
    ck_assert_uint_eq(ntohl(usin->sin_addr.s_addr), INADDR_LOOPBACK);

    ck_assert_uint_eq(cfg->nroutes, 1);
    ck_assert(cfg->routes[0].is_default);
    ck_assert_ptr_null(cfg->routes[0].user);
    ck_assert_str_eq(cfg->routes[0].upstream_name, "main");
    ck_assert_ptr_eq(cfg->routes[0].upstream, u);
    ck_assert_ptr_null(cfg->routes[0].domain);
    ck_assert_ptr_null(cfg->routes[0].match);
    ck_assert_ptr_null(cfg->routes[0].login);
    ck_assert(!cfg->routes[0].lowercase);

    ck_assert_str_eq(cfg->state_dir, "/var/lib/popgate");

    /* One worker per online CPU, within 1..256. */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    ck_assert_uint_eq(cfg->workers, cpus < 1 ? 1 : cpus > 256 ? 256 : (unsigned)cpus);
    ck_assert_ptr_null(cfg->run_user);
    ck_assert_ptr_null(cfg->run_group);
    ck_assert_uint_eq(cfg->shutdown_timeout, 30);
    ck_assert_int_eq(cfg->log, CONFIG_LOG_STDERR);
    ck_assert_ptr_null(cfg->admin);
    ck_assert_ptr_null(cfg->user_map_path);
    ck_assert_ptr_null(cfg->user_map);

    ck_assert_uint_eq(cfg->limits.connect_timeout, 10);
    ck_assert_uint_eq(cfg->limits.command_timeout, 60);
    ck_assert_uint_eq(cfg->limits.auth_timeout, 60);
    ck_assert_uint_eq(cfg->limits.idle_timeout, 600);
    ck_assert_uint_eq(cfg->limits.max_bad_commands, 10);
    ck_assert_uint_eq(cfg->limits.output_buffer, 65536);
    ck_assert_uint_eq(cfg->limits.line_length, 255);
    ck_assert_uint_eq(cfg->limits.max_auth_failures, 3);
    ck_assert_uint_eq(cfg->limits.auth_failure_delay, 2);
    ck_assert_uint_eq(cfg->limits.auth_failure_delay_max, 15);
    ck_assert_uint_eq(cfg->limits.max_connections, 10000);
    ck_assert_uint_eq(cfg->limits.max_connections_per_ip, 100);
    ck_assert_uint_eq(cfg->limits.upstream_keepalive, 1500);

    config_free(&cfg);
    ck_assert_ptr_null(cfg);
    config_free(&cfg);
    config_free(NULL);
}
END_TEST

START_TEST(test_full_config)
{
    char *errors = NULL;
    struct config *cfg = load_text(
        "{\n"
        "  'listeners': [{'address': '0.0.0.0:110'}, {'address': '[::1]:1110'},\n"
        "                {'address': '[::]:110'}],\n"
        "  'upstreams': {\n"
        "    'imap1': {'host': '127.0.0.1', 'port': 10143, 'tls': 'none'},\n"
        "    'imap2': {'host': '::1', 'port': 993, 'tls': 'none'}\n"
        "  },\n"
        "  'routes': [\n"
        "    {'default': true, 'upstream': 'imap1'},\n"
        "    {'user': 'bob@example.com', 'upstream': 'imap2'}\n"
        "  ],\n"
        "  'state': {'dir': 'state'},\n"
        "  'limits': {'connect_timeout': 300, 'command_timeout': 1, 'auth_timeout': 10,\n"
        "             'idle_timeout': 86400, 'max_bad_commands': 1000, 'output_buffer': 16777216}\n"
        "}\n",
        &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);

    ck_assert_uint_eq(cfg->nlisteners, 3);
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&cfg->listeners[1].addr;
    ck_assert_uint_eq(cfg->listeners[1].addr_len, sizeof(struct sockaddr_in6));
    ck_assert_int_eq(sin6->sin6_family, AF_INET6);
    ck_assert_uint_eq(ntohs(sin6->sin6_port), 1110);
    ck_assert(memcmp(&sin6->sin6_addr, &in6addr_loopback, sizeof(in6addr_loopback)) == 0);
    sin6 = (const struct sockaddr_in6 *)&cfg->listeners[2].addr;
    ck_assert(memcmp(&sin6->sin6_addr, &in6addr_any, sizeof(in6addr_any)) == 0);
    ck_assert_uint_eq(ntohs(sin6->sin6_port), 110);

    const struct config_upstream *imap1 = config_upstream_find(cfg, "imap1");
    const struct config_upstream *imap2 = config_upstream_find(cfg, "imap2");
    ck_assert_ptr_eq(imap1, &cfg->upstreams[0]);
    ck_assert_ptr_eq(imap2, &cfg->upstreams[1]);
    ck_assert_ptr_null(config_upstream_find(cfg, "IMAP1"));
    ck_assert_ptr_null(config_upstream_find(cfg, "imap3"));
    ck_assert_ptr_null(config_upstream_find(NULL, "imap1"));
    ck_assert_uint_eq(imap1->port, 10143);
    /* An explicit "none" wins over the port-993 default. */
    ck_assert_uint_eq(imap2->port, 993);
    ck_assert_int_eq(imap2->tls, CONFIG_TLS_NONE);
    ck_assert_uint_eq(imap2->naddrs, 1);
    ck_assert_int_eq(imap2->addrs[0].ss_family, AF_INET6);
    ck_assert_uint_eq(ntohs(((const struct sockaddr_in6 *)&imap2->addrs[0])->sin6_port), 993);

    ck_assert_uint_eq(cfg->nroutes, 2);
    ck_assert(!cfg->routes[1].is_default);
    ck_assert_str_eq(cfg->routes[1].user, "bob@example.com");
    ck_assert_ptr_eq(cfg->routes[1].upstream, imap2);
    ck_assert_str_eq(cfg->state_dir, "state");

    ck_assert_uint_eq(cfg->limits.connect_timeout, 300);
    ck_assert_uint_eq(cfg->limits.command_timeout, 1);
    ck_assert_uint_eq(cfg->limits.auth_timeout, 10);
    ck_assert_uint_eq(cfg->limits.idle_timeout, 86400);
    ck_assert_uint_eq(cfg->limits.max_bad_commands, 1000);
    ck_assert_uint_eq(cfg->limits.output_buffer, 16777216);
    config_free(&cfg);
}
END_TEST

/* Every key of issue 4 set, on the values an ISP would write. */
START_TEST(test_operator_config)
{
    FILE *f = fopen("users.map", "w");
    ck_assert_ptr_nonnull(f);
    fputs("# user upstream [login]\nalice@example.com imap2\nBob@Example.COM imap1 bob.smith\n", f);
    ck_assert_int_eq(fclose(f), 0);
    char *errors = NULL;
    struct config *cfg = load_text(
        "{\n"
        "  'listeners': [\n"
        "    {'address': '0.0.0.0:110', 'proxy_protocol': true,\n"
        "     'trusted_proxies': ['192.0.2.0/24', '10.0.0.1', '2001:db8::/32', '::1',\n"
        "                         '0.0.0.0/0', '::/0']},\n"
        "    {'address': '[::]:1110', 'proxy_protocol': false}\n"
        "  ],\n"
        "  " UPSTREAMS2 ",\n"
        "  'routes': [\n"
        "    {'user': 'carol@example.com', 'upstream': 'imap2', 'login': 'carol'},\n"
        "    {'domain': 'example.net', 'upstream': 'imap2', 'login': '%n', 'lowercase': true},\n"
        "    {'match': '*@*.example.org', 'upstream': 'imap1', 'login': '%n+%d%%'},\n"
        "    {'match': '*@*.example.org', 'upstream': 'imap2'},\n"
        "    {'default': true, 'upstream': 'imap1', 'lowercase': false}\n"
        "  ],\n"
        "  'state': {'dir': 'state'},\n"
        "  'workers': 4, 'user': 'nobody', 'shutdown_timeout': 0, 'log': 'syslog',\n"
        "  'admin': {'address': '127.0.0.1:1110'}, 'user_map': 'users.map'\n"
        "}\n",
        &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);

    ck_assert_uint_eq(cfg->workers, 4);
    struct passwd *pw = getpwnam("nobody");
    ck_assert_ptr_nonnull(pw);
    ck_assert_str_eq(cfg->run_user, "nobody");
    ck_assert_ptr_null(cfg->run_group);
    ck_assert_uint_eq(cfg->uid, pw->pw_uid);
    /* Without "group", the user's primary group. */
    ck_assert_uint_eq(cfg->gid, pw->pw_gid);
    ck_assert_uint_eq(cfg->shutdown_timeout, 0);
    ck_assert_int_eq(cfg->log, CONFIG_LOG_SYSLOG);

    /* The admin address may share a port with a listener of the other family (both set
     * IPV6_V6ONLY). */
    ck_assert_ptr_nonnull(cfg->admin);
    ck_assert_str_eq(cfg->admin->address_text, "127.0.0.1:1110");
    ck_assert_uint_eq(cfg->admin->addr_len, sizeof(struct sockaddr_in));
    ck_assert_uint_eq(ntohs(((const struct sockaddr_in *)&cfg->admin->addr)->sin_port), 1110);
    ck_assert_int_eq(cfg->admin->tls, CONFIG_TLS_NONE);

    const struct config_listener *l = &cfg->listeners[0];
    ck_assert(l->proxy_protocol);
    ck_assert_uint_eq(l->ntrusted_proxies, 6);
    static const struct {
        int family;
        const char *addr;
        unsigned prefix;
    } want[] = {{AF_INET, "192.0.2.0", 24}, {AF_INET, "10.0.0.1", 32}, {AF_INET6, "2001:db8::", 32},
                {AF_INET6, "::1", 128},     {AF_INET, "0.0.0.0", 0},   {AF_INET6, "::", 0}};
    for (size_t i = 0; i < 6; i++) {
        unsigned char addr[16] = {0};
        ck_assert_int_eq(inet_pton(want[i].family, want[i].addr, addr), 1);
        ck_assert_int_eq(l->trusted_proxies[i].family, want[i].family);
        ck_assert_uint_eq(l->trusted_proxies[i].prefix, want[i].prefix);
        ck_assert_mem_eq(l->trusted_proxies[i].addr, addr, 16);
    }
    ck_assert(!cfg->listeners[1].proxy_protocol);
    ck_assert_uint_eq(cfg->listeners[1].ntrusted_proxies, 0);

    const struct config_upstream *imap1 = config_upstream_find(cfg, "imap1");
    const struct config_upstream *imap2 = config_upstream_find(cfg, "imap2");
    ck_assert_uint_eq(cfg->nroutes, 5);
    ck_assert_str_eq(cfg->routes[0].user, "carol@example.com");
    ck_assert_str_eq(cfg->routes[0].login, "carol");
    ck_assert_str_eq(cfg->routes[1].domain, "example.net");
    ck_assert(cfg->routes[1].lowercase);
    ck_assert_str_eq(cfg->routes[2].match, "*@*.example.org");
    ck_assert_str_eq(cfg->routes[2].login, "%n+%d%%");
    ck_assert_ptr_eq(cfg->routes[3].upstream, imap2);
    ck_assert(cfg->routes[4].is_default);
    ck_assert(!cfg->routes[4].lowercase);

    ck_assert_str_eq(cfg->user_map_path, "users.map");
    ck_assert_ptr_nonnull(cfg->user_map);
    ck_assert_uint_eq(user_map_count(cfg->user_map), 2);
    const struct user_map_entry *e = user_map_find(cfg->user_map, "bob@example.com", 15);
    ck_assert_ptr_nonnull(e);
    ck_assert_ptr_eq(e->upstream, imap1);
    ck_assert_str_eq(e->login, "bob.smith");

    /* The loaded config routes as route.h says. */
    struct route_result r;
    ck_assert_int_eq(route_resolve(cfg, "BOB@example.com", 15, &r), 0);
    ck_assert_int_eq(r.source, ROUTE_USER_MAP);
    ck_assert_str_eq(r.login, "bob.smith");
    ck_assert_int_eq(route_resolve(cfg, "Dave@EXAMPLE.net", 16, &r), 0);
    ck_assert_int_eq(r.source, ROUTE_DOMAIN);
    ck_assert_ptr_eq(r.upstream, imap2);
    ck_assert_str_eq(r.login, "dave");
    ck_assert_int_eq(route_resolve(cfg, "eve@mx.example.org", 18, &r), 0);
    ck_assert_ptr_eq(r.route, &cfg->routes[2]);
    ck_assert_str_eq(r.login, "eve+mx.example.org%");
    unlink("users.map");
    config_free(&cfg);
}
END_TEST

START_TEST(test_run_as_group)
{
    char *errors = NULL;
    struct config *cfg = load_text(WITH_TOP("'user': 'root', 'group': 'nogroup'"), &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    struct group *gr = getgrnam("nogroup");
    ck_assert_ptr_nonnull(gr);
    ck_assert_str_eq(cfg->run_user, "root");
    ck_assert_str_eq(cfg->run_group, "nogroup");
    ck_assert_uint_eq(cfg->uid, 0);
    ck_assert_uint_eq(cfg->gid, gr->gr_gid);
    config_free(&cfg);
}
END_TEST

START_TEST(test_workers_and_timeout_bounds)
{
    char *errors = NULL;
    struct config *cfg = load_text(WITH_TOP("'workers': 256, 'shutdown_timeout': 3600"), &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    ck_assert_uint_eq(cfg->workers, 256);
    ck_assert_uint_eq(cfg->shutdown_timeout, 3600);
    config_free(&cfg);
    cfg = load_text(WITH_TOP("'workers': 1, 'log': 'stderr'"), &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    ck_assert_uint_eq(cfg->workers, 1);
    ck_assert_int_eq(cfg->log, CONFIG_LOG_STDERR);
    config_free(&cfg);
}
END_TEST

/* A template whose own text is longer than any login can be. */
START_TEST(test_login_template_too_long)
{
    char json[2048];
    char tmpl[ROUTE_LOGIN_MAX + 2];
    memset(tmpl, 'a', ROUTE_LOGIN_MAX + 1);
    tmpl[ROUTE_LOGIN_MAX + 1] = '\0';
    snprintf(json, sizeof(json),
             WITH_ROUTES("[{'default': true, 'login': '%s', 'upstream': 'main'}]"), tmpl);
    char *errors = NULL;
    ck_assert_ptr_null(load_text(json, &errors));
    ck_assert_str_eq(errors, F "routes[0].login: must be at most 512 bytes, got 513\n" ONE);
    free(errors);
    /* At the limit it loads. */
    tmpl[ROUTE_LOGIN_MAX] = '\0';
    snprintf(json, sizeof(json),
             WITH_ROUTES("[{'default': true, 'login': '%s', 'upstream': 'main'}]"), tmpl);
    struct config *cfg = load_text(json, &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    config_free(&cfg);
}
END_TEST

/* A duplicate glob is not an error: the first in file order wins, as documented. */
START_TEST(test_duplicate_match_allowed)
{
    char *errors = NULL;
    struct config *cfg = load_text(
        WITH_ROUTES("[{'match': '*@x', 'upstream': 'main'}, {'match': '*@X', 'upstream': 'main'}]"),
        &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    config_free(&cfg);
}
END_TEST

/* The user map's errors come as lines of the map file, counted in the total. */
START_TEST(test_user_map_errors)
{
    FILE *f = fopen("users.map", "w");
    ck_assert_ptr_nonnull(f);
    fputs("alice imap1\n"
          "bob imap9\n"
          "carol\n"
          "ALICE imap2\n",
          f);
    ck_assert_int_eq(fclose(f), 0);
    char *errors = NULL;
    ck_assert_ptr_null(load_text(WITH_ROUTES2("[{'default': true, 'upstream': 'imap1'}], "
                                              "'workers': 0, 'user_map': 'users.map'"),
                                 &errors));
    ck_assert_str_eq(errors, F "workers: must be between 1 and 256, got 0\n"
                               "users.map:2: unknown upstream \"imap9\" (defined: imap1, imap2)\n"
                               "users.map:3: missing upstream column (expected \"USER UPSTREAM "
                               "[LOGIN]\")\n"
                               "users.map:4: duplicate user \"ALICE\" (the first is on line 1)\n"
                               "popgate: 4 " ERRORS_N);
    free(errors);

    /* Past 20 lines, one more line says how many were left out; the total counts them. */
    f = fopen("users.map", "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 1; i <= 25; i++)
        fprintf(f, "user%d imap9\n", i);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_ptr_null(
        load_text(WITH_ROUTES2("[{'default': true, 'upstream': 'imap1'}], 'user_map': 'users.map'"),
                  &errors));
    unsigned lines = 0;
    for (const char *p = errors; *p != '\0'; p++)
        lines += *p == '\n';
    ck_assert_uint_eq(lines, 22);
    ck_assert_ptr_nonnull(strstr(errors, "users.map:20: unknown upstream \"imap9\""));
    ck_assert_ptr_null(strstr(errors, "users.map:21:"));
    ck_assert_ptr_nonnull(strstr(errors, "\nusers.map: 5 more errors\npopgate: 25 " ERRORS_N));
    free(errors);
    unlink("users.map");
}
END_TEST

static bool cidr_match_text(const struct config_cidr *blocks, size_t n, const char *addr)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, addr, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
    } else {
        ck_assert_int_eq(inet_pton(AF_INET6, addr, &sin6->sin6_addr), 1);
        sin6->sin6_family = AF_INET6;
    }
    return config_cidr_match(blocks, n, (const struct sockaddr *)&ss);
}

START_TEST(test_cidr_match)
{
    char *errors = NULL;
    struct config *cfg = load_text(
        WITH_LISTENER("'proxy_protocol': true, 'trusted_proxies': ['192.0.2.0/24', "
                      "'10.0.0.1', '2001:db8::/32', '::1', '198.51.100.128/25', '172.16.0.0/12']"),
        &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    const struct config_cidr *b = cfg->listeners[0].trusted_proxies;
    size_t n = cfg->listeners[0].ntrusted_proxies;
    ck_assert_uint_eq(n, 6);
    static const struct {
        const char *addr;
        bool in;
    } cases[] = {
        {"192.0.2.0", true},
        {"192.0.2.255", true},
        {"192.0.3.0", false},
        {"192.0.1.255", false},
        {"10.0.0.1", true},
        {"10.0.0.2", false},
        {"198.51.100.128", true},
        {"198.51.100.127", false},
        {"172.31.255.255", true},
        {"172.32.0.0", false},
        {"172.15.255.255", false},
        {"2001:db8::1", true},
        {"2001:db8:ffff:ffff::", true},
        {"2001:db9::", false},
        {"::1", true},
        {"::2", false},
        /* A dual-stack socket reports IPv4 clients v4-mapped: they match IPv4 blocks. */
        {"::ffff:192.0.2.7", true},
        {"::ffff:10.0.0.1", true},
        {"::ffff:10.0.0.2", false},
        /* An IPv4 address in IPv6 form that is not v4-mapped is another address. */
        {"::192.0.2.7", false},
        {"64:ff9b::192.0.2.7", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        ck_assert_msg(cidr_match_text(b, n, cases[i].addr) == cases[i].in, "%s: expected %s",
                      cases[i].addr, cases[i].in ? "in" : "out");
    config_free(&cfg);

    /* A v4-mapped IPv6 block also holds plain IPv4 peers; ::/0 holds every peer. */
    cfg = load_text(WITH_LISTENER("'proxy_protocol': true, 'trusted_proxies': "
                                  "['::ffff:192.0.2.0/120']"),
                    &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    b = cfg->listeners[0].trusted_proxies;
    ck_assert(cidr_match_text(b, 1, "192.0.2.9"));
    ck_assert(cidr_match_text(b, 1, "::ffff:192.0.2.9"));
    ck_assert(!cidr_match_text(b, 1, "192.0.3.9"));
    config_free(&cfg);
    cfg = load_text(WITH_LISTENER("'proxy_protocol': true, 'trusted_proxies': ['::/0']"), &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    b = cfg->listeners[0].trusted_proxies;
    ck_assert(cidr_match_text(b, 1, "203.0.113.1"));
    ck_assert(cidr_match_text(b, 1, "2001:db8::5"));
    config_free(&cfg);

    /* Nothing matches nothing; other families never match. */
    struct config_cidr all4 = {.family = AF_INET, .prefix = 0};
    ck_assert(cidr_match_text(&all4, 1, "203.0.113.1"));
    ck_assert(!cidr_match_text(&all4, 0, "203.0.113.1"));
    ck_assert(!cidr_match_text(&all4, 1, "2001:db8::5"));
    struct sockaddr un = {.sa_family = AF_UNIX};
    ck_assert(!config_cidr_match(&all4, 1, &un));
    ck_assert(!config_cidr_match(&all4, 1, NULL));
    ck_assert(!config_cidr_match(NULL, 0, &un));
}
END_TEST

START_TEST(test_partial_limits)
{
    char *errors = NULL;
    struct config *cfg = load_text(WITH_LIMITS("{'idle_timeout': 1800}"), &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    ck_assert_uint_eq(cfg->limits.idle_timeout, 1800);
    ck_assert_uint_eq(cfg->limits.connect_timeout, 10);
    ck_assert_uint_eq(cfg->limits.output_buffer, 65536);
    config_free(&cfg);

    cfg = load_text(WITH_LIMITS("{}"), &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    ck_assert_uint_eq(cfg->limits.auth_timeout, 60);
    config_free(&cfg);
}
END_TEST

START_TEST(test_localhost_resolves)
{
    char *errors = NULL;
    struct config *cfg = load_text(WITH_MAIN("{'host': 'localhost', 'port': 10143}"), &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    const struct config_upstream *u = config_upstream_find(cfg, "main");
    ck_assert_ptr_nonnull(u);
    ck_assert_uint_ge(u->naddrs, 1);
    for (size_t i = 0; i < u->naddrs; i++) {
        int family = u->addrs[i].ss_family;
        ck_assert(family == AF_INET || family == AF_INET6);
        uint16_t port = family == AF_INET ? ((const struct sockaddr_in *)&u->addrs[i])->sin_port
                                          : ((const struct sockaddr_in6 *)&u->addrs[i])->sin6_port;
        ck_assert_uint_eq(ntohs(port), 10143);
        ck_assert_uint_eq(u->addr_lens[i], family == AF_INET ? sizeof(struct sockaddr_in)
                                                             : sizeof(struct sockaddr_in6));
    }
    config_free(&cfg);
}
END_TEST

START_TEST(test_upstream_names)
{
    char *errors = NULL;
    struct config *cfg = load_text(
        "{" LISTENERS ", 'upstreams': {'imap-1.example_a': {'host': '127.0.0.1'}}, 'routes': "
        "[{'default': true, 'upstream': 'imap-1.example_a'}], " STATE "}",
        &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    ck_assert_ptr_eq(cfg->routes[0].upstream, &cfg->upstreams[0]);
    config_free(&cfg);

    /* A dotted name is shown in brackets, so the path stays unambiguous. */
    ck_assert_ptr_null(
        load_text(WITH_UPSTREAMS("{'a.b': {'host': '127.0.0.1', 'port': 0}}"), &errors));
    ck_assert_str_eq(errors, F "upstreams[\"a.b\"].port: must be between 1 and 65535, got 0\n" F
                               "routes[0].upstream: unknown upstream \"main\" (defined: a.b)\n"
                               "popgate: 2 " ERRORS_N);
    free(errors);
}
END_TEST

/*
 * Certificates for the TLS cases, made in the test folder with the openssl CLI: server.pem
 * (CN localhost) and other.pem, self-signed, so either also serves as a CA file; wrong.key
 * belongs to neither.
 */
static const char GENERATE[] =
    "set -e\n"
    "export OPENSSL_CONF=/dev/null\n"
    "for n in server other; do\n"
    "  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $n.key "
    "-out $n.pem -days 2 -subj /CN=$n\n"
    "done\n"
    "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out wrong.key\n";
static const char *const GENERATED[] = {"server.key", "server.pem", "other.key", "other.pem",
                                        "wrong.key",  "gen.log",    NULL};

START_TEST(test_upstream_tls_modes)
{
    static const struct {
        const char *json;
        enum config_tls tls;
        uint16_t port;
    } cases[] = {
        {"{'host': '127.0.0.1', 'tls': 'implicit'}", CONFIG_TLS_IMPLICIT, 993},
        {"{'host': '127.0.0.1', 'tls': 'starttls'}", CONFIG_TLS_STARTTLS, 143},
        {"{'host': '127.0.0.1', 'port': 993}", CONFIG_TLS_IMPLICIT, 993},
        {"{'host': '127.0.0.1', 'port': 10993, 'tls': 'implicit'}", CONFIG_TLS_IMPLICIT, 10993},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char json[512];
        snprintf(json, sizeof(json), WITH_MAIN("%s"), cases[i].json);
        char *errors = NULL;
        struct config *cfg = load_text(json, &errors);
        ck_assert_msg(cfg != NULL, "case %zu: %s", i, errors);
        const struct config_upstream *u = &cfg->upstreams[0];
        ck_assert_int_eq(u->tls, cases[i].tls);
        ck_assert_uint_eq(u->port, cases[i].port);
        ck_assert(u->verify);
        ck_assert_ptr_null(u->ca_file);
        /* The name to verify is the host unless given. */
        ck_assert_str_eq(u->verify_name, "127.0.0.1");
        ck_assert_int_eq(u->min_version, TLS1_2_VERSION);
        ck_assert_ptr_nonnull(u->tls_ctx);
        ck_assert_int_eq(SSL_CTX_get_verify_mode(u->tls_ctx), SSL_VERIFY_PEER);
        config_free(&cfg);
    }
}
END_TEST

START_TEST(test_tls_config)
{
    char *errors = NULL;
    struct config *cfg = load_text(
        "{\n"
        "  'listeners': [\n"
        "    {'address': '127.0.0.1:1995', 'tls': 'implicit', 'cert': 'server.pem',\n"
        "     'key': 'server.key', 'plaintext_auth': 'deny'},\n"
        "    {'address': '127.0.0.1:1110', 'tls': 'starttls', 'cert': 'server.pem',\n"
        "     'key': 'server.key', 'certificates': [{'cert': 'other.pem', 'key': 'other.key'}],\n"
        "     'min_version': 'TLSv1.3', 'plaintext_auth': 'allow'},\n"
        "    {'address': '127.0.0.1:2995', 'tls': 'implicit',\n"
        "     'certificates': [{'cert': 'other.pem', 'key': 'other.key'},\n"
        "                      {'cert': 'server.pem', 'key': 'server.key'}],\n"
        "     'min_version': 'TLSv1', 'ciphers': 'HIGH:!aNULL'},\n"
        "    {'address': '127.0.0.1:3995', 'tls': 'implicit', 'cert': 'server.pem',\n"
        "     'key': 'server.key', 'min_version': 'TLSv1.1', 'security_level': 1},\n"
        "    {'address': '127.0.0.1:2110', 'plaintext_auth': 'loopback'}\n"
        "  ],\n"
        "  'upstreams': {\n"
        "    'imaps': {'host': '127.0.0.1', 'port': 993, 'ca_file': 'server.pem',\n"
        "              'verify_name': 'imap.example'},\n"
        "    'sub': {'host': 'localhost', 'tls': 'starttls', 'min_version': 'TLSv1.3'},\n"
        "    'lax': {'host': '127.0.0.1', 'tls': 'implicit', 'verify': false,\n"
        "            'min_version': 'TLSv1'},\n"
        "    'plain': {'host': '127.0.0.1', 'tls': 'none'}\n"
        "  },\n"
        "  'routes': [{'default': true, 'upstream': 'imaps'}],\n"
        "  'state': {'dir': 'state'}\n"
        "}\n",
        &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    ck_assert_uint_eq(cfg->nlisteners, 5);

    const struct config_listener *l = &cfg->listeners[0];
    ck_assert_int_eq(l->tls, CONFIG_TLS_IMPLICIT);
    ck_assert_uint_eq(l->ncerts, 1);
    ck_assert_str_eq(l->certs[0].cert, "server.pem");
    ck_assert_str_eq(l->certs[0].key, "server.key");
    ck_assert_int_eq(l->plaintext_auth, CONFIG_PLAINTEXT_DENY);
    ck_assert_ptr_nonnull(l->tls_ctx);
    ck_assert_int_eq(SSL_CTX_get_min_proto_version(l->tls_ctx), TLS1_2_VERSION);

    /* cert and key first, then certificates in order. */
    l = &cfg->listeners[1];
    ck_assert_int_eq(l->tls, CONFIG_TLS_STARTTLS);
    ck_assert_uint_eq(l->ncerts, 2);
    ck_assert_str_eq(l->certs[0].cert, "server.pem");
    ck_assert_str_eq(l->certs[1].cert, "other.pem");
    ck_assert_str_eq(l->certs[1].key, "other.key");
    ck_assert_int_eq(l->min_version, TLS1_3_VERSION);
    ck_assert_int_eq(l->plaintext_auth, CONFIG_PLAINTEXT_ALLOW);
    ck_assert_int_eq(SSL_CTX_get_min_proto_version(l->tls_ctx), TLS1_3_VERSION);

    /* A legacy listener: TLS 1.0 and the level that lets it through. */
    l = &cfg->listeners[2];
    ck_assert_uint_eq(l->ncerts, 2);
    ck_assert_str_eq(l->certs[0].cert, "other.pem");
    ck_assert_str_eq(l->certs[1].cert, "server.pem");
    ck_assert_int_eq(l->min_version, TLS1_VERSION);
    ck_assert_str_eq(l->ciphers, "HIGH:!aNULL");
    ck_assert_int_eq(l->security_level, -1);
    ck_assert_int_eq(l->plaintext_auth, CONFIG_PLAINTEXT_LOOPBACK);
    ck_assert_int_eq(SSL_CTX_get_min_proto_version(l->tls_ctx), TLS1_VERSION);
    ck_assert_int_eq(SSL_CTX_get_security_level(l->tls_ctx), 0);

    l = &cfg->listeners[3];
    ck_assert_int_eq(l->min_version, TLS1_1_VERSION);
    ck_assert_int_eq(l->security_level, 1);
    ck_assert_int_eq(SSL_CTX_get_security_level(l->tls_ctx), 1);

    l = &cfg->listeners[4];
    ck_assert_int_eq(l->tls, CONFIG_TLS_NONE);
    ck_assert_ptr_null(l->tls_ctx);

    const struct config_upstream *u = config_upstream_find(cfg, "imaps");
    ck_assert_int_eq(u->tls, CONFIG_TLS_IMPLICIT);
    ck_assert(u->verify);
    ck_assert_str_eq(u->ca_file, "server.pem");
    ck_assert_str_eq(u->verify_name, "imap.example");
    ck_assert_ptr_nonnull(u->tls_ctx);
    ck_assert_int_eq(SSL_CTX_get_verify_mode(u->tls_ctx), SSL_VERIFY_PEER);

    u = config_upstream_find(cfg, "sub");
    ck_assert_int_eq(u->tls, CONFIG_TLS_STARTTLS);
    ck_assert_uint_eq(u->port, 143);
    ck_assert_str_eq(u->verify_name, "localhost");
    ck_assert_int_eq(u->min_version, TLS1_3_VERSION);
    ck_assert_int_eq(SSL_CTX_get_min_proto_version(u->tls_ctx), TLS1_3_VERSION);

    u = config_upstream_find(cfg, "lax");
    ck_assert(!u->verify);
    ck_assert_int_eq(SSL_CTX_get_verify_mode(u->tls_ctx), SSL_VERIFY_NONE);
    ck_assert_int_eq(SSL_CTX_get_min_proto_version(u->tls_ctx), TLS1_VERSION);

    u = config_upstream_find(cfg, "plain");
    ck_assert_int_eq(u->tls, CONFIG_TLS_NONE);
    ck_assert_ptr_null(u->verify_name);
    ck_assert_ptr_null(u->tls_ctx);

    /* The contexts go with the config (ASan finds any that stay). */
    config_free(&cfg);
}
END_TEST

/* Every context that cannot be built is one error at the key naming what failed. */
START_TEST(test_tls_load_errors)
{
    char *errors = NULL;
    ck_assert_ptr_null(load_text(
        "{'listeners': [\n"
        "  {'address': '127.0.0.1:1', 'tls': 'implicit', 'cert': 'server.pem', 'key': "
        "'wrong.key'},\n"
        "  {'address': '127.0.0.1:2', 'tls': 'starttls', 'cert': '/nonexistent/x.pem',\n"
        "   'key': 'server.key'},\n"
        "  {'address': '127.0.0.1:3', 'tls': 'implicit', 'cert': 'server.pem', 'key': "
        "'server.key',\n"
        "   'certificates': [{'cert': 'other.pem', 'key': 'other.key'},\n"
        "                    {'cert': 'other.pem', 'key': 'missing.key'}]},\n"
        "  {'address': '127.0.0.1:4', 'tls': 'implicit', 'ciphers': 'FOO',\n"
        "   'certificates': [{'cert': 'server.pem', 'key': 'server.key'}]},\n"
        "  {'address': '127.0.0.1:5', 'tls': 'implicit',\n"
        "   'certificates': [{'cert': 'server.key', 'key': 'server.key'}]},\n"
        "  {'address': '127.0.0.1:6', 'tls': 'implicit', 'cert': 'server.pem', 'key': "
        "'server.key',\n"
        "   'security_level': 4},\n"
        "  {'address': '127.0.0.1:7', 'tls': 'implicit', 'cert': 'server.pem', 'key': "
        "'server.key'}\n"
        "], 'upstreams': {\n"
        "  'main': {'host': '127.0.0.1', 'tls': 'implicit', 'ca_file': 'missing-ca.pem'},\n"
        "  'other': {'host': '127.0.0.1', 'tls': 'starttls', 'ca_file': 'server.key'},\n"
        "  'fine': {'host': '127.0.0.1', 'tls': 'starttls', 'ca_file': 'other.pem'}\n"
        "}, " ROUTES ", " STATE "}",
        &errors));
    ck_assert_str_eq(
        errors,
        F "listeners[0].key: key \"wrong.key\" does not match certificate \"server.pem\"\n" F
          "listeners[1].cert: cannot load certificate \"/nonexistent/x.pem\": No such file or "
          "directory\n" F
          "listeners[2].certificates[1].key: cannot load key \"missing.key\": No such file or "
          "directory\n" F "listeners[3].ciphers: invalid ciphers \"FOO\": no cipher match\n" F
          "listeners[4].certificates[0].cert: cannot load certificate \"server.key\": no PEM "
          "certificate found (no start line)\n" F
          "listeners[5].cert: cannot load certificate \"server.pem\": ee key too small\n" F
          "upstreams.main.ca_file: cannot load CA file \"missing-ca.pem\": No such file or "
          "directory\n" F
          "upstreams.other.ca_file: cannot load CA file \"server.key\": no certificate or crl "
          "found\n"
          "popgate: 8 " ERRORS_N);
    free(errors);
}
END_TEST

/* Files are only opened once the config is well formed: one cause, one message. */
START_TEST(test_tls_files_after_structure)
{
    char *errors = NULL;
    ck_assert_ptr_null(load_text(
        "{'listeners': [{'address': '127.0.0.1:1', 'tls': 'implicit', 'cert': 'missing.pem', "
        "'key': 'missing.key'}], " UPSTREAMS ", " ROUTES ", " STATE
        ", 'limits': {'idle_timeout': 5}}",
        &errors));
    ck_assert_str_eq(errors,
                     F "limits.idle_timeout: must be between 600 and 86400 seconds, got 5\n" ONE);
    free(errors);
}
END_TEST

/* Every line of an error text is one error plus the count line, whatever the input. */
START_TEST(test_error_lines_are_counted)
{
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        char *errors = NULL;
        ck_assert_ptr_null(load_text(bad_cases[i].json, &errors));
        unsigned lines = 0;
        for (const char *p = errors; *p != '\0'; p++)
            lines += *p == '\n';
        unsigned count = 0;
        const char *last = strstr(errors, "popgate: ");
        ck_assert_ptr_nonnull(last);
        ck_assert_int_eq(sscanf(last, "popgate: %u error", &count), 1);
        ck_assert_uint_eq(lines, count + 1);
        free(errors);
    }
}
END_TEST

static void assert_default_mapping(const struct config_mapping *m)
{
    ck_assert_ptr_null(m->uidl_format);
    ck_assert(!m->reuse_xuidl);
    ck_assert_int_eq(m->on_delete, CONFIG_DELETE_EXPUNGE);
    ck_assert_ptr_null(m->on_delete_arg);
    ck_assert(!m->on_retr_seen);
    ck_assert(!m->window_since_first_login);
    ck_assert_uint_eq(m->login_delay, 0);
    ck_assert_ptr_null(m->expire);
    ck_assert_ptr_null(m->folders);
    ck_assert_uint_eq(m->nfolders, 0);
}

/* Without "mapping" anywhere, the top level and every route have the defaults; an empty
 * object changes nothing. */
START_TEST(test_mapping_defaults)
{
    char *errors = (char *)"unset";
    struct config *cfg = load_text(GOOD, &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    assert_default_mapping(&cfg->mapping);
    assert_default_mapping(&cfg->routes[0].mapping);
    config_free(&cfg);

    cfg = load_text("{" LISTENERS ", " UPSTREAMS ", 'mapping': {}, 'routes': [{'default': true, "
                    "'upstream': 'main', 'mapping': {}}], " STATE "}",
                    &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    assert_default_mapping(&cfg->mapping);
    assert_default_mapping(&cfg->routes[0].mapping);
    config_free(&cfg);
}
END_TEST

/* Every key at the top level, with each accepted form. */
START_TEST(test_mapping_full)
{
    char *errors = (char *)"unset";
    struct config *cfg = load_text(
        WITH_MAPPING("{'uidl_format': '%08Xu%08Xv', 'reuse_xuidl': true, 'on_delete': "
                     "'flag:$POP3Deleted', 'on_retr': 'seen', 'window': 'since_first_login', "
                     "'login_delay': 86400, 'expire': 36500, 'folders': ['INBOX', 'Spam', "
                     "'Other Users/x \xc3\xa9']}"),
        &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    const struct config_mapping *m = &cfg->mapping;
    ck_assert_str_eq(m->uidl_format, "%08Xu%08Xv");
    ck_assert(m->reuse_xuidl);
    ck_assert_int_eq(m->on_delete, CONFIG_DELETE_FLAG);
    ck_assert_str_eq(m->on_delete_arg, "$POP3Deleted");
    ck_assert(m->on_retr_seen);
    ck_assert(m->window_since_first_login);
    ck_assert_uint_eq(m->login_delay, 86400);
    ck_assert_str_eq(m->expire, "36500");
    ck_assert_uint_eq(m->nfolders, 3);
    ck_assert_str_eq(m->folders[0], "INBOX");
    ck_assert_str_eq(m->folders[2], "Other Users/x \xc3\xa9");
    /* The route has copies of its own. */
    ck_assert_uint_eq(cfg->routes[0].mapping.nfolders, 3);
    ck_assert_str_eq(cfg->routes[0].mapping.folders[1], "Spam");
    ck_assert_ptr_ne(cfg->routes[0].mapping.folders[1], m->folders[1]);
    config_free(&cfg);

    static const struct {
        const char *json;
        enum config_on_delete on_delete;
        const char *arg;
        const char *expire;
    } forms[] = {
        {WITH_MAPPING("{'on_delete': 'expunge', 'expire': 'NEVER', 'on_retr': 'none', "
                      "'window': 'all', 'reuse_xuidl': false, 'login_delay': 0}"),
         CONFIG_DELETE_EXPUNGE, NULL, "NEVER"},
        {WITH_MAPPING("{'on_delete': 'hide', 'expire': 0}"), CONFIG_DELETE_HIDE, NULL, "0"},
        {WITH_MAPPING("{'on_delete': 'move:Trash'}"), CONFIG_DELETE_MOVE, "Trash", NULL},
        /* Any other folder name, spaces and non-ASCII included: the IMAP writer quotes it. */
        {WITH_MAPPING("{'on_delete': 'move:INBOX/Deleted Items \xc3\xa9'}"), CONFIG_DELETE_MOVE,
         "INBOX/Deleted Items \xc3\xa9", NULL},
        {WITH_MAPPING("{'on_delete': 'move:move:x'}"), CONFIG_DELETE_MOVE, "move:x", NULL},
        /* Exactly 255 bytes. */
        {WITH_MAPPING("{'on_delete': 'move:"
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'}"),
         CONFIG_DELETE_MOVE,
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
         NULL},
        /* Every atom character that is not a special. */
        {WITH_MAPPING("{'on_delete': 'flag:Junk$-_.!#&+,/:;<=>?@[^`|~'}"), CONFIG_DELETE_FLAG,
         "Junk$-_.!#&+,/:;<=>?@[^`|~", NULL},
    };
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        errors = (char *)"unset";
        cfg = load_text(forms[i].json, &errors);
        ck_assert_msg(cfg != NULL, "form %zu: %s", i, errors);
        m = &cfg->mapping;
        ck_assert_int_eq(m->on_delete, forms[i].on_delete);
        if (forms[i].arg == NULL)
            ck_assert_ptr_null(m->on_delete_arg);
        else
            ck_assert_str_eq(m->on_delete_arg, forms[i].arg);
        if (forms[i].expire == NULL)
            ck_assert_ptr_null(m->expire);
        else
            ck_assert_str_eq(m->expire, forms[i].expire);
        /* The one route copies the top level, strings and all. */
        const struct config_mapping *rm = &cfg->routes[0].mapping;
        ck_assert_int_eq(rm->on_delete, m->on_delete);
        if (m->on_delete_arg != NULL) {
            ck_assert_str_eq(rm->on_delete_arg, m->on_delete_arg);
            ck_assert_ptr_ne(rm->on_delete_arg, m->on_delete_arg);
        }
        config_free(&cfg);
    }
}
END_TEST

/* A route's keys lay over the top level: what the route leaves out, it inherits. */
START_TEST(test_mapping_overlay)
{
    char *errors = (char *)"unset";
    struct config *cfg = load_text(
        "{" LISTENERS ", " UPSTREAMS ", " STATE ", 'mapping': {'uidl_format': '%u.%v', "
        "'on_delete': 'flag:$Old', 'login_delay': 300, 'expire': 7, 'reuse_xuidl': true}, "
        "'routes': [{'user': 'a@example.com', 'upstream': 'main', 'mapping': {'on_delete': "
        "'move:Trash'}}, {'domain': 'example.com', 'upstream': 'main', 'mapping': {'on_delete': "
        "'hide', 'on_retr': 'seen', 'expire': 'NEVER', 'reuse_xuidl': false}}, {'match': '*x*', "
        "'upstream': 'main', 'mapping': {'uidl_format': '%g', 'login_delay': 0, 'window': "
        "'since_first_login'}}, {'default': true, 'upstream': 'main'}]}",
        &errors);
    ck_assert_msg(cfg != NULL, "%s", errors);
    ck_assert_uint_eq(cfg->nroutes, 4);

    const struct config_mapping *top = &cfg->mapping;
    ck_assert_str_eq(top->uidl_format, "%u.%v");
    ck_assert_int_eq(top->on_delete, CONFIG_DELETE_FLAG);
    ck_assert_str_eq(top->on_delete_arg, "$Old");
    ck_assert_uint_eq(top->login_delay, 300);
    ck_assert_str_eq(top->expire, "7");
    ck_assert(top->reuse_xuidl);
    ck_assert(!top->on_retr_seen);
    ck_assert(!top->window_since_first_login);

    /* Overrides on_delete only: keeps the top-level uidl_format and the rest. */
    const struct config_mapping *m = &cfg->routes[0].mapping;
    ck_assert_int_eq(m->on_delete, CONFIG_DELETE_MOVE);
    ck_assert_str_eq(m->on_delete_arg, "Trash");
    ck_assert_str_eq(m->uidl_format, "%u.%v");
    ck_assert_ptr_ne(m->uidl_format, top->uidl_format);
    ck_assert_uint_eq(m->login_delay, 300);
    ck_assert_str_eq(m->expire, "7");
    ck_assert(m->reuse_xuidl);

    /* hide drops the inherited keyword; false and "NEVER" replace what was set. */
    m = &cfg->routes[1].mapping;
    ck_assert_int_eq(m->on_delete, CONFIG_DELETE_HIDE);
    ck_assert_ptr_null(m->on_delete_arg);
    ck_assert(m->on_retr_seen);
    ck_assert_str_eq(m->expire, "NEVER");
    ck_assert(!m->reuse_xuidl);
    ck_assert_str_eq(m->uidl_format, "%u.%v");

    m = &cfg->routes[2].mapping;
    ck_assert_str_eq(m->uidl_format, "%g");
    ck_assert_uint_eq(m->login_delay, 0);
    ck_assert(m->window_since_first_login);
    ck_assert_int_eq(m->on_delete, CONFIG_DELETE_FLAG);
    ck_assert_str_eq(m->on_delete_arg, "$Old");
    ck_assert_ptr_ne(m->on_delete_arg, top->on_delete_arg);

    /* No "mapping": the top level, copied. */
    m = &cfg->routes[3].mapping;
    ck_assert_str_eq(m->uidl_format, "%u.%v");
    ck_assert_int_eq(m->on_delete, CONFIG_DELETE_FLAG);
    ck_assert_str_eq(m->on_delete_arg, "$Old");
    ck_assert_uint_eq(m->login_delay, 300);
    ck_assert_str_eq(m->expire, "7");
    ck_assert_ptr_ne(m->expire, top->expire);

    /* The top level's on_delete overridden by a route does not change the top level. */
    ck_assert_int_eq(top->on_delete, CONFIG_DELETE_FLAG);
    config_free(&cfg);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("bad");
    tcase_add_loop_test(tc, test_bad_config, 0, (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_path_as_given);
    tcase_add_test(tc, test_unresolvable_host);
    tcase_add_test(tc, test_errors_r_may_be_null);
    tcase_add_test(tc, test_error_lines_are_counted);
    suite_add_tcase(s, tc);
    tc = tcase_create("good");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_mapping_defaults);
    tcase_add_test(tc, test_mapping_full);
    tcase_add_test(tc, test_mapping_overlay);
    tcase_add_test(tc, test_full_config);
    tcase_add_test(tc, test_partial_limits);
    tcase_add_test(tc, test_operator_config);
    tcase_add_test(tc, test_run_as_group);
    tcase_add_test(tc, test_workers_and_timeout_bounds);
    tcase_add_test(tc, test_login_template_too_long);
    tcase_add_test(tc, test_duplicate_match_allowed);
    tcase_add_test(tc, test_user_map_errors);
    tcase_add_test(tc, test_cidr_match);
    tcase_add_test(tc, test_localhost_resolves);
    tcase_add_test(tc, test_upstream_names);
    suite_add_tcase(s, tc);
    tc = tcase_create("tls");
    tcase_add_test(tc, test_upstream_tls_modes);
    tcase_add_test(tc, test_tls_config);
    tcase_add_test(tc, test_tls_load_errors);
    tcase_add_test(tc, test_tls_files_after_structure);
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
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    unlink("popgate.json");
    for (size_t i = 0; GENERATED[i] != NULL; i++)
        unlink(GENERATED[i]);
    if (chdir("/") != 0 || rmdir(test_dir) != 0)
        perror(test_dir);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
