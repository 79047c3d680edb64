#!/usr/bin/env python3
"""Integration tests of issue 3: TLS on both sides of popgate and POP3 SASL.

One Dovecot with TLS (an IMAPS port and STARTTLS on the plain port, certificates from a CA
generated here by tlsutil.py) serves every class; each class runs its own popgate with the
listeners and upstreams it needs. Clients: Python poplib (POP3_SSL, stls()), curl,
openssl s_client, fetchmail, raw sockets.

Run: python3 tests/integration/test_tls.py -v
     (POPGATE_BIN selects the binary; default build/asan/popgate)
"""

import base64
import os
import poplib
import pwd
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import tlsutil  # noqa: E402
from harness import Pop3Raw, pop3_equal  # noqa: E402

PASSWORD = "tls-pw"
SPECIAL_PASSWORD = 'sp ace "quo\'ted" \\back\\slash {7}'
PLAINTEXT_REFUSED = b"-ERR [AUTH]"

# Addresses are fully qualified, so fetchmail's header rewriting has nothing to change.
MESSAGES = [
    b"From: Alice <alice@example.org>\nTo: user@example.org\nSubject: first\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\nMessage-ID: <tls-1@example.org>\n\n"
    b"Hello over TLS.\n",
    b"From: bob@example.org\nTo: user@example.org\nSubject: dots and 8 bit\n"
    b"Date: Mon, 01 Jan 2024 11:00:00 +0000\nMessage-ID: <tls-2@example.org>\n"
    b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: 8bit\n\n"
    b".a line starting with a dot\n.\n..\nna\xc3\xafve caf\xc3\xa9\n" + b"x" * 990 + b"\n"
    b"last line\n",
]


def _big_message():
    lines = [b"From: carol@example.org\nTo: user@example.org\nSubject: about 300 KB\n"
             b"Message-ID: <tls-3@example.org>\n\n"]
    for i in range(6000):
        lines.append(b"%s%05d the quick brown fox jumps over the lazy dog\n"
                     % (b"." if i % 97 == 0 else b"", i))
    return b"".join(lines)


MESSAGES.append(_big_message())
# Dovecot serves a message without a final newline as it is; POP3 framing adds the CRLF
MESSAGES.append(b"From: dave@example.org\nTo: user@example.org\nSubject: no final newline\n\n"
                b"From the start\nlast line without a newline")

# Users of the shared Dovecot; each test uses its own so that a session left open by a
# failing test cannot make the next one [IN-USE].
USERS = [
    # client-side TLS
    "ssl", "stls", "stls_deny", "stls_twice", "stls_late", "inject", "curl_s", "curl_stls",
    "sclient", "sclient_i",
    # legacy TLS
    "tls1", "tls1_lvl", "tls1_py", "modern",
    # plaintext policy
    "deny", "loopback", "allow",
    # SASL
    "plain_ir", "plain_cont", "plain_empty", "login_cont", "login_ir", "cancel", "bare",
    "wrongpw", "junk", "special", "oauth",
    # upstream TLS
    "up_imaps", "up_name", "up_stls", "up_wrongca", "up_wrongca_stls", "up_wrongname",
    "up_noverify", "up_fake_nostls", "up_fake_preauth", "up_plainport",
    # fetchmail
    "fm_ssl", "fm_tls12",
]
SPECIAL_USER = "special"

PKI = None
DOVECOT = None
EXPECTED = None  # [(uid, size, BODY[])] of every test mailbox


def dovecot_tls_config(cert, imaps_port):
    return "\n".join([
        "ssl = yes",
        "ssl_cert = <%s" % cert.chain,
        "ssl_key = <%s" % cert.key,
        "service imap-login {",
        "  inet_listener imaps {",
        "    address = 127.0.0.1",
        "    port = %d" % imaps_port,
        "    ssl = yes",
        "  }",
        "}",
        "",
    ])


class TlsDovecot(harness.Dovecot):
    """harness.Dovecot with ssl = yes (STARTTLS on .port) and an IMAPS port."""

    def __init__(self, cert, **kw):
        self.imaps_port = harness.free_port()
        super().__init__(extra_config=dovecot_tls_config(cert, self.imaps_port), **kw)

    def start(self, timeout=20.0):
        super().start(timeout=timeout)
        if not harness.wait_for_port(self.imaps_port, timeout=timeout):
            raise RuntimeError("Dovecot's IMAPS port %d never accepted" % self.imaps_port)
        return self


def setUpModule():
    global PKI, DOVECOT, EXPECTED
    PKI = tlsutil.shared_pki()
    DOVECOT = TlsDovecot(PKI.server)
    unittest.addModuleCleanup(DOVECOT.stop)  # runs even if the rest of set-up fails
    for user in USERS:
        DOVECOT.add_user(user, SPECIAL_PASSWORD if user == SPECIAL_USER else PASSWORD)
        for m in MESSAGES:
            DOVECOT.add_message(user, m)
    DOVECOT.start()
    with DOVECOT.imap("ssl") as im:
        sizes = im.sizes()
        EXPECTED = [(uid, sizes[uid], im.body(uid)) for uid in im.uids()]
    assert len(EXPECTED) == len(MESSAGES), EXPECTED
    # every test mailbox holds the same messages under the same UIDs
    for user in ("fm_ssl", "up_imaps"):
        with DOVECOT.imap(user) as im:
            assert im.uids() == [e[0] for e in EXPECTED]


# ---------------------------------------------------------------------------
# popgate with several listeners and upstreams


class TlsPopgate(harness.Popgate):
    """popgate with named listeners ([(name, keys without "address")]; the first listens
    on .port), upstreams and routes given whole. .ports maps listener names to ports."""

    def __init__(self, listeners, upstreams, routes, **kw):
        super().__init__(upstream_port=0, **kw)
        self.listener_specs = listeners
        self.upstreams = upstreams
        self.routes = routes
        self.ports = {}

    def config(self):
        self.ports = {}
        listeners = []
        for i, (name, spec) in enumerate(self.listener_specs):
            port = self.port if i == 0 else harness.free_port()
            while port in self.ports.values():
                port = harness.free_port()
            self.ports[name] = port
            entry = {"address": "127.0.0.1:%d" % port}
            entry.update(spec)
            listeners.append(entry)
        cfg = {
            "listeners": listeners,
            "upstreams": self.upstreams,
            "routes": self.routes,
            "state": {"dir": self.state_dir},
        }
        if self.limits:
            cfg["limits"] = dict(self.limits)
        cfg.update(self.extra)
        return cfg

    def start(self, timeout=20.0):
        super().start(timeout=timeout)
        for name, port in self.ports.items():
            if not harness.wait_for_port(port, timeout=timeout, alive=self.is_running):
                raise RuntimeError("popgate listener %s (port %d) never accepted; log:\n%s"
                                   % (name, port, self.log_text()[-4000:]))
        return self


