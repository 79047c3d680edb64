#!/usr/bin/env python3
"""Integration tests of issue 6: failing upstreams and hostile clients.

Upstream faults are played by a scripted fake IMAP server (fake_imap.py), one fake and
one popgate per test; each test checks the outcome the POP3 client sees (and what popgate
sent upstream). Client faults run against a real Dovecot, which afterwards must hold
exactly what it should.

Run: python3 tests/integration/test_faults.py -v
Env: POPGATE_BIN  the popgate under test (default build/asan/popgate)
"""

import fcntl
import hashlib
import os
import re
import signal
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Pop3Raw  # noqa: E402
from fake_imap import FakeImap  # noqa: E402
from test_regressions import dot_stuff  # noqa: E402

MB = 1024 * 1024
USER, PASSWORD = "user", "pass"
# small limits (config.c load_limits minimums are 1 s for both)
CONNECT_TIMEOUT = 2
COMMAND_TIMEOUT = 2


def message(i, body_lines=5, tag="m"):
    """A CRLF message; no line of it is only '.'."""
    body = b"".join(b"line %05d of message %d, some text to make it longer ........\r\n"
                    % (j, i) for j in range(body_lines))
    return (b"From: sender%d@example.org\r\nTo: user@example.org\r\nSubject: %s %d\r\n"
            b"Message-ID: <%s%d@example.org>\r\n\r\n" % (i, tag.encode(), i, tag.encode(), i)
            + body)


# message 2 is ~400 kB: far bigger than popgate's output buffer and the socket buffers
# popgate fills before it stops, so "half the literal" is really mid-message
MESSAGES = [message(1), message(2, body_lines=6000), message(3)]


