#!/usr/bin/env python3
"""The limits of issue 6 that bite inside a session: the delay after a failed login,
growing per client address; failed logins per connection; a longer command line when the
operator allows one; bad commands; the upstream NOOP that keeps an idle session's IMAP
connection from being logged out. Each answers with its response code and a log line.

Run: POPGATE_BIN=build/asan/popgate python3 tests/integration/test_limits.py -v
"""
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fake_imap import FakeImap  # noqa: E402
from test_faults import FaultCase, MESSAGES, USER, PASSWORD  # noqa: E402


class AuthLimitTests(FaultCase):

    def test_failed_login_delay_grows_per_address(self):
        fake = self.start_fake()
        pg = self.start_popgate(fake.port, limits={"auth_failure_delay": 1,
                                                   "auth_failure_delay_max": 2,
                                                   "max_auth_failures": 5})
        c = self.raw(pg)
        took = []
        for _ in range(3):
            self.assertTrue(c.cmd("USER " + USER).startswith(b"+OK"))
            t = time.monotonic()
            reply = c.cmd("PASS wrong")
            took.append(time.monotonic() - t)
            self.assertTrue(reply.startswith(b"-ERR [AUTH]"), reply)
        # 1 s, then doubled to the cap of 2 s, and the cap holds
        self.assertGreaterEqual(took[0], 0.9)
        self.assertLess(took[0], 1.8)
        self.assertGreaterEqual(took[1], 1.9)
        self.assertGreaterEqual(took[2], 1.9)
        self.assertLess(took[2], 3.5)
        # the address, not the connection, carries the count; a good password passes
        d = self.raw(pg)
        self.assertTrue(d.cmd("USER " + USER).startswith(b"+OK"))
        t = time.monotonic()
        self.assertTrue(d.cmd("PASS wrong").startswith(b"-ERR [AUTH]"))
        self.assertGreaterEqual(time.monotonic() - t, 1.9)
        self.assertTrue(d.login(USER, PASSWORD).startswith(b"+OK"))
        log = pg.log_text()
        self.assertIn("event=auth_delay seconds=1", log)
        self.assertIn("event=auth_delay seconds=2", log)

    def test_commands_wait_during_the_delay(self):
        fake = self.start_fake()
        pg = self.start_popgate(fake.port, limits={"auth_failure_delay": 1})
        c = self.raw(pg)
        # pipelined behind the failing PASS: answered in order, after the delay
        c.send(b"USER %s\r\nPASS wrong\r\nNOOP\r\nUSER %s\r\nPASS %s\r\nSTAT\r\n"
               % (USER.encode(), USER.encode(), PASSWORD.encode()))
        replies = [c.read_line() for _ in range(6)]
        self.assertTrue(replies[0].startswith(b"+OK"))
        self.assertTrue(replies[1].startswith(b"-ERR [AUTH]"), replies)
        self.assertTrue(replies[2].startswith(b"-ERR"), replies)  # NOOP before login
        self.assertTrue(replies[4].startswith(b"+OK"), replies)
        self.assertTrue(replies[5].startswith(b"+OK %d " % len(MESSAGES)), replies)

    def test_failures_per_connection(self):
        fake = self.start_fake()
        pg = self.start_popgate(fake.port, limits={"max_auth_failures": 2})
        c = self.raw(pg)
        self.assertTrue(c.cmd("USER " + USER).startswith(b"+OK"))
        self.assertTrue(c.cmd("PASS wrong1").startswith(b"-ERR [AUTH]"))
        self.assertTrue(c.cmd("USER " + USER).startswith(b"+OK"))
        self.assertTrue(c.cmd("PASS wrong2").startswith(b"-ERR [AUTH]"))
        self.assertTrue(c.expect_closed(5), "closed after the second failure")
        self.assertIn("event=too_many_auth_failures count=2", pg.log_text())
        self.assertNotIn("wrong1", pg.log_text())


class LineAndCommandLimitTests(FaultCase):

    def test_configured_line_length(self):
        fake = self.start_fake(users={"u" * 250: PASSWORD})
        pg = self.start_popgate(fake.port, limits={"line_length": 512})
        c = self.raw(pg)
        self.assertTrue(c.cmd("USER " + "u" * 250).startswith(b"+OK"))
        self.assertTrue(c.cmd("PASS " + PASSWORD).startswith(b"+OK"))
        reply = c.cmd("NOOP" + " " * 600)
        self.assertEqual(reply, b"-ERR line too long")
        self.assertTrue(c.cmd("STAT").startswith(b"+OK"))

    def test_default_line_length_is_rfc_2449(self):
        fake = self.start_fake()
        pg = self.start_popgate(fake.port)
        c = self.raw(pg)
        self.assertEqual(c.cmd("USER " + "u" * 249), b"-ERR line too long")
        self.assertTrue(c.cmd("USER " + "u" * 248).startswith(b"+OK"))

    def test_bad_command_budget(self):
        fake = self.start_fake()
        pg = self.start_popgate(fake.port, limits={"max_bad_commands": 3})
        c = self.raw(pg)
        self.assertTrue(c.cmd("XYZZY").startswith(b"-ERR"))
        self.assertTrue(c.cmd("FOO").startswith(b"-ERR"))
        self.assertEqual(c.cmd("BAR"), b"-ERR Too many bad commands, closing connection")
        self.assertTrue(c.expect_closed(5))
        self.assertIn("event=too_many_bad_commands count=3", pg.log_text())


class KeepaliveTests(FaultCase):

    def test_noop_while_the_client_idles(self):
        fake = self.start_fake()
        pg = self.start_popgate(fake.port, limits={"upstream_keepalive": 1})
        c = self.login(pg)
        time.sleep(3.5)
        noops = [line for line in fake.command_lines() if line == "NOOP"]
        self.assertGreaterEqual(len(noops), 2, fake.command_lines())
        # the session still works, in order, after and between NOOPs
        for n in range(1, len(MESSAGES) + 1):
            self.assertTrue(c.cmd("RETR %d" % n).startswith(b"+OK"))
            body = b"".join(line + b"\r\n" for line in c.read_multi_lines())
            self.assertEqual(body, MESSAGES[n - 1])
            time.sleep(0.4)
        self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))

    def test_no_noop_before_the_interval(self):
        fake = self.start_fake()
        pg = self.start_popgate(fake.port)  # the default: 1500 s
        c = self.login(pg)
        time.sleep(1.5)
        self.assertTrue(c.cmd("STAT").startswith(b"+OK"))
        self.assertNotIn("NOOP", fake.command_lines())


if __name__ == "__main__":
    unittest.main()