def plain_upstream():
    return {"host": "127.0.0.1", "port": DOVECOT.port, "tls": "none"}


def imaps_upstream(**more):
    u = {"host": "127.0.0.1", "port": DOVECOT.imaps_port, "tls": "implicit",
         "ca_file": PKI.ca.cert}
    u.update(more)
    return u


def client_context(min_version=None, max_version=None, ciphers=None, cafile=None):
    """A client SSLContext trusting the test CA, host names checked."""
    ctx = ssl.create_default_context(cafile=cafile or PKI.ca.cert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if min_version is not None:
            ctx.minimum_version = min_version
        if max_version is not None:
            ctx.maximum_version = max_version
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def capa_set(lines):
    """{first word (upper case): whole line (str)} of CAPA lines."""
    out = {}
    for line in lines:
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        words = line.split()
        if words:
            out[words[0].upper()] = line
    return out


def b64(data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def describe_difference(got, expected):
    n = min(len(got), len(expected))
    i = 0
    while i < n and got[i] == expected[i]:
        i += 1
    return ("got %d bytes, expected %d; first difference at offset %d: got %r, expected %r"
            % (len(got), len(expected), i, got[max(0, i - 20):i + 40],
               expected[max(0, i - 20):i + 40]))


def run(args, input=b"", timeout=30, env=None):
    """subprocess.run with a timeout, stdout and stderr captured together."""
    return subprocess.run(args, input=input, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout, env=env)


class TlsCase(unittest.TestCase):
    """One popgate per class, built from listeners(), upstreams() and routes()."""

    maxDiff = 4000
    popgate = None

    @classmethod
    def listeners(cls):
        return [("plain", {})]

    @classmethod
    def upstreams(cls):
        return {"main": plain_upstream()}

    @classmethod
    def routes(cls):
        return [{"default": True, "upstream": "main"}]

    @classmethod
    def setUpClass(cls):
        cls.popgate = TlsPopgate(cls.listeners(), cls.upstreams(), cls.routes())
        cls.addClassCleanup(cls._stop_popgate)
        cls.popgate.start()

    @classmethod
    def _stop_popgate(cls):
        pg = cls.popgate
        pg.stop()
        report = pg.sanitizer_report()
        if pg.needed_sigkill:
            print("\nnote: popgate did not exit within 15 s of SIGTERM; killed (log %s)"
                  % pg.log_path, file=sys.stderr)
        if report:
            raise AssertionError("sanitizer report in popgate's log %s:\n%s"
                                 % (pg.log_path, report))
        pg.cleanup()

    def tearDown(self):
        if not self.popgate.is_running():
            report = self.popgate.sanitizer_report() or self.popgate.log_text()[-3000:]
            self.fail("popgate is no longer running (exit status %s); log %s:\n%s"
                      % (self.popgate.proc and self.popgate.proc.returncode,
                         self.popgate.log_path, report))

    # -- helpers

    def port(self, name):
        return self.popgate.ports[name]

    def log_tail(self, n=15):
        return "\n".join(self.popgate.log_text().splitlines()[-n:])

    def raw(self, listener, timeout=20):
        c = Pop3Raw("127.0.0.1", self.port(listener), timeout=timeout)
        self.addCleanup(c.close)
        self.assertTrue(c.greeting.startswith(b"+OK"), "greeting: %r" % c.greeting)
        return c

    def tls_raw(self, listener, ctx=None, server_hostname="localhost", timeout=20):
        """A Pop3Raw over implicit TLS (greeting read after the handshake)."""
        c = Pop3Raw("127.0.0.1", self.port(listener), timeout=timeout, read_greeting=False)
        self.addCleanup(c.close)
        c.sock = (ctx or client_context()).wrap_socket(c.sock, server_hostname=server_hostname)
        c.greeting = c.read_line()
        self.assertTrue(c.greeting.startswith(b"+OK"), "greeting: %r" % c.greeting)
        return c

    def starttls(self, c, ctx=None, server_hostname="localhost"):
        """STLS on a raw connection, then the handshake; c reads and writes TLS after."""
        r = c.cmd("STLS")
        self.assertTrue(r.startswith(b"+OK"), "STLS answered %r" % r)
        self.assertEqual(bytes(c.buf), b"", "bytes after the STLS answer, before TLS")
        c.sock = (ctx or client_context()).wrap_socket(c.sock, server_hostname=server_hostname)
        return c

    def capa(self, c):
        r = c.cmd("CAPA")
        self.assertTrue(r.startswith(b"+OK"), "CAPA answered %r" % r)
        return capa_set(c.read_multi_lines())

    def assert_ok(self, reply, what):
        self.assertTrue(reply.startswith(b"+OK"), "%s: expected +OK, got %r; popgate log:\n%s"
                        % (what, reply, self.log_tail()))

    def assert_err(self, reply, what, prefix=b"-ERR"):
        self.assertTrue(reply.startswith(prefix), "%s: expected %r, got %r"
                        % (what, prefix, reply))

    def login_raw(self, c, user, password=PASSWORD):
        self.assert_ok(c.cmd("USER " + user), "USER " + user)
        self.assert_ok(c.cmd("PASS " + password), "PASS for " + user)

    def check_mailbox_raw(self, c, what):
        """STAT, LIST, UIDL and RETR of every message on a logged-in raw connection agree
        with IMAP, byte for byte."""
        r = c.cmd("STAT")
        self.assertEqual(r, b"+OK %d %d" % (len(EXPECTED), sum(e[1] for e in EXPECTED)),
                         "%s: STAT" % what)
        self.assert_ok(c.cmd("LIST"), "%s: LIST" % what)
        self.assertEqual(c.read_multi_lines(),
                         [b"%d %d" % (n, e[1]) for n, e in enumerate(EXPECTED, 1)],
                         "%s: LIST" % what)
        self.assert_ok(c.cmd("UIDL"), "%s: UIDL" % what)
        uidls = c.read_multi_lines()
        self.assertEqual(len(uidls), len(EXPECTED), "%s: UIDL %r" % (what, uidls))
        for n, (uid, size, body) in enumerate(EXPECTED, 1):
            self.assert_ok(c.cmd("RETR %d" % n), "%s: RETR %d" % (what, n))
            got = c.read_multi()
            self.assertTrue(pop3_equal(got, body), "%s: RETR %d: %s"
                            % (what, n, describe_difference(got, body)))

    def quit(self, c):
        self.assert_ok(c.cmd("QUIT"), "QUIT")
        self.assertTrue(c.expect_closed(timeout=10), "popgate kept the connection after QUIT")

    def check_mailbox_poplib(self, p, what):
        count, total = p.stat()
        self.assertEqual((count, total), (len(EXPECTED), sum(e[1] for e in EXPECTED)),
                         "%s: STAT" % what)
        _resp, lines, _octets = p.list()
        self.assertEqual(lines, [b"%d %d" % (n, e[1]) for n, e in enumerate(EXPECTED, 1)],
                         "%s: LIST" % what)
        _resp, uidls, _octets = p.uidl()
        self.assertEqual([u.split()[0] for u in uidls],
                         [b"%d" % n for n in range(1, len(EXPECTED) + 1)], "%s: UIDL" % what)
        self.assertEqual(len(set(u.split()[1] for u in uidls)), len(EXPECTED),
                         "%s: UIDLs not unique: %r" % (what, uidls))
        for n, (uid, size, body) in enumerate(EXPECTED, 1):
            _resp, lines, _octets = p.retr(n)
            got = b"\r\n".join(lines) + b"\r\n"
            self.assertTrue(pop3_equal(got, body), "%s: RETR %d: %s"
                            % (what, n, describe_difference(got, body)))

    def curl(self, url, user, *options, timeout=30):
        r = subprocess.run(
            ["curl", "-s", "-S", "--max-time", str(timeout), "--cacert", PKI.ca.cert,
             *options, url, "-u", "%s:%s" % (user, PASSWORD)],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 10)
        self.assertEqual(r.returncode, 0, "curl %s %s exited %d: %s; popgate log:\n%s"
                         % (" ".join(options), url, r.returncode,
                            r.stderr.decode(errors="replace"), self.log_tail()))
        return r.stdout


# ---------------------------------------------------------------------------
# client side: implicit TLS and STLS


class ClientTlsTests(TlsCase):
    """Implicit TLS and STLS listeners with real clients; plaintext upstream, so only the
    client side is under test here."""

    @classmethod
    def listeners(cls):
        cert = {"cert": PKI.server.cert, "key": PKI.server.key}
        return [
            ("implicit", dict(tls="implicit", **cert)),
            ("starttls", dict(tls="starttls", **cert)),
            ("starttls_deny", dict(tls="starttls", plaintext_auth="deny", **cert)),
        ]

    def test_poplib_pop3_ssl_implicit(self):
        p = poplib.POP3_SSL("127.0.0.1", self.port("implicit"), context=client_context(),
                            timeout=30)
        self.addCleanup(p.close)
        self.assertTrue(p.getwelcome().startswith(b"+OK"), p.getwelcome())
        self.assertIn(p.sock.version(), ("TLSv1.2", "TLSv1.3"))
        caps = p.capa()
        self.assertNotIn("STLS", caps, "STLS offered on an implicit TLS connection")
        self.assertIn("USER", caps)
        self.assertIn("SASL", caps)
        self.assertTrue({"PLAIN", "LOGIN"} <= set(caps["SASL"]), caps)
        p.user("ssl")
        p.pass_(PASSWORD)
        self.check_mailbox_poplib(p, "POP3_SSL")
        self.assertTrue(p.quit().startswith(b"+OK"))

    def test_poplib_stls_then_full_capa_again(self):
        p = poplib.POP3("127.0.0.1", self.port("starttls_deny"), timeout=30)
        self.addCleanup(p.close)
        before = p.capa()
        self.assertIn("STLS", before)
        self.assertNotIn("USER", before, "USER offered before TLS on a 'deny' listener")
        self.assertNotIn("SASL", before, "SASL offered before TLS on a 'deny' listener")
        with self.assertRaises(poplib.error_proto) as cm:
            p.user("stls_deny")
        self.assertTrue(str(cm.exception).startswith("b'-ERR [AUTH]"),
                        "USER before TLS on a 'deny' listener: %s" % cm.exception)
        self.assertTrue(p.stls(client_context()).startswith(b"+OK"))
        self.assertIn(p.sock.version(), ("TLSv1.2", "TLSv1.3"))
        after = p.capa()
        self.assertIn("USER", after, "no USER in CAPA after STLS: %r" % after)
        self.assertNotIn("STLS", after, "STLS still offered after STLS: %r" % after)
        self.assertIn("SASL", after)
        self.assertTrue({"PLAIN", "LOGIN"} <= set(after["SASL"]), after)
        for cap in ("TOP", "UIDL", "RESP-CODES", "PIPELINING"):
            self.assertIn(cap, after, "CAPA after STLS is not the full list: %r" % after)
        p.user("stls_deny")
        p.pass_(PASSWORD)
        self.check_mailbox_poplib(p, "STLS (deny listener)")
        self.assertTrue(p.quit().startswith(b"+OK"))

    def test_poplib_stls_on_loopback_listener(self):
        p = poplib.POP3("127.0.0.1", self.port("starttls"), timeout=30)
        self.addCleanup(p.close)
        before = p.capa()
        self.assertIn("STLS", before)
        self.assertIn("USER", before, "loopback client: USER should be offered before TLS")
        p.stls(client_context())
        after = p.capa()
        self.assertNotIn("STLS", after)
        self.assertIn("USER", after)
        p.user("stls")
        p.pass_(PASSWORD)
        self.check_mailbox_poplib(p, "STLS")
        self.assertTrue(p.quit().startswith(b"+OK"))

    def test_stls_twice_is_refused(self):
        c = self.raw("starttls")
        self.starttls(c)
        self.assert_err(c.cmd("STLS"), "second STLS over TLS")
        # the session goes on over TLS
        self.login_raw(c, "stls_twice")
        self.assert_ok(c.cmd("STAT"), "STAT")
        self.quit(c)

    def test_stls_after_login_is_refused(self):
        c = self.raw("starttls")
        self.login_raw(c, "stls_late")
        self.assert_err(c.cmd("STLS"), "STLS in TRANSACTION")
        self.assert_ok(c.cmd("STAT"), "STAT after refused STLS")
        self.quit(c)

    def test_stls_on_implicit_tls_is_refused(self):
        c = self.tls_raw("implicit")
        self.assert_err(c.cmd("STLS"), "STLS on an implicit TLS connection")
        self.quit(c)

    def test_stls_injection_discarded(self):
        c = Pop3Raw("127.0.0.1", self.port("starttls"), timeout=20)
        self.addCleanup(c.close)
        self.assertTrue(c.greeting.startswith(b"+OK"))
        c.send(b"STLS\r\nCAPA\r\n")
        first = c.status()
        self.assertTrue(first.startswith(b"+OK"), "STLS answered %r" % first)
        # nothing more in plaintext: popgate now waits for the ClientHello
        c.sock.settimeout(0.5)
        try:
            extra = c.sock.recv(4096)
        except socket.timeout:
            extra = b""
        c.sock.settimeout(20)
        self.assertEqual(bytes(c.buf) + extra, b"",
                         "plaintext after the STLS answer (the pipelined CAPA was answered)")
        c.sock = client_context().wrap_socket(c.sock, server_hostname="localhost")
        # NOOP is not valid in AUTHORIZATION: its -ERR must be the first thing over TLS;
        # a CAPA answer (+OK and a list) would mean the injected command ran
        c.send(b"NOOP\r\n")
        reply = c.status()
        self.assertTrue(reply.startswith(b"-ERR"),
                        "first reply after the handshake is %r, expected NOOP's -ERR "
                        "(the pipelined CAPA must be discarded)" % reply)
        caps = self.capa(c)
        self.assertNotIn("STLS", caps)
        self.assertIn("USER", caps)
        self.login_raw(c, "inject")
        self.assert_ok(c.cmd("STAT"), "STAT")
        self.quit(c)

    def test_plaintext_to_implicit_listener_is_dropped(self):
        c = Pop3Raw("127.0.0.1", self.port("implicit"), timeout=10, read_greeting=False)
        self.addCleanup(c.close)
        c.send(b"USER ssl\r\nPASS " + PASSWORD.encode() + b"\r\n")
        got = b""
        c.sock.settimeout(10)
        try:
            while True:
                chunk = c.sock.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (socket.timeout, OSError):
            pass
        self.assertNotIn(b"+OK", got, "plaintext POP3 answered on an implicit TLS listener")
        # and the listener still serves TLS
        c2 = self.tls_raw("implicit")
        self.quit(c2)

    def test_curl_pop3s(self):
        url = "pop3s://127.0.0.1:%d/" % self.port("implicit")
        listing = self.curl(url, "curl_s")
        self.assertEqual(listing, b"".join(b"%d %d\r\n" % (n, e[1])
                                           for n, e in enumerate(EXPECTED, 1)))
        for n, (uid, size, body) in enumerate(EXPECTED, 1):
            got = self.curl(url + str(n), "curl_s")
            self.assertTrue(pop3_equal(got, body), "curl pop3s RETR %d: %s"
                            % (n, describe_difference(got, body)))

    def test_curl_ssl_reqd_stls(self):
        url = "pop3://127.0.0.1:%d/" % self.port("starttls")
        for n, (uid, size, body) in enumerate(EXPECTED, 1):
            got = self.curl(url + str(n), "curl_stls", "--ssl-reqd")
            self.assertTrue(pop3_equal(got, body), "curl --ssl-reqd RETR %d: %s"
                            % (n, describe_difference(got, body)))

    def s_client(self, port, *options, input=b"", timeout=30):
        """openssl s_client with the test CA, verification failures fatal, the host name
        checked; returns (exit status, output)."""
        r = run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
                 "-CAfile", PKI.ca.cert, "-verify_return_error", "-verify_hostname",
                 "localhost", "-ign_eof", *options], input=input, timeout=timeout)
        return r.returncode, r.stdout.decode("utf-8", "replace")

    def test_openssl_s_client_starttls_pop3(self):
        script = ("CAPA\r\nUSER sclient\r\nPASS %s\r\nSTAT\r\nQUIT\r\n" % PASSWORD).encode()
        rc, out = self.s_client(self.port("starttls"), "-starttls", "pop3", input=script)
        self.assertEqual(rc, 0, "s_client -starttls pop3 failed:\n%s" % out[-3000:])
        self.assertIn("Verify return code: 0 (ok)", out)
        # TLS 1.3 sessions print "New, TLSv1.3, Cipher is ..." instead of "Protocol :"
        self.assertRegex(out, r"(Protocol\s*:\s*|New, )TLSv1\.[23]")
        # after the handshake: CAPA list (no STLS), USER/PASS, STAT, QUIT. (s_client
        # itself echoes the plaintext greeting, padded with NULs, before them.)
        answers = out[out.index("Verify return code"):]
        m = re.search(r"\+OK[^\r\n]*\r?\n((?:[^+.\r\n][^\r\n]*\r?\n)+)\.\r?\n", answers)
        self.assertIsNotNone(m, "no CAPA list after the handshake:\n%s" % answers[-2000:])
        capa = capa_set(m.group(1).splitlines())
        self.assertIn("USER", capa)
        self.assertNotIn("STLS", capa)
        self.assertRegex(answers, r"\+OK %d %d" % (len(EXPECTED), sum(e[1] for e in EXPECTED)))
        self.assertGreaterEqual(answers.count("+OK"), 5, answers[-2000:])

    def test_openssl_s_client_implicit(self):
        rc, out = self.s_client(self.port("implicit"),
                                input=("USER sclient_i\r\nPASS %s\r\nSTAT\r\nQUIT\r\n"
                                       % PASSWORD).encode())
        self.assertEqual(rc, 0, "s_client failed:\n%s" % out[-3000:])
        self.assertIn("Verify return code: 0 (ok)", out)
        self.assertRegex(out, r"\+OK %d %d" % (len(EXPECTED), sum(e[1] for e in EXPECTED)))


