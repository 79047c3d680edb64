#!/usr/bin/env python3
"""Integration tests of issue 2: POP3 sessions served by popgate from a real Dovecot IMAP
mailbox. One Dovecot and one popgate per test class.

Run: python3 tests/integration/test_core.py -v
     (POPGATE_BIN selects the binary; default build/asan/popgate)
"""

import os
import poplib
import random
import re
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Pop3Raw, crlf, pop3_equal, top_of  # noqa: E402

REQUIRED_CAPA = {"TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
                 "IMPLEMENTATION"}
SPECIAL_PASSWORD = 'p"a\\ss{5} wo rd'
BIG_SIZE = 50 * 1024 * 1024


def small_message(i, body_lines=3):
    body = "".join("line %d of message %d\n" % (j, i) for j in range(body_lines))
    return ("From: sender%d@example.org\nTo: user@example.org\nSubject: message %d\n"
            "Message-ID: <m%d@example.org>\n\n%s" % (i, i, i, body)).encode()


def big_message_chunks(size=BIG_SIZE, seed=2):
    """About size bytes of a plain message with LF line ends, some lines starting with
    '.', some lines only '.', generated in pieces."""
    rnd = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"zeta", b"eta", b"theta",
             b"iota", b"kappa", b"lambda", b"mu", b"\xc3\xa9t\xc3\xa9", b".dot", b"x" * 40]
    yield b"From: big@example.org\nTo: user@example.org\nSubject: fifty megabytes\n\n"
    produced = 0
    n = 0
    while produced < size:
        lines = []
        for _ in range(2000):
            n += 1
            if n % 997 == 0:
                line = b"."
            elif n % 101 == 0:
                line = b"." + b" ".join(rnd.choice(words) for _ in range(8))
            else:
                line = b" ".join(rnd.choice(words) for _ in range(rnd.randint(1, 14)))
            lines.append(line + b"\n")
        chunk = b"".join(lines)
        produced += len(chunk)
        yield chunk
    yield b"last line of the big message\n"


