#!/usr/bin/env python3
"""Regression tests for bugs found in review, each reproduced against a real Dovecot:
half-closed clients, messages expunged by another IMAP client, the password left in
memory, upstream connect failover, a big RETR followed by QUIT, a client that stops
reading while the upstream command timeout is short, deep pipelining, and the login of a
big mailbox.

Run: python3 tests/integration/test_regressions.py -v
Env: POPGATE_BIN          the popgate under test (default build/asan/popgate)
     POPGATE_RELEASE_BIN  if set and present, the password-in-memory test runs this
                          (optimized) build: a wipe the compiler removed shows only there
"""

import base64
import contextlib
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Pop3Raw  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MB = 1024 * 1024
OUTPUT_BUFFER_DEFAULT = 64 * 1024


def lines_message(nlines, tag):
    """A plain message of nlines body lines (about 50 bytes each, LF line ends); every
    500th line starts with a dot, so the framing below also covers dot-stuffing."""
    head = ("From: %s@example.org\nTo: user@example.org\nSubject: %s\n"
            "Message-ID: <%s@example.org>\n\n" % (tag, tag, tag)).encode()
    body = b"".join((b"." if i % 500 == 499 else b"") +
                    b"line %06d of %s xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n" % (i, tag.encode())
                    for i in range(nlines))
    return head + body


def small_message(i):
    return ("From: s%d@example.org\nTo: user@example.org\nSubject: message %d\n"
            "Message-ID: <r%d@example.org>\n\nbody of message %d\n" % (i, i, i, i)).encode()


def dot_stuff(data):
    """RFC 1939 byte-stuffing of a CRLF message that ends in CRLF."""
    return (b"\n" + data).replace(b"\n.", b"\n..")[1:]


def read_to_eof(sock, timeout=30.0):
    """Everything the peer sends until it closes (bytes). Raises socket.timeout if the
    connection is still open after timeout seconds."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("connection still open after %.0f s; received %d bytes, "
                                 "last %r" % (timeout, len(data), bytes(data[-120:])))
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except socket.timeout:
            continue
        if not chunk:
            return bytes(data)
        data += chunk


@contextlib.contextmanager
def environ(changes):
    """Sets environment variables for a process started inside the block."""
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def writable_imap(dovecot, user):
    """An IMAP client on user's INBOX, selected read-write (to expunge behind popgate)."""
    return harness.Imap("127.0.0.1", dovecot.port, user, dovecot.users[user][0],
                        readonly=False)