# ---------------------------------------------------------------------------
# TLS versions, ciphers, SNI


class TlsPolicyTests(TlsCase):
    """A legacy listener that accepts TLS 1.0 beside a default one that refuses it; a
    TLS 1.3-only listener; certificates chosen by SNI."""

    tls1_ok = None
    tls1_why = ""

    @classmethod
    def listeners(cls):
        cert = {"cert": PKI.server.cert, "key": PKI.server.key}
        legacy = {"cert": PKI.legacy.cert, "key": PKI.legacy.key}
        return [
            ("default", dict(tls="implicit", **cert)),
            ("legacy", dict(tls="implicit", min_version="TLSv1",
                            ciphers="DEFAULT:@SECLEVEL=0", **legacy)),
            # no ciphers: relies on security_level defaulting to 0 below TLS 1.2
            ("legacy_level", dict(tls="implicit", min_version="TLSv1", **legacy)),
            ("tls13", dict(tls="implicit", min_version="TLSv1.3", **cert)),
            ("sni", {"tls": "implicit", "certificates": [
                {"cert": PKI.server.cert, "key": PKI.server.key},
                {"cert": PKI.wrong_name.cert, "key": PKI.wrong_name.key}]}),
        ]

    @classmethod
    def setUpClass(cls):
        cls.tls1_ok, cls.tls1_why = tlsutil.openssl_can_tls1(PKI)
        super().setUpClass()

    def need_tls1(self):
        if not self.tls1_ok:
            self.skipTest("this machine's openssl cannot do TLS 1.0: " + self.tls1_why)

    def s_client_tls1(self, listener, input=b""):
        r = run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % self.port(listener),
                 "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile", PKI.ca.cert,
                 "-verify_return_error", "-ign_eof"], input=input, timeout=30)
        return r.returncode, r.stdout.decode("utf-8", "replace")

    def check_tls1_accepted(self, listener, user):
        self.need_tls1()
        rc, out = self.s_client_tls1(
            listener, input=("CAPA\r\nUSER %s\r\nPASS %s\r\nSTAT\r\nQUIT\r\n"
                             % (user, PASSWORD)).encode())
        self.assertEqual(rc, 0, "s_client -tls1 to the %s listener failed:\n%s\npopgate log:\n%s"
                         % (listener, out[-3000:], self.log_tail()))
        self.assertRegex(out, r"Protocol\s*:\s*TLSv1\s*\n")
        self.assertIn("Verify return code: 0 (ok)", out)
        self.assertRegex(out, r"\+OK %d %d" % (len(EXPECTED), sum(e[1] for e in EXPECTED)))

    def test_tls1_accepted_by_legacy_listener(self):
        self.check_tls1_accepted("legacy", "tls1")

    def test_tls1_accepted_with_default_security_level(self):
        self.check_tls1_accepted("legacy_level", "tls1_lvl")

    def test_tls1_refused_by_default_listener(self):
        self.need_tls1()
        rc, out = self.s_client_tls1("default", input=b"CAPA\r\nQUIT\r\n")
        self.assertNotEqual(rc, 0, "TLS 1.0 handshake accepted by a default listener:\n%s"
                            % out[-2000:])
        self.assertNotIn("+OK", out)
        # Python, too
        ctx = client_context(max_version=ssl.TLSVersion.TLSv1,
                             ciphers="DEFAULT:@SECLEVEL=0")
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            self.tls_raw("default", ctx=ctx)
        # and the listener still serves modern clients
        c = self.tls_raw("default")
        self.quit(c)

    def test_tls1_poplib_session_on_legacy_listener(self):
        self.need_tls1()
        ctx = client_context(min_version=ssl.TLSVersion.TLSv1,
                             max_version=ssl.TLSVersion.TLSv1, ciphers="DEFAULT:@SECLEVEL=0")
        p = poplib.POP3_SSL("127.0.0.1", self.port("legacy"), context=ctx, timeout=30)
        self.addCleanup(p.close)
        self.assertEqual(p.sock.version(), "TLSv1")
        p.user("tls1_py")
        p.pass_(PASSWORD)
        self.check_mailbox_poplib(p, "TLS 1.0")
        self.assertTrue(p.quit().startswith(b"+OK"))

    def test_legacy_listener_still_negotiates_modern_tls(self):
        p = poplib.POP3_SSL("127.0.0.1", self.port("legacy"), context=client_context(),
                            timeout=30)
        self.addCleanup(p.close)
        self.assertEqual(p.sock.version(), "TLSv1.3")
        p.user("modern")
        p.pass_(PASSWORD)
        self.assertEqual(p.stat()[0], len(EXPECTED))
        self.assertTrue(p.quit().startswith(b"+OK"))

    def test_min_version_tls13(self):
        ctx = client_context(max_version=ssl.TLSVersion.TLSv1_2)
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            self.tls_raw("tls13", ctx=ctx)
        c = self.tls_raw("tls13")
        self.assertEqual(c.sock.version(), "TLSv1.3")
        self.quit(c)
        ctx = client_context(max_version=ssl.TLSVersion.TLSv1_2)
        c = self.tls_raw("default", ctx=ctx)
        self.assertEqual(c.sock.version(), "TLSv1.2")
        self.quit(c)

    def test_sni_selects_certificate(self):
        for name, expect_san in (("wrong.example", ("DNS", "wrong.example")),
                                 ("localhost", ("DNS", "localhost"))):
            with self.subTest(sni=name):
                # verification with check_hostname=True passes only for the right cert
                c = self.tls_raw("sni", server_hostname=name)
                self.assertIn(expect_san, c.sock.getpeercert()["subjectAltName"])
                self.quit(c)
        # no SNI (Python sends none for an IP address): the first certificate
        c = self.tls_raw("sni", server_hostname="127.0.0.1")
        self.assertIn(("DNS", "localhost"), c.sock.getpeercert()["subjectAltName"])
        self.quit(c)