def read_to_eof(sock, timeout):
    """(bytes until the peer closed, closed?) waiting at most timeout seconds."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(data), False
        sock.settimeout(min(left, 1.0))
        try:
            chunk = sock.recv(1 << 20)
        except socket.timeout:
            continue
        except OSError:
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data += chunk


def is_terminated(data):
    """Whether a multi-line answer in data (after its status line) ended with '.'."""
    return data.startswith(b".\r\n") or b"\r\n.\r\n" in data


def popgate_log_lines(pg, *needles):
    return [line for line in pg.log_text().splitlines() if all(n in line for n in needles)]


class FaultCase(unittest.TestCase):
    """Helpers for one fake (or Dovecot) and one popgate per test."""

    maxDiff = 4000

    def start_popgate(self, upstream_port, limits=None, extra=None):
        cfg_extra = {"workers": 1}
        cfg_extra.update(extra or {})
        pg = harness.Popgate(upstream_port, limits=limits, extra=cfg_extra)
        self.addCleanup(self._stop_popgate, pg)
        pg.start()
        return pg

    def _stop_popgate(self, pg):
        pg.stop()
        report = pg.sanitizer_report()
        if report or self._failed or pg.needed_sigkill or os.environ.get("KEEP_TEST_DIRS"):
            print("\n%s: popgate log kept in %s%s" % (
                self.id(), pg.log_path,
                " (needed SIGKILL after SIGTERM)" if pg.needed_sigkill else ""),
                file=sys.stderr)
        else:
            pg.cleanup()
        if report:
            raise AssertionError("sanitizer report in popgate's log %s:\n%s"
                                 % (pg.log_path, report))

    _failed = False

    def run(self, result=None):
        # cleanups run inside run(): note a failure of the test body before they do
        self._failed = False
        if result is not None:
            bad = lambda: len(result.failures) + len(result.errors)  # noqa: E731
            before = bad()
            orig = self.doCleanups

            def do_cleanups():
                self._failed = bad() > before or self._failed
                return orig()
            self.doCleanups = do_cleanups
        return super().run(result)

    def start_fake(self, **kw):
        kw.setdefault("messages", MESSAGES)
        kw.setdefault("users", {USER: PASSWORD})
        kw.setdefault("lifetime", 240)
        fake = FakeImap(**kw)
        fake.start()
        self.addCleanup(fake.stop)
        return fake

    def raw(self, pg, timeout=60, **kw):
        c = Pop3Raw("127.0.0.1", pg.port, timeout=timeout, **kw)
        self.addCleanup(c.close)
        self.assertTrue(c.greeting.startswith(b"+OK"), "greeting: %r" % c.greeting)
        return c

    def login(self, pg, user=USER, password=PASSWORD, timeout=60, **kw):
        c = self.raw(pg, timeout=timeout, **kw)
        r = c.login(user, password)
        self.assertTrue(r.startswith(b"+OK"), "PASS for %s answered %r (log %s)"
                        % (user, r, pg.log_path))
        return c

    def assert_ok(self, reply, what):
        self.assertTrue(reply.startswith(b"+OK"), "%s: expected +OK, got %r" % (what, reply))

    def assert_err(self, reply, what):
        self.assertTrue(reply.startswith(b"-ERR"), "%s: expected -ERR, got %r" % (what, reply))

    def assert_running(self, pg):
        if not pg.is_running():
            self.fail("popgate is no longer running (exit status %s); log %s:\n%s"
                      % (pg.proc and pg.proc.returncode, pg.log_path,
                         pg.sanitizer_report() or pg.log_text()[-3000:]))

    def wait_log(self, pg, *needles, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            lines = popgate_log_lines(pg, *needles)
            if lines or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


# ---------------------------------------------------------------------------
# the fake itself


class FakeImapSanityTests(FaultCase):
    """Premise: without a fault, popgate serves the fake's mailbox correctly, so every
    fault test below differs from a working session only by its fault."""

    def test_normal_session_through_fake(self):
        fake = self.start_fake()
        pg = self.start_popgate(fake.port)
        c = self.login(pg)
        total = sum(len(m) for m in MESSAGES)
        self.assertEqual(c.cmd("STAT"), b"+OK 3 %d" % total, "STAT")
        self.assert_ok(c.cmd("LIST"), "LIST")
        self.assertEqual(c.read_multi_lines(),
                         [b"%d %d" % (i + 1, len(m)) for i, m in enumerate(MESSAGES)], "LIST")
        self.assert_ok(c.cmd("UIDL"), "UIDL")
        self.assertEqual(len(c.read_multi_lines()), 3, "UIDL lines")
        for i, m in enumerate(MESSAGES, 1):
            self.assertEqual(c.cmd("RETR %d" % i), b"+OK %d octets" % len(m), "RETR %d" % i)
            self.assertEqual(c.read_multi(), m, "RETR %d body" % i)
        self.assert_ok(c.cmd("TOP 2 3"), "TOP 2 3")
        self.assertEqual(c.read_multi(), harness.top_of(MESSAGES[1], 3), "TOP 2 3")
        self.assert_ok(c.cmd("DELE 1"), "DELE 1")
        self.assert_ok(c.cmd("QUIT"), "QUIT")
        self.assertTrue(c.expect_closed(10), "closed after QUIT")
        self.assertEqual(fake.uids(), [2, 3], "fake mailbox after DELE 1 + QUIT")
        lines = fake.command_lines()
        self.assertIn("UID STORE 1 +FLAGS.SILENT (\\Deleted)", lines, "commands: %r" % lines)
        self.assertIn("UID EXPUNGE 1", lines, "commands: %r" % lines)


# ---------------------------------------------------------------------------
# upstream faults at login


class LoginFaultTests(FaultCase):
    """An upstream that refuses, swallows connects, hangs or talks garbage before the
    mailbox is open: PASS answers -ERR [SYS/TEMP] (after the configured timeout)."""

    limits = {"connect_timeout": CONNECT_TIMEOUT, "command_timeout": COMMAND_TIMEOUT}

    def pass_answer(self, fault, max_seconds, min_seconds=0.0, **fake_kw):
        fake = self.start_fake(fault=fault, **fake_kw)
        if fault == "blackhole":
            self.assertTrue(fake.blackhole_swallows(), "premise: connects to the black hole "
                            "hang")
        pg = self.start_popgate(fake.port, limits=self.limits)
        c = self.raw(pg, timeout=max_seconds + 30)
        self.assert_ok(c.cmd("USER " + USER), "USER")
        t = time.monotonic()
        r = c.cmd("PASS " + PASSWORD)
        took = time.monotonic() - t
        self.assertTrue(r.startswith(b"-ERR [SYS/TEMP]"),
                        "%s: PASS answered %r after %.1f s, expected -ERR [SYS/TEMP] (log %s)"
                        % (fault, r, took, pg.log_path))
        self.assertLess(took, max_seconds, "%s: PASS took %.1f s" % (fault, took))
        self.assertGreater(took, min_seconds, "%s: PASS answered after %.1f s, before the "
                           "timeout could have run out" % (fault, took))
        lines = self.wait_log(pg, "event=login_failed")
        self.assertTrue(lines, "%s: no event=login_failed line in the log:\n%s"
                        % (fault, pg.log_text()[-2000:]))
        # the session goes on: CAPA still answers, a second try gets the same answer
        self.assert_ok(c.cmd("CAPA"), "CAPA after the failed login")
        c.read_multi()
        self.assert_running(pg)
        return fake, pg, c, lines

    def test_refused(self):
        _, _, _, lines = self.pass_answer("refuse", max_seconds=10)
        self.assertIn("class=connect", lines[0], lines[0])

    def test_unreachable_black_hole(self):
        _, _, _, lines = self.pass_answer("blackhole", max_seconds=CONNECT_TIMEOUT + 10,
                                          min_seconds=CONNECT_TIMEOUT - 0.5)
        self.assertIn("class=timeout", lines[0], lines[0])

    def test_hang_at_greeting(self):
        fake, _, _, lines = self.pass_answer("hang_greeting",
                                             max_seconds=CONNECT_TIMEOUT + 10,
                                             min_seconds=CONNECT_TIMEOUT - 0.5)
        self.assertIn("class=timeout", lines[0], lines[0])
        self.assertIn("greeting", lines[0], lines[0])
        self.assertEqual(fake.command_lines(), [], "popgate sent commands before a greeting")

    def test_garbage_greeting(self):
        fake, _, _, lines = self.pass_answer("garbage_greeting", max_seconds=10)
        self.assertIn("class=protocol", lines[0], lines[0])

    def test_hang_after_authenticate(self):
        fake, _, _, lines = self.pass_answer("hang_login", max_seconds=COMMAND_TIMEOUT + 10,
                                             min_seconds=COMMAND_TIMEOUT - 0.5)
        self.assertIn("class=timeout", lines[0], lines[0])
        self.assertTrue(any(l.startswith("AUTHENTICATE PLAIN") for l in fake.command_lines()),
                        "premise: popgate used AUTHENTICATE: %r" % fake.command_lines())

    def test_hang_after_login_command(self):
        # no AUTH=PLAIN, no SASL-IR: popgate falls back to LOGIN
        fake, _, _, lines = self.pass_answer(
            "hang_login", max_seconds=COMMAND_TIMEOUT + 10, min_seconds=COMMAND_TIMEOUT - 0.5,
            caps=["IMAP4rev1", "LITERAL+", "ID"])
        self.assertIn("class=timeout", lines[0], lines[0])
        self.assertTrue(any(l.startswith("LOGIN ") for l in fake.command_lines()),
                        "premise: popgate used LOGIN: %r" % fake.command_lines())

    def test_hang_at_select(self):
        fake, pg, _, lines = self.pass_answer("hang_select", max_seconds=COMMAND_TIMEOUT + 10,
                                              min_seconds=COMMAND_TIMEOUT - 0.5)
        self.assertIn("class=timeout", lines[0], lines[0])
        # The mailbox was locked once the server accepted the login (its state loads
        # while the folders are selected): the failed login must have let it go.
        locks = [f for f in os.listdir(pg.state_dir) if f.endswith(".lock")]
        self.assertEqual(len(locks), 1, "premise: the login took the mailbox lock: %r"
                         % os.listdir(pg.state_dir))
        with open(os.path.join(pg.state_dir, locks[0]), "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.fail("the mailbox is still locked after the failed login")

    def test_login_works_after_fake_recovers(self):
        """Premise for the tests above: the same limits with a healthy fake log in."""
        fake = self.start_fake()
        pg = self.start_popgate(fake.port, limits=self.limits)
        c = self.login(pg)
        self.assertEqual(c.cmd("STAT"), b"+OK 3 %d" % sum(len(m) for m in MESSAGES))
        self.assert_ok(c.cmd("QUIT"), "QUIT")


# ---------------------------------------------------------------------------
# upstream faults during RETR


class RetrFaultTests(FaultCase):
    """Faults while popgate streams message 2 (uid 2). The client DELE'd message 1 first:
    after a broken RETR nothing may change upstream (no STORE, no EXPUNGE)."""

    limits = {"connect_timeout": CONNECT_TIMEOUT, "command_timeout": COMMAND_TIMEOUT}

    def run_retr(self, fault, wait=COMMAND_TIMEOUT + 20, **fake_kw):
        """Logs in, DELE 1, RETR 2; returns (fake, pg, status line, data after it,
        closed?, seconds)."""
        fake = self.start_fake(fault=fault, fault_uid=2, **fake_kw)
        pg = self.start_popgate(fake.port, limits=self.limits)
        c = self.login(pg, timeout=wait + 30)
        self.assert_ok(c.cmd("DELE 1"), "DELE 1")
        t = time.monotonic()
        c.send(b"RETR 2\r\n")
        status = c.read_line()
        rest, closed = read_to_eof(c.sock, wait)
        rest = bytes(c.buf) + rest
        took = time.monotonic() - t
        self.assert_running(pg)
        return fake, pg, status, rest, closed, took

    def assert_not_terminated(self, fault, pg, status, rest, closed, expect_status=None,
                              slack=0):
        self.assertTrue(closed, "%s: popgate kept the client connection open after the "
                        "upstream broke (status %r, %d bytes after it; log %s)"
                        % (fault, status, len(rest), pg.log_path))
        if expect_status is not None:
            self.assertTrue(status.startswith(expect_status),
                            "%s: RETR 2 status %r, expected %r" % (fault, status,
                                                                   expect_status))
        if status.startswith(b"+OK"):
            self.assertFalse(is_terminated(rest),
                             "%s: a broken message was terminated with '.' (%d bytes of %d "
                             "sent; last %r)" % (fault, len(rest), len(MESSAGES[1]),
                                                 rest[-80:]))
            self.assertLess(len(rest), len(dot_stuff(MESSAGES[1])) + 5 + slack,
                            "%s: more bytes than the message" % fault)

    def assert_nothing_changed(self, fault, fake):
        lines = fake.command_lines()
        changing = [l for l in lines if re.match(r"(UID )?(STORE|EXPUNGE|COPY|MOVE)|CLOSE|"
                                                 r"EXPUNGE", l, re.I)]
        self.assertEqual(changing, [], "%s: popgate changed the mailbox after a failed RETR "
                         "(DELE 1 pending): %r" % (fault, changing))
        self.assertEqual(fake.uids(), [1, 2, 3], "%s: fake mailbox" % fault)
        self.assertNotIn("\\Deleted", fake.flags()[1], "%s: message 1 flagged" % fault)

    def test_hang_before_any_body_byte(self):
        fake, pg, status, rest, closed, took = self.run_retr("hang_fetch_before")
        self.assertTrue(status.startswith(b"-ERR [SYS/TEMP]"),
                        "RETR 2 with the upstream silent: %r after %.1f s (log %s)"
                        % (status, took, pg.log_path))
        self.assertGreater(took, COMMAND_TIMEOUT - 0.5, "answered before the timeout")
        self.assert_not_terminated("hang_fetch_before", pg, status, rest, closed)
        self.assertTrue(self.wait_log(pg, "event=retr_failed", "class=timeout"),
                        "no retr_failed class=timeout line in the log")
        self.assert_nothing_changed("hang_fetch_before", fake)

    def test_hang_mid_literal(self):
        fake, pg, status, rest, closed, took = self.run_retr("hang_fetch_mid")
        self.assert_not_terminated("hang_fetch_mid", pg, status, rest, closed,
                                   expect_status=b"+OK")
        self.assertGreater(took, COMMAND_TIMEOUT - 0.5, "closed before the timeout")
        self.assertTrue(self.wait_log(pg, "event=retr_failed", "class=timeout"),
                        "no retr_failed class=timeout line in the log")
        self.assert_nothing_changed("hang_fetch_mid", fake)

    def test_close_mid_literal(self):
        fake, pg, status, rest, closed, _ = self.run_retr("close_mid_literal")
        self.assert_not_terminated("close_mid_literal", pg, status, rest, closed,
                                   expect_status=b"+OK")
        self.assertTrue(self.wait_log(pg, "event=retr_failed", "class=closed"),
                        "no retr_failed class=closed line in the log")
        self.assert_nothing_changed("close_mid_literal", fake)

    def test_bye_mid_literal(self):
        fake, pg, status, rest, closed, _ = self.run_retr("bye_mid_literal")
        self.assert_not_terminated("bye_mid_literal", pg, status, rest, closed,
                                   expect_status=b"+OK")
        self.assertTrue(self.wait_log(pg, "event=retr_failed"), "no retr_failed log line")
        self.assert_nothing_changed("bye_mid_literal", fake)

    def test_bye_after_literal_before_tagged_ok(self):
        # the body arrived whole but the command never completed: either the whole
        # message with '.', or the connection closed without '.'; never a short message
        fake, pg, status, rest, closed, _ = self.run_retr("bye_after_literal")
        self.assertTrue(closed, "connection left open after the upstream's BYE")
        if status.startswith(b"+OK") and is_terminated(rest):
            end = rest.find(b"\r\n.\r\n") + 2 if not rest.startswith(b".\r\n") else 0
            got = (b"\n" + rest[:end]).replace(b"\n..", b"\n.")[1:]
            self.assertEqual(got, MESSAGES[1], "terminated message differs from the literal")
        self.assert_nothing_changed("bye_after_literal", fake)
        self.assert_bye_logged(pg)

    def assert_bye_logged(self, pg):
        """DESIGN 7: the client sees no internal detail; the log line has it. The reason
        of the retr_failed line names the server's BYE."""
        lines = self.wait_log(pg, "event=retr_failed")
        self.assertTrue(lines, "no retr_failed log line")
        m = re.search(r' reason=("[^"]*"|\S*)', lines[0])
        reason = m.group(1) if m else None
        self.assertTrue(reason and "BYE" in reason and "shutting down" in reason,
                        "the log line does not give the server's BYE as the reason (reason=%s):"
                        "\n%s" % (reason, lines[0]))

    def test_bye_instead_of_fetch_answer(self):
        fake, pg, status, rest, closed, _ = self.run_retr("bye_fetch")
        self.assert_not_terminated("bye_fetch", pg, status, rest, closed,
                                   expect_status=b"-ERR [SYS/TEMP]")
        self.assert_nothing_changed("bye_fetch", fake)
        self.assert_bye_logged(pg)

    def test_garbage_line_during_fetch(self):
        fake, pg, status, rest, closed, _ = self.run_retr("garbage_fetch")
        self.assert_not_terminated("garbage_fetch", pg, status, rest, closed)
        lines = self.wait_log(pg, "event=retr_failed", "class=protocol")
        self.assertTrue(lines, "no retr_failed class=protocol line in the log:\n%s"
                        % pg.log_text()[-2000:])
        self.assertTrue(self.wait_log(pg, "event=session_end"), "no session_end line")
        self.assert_nothing_changed("garbage_fetch", fake)

    def test_overlong_line_during_fetch(self):
        fake, pg, status, rest, closed, took = self.run_retr("long_line_fetch")
        self.assert_not_terminated("long_line_fetch", pg, status, rest, closed)
        self.assertLess(took, COMMAND_TIMEOUT + 10, "took %.1f s" % took)
        lines = self.wait_log(pg, "event=retr_failed", "class=protocol")
        self.assertTrue(lines, "no retr_failed class=protocol line in the log:\n%s"
                        % pg.log_text()[-2000:])
        self.assert_nothing_changed("long_line_fetch", fake)

    def test_literal_larger_than_announced(self):
        # {n} announces half the message, the other half follows as if it were FETCH
        # items: popgate must not end the first half with '.' as if it were the message
        fake, pg, status, rest, closed, _ = self.run_retr("literal_larger")
        if status.startswith(b"+OK"):
            self.assertFalse(is_terminated(rest),
                             "a literal shorter than the message (the rest following it as "
                             "text) was sent as a complete message ending in '.': %d bytes "
                             "of %d, status %r; log:\n%s"
                             % (len(rest), len(MESSAGES[1]), status,
                                "\n".join(popgate_log_lines(pg, "session="))[-1500:]))
        self.assertTrue(closed, "connection left open (status %r)" % status)
        self.assertTrue(self.wait_log(pg, "event=retr_failed"), "no retr_failed log line")
        self.assert_nothing_changed("literal_larger", fake)

    def check_literal_smaller(self, fault, log_class):
        fake, pg, status, rest, closed, _ = self.run_retr(fault)
        # what followed the message (")", the tagged OK) went into the literal: popgate
        # cannot tell it from message text, so the client may get it, but never a '.'
        self.assert_not_terminated(fault, pg, status, rest, closed, expect_status=b"+OK",
                                   slack=64)
        self.assertTrue(self.wait_log(pg, "event=retr_failed", "class=" + log_class),
                        "no retr_failed class=%s line" % log_class)
        self.assert_nothing_changed(fault, fake)

    def test_literal_smaller_than_announced_then_silence(self):
        self.check_literal_smaller("literal_smaller", "timeout")

    def test_literal_smaller_than_announced_then_close(self):
        self.check_literal_smaller("literal_smaller_close", "closed")

    def test_hang_during_top(self):
        # TOP streams from BODY.PEEK[HEADER] and BODY.PEEK[TEXT]<0.n>: the same rules
        fake = self.start_fake(fault="hang_fetch_mid", fault_uid=2)
        pg = self.start_popgate(fake.port, limits=self.limits)
        c = self.login(pg, timeout=60)
        c.send(b"TOP 2 5000\r\n")
        status = c.read_line()
        rest, closed = read_to_eof(c.sock, COMMAND_TIMEOUT + 20)
        rest = bytes(c.buf) + rest
        self.assertTrue(closed, "TOP with a hanging upstream: connection still open")
        if status.startswith(b"+OK"):
            self.assertFalse(is_terminated(rest), "a broken TOP ended with '.'")