class RegressionCase(unittest.TestCase):
    """One Dovecot per class and one or more popgates in front of it."""

    popgate_limits = None
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.popgates = []
        cls.dovecot = harness.Dovecot()
        cls.addClassCleanup(cls.dovecot.stop)
        cls.fill_mailboxes()
        cls.dovecot.start()
        cls.start_popgates()

    @classmethod
    def fill_mailboxes(cls):
        pass

    @classmethod
    def start_popgates(cls):
        cls.popgate = cls.start_popgate(limits=cls.popgate_limits)

    @classmethod
    def start_popgate(cls, upstream_host="127.0.0.1", upstream_port=None, limits=None,
                      binary=None, env=None):
        pg = harness.Popgate(upstream_port or cls.dovecot.port, upstream_host=upstream_host,
                             binary=binary, limits=limits)
        cls.addClassCleanup(cls._stop_popgate, pg)
        with environ(env or {}):
            pg.start()
        cls.popgates.append(pg)
        return pg

    @classmethod
    def _stop_popgate(cls, pg):
        pg.stop()
        if pg.needed_sigkill:
            print("\nnote: popgate did not exit within 15 s of SIGTERM; killed (log %s)"
                  % pg.log_path, file=sys.stderr)
        report = pg.sanitizer_report()
        if report:
            raise AssertionError("sanitizer report in popgate's log %s:\n%s"
                                 % (pg.log_path, report))
        pg.cleanup()

    def tearDown(self):
        for pg in self.popgates:
            if not pg.is_running():
                report = pg.sanitizer_report() or pg.log_text()[-3000:]
                self.fail("popgate is no longer running (exit status %s); log %s:\n%s"
                          % (pg.proc and pg.proc.returncode, pg.log_path, report))

    # -- helpers

    def raw(self, pg=None, timeout=60, rcvbuf=None):
        pg = pg or self.popgate
        c = Pop3Raw("127.0.0.1", pg.port, timeout=timeout, rcvbuf=rcvbuf)
        self.addCleanup(c.close)
        self.assertTrue(c.greeting.startswith(b"+OK"), "greeting: %r" % c.greeting)
        return c

    def login(self, user, pg=None, timeout=60, rcvbuf=None):
        c = self.raw(pg, timeout=timeout, rcvbuf=rcvbuf)
        r = c.login(user, self.dovecot.users[user][0])
        self.assertTrue(r.startswith(b"+OK"), "PASS for %s answered %r" % (user, r))
        return c

    def assert_ok(self, reply, what):
        self.assertTrue(reply.startswith(b"+OK"), "%s: expected +OK, got %r" % (what, reply))

    def assert_err(self, reply, what):
        self.assertTrue(reply.startswith(b"-ERR"), "%s: expected -ERR, got %r" % (what, reply))

    def assert_retr_then_quit(self, data, body, what):
        """data is all a client received after sending RETR n and QUIT: exactly the RETR
        status, the stuffed message, '.', and the QUIT answer."""
        m = re.match(rb"\+OK (\d+) octets[^\r\n]*\r\n", data)
        self.assertTrue(m, "%s: RETR status line: %r" % (what, data[:120]))
        self.assertEqual(int(m.group(1)), len(body), "%s: '+OK <size> octets'" % what)
        stuffed = dot_stuff(body)
        got = data[m.end():m.end() + len(stuffed)]
        if got != stuffed:
            i = next((k for k in range(min(len(got), len(stuffed))) if got[k] != stuffed[k]),
                     min(len(got), len(stuffed)))
            self.fail("%s: message differs from IMAP's BODY[] at offset %d of %d (received "
                      "%d bytes in all): got %r, expected %r"
                      % (what, i, len(stuffed), len(data), got[max(0, i - 20):i + 40],
                         stuffed[max(0, i - 20):i + 40]))
        rest = data[m.end() + len(stuffed):]
        self.assertTrue(rest.startswith(b".\r\n"),
                        "%s: no '.' line after the message; then came %r" % (what, rest[:120]))
        rest = rest[3:]
        self.assertTrue(re.fullmatch(rb"\+OK[^\r\n]*\r\n", rest),
                        "%s: after the message, expected exactly the QUIT answer '+OK ...' "
                        "and the close; got %r" % (what, rest[:400]))

    def session_end_lines(self, pg, user, timeout=5.0):
        """The log's session_end lines of user's sessions (waits for at least one)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in pg.log_text().splitlines()
                     if " user=%s " % user in line and "event=session_end" in line]
            if lines or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


def process_tree(pid):
    """pid and all its descendants (popgate may serve sessions in worker processes)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                parents[int(entry)] = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            pass
    tree = [pid]
    for p in tree:
        tree += [child for child, parent in parents.items() if parent == p]
    return tree


def stack_kb(pid):
    """{process: size of its main thread's stack mapping in kB} for pid's process tree;
    the mapping grows with the deepest call chain so far and never shrinks."""
    out = {}
    for p in process_tree(pid):
        try:
            with open("/proc/%d/maps" % p) as f:
                for line in f:
                    if line.rstrip().endswith("[stack]"):
                        start, end = (int(x, 16) for x in line.split()[0].split("-"))
                        out[p] = (end - start) // 1024
        except OSError:
            pass
    return out