# ---------------------------------------------------------------------------
# plaintext login policy


class PlaintextPolicyTests(TlsCase):

    @classmethod
    def listeners(cls):
        return [
            ("deny", {"tls": "none", "plaintext_auth": "deny"}),
            ("loopback", {"tls": "none"}),
            ("allow", {"tls": "none", "plaintext_auth": "allow"}),
        ]

    def test_deny_capa_lacks_user_and_sasl(self):
        c = self.raw("deny")
        caps = self.capa(c)
        self.assertNotIn("USER", caps, "USER offered where plaintext login is denied")
        self.assertNotIn("SASL", caps, "SASL offered where plaintext login is denied")
        self.assertNotIn("STLS", caps, "STLS offered on a listener without TLS")
        self.quit(c)

    def test_deny_refuses_user_pass_and_auth(self):
        c = self.raw("deny")
        for line in ("USER deny", "PASS " + PASSWORD,
                     "AUTH PLAIN " + b64("\0deny\0" + PASSWORD), "AUTH PLAIN", "AUTH LOGIN",
                     "AUTH LOGIN " + b64("deny")):
            with self.subTest(command=line.split()[0:2]):
                r = c.cmd(line)
                self.assert_err(r, line.split()[0], PLAINTEXT_REFUSED)
                self.assertIn(b"isallowed", r, "reply to %s: %r" % (line.split()[0], r))
        self.assert_err(c.cmd("STLS"), "STLS on a listener without TLS")
        self.assertEqual(len(self.capa(c)) > 0, True)  # session still alive
        self.quit(c)
        self.assertNotIn(PASSWORD, self.popgate.log_text(), "a password reached the log")

    def test_loopback_default_allows_login_from_127_0_0_1(self):
        c = self.raw("loopback")
        caps = self.capa(c)
        self.assertIn("USER", caps)
        self.assertIn("SASL", caps)
        self.login_raw(c, "loopback")
        self.check_mailbox_raw(c, "loopback listener")
        self.quit(c)

    def test_allow_allows_login(self):
        c = self.raw("allow")
        caps = self.capa(c)
        self.assertIn("USER", caps)
        self.assertIn("SASL", caps)
        self.login_raw(c, "allow")
        self.assert_ok(c.cmd("STAT"), "STAT")
        self.quit(c)