def first_difference(a, b):
    n = min(len(a), len(b))
    i = 0
    step = 1 << 16
    while i < n and a[i:i + step] == b[i:i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def describe_difference(got, expected):
    i = first_difference(got, expected)
    return ("got %d bytes, expected %d; first difference at offset %d: got %r, expected %r"
            % (len(got), len(expected), i, got[max(0, i - 20):i + 40],
               expected[max(0, i - 20):i + 40]))


class PopgateCase(harness.NoticesFailure, unittest.TestCase):
    """One Dovecot and one popgate for the class; fill_mailboxes() adds users/messages."""

    with_dovecot = True
    popgate_limits = None
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.dovecot = None
        cls.popgate = None
        if cls.with_dovecot:
            cls.dovecot = harness.Dovecot()
            cls.addClassCleanup(cls._stop_dovecot)
            cls.fill_mailboxes()
            cls.dovecot.start()
            upstream = cls.dovecot.port
        else:
            upstream = harness.free_port()  # nothing listens there
        cls.popgate = harness.Popgate(upstream, limits=cls.popgate_limits)
        cls.addClassCleanup(cls._stop_popgate)
        cls.popgate.start()

    @classmethod
    def fill_mailboxes(cls):
        pass

    @classmethod
    def _stop_dovecot(cls):
        cls.dovecot.stop()

    @classmethod
    def _stop_popgate(cls):
        pg = cls.popgate
        pg.stop()
        report = pg.sanitizer_report()
        if pg.needed_sigkill:
            print("\nnote: popgate did not exit within 15 s of SIGTERM; killed (log %s)"
                  % pg.log_path, file=sys.stderr)
        if report or getattr(cls, "_had_failure", False):
            # keep both logs for whoever reads the failure
            if cls.dovecot is not None:
                try:
                    shutil.copy(cls.dovecot.log_path, os.path.join(pg.root, "dovecot.log"))
                except OSError:
                    pass
            print("\n%s: logs kept in %s (popgate.log, dovecot.log)" % (cls.__name__, pg.root),
                  file=sys.stderr)
        else:
            pg.cleanup()
        if report:
            raise AssertionError("sanitizer report in popgate's log %s:\n%s"
                                 % (pg.log_path, report))

    def test_failed(self):
        type(self)._had_failure = True

    def tearDown(self):
        if not self.popgate.is_running():
            report = self.popgate.sanitizer_report() or self.popgate.log_text()[-3000:]
            self.fail("popgate is no longer running (exit status %s); log %s:\n%s"
                      % (self.popgate.proc and self.popgate.proc.returncode,
                         self.popgate.log_path, report))

    # -- helpers

    def raw(self, timeout=60):
        c = Pop3Raw("127.0.0.1", self.popgate.port, timeout=timeout)
        self.addCleanup(c.close)
        self.assertTrue(c.greeting.startswith(b"+OK"), "greeting: %r" % c.greeting)
        return c

    def login(self, user, password=None, timeout=60):
        if password is None:
            password = self.dovecot.users[user][0]
        c = self.raw(timeout=timeout)
        r = c.login(user, password)
        self.assertTrue(r.startswith(b"+OK"), "PASS for %s answered %r" % (user, r))
        return c

    def poplib(self, user):
        p = poplib.POP3("127.0.0.1", self.popgate.port, timeout=60)
        self.addCleanup(p.close)
        p.user(user)
        p.pass_(self.dovecot.users[user][0].decode())
        return p

    def imap_state(self, user):
        with self.dovecot.imap(user) as im:
            return im.uidvalidity, im.uids(), im.sizes(), im.flags()

    def uidl_map(self, conn):
        """{message number: uid} from UIDL on a logged-in raw connection."""
        r = conn.cmd("UIDL")
        self.assertTrue(r.startswith(b"+OK"), "UIDL answered %r" % r)
        out = {}
        for line in conn.read_multi_lines():
            n, uidl = line.split()
            out[int(n)] = int(uidl[:8], 16)
        return out

    def assert_ok(self, reply, what):
        self.assertTrue(reply.startswith(b"+OK"), "%s: expected +OK, got %r" % (what, reply))

    def assert_err(self, reply, what):
        self.assertTrue(reply.startswith(b"-ERR"), "%s: expected -ERR, got %r" % (what, reply))


class AuthTests(PopgateCase):
    """Login good and bad; a password that needs quoting."""

    @classmethod
    def fill_mailboxes(cls):
        cls.dovecot.add_user("alice", "alice-secret")
        for i in range(3):
            cls.dovecot.add_message("alice", small_message(i))
        cls.dovecot.add_user("special", SPECIAL_PASSWORD)
        cls.dovecot.add_message("special", small_message(9))
        cls.dovecot.add_user("utf8", "p\u00e4ssw\u00f6rd \u20ac")
        cls.dovecot.add_message("utf8", small_message(8))

    def test_login_good_with_poplib(self):
        p = self.poplib("alice")
        count, _size = p.stat()
        self.assertEqual(count, 3)
        self.assertTrue(p.quit().startswith(b"+OK"))

    def test_login_bad_gives_auth_code(self):
        c = self.raw()
        self.assert_ok(c.cmd("USER alice"), "USER alice")
        r = c.cmd("PASS wrong-password")
        self.assertTrue(r.startswith(b"-ERR [AUTH]"),
                        "PASS with a wrong password: expected '-ERR [AUTH]', got %r" % r)

    def test_login_unknown_user_gives_auth_code(self):
        c = self.raw()
        r = c.login("nobody", "whatever")
        self.assertTrue(r.startswith(b"-ERR [AUTH]"),
                        "PASS for an unknown user: expected '-ERR [AUTH]', got %r" % r)

    def test_login_bad_then_good_in_same_connection(self):
        c = self.raw()
        r = c.login("alice", "wrong-password")
        self.assertTrue(r.startswith(b"-ERR [AUTH]"), "first PASS (wrong): got %r" % r)
        r = c.login("alice", "alice-secret")
        self.assert_ok(r, "second PASS (right) in the same connection")
        self.assert_ok(c.cmd("STAT"), "STAT after the retried login")
        self.assert_ok(c.cmd("QUIT"), "QUIT")

    def test_password_with_quote_backslash_literal_and_space(self):
        c = self.raw()
        r = c.login("special", SPECIAL_PASSWORD)
        self.assert_ok(r, "PASS %s" % SPECIAL_PASSWORD)
        r = c.cmd("STAT")
        self.assertTrue(re.match(rb"\+OK 1 \d+$", r), "STAT: got %r" % r)
        self.assert_ok(c.cmd("QUIT"), "QUIT")

    def test_password_with_8bit_bytes(self):
        # issue 2, IMAP side: 8-bit password bytes must reach the server exactly
        c = self.raw()
        r = c.login("utf8", "p\u00e4ssw\u00f6rd \u20ac".encode())
        self.assert_ok(r, "PASS with UTF-8 bytes")
        self.assert_ok(c.cmd("QUIT"), "QUIT")

    def test_pass_before_user_is_refused(self):
        c = self.raw()
        self.assert_err(c.cmd("PASS alice-secret"), "PASS before USER")
        self.assert_ok(c.login("alice", "alice-secret"), "login after the refused PASS")


class UpstreamDownTests(PopgateCase):
    """popgate's upstream is a port nothing listens on."""

    with_dovecot = False

    def test_upstream_down_gives_sys_temp(self):
        c = self.raw()
        self.assert_ok(c.cmd("USER alice"), "USER alice")
        r = c.cmd("PASS secret")
        self.assertTrue(r.startswith(b"-ERR [SYS/TEMP]"),
                        "PASS with the upstream down: expected '-ERR [SYS/TEMP]', got %r" % r)


class CommandTests(PopgateCase):
    """CAPA, case, bad input, pipelining, deleted and nonexistent messages."""

    @classmethod
    def fill_mailboxes(cls):
        for user in ("cmd", "cmd-case", "cmd-dele"):
            cls.dovecot.add_user(user, user + "-pw")
            for i in range(4):
                cls.dovecot.add_message(user, small_message(i, body_lines=i + 2))

    def capa(self, c):
        r = c.cmd("CAPA")
        self.assert_ok(r, "CAPA")
        return [line.decode("utf-8", "replace") for line in c.read_multi_lines()]

    def test_capa_before_and_after_login(self):
        c = self.raw()
        before = self.capa(c)
        self.assert_ok(c.login("cmd", "cmd-pw"), "login")
        after = self.capa(c)
        for name, lines in (("before login", before), ("after login", after)):
            names = {line.split()[0].upper() for line in lines if line.strip()}
            missing = REQUIRED_CAPA - names
            self.assertFalse(missing, "CAPA %s lacks %s; got %r" % (name, sorted(missing),
                                                                      lines))
        self.assertEqual(before, after, "CAPA differs before and after login")

    def test_commands_are_case_insensitive(self):
        c = self.raw()
        self.assert_ok(c.cmd("capa"), "capa")
        c.read_multi_lines()
        self.assert_ok(c.cmd("uSeR cmd-case"), "uSeR cmd-case")
        self.assert_ok(c.cmd("pAsS cmd-case-pw"), "pAsS cmd-case-pw")
        self.assert_ok(c.cmd("stat"), "stat")
        self.assert_ok(c.cmd("list"), "list")
        self.assertEqual(len(c.read_multi_lines()), 4)
        self.assert_ok(c.cmd("List 1"), "List 1")
        self.assert_ok(c.cmd("uidl"), "uidl")
        self.assertEqual(len(c.read_multi_lines()), 4)
        self.assert_ok(c.cmd("Uidl 2"), "Uidl 2")
        self.assert_ok(c.cmd("rEtR 1"), "rEtR 1")
        c.read_multi()
        self.assert_ok(c.cmd("tOp 2 0"), "tOp 2 0")
        c.read_multi()
        self.assert_ok(c.cmd("noop"), "noop")
        self.assert_ok(c.cmd("dele 1"), "dele 1")
        self.assert_ok(c.cmd("rset"), "rset")
        self.assert_ok(c.cmd("quit"), "quit")

    def test_unknown_command_then_session_continues(self):
        c = self.raw()
        self.assert_err(c.cmd("FOO"), "FOO before login")
        self.assert_ok(c.login("cmd", "cmd-pw"), "login after FOO")
        self.assert_err(c.cmd("FOO bar"), "FOO bar after login")
        self.assert_err(c.cmd("XYZZY"), "XYZZY after login")
        r = c.cmd("STAT")
        self.assertTrue(re.match(rb"\+OK 4 \d+$", r), "STAT after unknown commands: %r" % r)

    def test_out_of_state_commands_before_login(self):
        c = self.raw()
        for cmd in ("STAT", "LIST", "RETR 1", "DELE 1", "UIDL", "TOP 1 0", "RSET"):
            self.assert_err(c.cmd(cmd), "%s before login" % cmd)
        self.assert_ok(c.login("cmd", "cmd-pw"), "login after out-of-state commands")
        self.assert_ok(c.cmd("STAT"), "STAT")

    def test_bad_arguments_then_session_continues(self):
        bad = [b"RETR", b"RETR abc", b"RETR 0", b"RETR -1", b"RETR 99999",
               b"RETR 4294967297", b"TOP 1", b"TOP 1 x", b"TOP x 1", b"LIST 0", b"LIST x",
               b"UIDL abc", b"DELE", b"DELE x", b"", b"X" * 300, b"RETR 1" + b" " * 260]
        for line in bad:
            with self.subTest(command=line[:40]):
                c = self.login("cmd")
                r = c.cmd(line)
                self.assertTrue(r.startswith(b"-ERR"),
                                "sent %r: expected -ERR, got %r" % (line[:60], r))
                r = c.cmd("STAT")
                self.assertTrue(re.match(rb"\+OK 4 \d+$", r),
                                "STAT after %r: expected '+OK 4 <size>', got %r"
                                % (line[:60], r))
                c.cmd("QUIT")

    def test_pipelined_commands_answered_in_order(self):
        c = self.login("cmd")
        with self.dovecot.imap("cmd") as im:
            uids = im.uids()
            body1 = im.body(uids[0])
            head2 = top_of(im.body(uids[1]), 0)
            uidvalidity = im.uidvalidity
        c.send(b"STAT\r\nLIST\r\nUIDL 2\r\nNOOP\r\nRETR 1\r\nTOP 2 0\r\nLIST 3\r\nQUIT\r\n")
        r = c.status()
        self.assertTrue(re.match(rb"\+OK 4 \d+$", r), "pipelined STAT: %r" % r)
        self.assert_ok(c.status(), "pipelined LIST")
        self.assertEqual(len(c.read_multi_lines()), 4)
        r = c.status()
        self.assertEqual(r, b"+OK 2 %08x%08x" % (uids[1], uidvalidity), "pipelined UIDL 2")
        self.assert_ok(c.status(), "pipelined NOOP")
        self.assert_ok(c.status(), "pipelined RETR 1")
        self.assertTrue(pop3_equal(c.read_multi(), body1), "pipelined RETR 1 body")
        self.assert_ok(c.status(), "pipelined TOP 2 0")
        self.assertTrue(pop3_equal(c.read_multi(), head2), "pipelined TOP 2 0 body")
        r = c.status()
        self.assertTrue(re.match(rb"\+OK 3 \d+$", r), "pipelined LIST 3: %r" % r)
        self.assert_ok(c.status(), "pipelined QUIT")
        self.assertTrue(c.expect_closed(), "connection not closed after QUIT")

    def test_pipelined_login_and_commands_in_one_write(self):
        c = self.raw()
        c.send(b"USER cmd\r\nPASS cmd-pw\r\nSTAT\r\nUIDL 1\r\nQUIT\r\n")
        self.assert_ok(c.status(), "pipelined USER")
        self.assert_ok(c.status(), "pipelined PASS")
        r = c.status()
        self.assertTrue(re.match(rb"\+OK 4 \d+$", r), "pipelined STAT: %r" % r)
        self.assert_ok(c.status(), "pipelined UIDL 1")
        self.assert_ok(c.status(), "pipelined QUIT")

    def test_retr_of_deleted_or_nonexistent_message(self):
        before = self.imap_state("cmd-dele")
        c = self.login("cmd-dele")
        r = c.cmd("STAT")
        self.assertTrue(re.match(rb"\+OK 4 \d+$", r), "STAT: %r" % r)
        self.assert_ok(c.cmd("DELE 2"), "DELE 2")
        for cmd in ("RETR 2", "TOP 2 0", "LIST 2", "UIDL 2", "DELE 2"):
            self.assert_err(c.cmd(cmd), "%s after DELE 2" % cmd)
        for cmd in ("RETR 5", "RETR 1000", "TOP 5 0", "LIST 5", "UIDL 5", "DELE 5"):
            self.assert_err(c.cmd(cmd), "%s (no such message)" % cmd)
        r = c.cmd("STAT")
        self.assertTrue(re.match(rb"\+OK 3 \d+$", r), "STAT after DELE 2: %r" % r)
        self.assert_ok(c.cmd("LIST"), "LIST after DELE 2")
        numbers = [int(line.split()[0]) for line in c.read_multi_lines()]
        self.assertEqual(numbers, [1, 3, 4], "LIST after DELE 2 lists the deleted message")
        self.assert_ok(c.cmd("RETR 3"), "RETR 3 still works")
        c.read_multi()
        c.abort()
        time.sleep(0.5)
        self.assertEqual(self.imap_state("cmd-dele")[1], before[1])


class MaildropTests(PopgateCase):
    """STAT, LIST and UIDL agree with what IMAP holds."""

    @classmethod
    def fill_mailboxes(cls):
        cls.dovecot.add_user("box", "box-pw")
        rnd = random.Random(7)
        for i in range(12):
            subdir = "cur" if i % 3 == 0 else "new"
            cls.dovecot.add_message("box", small_message(i, body_lines=rnd.randint(0, 200)),
                                    subdir=subdir, flags="S" if subdir == "cur" else "")
        cls.dovecot.add_user("empty", "empty-pw")

    def test_stat_list_uidl_agree_with_imap(self):
        uidvalidity, uids, sizes, _flags = self.imap_state("box")
        p = self.poplib("box")
        count, total = p.stat()
        self.assertEqual(count, len(uids), "STAT count")
        self.assertEqual(total, sum(sizes.values()), "STAT size")
        _resp, lines, _octets = p.list()
        want = [b"%d %d" % (n, sizes[uid]) for n, uid in enumerate(uids, 1)]
        self.assertEqual(lines, want, "LIST vs IMAP RFC822.SIZE in UID order")
        _resp, lines, _octets = p.uidl()
        want = [b"%d %08x%08x" % (n, uid, uidvalidity) for n, uid in enumerate(uids, 1)]
        self.assertEqual(lines, want, "UIDL vs IMAP UID/UIDVALIDITY")
        for n, uid in enumerate(uids, 1):
            self.assertEqual(p.list(n), b"+OK %d %d" % (n, sizes[uid]), "LIST %d" % n)
            self.assertEqual(p.uidl(n), b"+OK %d %08x%08x" % (n, uid, uidvalidity),
                             "UIDL %d" % n)
        p.quit()

    def test_uidl_identical_across_two_sessions(self):
        p = self.poplib("box")
        first = p.uidl()[1]
        p.quit()
        p = self.poplib("box")
        second = p.uidl()[1]
        p.quit()
        self.assertEqual(len(first), 12)
        self.assertEqual(first, second)

    def test_empty_mailbox(self):
        c = self.login("empty")
        self.assertEqual(c.cmd("STAT"), b"+OK 0 0")
        self.assert_ok(c.cmd("LIST"), "LIST")
        self.assertEqual(c.read_multi_lines(), [])
        self.assert_ok(c.cmd("UIDL"), "UIDL")
        self.assertEqual(c.read_multi_lines(), [])
        self.assert_err(c.cmd("RETR 1"), "RETR 1 in an empty mailbox")
        self.assert_ok(c.cmd("QUIT"), "QUIT")


HARD_CASES = [
    ("dot-lines", b"From: a@example.org\nSubject: dots\n\n.starts with a dot\n..two dots\n"
                  b".\nafter a line that is only a dot\n. dot space\n...\n.\n.\nend\n"),
    ("first-line-dot", b".first line starts with a dot\nSubject: first line dot\n\nbody\n"),
    ("bare-lf", b"Subject: bare LF\n\nline one\nline two\n\nline four\n"),
    ("mixed-line-ends", b"Subject: mixed\r\n\r\ncrlf line\r\nlf line\n.dot crlf\r\nlast\n"),
    ("no-final-newline", b"Subject: no final newline\n\nfirst\nlast line without end"),
    ("ends-in-dot", b"Subject: ends in a dot without newline\n\nbody\n."),
    ("8bit-headers", b"Subject: caf\xc3\xa9 \xe9t\xe9\nFrom: J\xc3\xbcrgen <j@example.org>\n"
                     b"X-Raw: \xff\xfe\x80\x7f\n\nbody with 8-bit \xe4\xf6\xfc \xc3\xa4\n"),
    ("empty-body", b"From: a@example.org\nSubject: empty body\n\n"),
    ("long-line", b"Subject: long line\n\n" + b"x" * 5000 + b"\n." + b"y" * 1500
                  + b"\nshort\n"),
    ("crlf", b"Subject: crlf\r\n\r\nline\r\n.\r\n..\r\nend\r\n"),
]


class HardCaseTests(PopgateCase):
    """RETR, LIST and TOP byte for byte against IMAP's BODY[], plus curl."""

    @classmethod
    def fill_mailboxes(cls):
        cls.dovecot.add_user("hard", "hard-pw")
        for _name, data in HARD_CASES:
            cls.dovecot.add_message("hard", data)
        cls.dovecot.add_message("hard", chunks=big_message_chunks())

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        with cls.dovecot.imap("hard") as im:
            cls.uidvalidity = im.uidvalidity
            cls.uids = im.uids()
            cls.sizes = im.sizes()
            cls.bodies = {uid: im.body(uid) for uid in cls.uids}
        names = {crlf(data): name for name, data in HARD_CASES}
        cls.names = {uid: names.get(body, "big-50MB" if len(body) > 1 << 20 else "?")
                     for uid, body in cls.bodies.items()}

    def label(self, n):
        uid = self.uids[n - 1]
        return "message %d (uid %d, %s)" % (n, uid, self.names[uid])

    def test_premise_mailbox_as_written(self):
        self.assertEqual(len(self.uids), len(HARD_CASES) + 1)
        self.assertGreater(max(len(b) for b in self.bodies.values()), BIG_SIZE)

    def test_list_matches_imap(self):
        c = self.login("hard")
        self.assert_ok(c.cmd("LIST"), "LIST")
        got = c.read_multi_lines()
        want = [b"%d %d" % (n, self.sizes[uid]) for n, uid in enumerate(self.uids, 1)]
        self.assertEqual(got, want)

    def per_message(self, cases, check):
        """Runs check(conn, case) for each case in its own subTest, on one session that
        is replaced by a fresh one after any failure (so one bug does not hide others)."""
        c = None
        for label, case in cases:
            with self.subTest(**label):
                if c is None:
                    c = self.login("hard", timeout=20)
                try:
                    check(c, case)
                except BaseException:
                    c.close()
                    c = None
                    raise
        if c is not None:
            self.assert_ok(c.cmd("QUIT"), "QUIT")

    def test_retr_byte_identical_to_imap(self):
        def check(c, n):
            uid = self.uids[n - 1]
            imap_bytes = self.bodies[uid]
            status = c.cmd("RETR %d" % n)
            m = re.match(rb"\+OK (\d+) octets", status)
            self.assertTrue(m, "RETR %d status: %r" % (n, status))
            got = c.read_multi(timeout=300)
            self.assertTrue(pop3_equal(got, imap_bytes), "RETR %d: %s"
                            % (n, describe_difference(got, imap_bytes)))
            size = self.sizes[uid]
            allowed = {size} if imap_bytes.endswith(b"\r\n") else {size, size + 2}
            self.assertIn(len(got), allowed,
                          "RETR %d: %d octets received, LIST size %d" % (n, len(got), size))
            self.assertEqual(int(m.group(1)), size, "RETR %d '+OK <size> octets'" % n)

        self.per_message([({"message": self.label(n)}, n)
                          for n in range(1, len(self.uids) + 1)], check)

    def test_top(self):
        def check(c, case):
            n, k = case
            want = top_of(self.bodies[self.uids[n - 1]], k)
            status = c.cmd("TOP %d %d" % (n, k))
            self.assert_ok(status, "TOP %d %d" % (n, k))
            got = c.read_multi(timeout=300)
            self.assertTrue(pop3_equal(got, want), "TOP %d %d: %s"
                            % (n, k, describe_difference(got, want)))

        self.per_message([({"message": self.label(n), "k": k}, (n, k))
                          for n in range(1, len(self.uids) + 1) for k in (0, 1, 1000)],
                         check)

    def curl(self, path, timeout=30):
        r = subprocess.run(
            ["curl", "-s", "-S", "--max-time", str(timeout),
             "pop3://127.0.0.1:%d/%s" % (self.popgate.port, path), "-u", "hard:hard-pw"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 10)
        self.assertEqual(r.returncode, 0, "curl pop3://.../%s exited %d: %s"
                         % (path, r.returncode, r.stderr.decode(errors="replace")))
        return r.stdout

    def test_curl_lists_messages(self):
        got = self.curl("")
        want = b"".join(b"%d %d\r\n" % (n, self.sizes[uid])
                        for n, uid in enumerate(self.uids, 1))
        self.assertEqual(got, want)

    def test_curl_retrieves_each_message(self):
        for n, uid in enumerate(self.uids, 1):
            with self.subTest(message=self.label(n)):
                got = self.curl(str(n), timeout=30 + 2 * self.sizes[uid] // (1 << 20))
                want = self.bodies[uid]
                self.assertTrue(pop3_equal(got, want), "curl pop3://.../%d: %s"
                                % (n, describe_difference(got, want)))


class UpdateTests(PopgateCase):
    """What QUIT, RSET and a dropped connection do to the IMAP mailbox."""

    USERS = ("quit", "drop", "rset")

    @classmethod
    def fill_mailboxes(cls):
        for user in cls.USERS:
            cls.dovecot.add_user(user, user + "-pw")
            for i in range(5):
                cls.dovecot.add_message(user, small_message(i))

    def assert_untouched(self, user, before):
        _v, uids, _s, flags = self.imap_state(user)
        self.assertEqual(uids, before[1], "IMAP UIDs changed")
        flagged = [u for u, f in flags.items() if "\\Deleted" in f]
        self.assertEqual(flagged, [], "messages flagged \\Deleted in IMAP")

    def test_dele_quit_removes_exactly_those(self):
        uidvalidity, uids_before, _s, _f = self.imap_state("quit")
        c = self.login("quit")
        numbers = self.uidl_map(c)
        self.assert_ok(c.cmd("DELE 2"), "DELE 2")
        self.assert_ok(c.cmd("DELE 4"), "DELE 4")
        self.assert_ok(c.cmd("QUIT"), "QUIT after DELE 2, DELE 4")
        self.assertTrue(c.expect_closed(), "connection not closed after QUIT")
        gone = {numbers[2], numbers[4]}
        _v, uids_after, _s, flags = self.imap_state("quit")
        self.assertEqual(uids_after, [u for u in uids_before if u not in gone])
        self.assertEqual([u for u, f in flags.items() if "\\Deleted" in f], [])
        # and the next session sees the rest, with the same UIDLs
        p = self.poplib("quit")
        self.assertEqual(p.stat()[0], 3)
        self.assertEqual(p.uidl()[1], [b"%d %08x%08x" % (n, uid, uidvalidity)
                                       for n, uid in enumerate(uids_after, 1)])
        p.quit()

    def test_dele_then_dropped_connection_removes_nothing(self):
        before = self.imap_state("drop")
        for how in ("close (FIN)", "reset (RST)"):
            c = self.login("drop")
            self.assert_ok(c.cmd("DELE 1"), "DELE 1")
            self.assert_ok(c.cmd("DELE 3"), "DELE 3")
            if how.startswith("close"):
                c.close()
            else:
                c.abort()
            time.sleep(1.0)
            with self.subTest(dropped_by=how):
                self.assert_untouched("drop", before)
        # the mailbox is usable again and still complete
        deadline = time.monotonic() + 10
        while True:
            c = self.raw()
            r = c.login("drop", "drop-pw")
            if r.startswith(b"+OK") or time.monotonic() > deadline:
                break
            c.close()
            time.sleep(0.5)
        self.assert_ok(r, "login after the dropped session")
        self.assertTrue(re.match(rb"\+OK 5 \d+$", c.cmd("STAT")))
        c.cmd("QUIT")

    def test_dele_rset_quit_removes_nothing(self):
        before = self.imap_state("rset")
        c = self.login("rset")
        self.assert_ok(c.cmd("DELE 1"), "DELE 1")
        self.assert_ok(c.cmd("DELE 5"), "DELE 5")
        r = c.cmd("STAT")
        self.assertTrue(re.match(rb"\+OK 3 \d+$", r), "STAT after two DELE: %r" % r)
        self.assert_ok(c.cmd("RSET"), "RSET")
        r = c.cmd("STAT")
        self.assertTrue(re.match(rb"\+OK 5 \d+$", r), "STAT after RSET: %r" % r)
        self.assert_ok(c.cmd("QUIT"), "QUIT")
        self.assertTrue(c.expect_closed(), "connection not closed after QUIT")
        self.assert_untouched("rset", before)


if __name__ == "__main__":
    unittest.main()