class SessionRegressionTests(RegressionCase):
    """Half-closed clients, expunged messages, RETR+QUIT in one write, deep pipelining."""

    @classmethod
    def fill_mailboxes(cls):
        cls.dovecot.add_user("halfretr", "halfretr-pw")
        for i in range(2):
            cls.dovecot.add_message("halfretr", lines_message(20000, "half%d" % i))  # ~1 MB
        cls.dovecot.add_user("halfdele", "halfdele-pw")
        for i in range(3):
            cls.dovecot.add_message("halfdele", small_message(i))
        cls.dovecot.add_user("gone", "gone-pw")
        for i in range(4):
            cls.dovecot.add_message("gone", small_message(i))
        cls.dovecot.add_user("bigquit", "bigquit-pw")
        cls.dovecot.add_message("bigquit", lines_message(40000, "bigquit"))  # ~2 MB
        for user in ("pipe", "pipe-multi"):
            cls.dovecot.add_user(user, user + "-pw")
            for i in range(2):
                cls.dovecot.add_message(user, small_message(i))

    def test_half_closed_client_gets_whole_retr_and_quit_answer(self):
        with self.dovecot.imap("halfretr") as im:
            body = im.body(im.uids()[0])
        self.assertGreater(len(body), OUTPUT_BUFFER_DEFAULT * 4, "premise: message size")
        c = self.login("halfretr")
        c.send(b"RETR 1\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        data = bytes(c.buf) + read_to_eof(c.sock)
        self.assert_retr_then_quit(data, body, "RETR 1 + QUIT, then SHUT_WR")

    def test_half_closed_client_dele_quit_removes_message(self):
        with self.dovecot.imap("halfdele") as im:
            uids = im.uids()
        c = self.login("halfdele")
        c.send(b"DELE 1\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        data = bytes(c.buf) + read_to_eof(c.sock)
        self.assertTrue(re.fullmatch(rb"\+OK[^\r\n]*\r\n\+OK[^\r\n]*\r\n", data),
                        "DELE 1 + QUIT, then SHUT_WR: expected two '+OK' lines and the "
                        "close, got %r" % data[:400])
        with self.dovecot.imap("halfdele") as im:
            after = im.uids()
        self.assertEqual(after, uids[1:], "IMAP UIDs after DELE 1 + QUIT from a half-closed "
                         "client (before: %r)" % uids)

    def test_message_expunged_by_other_imap_client(self):
        c = self.login("gone")
        with self.dovecot.imap("gone") as im:
            uids = im.uids()
            third = im.body(uids[2])
        self.assertEqual(len(uids), 4, "premise: 4 messages")
        im = writable_imap(self.dovecot, "gone")
        try:
            typ, data = im.conn.uid("STORE", "%d,%d" % (uids[0], uids[1]), "+FLAGS.SILENT",
                                    r"(\Deleted)")
            self.assertEqual(typ, "OK", "IMAP STORE: %r" % data)
            typ, data = im.conn.expunge()
            self.assertEqual(typ, "OK", "IMAP EXPUNGE: %r" % data)
        finally:
            im.close()
        # The first command for each message meets Dovecot's NO; later ones a FETCH that
        # returns no data: both must be -ERR, never '+OK' with an empty body.
        for cmd in ("RETR 1", "TOP 1 0", "RETR 1", "TOP 2 0", "RETR 2", "TOP 2 0"):
            self.assert_err(c.cmd(cmd), "%s of a message expunged over IMAP" % cmd)
            self.assert_ok(c.cmd("NOOP"), "NOOP after %s of an expunged message" % cmd)
        self.assert_ok(c.cmd("RETR 3"), "RETR 3 (still there)")
        self.assertEqual(c.read_multi(), third, "RETR 3 body")
        self.assert_ok(c.cmd("QUIT"), "QUIT")

    def test_big_retr_and_quit_in_one_write(self):
        with self.dovecot.imap("bigquit") as im:
            body = im.body(im.uids()[0])
        self.assertGreater(len(body), 2 * 1000 * 1000, "premise: message size")
        c = self.login("bigquit")
        c.send(b"RETR 1\r\nQUIT\r\n")
        time.sleep(2)
        data = bytes(c.buf) + read_to_eof(c.sock)
        self.assert_retr_then_quit(data, body, "RETR 1 + QUIT in one write, read after 2 s")
        lines = self.session_end_lines(self.popgate, "bigquit")
        self.assertEqual(len(lines), 1, "session_end lines for bigquit: %r" % lines)
        self.assertIn(" result=quit ", lines[0], "log: %s" % lines[0])

    def pipeline(self, user, command, n, check_answer):
        """Sends n copies of command and a STAT in one write; checks every answer in order
        and that popgate's stack did not grow with n (no recursion per command)."""
        with self.dovecot.imap(user) as im:
            sizes = im.sizes()
        c = self.login(user)
        stack_before = stack_kb(self.popgate.pid)
        c.send(command * n + b"STAT\r\n")
        for i in range(n):
            check_answer(c, "answer %d of %d pipelined %r" % (i + 1, n, command))
        r = c.status()
        self.assertEqual(r, b"+OK 2 %d" % sum(sizes.values()), "STAT after %d %r"
                         % (n, command))
        self.assert_ok(c.cmd("NOOP"), "NOOP")
        stack_after = stack_kb(self.popgate.pid)
        self.assert_ok(c.cmd("QUIT"), "QUIT")
        for pid, after in stack_after.items():
            before = stack_before.get(pid, after)
            self.assertLess(after - before, 256,
                            "popgate's (pid %d) main stack grew from %d kB to %d kB while "
                            "answering %d pipelined %r: each command recurses into the next"
                            % (pid, before, after, n, command))

    def test_pipelining_800_list_1(self):
        with self.dovecot.imap("pipe") as im:
            want = b"+OK 1 %d" % im.sizes()[im.uids()[0]]

        def check(c, what):
            self.assertEqual(c.status(), want, what)
        self.pipeline("pipe", b"LIST 1\r\n", 800, check)

    def test_pipelining_800_multi_line_list(self):
        # a multi-line LIST ends as a job that completes at once: the path that recursed
        with self.dovecot.imap("pipe-multi") as im:
            sizes = im.sizes()
            want = [b"%d %d" % (n, sizes[uid]) for n, uid in enumerate(im.uids(), 1)]

        def check(c, what):
            self.assert_ok(c.status(), what)
            self.assertEqual(c.read_multi_lines(), want, what)
        self.pipeline("pipe-multi", b"LIST\r\n", 800, check)


PASSWORD = "Qv7-popgate-HYGIENE-8xW3-nZk5-rT2j-Lm9"
WRONG_PASSWORD = "Jb4-mistyped-Tq8Vd-6tY1-pQs8-Xc2"


def memory_hits(pid, needles):
    """Scans the writable, readable mappings (heap, anonymous, stack, data) of pid and its
    descendants for each needle. Returns [(needle, where, address, context bytes)]."""
    hits = []
    for p in process_tree(pid):
        try:
            hits += [(needle, "pid %d %s" % (p, name), addr, context)
                     for needle, name, addr, context in process_memory_hits(p, needles)]
        except FileNotFoundError:  # the process ended meanwhile
            pass
    return hits


def process_memory_hits(pid, needles):
    hits = []
    with open("/proc/%d/maps" % pid) as maps, open("/proc/%d/mem" % pid, "rb", 0) as mem:
        for line in maps:
            f = line.split()
            perms = f[1]
            name = f[5] if len(f) > 5 else "[anon]"
            if perms[0] != "r" or perms[1] != "w" or name in ("[vvar]", "[vsyscall]"):
                continue
            start, end = (int(x, 16) for x in f[0].split("-"))
            if end - start > 1 << 30:  # sanitizer shadow and reserved ranges
                continue
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            for needle in needles:
                i = data.find(needle)
                while i >= 0:
                    hits.append((needle, name, start + i, data[max(0, i - 24):i + 48]))
                    i = data.find(needle, i + 1)
    return hits


def pieces(secret, size=12, step=4):
    """Overlapping slices of secret: a remnant of at least size+step-1 bytes (say, a freed
    buffer whose first 16 bytes malloc reused for its lists) contains one of them."""
    out = [secret[i:i + size] for i in range(0, len(secret) - size + 1, step)]
    if secret[-size:] not in out:
        out.append(secret[-size:])
    return out


def is_asan_binary(path):
    try:
        with open(path, "rb") as f:
            return b"AddressSanitizer" in f.read()
    except OSError:
        return False


class PasswordHygieneTests(RegressionCase):
    """After login the password is gone from popgate's memory, and never in its log."""

    @classmethod
    def fill_mailboxes(cls):
        cls.dovecot.add_user("hygiene", PASSWORD)
        cls.dovecot.add_message("hygiene", small_message(1))

    @classmethod
    def start_popgates(cls):
        release = os.environ.get("POPGATE_RELEASE_BIN")
        binary = release if release and os.access(release, os.X_OK) else None
        cls.popgate = cls.start_popgate(binary=binary)
        if is_asan_binary(cls.popgate.binary):
            print("\nnote: password test on the ASan build %s (set POPGATE_RELEASE_BIN to "
                  "also catch a wipe that the optimizer removes)" % cls.popgate.binary,
                  file=sys.stderr)

    def test_password_not_in_memory_or_log_after_login(self):
        pg = self.popgate
        if not os.access("/proc/%d/mem" % pg.pid, os.R_OK):
            self.skipTest("cannot read /proc/%d/mem: run as root" % pg.pid)
        # several failed logins: a copy left in stack memory showed in about half the
        # runs after one
        for _ in range(5):
            bad = self.raw()
            r = bad.login("hygiene", WRONG_PASSWORD)
            self.assertTrue(r.startswith(b"-ERR [AUTH]"), "PASS with a wrong password: %r" % r)
            bad.close()

        c = self.login("hygiene")
        self.assertTrue(re.match(rb"\+OK 1 \d+$", c.cmd("STAT")), "STAT")
        self.assert_ok(c.cmd("NOOP"), "NOOP")
        time.sleep(0.3)

        needles = {}
        for label, pw in (("password", PASSWORD), ("wrong password", WRONG_PASSWORD)):
            pw = pw.encode()
            for piece in pieces(pw) + [b"PASS " + pw]:
                needles[piece] = label
            # popgate logs in upstream with AUTHENTICATE PLAIN when offered: the base64
            # of "\0user\0password" is the password too
            for piece in pieces(base64.b64encode(b"\0hygiene\0" + pw)):
                needles[piece] = label + " in SASL PLAIN base64"
        hits = memory_hits(pg.pid, list(needles))
        if hits:
            found = sorted({needles[h[0]] for h in hits})
            self.fail("%d pieces of a password are still in popgate's memory (%s) after a "
                      "failed login, then login + STAT + NOOP; found: %s\n%s"
                      % (len(hits), pg.binary, ", ".join(found),
                         "\n".join("  %s %r in %s at %#x: %r" % ((needles[h[0]],) + h)
                                   for h in hits[:10])))

        self.assert_ok(c.cmd("QUIT"), "QUIT")
        log = pg.log_bytes()
        for pw in (PASSWORD.encode(), WRONG_PASSWORD.encode()):
            for piece in pieces(pw):
                self.assertNotIn(piece, log, "password piece %r in popgate's log %s"
                                 % (piece, pg.log_path))


def c_compiler():
    return next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang")
                 if c and shutil.which(c)), None)