# ---------------------------------------------------------------------------
# SASL


class SaslTests(TlsCase):
    """AUTH on a plain loopback listener (plaintext login allowed from 127.0.0.1)."""

    def sasl_ok_then_quit(self, c, user):
        r = c.cmd("STAT")
        self.assertEqual(r, b"+OK %d %d" % (len(EXPECTED), sum(e[1] for e in EXPECTED)),
                         "STAT after AUTH as %s" % user)
        self.quit(c)

    def test_capa_lists_sasl_mechanisms(self):
        c = self.raw("plain")
        caps = self.capa(c)
        self.assertIn("SASL", caps)
        self.assertTrue({"PLAIN", "LOGIN"} <= set(caps["SASL"].split()[1:]), caps["SASL"])
        self.quit(c)

    def test_auth_plain_initial_response(self):
        c = self.raw("plain")
        self.assert_ok(c.cmd("AUTH PLAIN " + b64("\0plain_ir\0" + PASSWORD)), "AUTH PLAIN ir")
        self.sasl_ok_then_quit(c, "plain_ir")

    def test_auth_plain_with_authzid_equal_to_user(self):
        c = self.raw("plain")
        self.assert_ok(c.cmd("AUTH PLAIN " + b64("plain_ir\0plain_ir\0" + PASSWORD)),
                       "AUTH PLAIN with authzid")
        self.sasl_ok_then_quit(c, "plain_ir")

    def test_auth_plain_continuation(self):
        c = self.raw("plain")
        self.assertEqual(c.cmd("AUTH PLAIN"), b"+ ", "AUTH PLAIN without initial response")
        self.assert_ok(c.cmd(b64("\0plain_cont\0" + PASSWORD)), "PLAIN continuation")
        self.sasl_ok_then_quit(c, "plain_cont")

    def test_auth_plain_empty_initial_response_fails(self):
        c = self.raw("plain")
        r = c.cmd("AUTH PLAIN =")
        self.assert_err(r, "AUTH PLAIN = (empty PLAIN message)")
        # "=" as the continuation line is the same empty message
        self.assertEqual(c.cmd("AUTH PLAIN"), b"+ ")
        self.assert_err(c.cmd("="), "'=' continuation (empty PLAIN message)")
        # the session continues
        self.login_raw(c, "plain_empty")
        self.sasl_ok_then_quit(c, "plain_empty")

    def test_auth_login_continuations(self):
        c = self.raw("plain")
        self.assertEqual(c.cmd("AUTH LOGIN"), b"+ VXNlcm5hbWU6")
        self.assertEqual(c.cmd(b64("login_cont")), b"+ UGFzc3dvcmQ6")
        self.assert_ok(c.cmd(b64(PASSWORD)), "AUTH LOGIN password")
        self.sasl_ok_then_quit(c, "login_cont")

    def test_auth_login_initial_response(self):
        c = self.raw("plain")
        self.assertEqual(c.cmd("AUTH LOGIN " + b64("login_ir")), b"+ UGFzc3dvcmQ6")
        self.assert_ok(c.cmd(b64(PASSWORD)), "AUTH LOGIN password")
        self.sasl_ok_then_quit(c, "login_ir")

    def test_cancel_then_user_pass(self):
        c = self.raw("plain")
        self.assertEqual(c.cmd("AUTH PLAIN"), b"+ ")
        self.assert_err(c.cmd("*"), "'*' cancelling AUTH PLAIN")
        self.assertEqual(c.cmd("AUTH LOGIN"), b"+ VXNlcm5hbWU6")
        self.assertEqual(c.cmd(b64("cancel")), b"+ UGFzc3dvcmQ6")
        self.assert_err(c.cmd("*"), "'*' cancelling AUTH LOGIN at the password")
        self.login_raw(c, "cancel")
        self.sasl_ok_then_quit(c, "cancel")

    def test_bare_auth_lists_mechanisms(self):
        c = self.raw("plain")
        self.assert_ok(c.cmd("AUTH"), "bare AUTH")
        mechs = [m.upper() for m in c.read_multi_lines()]
        self.assertIn(b"PLAIN", mechs)
        self.assertIn(b"LOGIN", mechs)
        # then a normal login in the same session
        self.assert_ok(c.cmd("AUTH PLAIN " + b64("\0bare\0" + PASSWORD)), "AUTH PLAIN")
        self.sasl_ok_then_quit(c, "bare")

    def test_wrong_password_gives_auth_code(self):
        c = self.raw("plain")
        r = c.cmd("AUTH PLAIN " + b64("\0wrongpw\0not-the-password"))
        self.assert_err(r, "AUTH PLAIN with a wrong password", b"-ERR [AUTH]")
        self.assert_ok(c.cmd("AUTH PLAIN " + b64("\0wrongpw\0" + PASSWORD)),
                       "AUTH PLAIN right after a failure")
        self.sasl_ok_then_quit(c, "wrongpw")
        self.assertNotIn("not-the-password", self.popgate.log_text())

    def test_long_junk_continuation_gets_err_not_disconnect(self):
        c = self.raw("plain")
        self.assertEqual(c.cmd("AUTH PLAIN"), b"+ ")
        junk = b64(b"x" * 7680)  # 10240 base64 characters, no NUL separators
        self.assertEqual(len(junk), 10240)
        r = c.cmd(junk)
        self.assert_err(r, "10 KB junk PLAIN message")
        # not base64 at all
        self.assertEqual(c.cmd("AUTH PLAIN"), b"+ ")
        self.assert_err(c.cmd("!!not*base64!!"), "invalid base64 continuation")
        self.login_raw(c, "junk")
        self.sasl_ok_then_quit(c, "junk")

    def test_password_with_spaces_and_quotes(self):
        c = self.raw("plain")
        self.assert_ok(c.cmd("AUTH PLAIN " + b64("\0special\0" + SPECIAL_PASSWORD)),
                       "AUTH PLAIN with password %r" % SPECIAL_PASSWORD)
        self.sasl_ok_then_quit(c, "special")

    def test_oauth_mechanisms_refused_when_upstream_lacks_them(self):
        c = self.raw("plain")
        token = b64("user=oauth\x01auth=Bearer ya29.token\x01\x01")
        r = c.cmd("AUTH XOAUTH2 " + token)
        self.assert_err(r, "AUTH XOAUTH2 to an upstream without AUTH=XOAUTH2", b"-ERR [AUTH]")
        r = c.cmd("AUTH OAUTHBEARER " + b64("n,a=oauth,\x01auth=Bearer tok\x01\x01"))
        self.assert_err(r, "AUTH OAUTHBEARER to an upstream without it", b"-ERR [AUTH]")
        self.login_raw(c, "oauth")
        self.sasl_ok_then_quit(c, "oauth")