class ExpungedMessageTests(FaultCase):
    """NO to a UID FETCH: another IMAP client expunged the message."""

    def test_no_to_fetch_names_the_message(self):
        fake = self.start_fake(fault="no_fetch", fault_uid=2)
        pg = self.start_popgate(fake.port)
        c = self.login(pg)
        r = c.cmd("RETR 2")
        self.assert_err(r, "RETR 2 answered NO upstream")
        self.assertIn(b"2", r, "the -ERR does not name message 2: %r" % r)
        self.assertTrue(self.wait_log(pg, "event=message_gone", "msg=2"),
                        "no event=message_gone msg=2 line in the log")
        # the session goes on
        self.assert_ok(c.cmd("NOOP"), "NOOP after the -ERR")
        self.assertEqual(c.cmd("RETR 1"), b"+OK %d octets" % len(MESSAGES[0]))
        self.assertEqual(c.read_multi(), MESSAGES[0], "RETR 1")
        self.assert_err(c.cmd("TOP 2 0"), "TOP 2 0 of the gone message")
        self.assert_ok(c.cmd("QUIT"), "QUIT")

    def test_client_repeating_retr_of_gone_message_is_disconnected(self):
        """Issue 6: 'a client that keeps asking for it is disconnected' (a POP3 client
        that retries a message forever would otherwise loop against the server)."""
        fake = self.start_fake(fault="no_fetch", fault_uid=2)
        pg = self.start_popgate(fake.port)
        c = self.login(pg)
        answers = []
        closed = False
        for _ in range(30):
            try:
                r = c.cmd("RETR 2")
            except (harness.Pop3Error, OSError):
                closed = True
                break
            answers.append(r)
            if not r.startswith(b"-ERR"):
                self.fail("RETR 2 of a gone message answered %r" % r)
            if c.expect_closed(0.2):
                closed = True
                break
        fetches = [l for l in fake.command_lines() if l.startswith("UID FETCH 2 ")]
        self.assertTrue(closed, "popgate answered %d RETRs of a message the server refuses "
                        "(each with -ERR, sending %d UID FETCHes upstream) and never "
                        "disconnected; answers: %r"
                        % (len(answers), len(fetches), sorted(set(answers))))
        # once found gone, it is not asked for again: the server is spared the loop
        self.assertEqual(len(fetches), 1, fake.command_lines())
        self.assertTrue(all(a.startswith(b"-ERR Message 2 is no longer available") or
                            a.startswith(b"-ERR Too many bad commands") for a in answers),
                        answers)