def build_gai_shim(cc, out_dir):
    """Builds gai_shim.c into out_dir; returns the .so path."""
    so = os.path.join(out_dir, "gai_shim.so")
    r = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-shared", "-fPIC", "-o", so,
                        os.path.join(HERE, "gai_shim.c"), "-ldl"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError("building gai_shim.c failed:\n%s"
                           % r.stderr.decode(errors="replace"))
    return so


def sanitizer_runtime(binary):
    """The shared ASan runtime binary links against (it must come first in LD_PRELOAD),
    or None."""
    try:
        r = subprocess.run(["ldd", binary], stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in r.stdout.decode(errors="replace").splitlines():
        m = re.match(r"\s*(libasan\S*|libclang_rt\.asan\S*) => (\S+)", line)
        if m:
            return m.group(2)
    return None


class BlackHole:
    """A listening socket whose accept queue is full and never drained: further SYNs to
    it are dropped, so a connect there hangs until the connecting side gives up."""

    def __init__(self, host, port):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((host, port))
        self.listener.listen(0)
        self.fillers = []
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect((host, port))
            except BlockingIOError:
                pass
            self.fillers.append(s)
        time.sleep(0.2)

    def swallows(self, host, port, wait=1.0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(wait)
            try:
                s.connect((host, port))
            except socket.timeout:
                return True
            except OSError:
                return False
            return False

    def close(self):
        for s in self.fillers + [self.listener]:
            s.close()


class UpstreamFailoverTests(RegressionCase):
    """upstream.test resolves (via an LD_PRELOAD getaddrinfo shim) to a dead address first,
    then to Dovecot's 127.0.0.1: the login must fail over to the second address."""

    CONNECT_TIMEOUT = 2
    REFUSING = "127.0.0.2"    # nothing listens there: connection refused
    BLACK_HOLE = "127.0.0.3"  # SYNs dropped: the connect times out

    @classmethod
    def fill_mailboxes(cls):
        cls.dovecot.add_user("failover", "failover-pw")
        cls.dovecot.add_message("failover", small_message(1))

    @classmethod
    def setUpClass(cls):
        cc = c_compiler()
        if cc is None:
            raise unittest.SkipTest("no C compiler (cc, gcc or clang) to build "
                                    "tests/integration/gai_shim.c")
        cls.tmp = tempfile.mkdtemp(prefix="popgate-gai-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.shim = build_gai_shim(cc, cls.tmp)
        super().setUpClass()

    @classmethod
    def start_popgates(cls):
        cls.black_hole = BlackHole(cls.BLACK_HOLE, cls.dovecot.port)
        cls.addClassCleanup(cls.black_hole.close)
        binary = harness.Popgate(cls.dovecot.port).binary
        preload = [p for p in (sanitizer_runtime(binary), cls.shim) if p]
        cls.gai_log = os.path.join(cls.tmp, "gai.log")
        limits = {"connect_timeout": cls.CONNECT_TIMEOUT}
        env = {"LD_PRELOAD": " ".join(preload), "POPGATE_TEST_GAI_LOG": cls.gai_log}
        env["POPGATE_TEST_GAI"] = "upstream.test=%s,127.0.0.1" % cls.REFUSING
        cls.refusing = cls.start_popgate("upstream.test", limits=limits, env=env)
        env["POPGATE_TEST_GAI"] = "upstream.test=%s,127.0.0.1" % cls.BLACK_HOLE
        cls.black_holed = cls.start_popgate("upstream.test", limits=limits, env=env)
        cls.popgate = cls.refusing

    def shim_answered(self, addrs):
        try:
            with open(self.gai_log) as f:
                return "upstream.test %s,127.0.0.1" % addrs in f.read().splitlines()
        except OSError:
            return False

    def logins(self, pg, n=2):
        """n logins in a row; returns their durations."""
        times = []
        for i in range(n):
            c = self.raw(pg)
            t = time.monotonic()
            r = c.login("failover", "failover-pw")
            times.append(time.monotonic() - t)
            self.assert_ok(r, "login %d through upstream.test (log %s)" % (i + 1, pg.log_path))
            self.assertTrue(re.match(rb"\+OK 1 \d+$", c.cmd("STAT")), "STAT")
            self.assert_ok(c.cmd("QUIT"), "QUIT")
            c.close()
        return times

    def test_first_address_refuses(self):
        self.assertTrue(self.shim_answered(self.REFUSING),
                        "premise: popgate resolved upstream.test through the shim")
        self.assertFalse(harness.port_accepts(self.dovecot.port, self.REFUSING),
                         "premise: %s:%d refuses" % (self.REFUSING, self.dovecot.port))
        self.logins(self.refusing)

    def test_first_address_black_holed(self):
        self.assertTrue(self.shim_answered(self.BLACK_HOLE),
                        "premise: popgate resolved upstream.test through the shim")
        self.assertTrue(self.black_hole.swallows(self.BLACK_HOLE, self.dovecot.port),
                        "premise: connects to %s:%d hang" % (self.BLACK_HOLE, self.dovecot.port))
        times = self.logins(self.black_holed)
        # the dead address was tried first: each login waited out its connect timeout
        for t in times:
            self.assertGreater(t, self.CONNECT_TIMEOUT - 0.5,
                               "login took %.2f s: was the black-holed address tried?" % t)


def wmem_max():
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * MB


class SlowClientTests(RegressionCase):
    """The client stops reading in the middle of a big RETR for longer than the upstream
    command timeout: popgate waits for the client, and the upstream timer must not fire."""

    popgate_limits = {"command_timeout": 2, "output_buffer": 4096}

    @classmethod
    def fill_mailboxes(cls):
        cls.dovecot.add_user("slow", "slow-pw")
        # bigger than what the kernel buffers between popgate and a stalled client
        size = wmem_max() + 8 * MB
        cls.dovecot.add_message("slow", lines_message(size // 50, "slow"))

    def test_client_pause_longer_than_command_timeout(self):
        with self.dovecot.imap("slow", timeout=120) as im:
            uid = im.uids()[0]
            imap_len, imap_sha = im.body_digest(uid)
        c = self.login("slow", timeout=60, rcvbuf=4096)
        self.assert_ok(c.cmd("RETR 1"), "RETR 1")
        while len(c.buf) < 64 * 1024:
            c._fill(16384)
        time.sleep(5)  # the client is the slow side: 2.5 command timeouts
        h = hashlib.sha256()
        try:
            length = c.read_multi_stream(h.update, timeout=120)
        except (harness.Pop3Error, OSError) as e:
            self.fail("RETR 1 broke after the client's 5 s pause (command_timeout 2): %s; "
                      "log:\n%s" % (e, "\n".join(line for line in
                                                 self.popgate.log_text().splitlines()
                                                 if "user=slow" in line)[-2000:]))
        self.assertEqual(length, imap_len, "octets received vs IMAP BODY[]")
        self.assertEqual(h.hexdigest(), imap_sha, "sha256 received vs IMAP BODY[]")
        self.assert_ok(c.cmd("NOOP"), "NOOP after the RETR")
        self.assert_ok(c.cmd("QUIT"), "QUIT")


class LargeOutputBufferTests(RegressionCase):
    """A larger limits.output_buffer makes popgate's reads from the upstream as large: a
    message streamed through 1 MiB reads and output arrives whole and exact."""

    popgate_limits = {"output_buffer": MB}

    @classmethod
    def fill_mailboxes(cls):
        cls.dovecot.add_user("bigbuf", "bigbuf-pw")
        # dot lines throughout, so stuffing happens across read and output boundaries
        body = b"".join(b"%s line %07d of a message read in large pieces\r\n"
                        % (b"." if i % 7 == 0 else b"x", i) for i in range(120000))
        cls.dovecot.add_message("bigbuf", b"Subject: big buffers\r\n\r\n" + body)

    def test_retr_through_large_reads(self):
        with self.dovecot.imap("bigbuf", timeout=120) as im:
            imap_len, imap_sha = im.body_digest(im.uids()[0])
        c = self.login("bigbuf", timeout=60)
        self.assert_ok(c.cmd("RETR 1"), "RETR 1")
        h = hashlib.sha256()
        length = c.read_multi_stream(h.update, timeout=120)
        self.assertEqual(length, imap_len, "octets received vs IMAP BODY[]")
        self.assertEqual(h.hexdigest(), imap_sha, "sha256 received vs IMAP BODY[]")
        self.assert_ok(c.cmd("QUIT"), "QUIT")


class SlowRelay(harness.TcpRelay):
    """A TCP relay in front of Dovecot that passes the server's bytes on at a fixed rate,
    so an upstream login can be made to take longer than popgate's auth_timeout while the
    upstream keeps working."""

    def __init__(self, target_port, rate):
        self.rate = rate
        super().__init__(target_port)

    def _pump(self, src, dst, to_server):
        rate = None if to_server else self.rate
        src.settimeout(None)
        t0 = time.monotonic()
        passed = 0
        try:
            while not self.stopping.is_set():
                data = src.recv(2048 if rate else 65536)
                if not data:
                    break
                dst.sendall(data)
                passed += len(data)
                if rate:
                    ahead = passed / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class ManyMessagesTests(RegressionCase):
    """The login of a 20,000-message mailbox through an upstream that passes its answers
    slowly, so the login outlasts auth_timeout: the client's auth timer must not end a
    login while the upstream is the side that works."""

    COUNT = 20000
    AUTH_TIMEOUT = 10  # the shortest allowed
    LOGIN_SECONDS = 14  # what the relay's rate makes the upstream login take, about
    FETCH_LINE = 44  # "* 12345 FETCH (UID 12345 RFC822.SIZE 123)\r\n"

    @classmethod
    def start_popgates(cls):
        # Dovecot indexes the new mailbox once, at full speed, before the timed login
        with cls.dovecot.imap("many", timeout=120) as im:
            cls.sizes = im.sizes()
        cls.relay = SlowRelay(cls.dovecot.port,
                              rate=cls.COUNT * cls.FETCH_LINE / cls.LOGIN_SECONDS)
        cls.addClassCleanup(cls.relay.close)
        cls.popgate = cls.start_popgate(upstream_port=cls.relay.port,
                                        limits={"auth_timeout": cls.AUTH_TIMEOUT})

    @classmethod
    def fill_mailboxes(cls):
        cls.dovecot.add_user("many", "many-pw")
        md = cls.dovecot.maildir("many")
        uid, gid = harness.ensure_system_user()
        stamp = int(time.time())
        for i in range(cls.COUNT):
            # increasing names: Dovecot numbers new files in name order
            path = os.path.join(md, "new", "%d.M%06dP%d.popgate-many" % (stamp, i, os.getpid()))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, small_message(i))
                os.fchown(fd, uid, gid)
            finally:
                os.close(fd)

    def test_login_of_big_mailbox_outlasting_auth_timeout(self):
        self.assertEqual(len(self.sizes), self.COUNT, "premise: IMAP message count")
        c = self.raw(timeout=120)
        t = time.monotonic()
        r = c.login("many", "many-pw")
        elapsed = time.monotonic() - t
        self.assertTrue(r.startswith(b"+OK"), "PASS for a %d-message mailbox answered %r "
                        "after %.1f s (auth_timeout %d s)"
                        % (self.COUNT, r, elapsed, self.AUTH_TIMEOUT))
        self.assertEqual(c.cmd("STAT"),
                         b"+OK %d %d" % (len(self.sizes), sum(self.sizes.values())),
                         "STAT vs IMAP")
        self.assert_ok(c.cmd("QUIT"), "QUIT")
        self.assertGreater(elapsed, self.AUTH_TIMEOUT + 1,
                           "premise: the slowed login took %.1f s, not longer than "
                           "auth_timeout" % elapsed)


if __name__ == "__main__":
    unittest.main()