# ---------------------------------------------------------------------------
# upstream TLS


class FakeImap:
    """A scripted IMAP server for what Dovecot will not do: a server that offers no
    STARTTLS, or greets with PREAUTH. Records every line it receives."""

    def __init__(self, greeting, capabilities):
        self.greeting = greeting
        self.capabilities = capabilities
        self.received = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self._session(conn)
                except OSError:
                    pass

    def _session(self, conn):
        conn.sendall(self.greeting + b"\r\n")
        buf = b""
        while not self._stop.is_set():
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.rstrip(b"\r")
                self.received.append(line)
                parts = line.split(None, 2)
                if len(parts) < 2:
                    continue
                tag, verb = parts[0], parts[1].upper()
                if verb == b"CAPABILITY":
                    conn.sendall(b"* CAPABILITY " + self.capabilities + b"\r\n" + tag
                                 + b" OK done\r\n")
                elif verb == b"LOGOUT":
                    conn.sendall(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                    return
                elif verb == b"STARTTLS":
                    conn.sendall(tag + b" BAD not offered\r\n")
                else:
                    conn.sendall(tag + b" NO fake server\r\n")

    def stop(self):
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self.thread.join(timeout=5)


class UpstreamTlsTests(TlsCase):
    """popgate → Dovecot over IMAPS and STARTTLS, verified against the test CA; wrong CA,
    wrong name, verification off; servers that must never get a plaintext login."""

    @classmethod
    def setUpClass(cls):
        # a second Dovecot whose certificate names only wrong.example (signed by the CA)
        cls.wrong_dovecot = TlsDovecot(PKI.wrong_name)
        cls.addClassCleanup(cls.wrong_dovecot.stop)
        for user in ("wn_ip", "wn_named"):
            cls.wrong_dovecot.add_user(user, PASSWORD)
            for m in MESSAGES:
                cls.wrong_dovecot.add_message(user, m)
        cls.wrong_dovecot.start()
        cls.fake_nostls = FakeImap(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake",
                                   b"IMAP4rev1 AUTH=PLAIN")
        cls.addClassCleanup(cls.fake_nostls.stop)
        cls.fake_preauth = FakeImap(b"* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] fake",
                                    b"IMAP4rev1 STARTTLS")
        cls.addClassCleanup(cls.fake_preauth.stop)
        super().setUpClass()

    @classmethod
    def upstreams(cls):
        wd = cls.wrong_dovecot
        stls = {"host": "127.0.0.1", "port": DOVECOT.port, "tls": "starttls",
                "ca_file": PKI.ca.cert}
        return {
            "main": plain_upstream(),
            "imaps": imaps_upstream(),
            "imaps_name": imaps_upstream(verify_name="localhost"),
            "stls": stls,
            "wrongca": imaps_upstream(ca_file=PKI.other_ca.cert),
            "wrongca_stls": dict(stls, ca_file=PKI.other_ca.cert),
            "wrongname": imaps_upstream(verify_name="wrong.example"),
            "noverify": imaps_upstream(ca_file=PKI.other_ca.cert, verify=False),
            "wn_ip": {"host": "127.0.0.1", "port": wd.imaps_port, "tls": "implicit",
                      "ca_file": PKI.ca.cert},
            "wn_named": {"host": "127.0.0.1", "port": wd.imaps_port, "tls": "implicit",
                         "ca_file": PKI.ca.cert, "verify_name": "wrong.example"},
            "fake_nostls": {"host": "127.0.0.1", "port": cls.fake_nostls.port,
                            "tls": "starttls", "ca_file": PKI.ca.cert},
            "fake_preauth": {"host": "127.0.0.1", "port": cls.fake_preauth.port,
                             "tls": "starttls", "ca_file": PKI.ca.cert},
            "plainport": {"host": "127.0.0.1", "port": DOVECOT.port, "tls": "implicit",
                          "ca_file": PKI.ca.cert},
        }

    @classmethod
    def routes(cls):
        pairs = [("up_imaps", "imaps"), ("up_name", "imaps_name"), ("up_stls", "stls"),
                 ("up_wrongca", "wrongca"), ("up_wrongca_stls", "wrongca_stls"),
                 ("up_wrongname", "wrongname"), ("up_noverify", "noverify"),
                 ("wn_ip", "wn_ip"), ("wn_named", "wn_named"),
                 ("up_fake_nostls", "fake_nostls"), ("up_fake_preauth", "fake_preauth"),
                 ("up_plainport", "plainport")]
        return ([{"user": u, "upstream": up} for u, up in pairs]
                + [{"default": True, "upstream": "main"}])

    def login_attempt(self, user):
        """USER/PASS on a fresh connection: (connection, the first -ERR or PASS's +OK)."""
        c = self.raw("plain")
        r = c.cmd("USER " + user)
        if r.startswith(b"+OK"):
            r = c.cmd("PASS " + PASSWORD)
        return c, r

    def check_works(self, user):
        c, r = self.login_attempt(user)
        self.assert_ok(r, "login as %s" % user)
        self.check_mailbox_raw(c, "upstream of %s" % user)
        self.quit(c)

    def failure_lines(self, user):
        return [line for line in self.popgate.log_text().splitlines()
                if "user=%s " % user in line + " " and "event=login_failed" in line]

    def check_refused(self, user, reason_pattern):
        c, r = self.login_attempt(user)
        self.assert_err(r, "login as %s" % user, b"-ERR [SYS/TEMP]")
        # the client gets the response code, the log gets the detail (DESIGN.md, 7)
        self.assertNotRegex(r, rb"(?i)certificate|verify|x509", "detail leaked to the client")
        self.quit(c)
        deadline = time.monotonic() + 5
        while not self.failure_lines(user) and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = self.failure_lines(user)
        self.assertTrue(lines, "no event=login_failed line for user=%s; log tail:\n%s"
                        % (user, self.log_tail()))
        self.assertRegex(lines[-1], reason_pattern)
        return lines[-1]

    def test_implicit_tls_with_ca_file(self):
        self.check_works("up_imaps")

    def test_verify_name_matching(self):
        self.check_works("up_name")

    def test_starttls_upstream(self):
        self.check_works("up_stls")

    def test_wrong_ca_refused(self):
        self.check_refused("up_wrongca", r"(?i)certificate verify failed")

    def test_wrong_ca_starttls_refused(self):
        self.check_refused("up_wrongca_stls", r"(?i)certificate verify failed")

    def test_wrong_verify_name_refused(self):
        self.check_refused("up_wrongname", r"(?i)certificate verify failed.*(host|name)")

    def test_certificate_for_another_name_refused(self):
        self.check_refused("wn_ip", r"(?i)certificate verify failed.*(host|name|IP|addr)")

    def test_certificate_for_another_name_accepted_with_verify_name(self):
        c, r = self.login_attempt("wn_named")
        self.assert_ok(r, "login as wn_named (verify_name wrong.example)")
        self.assert_ok(c.cmd("STAT"), "STAT")
        self.quit(c)

    def test_verify_false_connects_despite_wrong_ca(self):
        self.check_works("up_noverify")

    def test_verify_false_warns_at_start(self):
        # start-up lines carry no session=; the one about upstream "noverify" must warn
        startup = [line for line in self.popgate.log_text().splitlines()
                   if "session=" not in line]
        warn = [line for line in startup
                if "noverify" in line and re.search(r"(?i)warn", line)]
        self.assertTrue(warn, "no start-up warning about upstream noverify's \"verify\": false;"
                        " start-up log lines:\n%s" % "\n".join(startup[:30]))

    def test_starttls_not_offered_never_falls_back(self):
        c, r = self.login_attempt("up_fake_nostls")
        self.assert_err(r, "login through a server without STARTTLS", b"-ERR [SYS/TEMP]")
        self.quit(c)
        sent = b"\n".join(self.fake_nostls.received)
        self.assertNotIn(PASSWORD.encode(), sent, "password sent in plaintext: %r" % sent)
        self.assertNotRegex(sent, rb"(?i)\b(LOGIN|AUTHENTICATE)\b",
                            "login attempted without TLS: %r" % sent)
        self.assertTrue(self.failure_lines("up_fake_nostls"), self.log_tail())

    def test_preauth_greeting_refused_with_starttls(self):
        c, r = self.login_attempt("up_fake_preauth")
        self.assert_err(r, "login through a PREAUTH server", b"-ERR [SYS/TEMP]")
        self.quit(c)
        sent = b"\n".join(self.fake_preauth.received)
        self.assertNotIn(PASSWORD.encode(), sent, "password sent to a PREAUTH server: %r" % sent)

    def test_implicit_tls_to_plaintext_port_refused(self):
        c, r = self.login_attempt("up_plainport")
        self.assert_err(r, "implicit TLS to a plaintext IMAP port", b"-ERR [SYS/TEMP]")
        self.quit(c)


# ---------------------------------------------------------------------------
# fetchmail


FETCHMAIL_MDA = """#!/bin/sh
# Delivers one message from fetchmail's stdin into a numbered file.
dir=%s
n=$(ls "$dir" | wc -l)
exec cat > "$dir/msg.$(printf %%04d "$n")"
"""


class FetchmailTests(TlsCase):
    """fetchmail (keep mode) through an implicit TLS listener; popgate reaches Dovecot
    over IMAPS.

    What fetchmail changes in a message it hands to an MDA (checked by
    strip_fetchmail_changes; seen with fetchmail 6.4.37):
    - it prepends a 3-line Received header:
        Received: from 127.0.0.1 [127.0.0.1]
        \tby HOSTNAME with POP3 (fetchmail-6.4.37)
        \tfor <LOCALUSER@localhost> (single-drop); Sun, 29 Nov 2026 12:46:33 +0000 (UTC)
    - every CRLF becomes LF (stripcr is on by default with an MDA), so no CR is left;
    - a message without a final line end gets a final LF (that is the CRLF that POP3
      framing adds before the terminating ".", which any POP3 client receives);
    nothing else: headers (addresses are fully qualified here, so its rewriting of
    unqualified addresses does not apply), dot lines (unstuffed correctly) and 8-bit
    bytes arrive unchanged.
    fetchmail 6.4 checks the certificate's DNS names and CN only, never an IP address
    SAN, so polling 127.0.0.1 needs "sslcommonname localhost" with sslcertck."""

    @classmethod
    def listeners(cls):
        return [("implicit", {"tls": "implicit", "cert": PKI.server.cert,
                              "key": PKI.server.key})]

    @classmethod
    def upstreams(cls):
        return {"main": imaps_upstream()}

    def fetch(self, user, ssl_options):
        home = tempfile.mkdtemp(prefix="popgate-fetchmail-")
        self.addCleanup(shutil.rmtree, home, True)
        out_dir = os.path.join(home, "delivered")
        os.mkdir(out_dir)
        mda = os.path.join(home, "mda.sh")
        with open(mda, "w") as f:
            f.write(FETCHMAIL_MDA % out_dir)
        os.chmod(mda, 0o755)
        rc_path = os.path.join(home, "fetchmailrc")
        local = pwd.getpwuid(os.geteuid()).pw_name
        # sslcommonname: fetchmail does not match IP address SANs (see the class doc)
        with open(rc_path, "w") as f:
            f.write('set no syslog\n'
                    'poll 127.0.0.1 with proto POP3 port %d timeout 30\n'
                    '  user "%s" there with password "%s" is "%s" here\n'
                    '  %s\n'
                    '  keep fetchall\n'
                    '  mda "%s"\n'
                    % (self.port("implicit"), user, PASSWORD, local, ssl_options, mda))
        os.chmod(rc_path, stat.S_IRUSR | stat.S_IWUSR)
        env = dict(os.environ, HOME=home, FETCHMAILHOME=home)
        env.pop("FETCHMAILUSER", None)
        r = run(["fetchmail", "-f", rc_path, "--nodetach", "--nosyslog", "-v",
                 "--idfile", os.path.join(home, ".fetchids"),
                 "--pidfile", os.path.join(home, "fetchmail.pid")],
                timeout=60, env=env)
        out = r.stdout.decode("utf-8", "replace")
        self.assertEqual(r.returncode, 0, "fetchmail (%s) exited %d:\n%s\npopgate log:\n%s"
                         % (ssl_options, r.returncode, out[-4000:], self.log_tail()))
        files = sorted(os.listdir(out_dir))
        delivered = []
        for name in files:
            with open(os.path.join(out_dir, name), "rb") as f:
                delivered.append(f.read())
        return out, delivered

    @staticmethod
    def strip_fetchmail_changes(msg):
        """Undoes what fetchmail does (see the class doc): drops the Received header it
        prepends and turns LF line ends back into CRLF."""
        m = re.match(rb"Received: from 127\.0\.0\.1 \[127\.0\.0\.1\]\n"
                     rb"\tby [^\n]* with POP3 \(fetchmail-[^\n]*\)\n"
                     rb"\tfor <[^\n]*> \(single-drop\); [^\n]*\n", msg)
        if not m:
            return None, msg
        return m.group(0), harness.crlf(msg[m.end():])

    def check_fetch(self, user, ssl_options, protocol_re):
        out, delivered = self.fetch(user, ssl_options)
        self.assertRegex(out, protocol_re, "fetchmail did not report the TLS protocol")
        self.assertEqual(len(delivered), len(EXPECTED),
                         "fetchmail delivered %d messages, expected %d:\n%s"
                         % (len(delivered), len(EXPECTED), out[-3000:]))
        for n, (msg, (uid, size, body)) in enumerate(zip(delivered, EXPECTED), 1):
            received, rest = self.strip_fetchmail_changes(msg)
            self.assertIsNotNone(received, "message %d: no fetchmail Received header first: %r"
                                 % (n, msg[:300]))
            self.assertNotIn(b"\r", msg, "message %d: fetchmail left a CR" % n)
            self.assertTrue(pop3_equal(rest, body), "message %d after removing fetchmail's "
                            "Received header and restoring CRLF: %s"
                            % (n, describe_difference(rest, body)))

    def test_fetchmail_ssl(self):
        self.check_fetch("fm_ssl", 'ssl sslcertck sslcertfile "%s" sslcommonname localhost'
                         % PKI.ca.cert, r"TLSv1\.[23]")

    def test_fetchmail_sslproto_tls12_plus(self):
        self.check_fetch("fm_tls12", "ssl sslproto 'tls1.2+' sslcertck sslcertfile \"%s\" "
                         "sslcommonname localhost" % PKI.ca.cert, r"TLSv1\.[23]")


if __name__ == "__main__":
    unittest.main()