class FolderReselectTests(FaultCase):
    """mapping.folders: a folder SELECTed again before a command must still be the one of
    the snapshot; with another UIDVALIDITY its UIDs name other messages, so nothing of it
    is read or changed. (The fake serves one mailbox under every folder name.)"""

    def test_uidvalidity_changed_between_folders(self):
        fake = self.start_fake()
        pg = self.start_popgate(fake.port, extra={"mapping": {"folders": ["INBOX", "Other"]}})
        c = self.login(pg)
        n = len(MESSAGES)
        self.assertTrue(c.cmd("STAT").startswith(b"+OK %d " % (2 * n)))
        # "Other" is selected after the login; INBOX is SELECTed again for RETR 1
        self.assertTrue(c.cmd("RETR 1").startswith(b"+OK"))
        c.read_multi_lines()
        self.assertTrue(c.cmd("RETR %d" % (n + 1)).startswith(b"+OK"))
        c.read_multi_lines()
        self.assertTrue(c.cmd("DELE 2").startswith(b"+OK"))
        fake.uidvalidity += 1  # the mailbox is rebuilt under the session
        reply = c.cmd("RETR 3")
        self.assertEqual(reply, b"-ERR Message 3 is no longer available")
        self.assertIn("UIDVALIDITY of INBOX changed from", pg.log_text())
        # QUIT cannot delete by UIDs that now mean other messages
        reply = c.cmd("QUIT")
        self.assertTrue(reply.startswith(b"-ERR [SYS/TEMP]"), reply)
        stores = [line for line in fake.command_lines() if "STORE" in line or "EXPUNGE" in line]
        self.assertEqual(stores, [])
        self.assertEqual(fake.uids(), list(range(1, n + 1)))


class NoUidplusTests(FaultCase):
    """A server without UIDPLUS: popgate must never expunge what the client did not DELE
    (a bare EXPUNGE or CLOSE would also remove what other clients flagged \\Deleted)."""

    def test_quit_with_dele_without_uidplus(self):
        msgs = MESSAGES + [message(4)]
        # message 4 was flagged \Deleted by another IMAP client and is not expunged yet
        fake = self.start_fake(fault="no_uidplus", messages=msgs,
                               flags=[(), (), (), ("\\Deleted",)])
        pg = self.start_popgate(fake.port)
        c = self.login(pg)
        self.assert_ok(c.cmd("DELE 1"), "DELE 1")
        r = c.cmd("QUIT")
        self.assertTrue(c.expect_closed(10), "closed after QUIT")
        lines = fake.command_lines()
        bare = [l for l in lines if re.match(r"(EXPUNGE|CLOSE)\b", l, re.I)]
        self.assertEqual(bare, [], "popgate sent a bare EXPUNGE/CLOSE without UIDPLUS: %r"
                         % lines)
        self.assertIn(4, fake.uids(), "message 4 (flagged \\Deleted by someone else, not "
                      "DELE'd) was expunged")
        for uid in (2, 3):
            self.assertIn(uid, fake.uids())
            self.assertNotIn("\\Deleted", fake.flags()[uid], "uid %d flagged" % uid)
        # what popgate does instead, for the report: message 1 flagged, the client told
        self.assertIn(1, fake.uids(), "message 1 gone without UID EXPUNGE?")
        self.assertIn("\\Deleted", fake.flags()[1], "message 1 not even flagged \\Deleted")
        self.assertTrue(r.startswith(b"-ERR") or r.startswith(b"+OK"), "QUIT: %r" % r)
        self.assertFalse(r.startswith(b"+OK"),
                         "QUIT answered %r although message 1 is still in the mailbox" % r)
        self.assertTrue(self.wait_log(pg, "event=update_partial"), "no update_partial line")
        # for the record: what the next session shows
        c2 = self.login(pg)
        stat = c2.cmd("STAT")
        c2.cmd("QUIT")
        print("\nno UIDPLUS: QUIT after DELE 1 answered %r; the next session's STAT: %r "
              "(fake mailbox %r)" % (r, stat, fake.flags()), file=sys.stderr)


class SizeMismatchTests(FaultCase):
    """RFC822.SIZE differs from the literal (servers that estimate sizes): the message
    goes out whole and byte-identical to the literal."""

    def test_rfc822_size_larger_than_literal(self):
        fake = self.start_fake(fault="size_mismatch", fault_uid=2, fault_size_delta=100)
        pg = self.start_popgate(fake.port)
        c = self.login(pg)
        self.assert_ok(c.cmd("RETR 2"), "RETR 2")
        self.assertEqual(c.read_multi(), MESSAGES[1], "RETR 2 body vs the literal")
        self.assert_ok(c.cmd("QUIT"), "QUIT")


# ---------------------------------------------------------------------------
# client faults, real Dovecot


def big_message_chunks(size):
    yield (b"From: big@example.org\r\nTo: user@example.org\r\nSubject: big\r\n"
           b"Message-ID: <big@example.org>\r\n\r\n")
    line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .......\r\n"
    block = line * (MB // len(line))
    produced = 0
    while produced < size:
        yield block
        produced += len(block)
    yield b"the end\r\n"


class ClientFaultTests(FaultCase):
    """Hostile and odd clients against a real Dovecot."""

    MAX_BAD = 5
    BIG_MB = 40

    @classmethod
    def setUpClass(cls):
        cls.dovecot = harness.Dovecot()
        cls.addClassCleanup(cls.dovecot.stop)
        d = cls.dovecot
        for user in ("dribble", "junk", "junk2", "half", "pipe", "longline"):
            d.add_user(user, user + "-pw")
            for i in range(3):
                d.add_message(user, message(i, body_lines=20))
        d.add_user("noread", "noread-pw")
        d.add_message("noread", chunks=big_message_chunks(cls.BIG_MB * MB))
        d.start()
        cls.pg = harness.Popgate(d.port, limits={"max_bad_commands": cls.MAX_BAD})
        cls.addClassCleanup(cls._stop_class_popgate)
        cls.pg.start()

    @classmethod
    def _stop_class_popgate(cls):
        cls.pg.stop()
        report = cls.pg.sanitizer_report()
        if report:
            print("\nlog kept: %s" % cls.pg.log_path, file=sys.stderr)
            raise AssertionError("sanitizer report in popgate's log %s:\n%s"
                                 % (cls.pg.log_path, report))
        cls.pg.cleanup()

    def tearDown(self):
        self.assert_running(self.pg)

    def dlogin(self, user, **kw):
        return self.login(self.pg, user, user + "-pw", **kw)

    def test_dribbled_byte_by_byte(self):
        with self.dovecot.imap("dribble") as im:
            uids = im.uids()
            body = im.body(uids[1])
            sizes = im.sizes()
        c = self.raw(self.pg)

        def dribble(line):
            for b in line:
                c.send(bytes([b]))
                time.sleep(0.01)
            return c.status()
        self.assert_ok(dribble(b"USER dribble\r\n"), "dribbled USER")
        self.assert_ok(dribble(b"PASS dribble-pw\r\n"), "dribbled PASS")
        self.assertEqual(dribble(b"STAT\r\n"), b"+OK 3 %d" % sum(sizes.values()), "STAT")
        self.assert_ok(dribble(b"RETR 2\r\n"), "dribbled RETR 2")
        self.assertEqual(c.read_multi(), body, "RETR 2 body")
        self.assert_ok(dribble(b"QUIT\r\n"), "dribbled QUIT")

    def test_client_that_never_reads_big_retr(self):
        with self.dovecot.imap("noread", timeout=300) as im:
            uid = im.uids()[0]
            imap_len, imap_sha = im.body_digest(uid)
        self.assertGreater(imap_len, self.BIG_MB * MB, "premise: message size")
        c = self.dlogin("noread", rcvbuf=4096, timeout=120)
        sampler = harness.TreeRss(self.pg.pid)
        time.sleep(0.3)
        before = sampler.sample()
        sampler.peak = 0
        sampler.start()
        self.addCleanup(sampler.stop_event.set)
        c.send(b"RETR 1\r\n")
        time.sleep(8)  # the client reads nothing
        stalled_peak = sampler.peak
        # then it reads everything: the stream must resume and be exact
        status = c.status()
        self.assert_ok(status, "RETR 1")
        h = hashlib.sha256()
        n = c.read_multi_stream(h.update, timeout=300)
        sampler.stop_event.set()
        sampler.join(5)
        self.assertEqual((n, h.hexdigest()), (imap_len, imap_sha), "RETR 1 vs IMAP BODY[]")
        self.assert_ok(c.cmd("QUIT"), "QUIT")
        growth = stalled_peak - before
        print("\nnever-reading client: popgate tree RSS %d kB before, peak %d kB while the "
              "client did not read (%d MB message), peak %d kB overall"
              % (before, stalled_peak, self.BIG_MB, sampler.peak), file=sys.stderr)
        self.assertLess(growth, 16 * 1024,
                        "popgate's RSS grew by %d kB while a client did not read a %d MB "
                        "message" % (growth, self.BIG_MB))
        self.assertLess(sampler.peak - before, 32 * 1024,
                        "popgate's RSS grew by %d kB during the RETR" % (sampler.peak - before))

    def test_binary_junk_and_nul_bytes(self):
        c = self.dlogin("junk")
        junk = [b"\x00\x00\x00\r\n", b"\xff\xfe\xfd\x80\x81 junk\r\n", b"NO\x00OP\r\n",
                b"\x1b[31mRETR 1\r\n"]
        self.assertLess(len(junk), self.MAX_BAD, "premise")
        for j in junk:
            r = c.cmd(j.rstrip(b"\r\n"))
            self.assert_err(r, "junk %r" % j)
            self.assert_ok(c.cmd("NOOP"), "NOOP after junk %r" % j)
        self.assertTrue(re.match(rb"\+OK 3 \d+$", c.cmd("STAT")), "STAT after junk")
        # the budget: MAX_BAD bad commands in all end the session
        r = c.cmd(b"\x00\x01\x02")
        self.assert_err(r, "bad command %d of %d" % (len(junk) + 1, self.MAX_BAD))
        self.assertTrue(c.expect_closed(10), "not disconnected after %d bad commands"
                        % self.MAX_BAD)
        self.assertTrue(self.wait_log(self.pg, "user=junk", "event=too_many_bad_commands"),
                        "no too_many_bad_commands line")
        with self.dovecot.imap("junk") as im:
            self.assertEqual(len(im.uids()), 3, "junk changed the mailbox")

    def test_binary_junk_before_login(self):
        c = self.raw(self.pg)
        for i in range(self.MAX_BAD - 1):
            self.assert_err(c.cmd(b"\x00\xff\x01junk %d" % i), "junk %d before login" % i)
        # still usable: log in
        r = c.login("junk2", "junk2-pw")
        self.assert_ok(r, "login after %d junk lines" % (self.MAX_BAD - 1))
        self.assert_err(c.cmd(b"\x00"), "last bad command")
        self.assertTrue(c.expect_closed(10), "not disconnected after the bad-command budget")

    def test_overlong_command_line(self):
        c = self.dlogin("longline")
        r = c.cmd(b"NOOP " + b"A" * 5000)
        self.assert_err(r, "a 5005-byte command line")
        self.assert_ok(c.cmd("NOOP"), "NOOP after the long line (resync at LF)")
        self.assertTrue(re.match(rb"\+OK 3 \d+$", c.cmd("STAT")), "STAT")
        self.assert_ok(c.cmd("QUIT"), "QUIT")

    def test_half_closed_socket_gets_every_answer(self):
        with self.dovecot.imap("half") as im:
            uids = im.uids()
            body = im.body(uids[0])
            sizes = im.sizes()
        c = self.dlogin("half")
        c.send(b"STAT\r\nRETR 1\r\nNOOP\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        data, closed = read_to_eof(c.sock, 60)
        data = bytes(c.buf) + data
        self.assertTrue(closed, "popgate did not close after answering a half-closed client")
        expect = (b"+OK 3 %d\r\n" % sum(sizes.values()) +
                  b"+OK %d octets\r\n" % sizes[uids[0]] + dot_stuff(body) + b".\r\n")
        self.assertEqual(data[:len(expect)], expect, "STAT + RETR 1 answers")
        tail = data[len(expect):]
        self.assertTrue(re.fullmatch(rb"\+OK[^\r\n]*\r\n\+OK[^\r\n]*\r\n", tail),
                        "NOOP and QUIT answers: %r" % tail[:300])

    def test_5000_pipelined_noops_in_one_write(self):
        c = self.dlogin("pipe")
        n = 5000
        payload = b"NOOP\r\n" * n + b"STAT\r\nQUIT\r\n"
        sender = threading.Thread(target=c.send, args=(payload,), daemon=True)
        sender.start()
        for i in range(n):
            r = c.status()
            if r != b"+OK":
                self.fail("answer %d of %d pipelined NOOPs: %r" % (i + 1, n, r))
        self.assertTrue(re.match(rb"\+OK 3 \d+$", c.status()), "STAT after the NOOPs")
        self.assert_ok(c.status(), "QUIT after the NOOPs")
        sender.join(10)
        self.assertTrue(c.expect_closed(10), "closed after QUIT")


class GatedRelay(harness.TcpRelay):
    """A TCP relay in front of Dovecot that holds popgate's bytes once a trigger string
    (e.g. b"UID STORE") passes, until release() is called: so a test can act while an
    upstream command is in flight."""

    def __init__(self, target_port, trigger, hold_timeout=60):
        self.trigger = trigger
        self.hold_timeout = hold_timeout
        self.triggered = threading.Event()
        self.released = threading.Event()
        super().__init__(target_port)

    def _pump(self, src, dst, to_server):
        src.settimeout(1.0)
        seen = b""
        try:
            while not self.stopping.is_set():
                try:
                    data = src.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                if to_server and not self.triggered.is_set():
                    seen = (seen + data)[-4096:]
                    if self.trigger in seen:
                        self.triggered.set()
                if to_server and self.triggered.is_set():
                    self.released.wait(self.hold_timeout)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def release(self):
        self.released.set()

    def close(self):
        self.released.set()
        super().close()


class GracefulEndTests(FaultCase):
    """SIGTERM while a QUIT's deletions are under way: they finish, nothing else changes."""

    def test_sigterm_during_quit_deletions(self):
        d = harness.Dovecot()
        self.addCleanup(d.stop)
        d.add_user("term", "term-pw")
        for i in range(10):
            d.add_message("term", message(i, body_lines=10))
        d.start()
        with d.imap("term") as im:
            uids_before = im.uids()
        relay = GatedRelay(d.port, b"UID STORE")
        self.addCleanup(relay.close)
        pg = self.start_popgate(relay.port)
        c = self.login(pg, "term", "term-pw", timeout=90)
        dele = [2, 5, 7]
        for n in dele:
            self.assert_ok(c.cmd("DELE %d" % n), "DELE %d" % n)
        c.send(b"QUIT\r\n")
        self.assertTrue(relay.triggered.wait(30), "popgate never sent UID STORE after QUIT")
        pg.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # popgate is draining while its STORE is in flight
        relay.release()
        try:
            r = c.status()
        except (harness.Pop3Error, OSError) as e:
            r = ("no answer: %s" % e).encode()
        try:
            pg.proc.wait(timeout=60)
        except Exception:
            pass
        with d.imap("term") as im:
            uids_after = im.uids()
        gone = sorted(set(uids_before) - set(uids_after))
        want_gone = sorted(uids_before[n - 1] for n in dele)
        self.assertEqual(gone, want_gone, "after SIGTERM during QUIT (QUIT answered %r): "
                         "UIDs gone %r, expected exactly the DELE'd %r; log %s"
                         % (r, gone, want_gone, pg.log_path))
        self.assertTrue(r.startswith(b"+OK"), "QUIT answered %r after SIGTERM mid-update"
                        % r)
        self.assertTrue(self.wait_log(pg, "user=term", "event=session_end", "result=quit"),
                        "session_end result=quit line")

    def test_sigterm_during_retr(self):
        """SIGTERM while a RETR streams: the message arrives whole with '.', or the
        connection closes without '.'; a DELE + QUIT after it is applied whole or not
        at all."""
        d = harness.Dovecot()
        self.addCleanup(d.stop)
        d.add_user("termretr", "termretr-pw")
        d.add_message("termretr", chunks=big_message_chunks(8 * MB))
        d.add_message("termretr", message(2))
        d.start()
        with d.imap("termretr", timeout=120) as im:
            uids_before = im.uids()
            body = im.body(uids_before[0])
        pg = self.start_popgate(d.port)
        c = self.login(pg, "termretr", "termretr-pw", timeout=90, rcvbuf=16384)
        self.assert_ok(c.cmd("RETR 1"), "RETR 1")
        c._fill(16384)
        pg.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:
            got = c.read_multi(timeout=120)
            complete = True
        except (harness.Pop3Error, OSError):
            complete = False
        if complete:
            self.assertEqual(got, body, "RETR 1 after SIGTERM: terminated but different")
            try:
                self.assert_ok(c.cmd("DELE 2"), "DELE 2")
                r = c.cmd("QUIT")
            except (harness.Pop3Error, OSError):
                r = b"(closed)"
        else:
            r = b"(closed mid-RETR)"
        try:
            pg.proc.wait(timeout=60)
        except Exception:
            pass
        with d.imap("termretr") as im:
            after = im.uids()
        if r.startswith(b"+OK"):
            self.assertEqual(after, uids_before[:1], "QUIT +OK but mailbox %r" % after)
        else:
            self.assertIn(after, (uids_before, uids_before[:1]),
                          "mailbox half-changed after %r" % r)
        print("\nSIGTERM during RETR: message complete=%s, QUIT answer %r" % (complete, r),
              file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
