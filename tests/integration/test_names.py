#!/usr/bin/env python3
"""Hostile user names through popgate and real Dovecot: "../x", "a/b", "..", very long
names and names that differ only in case each get a mailbox state of their own, inside
state.dir and nowhere else; names with NUL or control bytes (by USER, or hidden in AUTH
PLAIN) are refused without touching the state folder.

Run: POPGATE_BIN=build/asan/popgate python3 tests/integration/test_names.py -v
"""
import base64
import os
import shutil
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# ("b\\c" is left out: Dovecot's passwd-file reads a backslash as an escape)
# the longest a USER line carries (255 octets, RFC 2449), and longer by AUTH PLAIN
LONG_USER = "x" * 236 + "@example.com"
LONG_AUTH = "y" * 244 + "@example.com"
HOSTILE = ["../x", "a/b", "A/B", "..", ".", "Mixed", "mixed", "MIXED", LONG_USER, LONG_AUTH,
           "%2e%2e%2fz", "b;c", "~root", "-rf", "*"]


class NameTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        # Dovecot's own defaults would refuse "/" and lower-case every name
        cls.dovecot = harness.Dovecot(extra_config="auth_username_chars =\n"
                                                   "auth_username_format = %u\n")
        cls.addClassCleanup(cls.dovecot.stop)
        for i, name in enumerate(HOSTILE):
            cls.dovecot.add_user(name, "pw%d" % i)
            cls.dovecot.add_message(name, b"Subject: for %s\r\n\r\nmessage %d\r\n"
                                    % (name.encode(), i))
        cls.dovecot.start()
        # a folder of our own above popgate's, so nothing else writes beside it
        cls.parent = tempfile.mkdtemp(prefix="popgate-names-")
        os.mkdir(os.path.join(cls.parent, "pg"))
        cls.popgate = harness.Popgate(cls.dovecot.port, root=os.path.join(cls.parent, "pg"))
        cls.addClassCleanup(cls._stop)
        cls.popgate.start()

    @classmethod
    def _stop(cls):
        cls.popgate.stop()
        cls.popgate.check_after_exit()
        if not os.environ.get("KEEP_TEST_DIRS"):
            shutil.rmtree(cls.parent, ignore_errors=True)

    def session(self, name, password, hold=None):
        c = harness.Pop3Raw("127.0.0.1", self.popgate.port, timeout=30)
        self.addCleanup(c.close)
        if len(name) + 7 > 255:
            # too long for an initial response (RFC 5034): after the "+ " continuation
            msg = b"\0" + name.encode() + b"\0" + password.encode()
            self.assertTrue(c.cmd("AUTH PLAIN").startswith(b"+ "))
            reply = c.cmd(base64.b64encode(msg).decode())
        else:
            reply = c.login(name, password)
        self.assertTrue(reply.startswith(b"+OK"), "%r: %r" % (name, reply))
        self.assertTrue(c.cmd("RETR 1").startswith(b"+OK"))
        body = b"\r\n".join(c.read_multi_lines())
        self.assertIn(b"Subject: for " + name.encode(), body, name)
        if hold is not None:
            hold.wait(20)
        self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))

    def state_entries(self):
        return sorted(os.listdir(self.popgate.state_dir))

    def test_hostile_names_stay_inside(self):
        root_before = sorted(os.listdir(self.popgate.root))
        parent_before = sorted(os.listdir(os.path.dirname(self.popgate.root)))
        for i, name in enumerate(HOSTILE):
            self.session(name, "pw%d" % i)
        # every name, case variants included, has a document of its own, as a plain file
        # (saves finish on popgate's state thread after QUIT is answered: wait for them)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
                any(".tmp-" in e for e in self.state_entries()) or
                len([e for e in self.state_entries() if e.endswith(".json")]) < len(HOSTILE)):
            time.sleep(0.1)
        entries = self.state_entries()
        docs = [e for e in entries if e.endswith(".json")]
        self.assertEqual(len(docs), len(HOSTILE), entries)
        for e in entries:
            path = os.path.join(self.popgate.state_dir, e)
            self.assertTrue(os.path.isfile(path) and not os.path.islink(path), e)
            self.assertNotIn("/", e)
            self.assertLessEqual(len(e.encode()), 255)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600, e)
        # nothing appeared beside state.dir or above it
        self.assertEqual(sorted(os.listdir(self.popgate.root)), root_before)
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.popgate.root))),
                         parent_before)
        # a second round finds each state again: the UIDL is the one recorded
        for i, name in enumerate(HOSTILE[:4]):
            self.session(name, "pw%d" % i)
        self.assertEqual(len([e for e in self.state_entries() if e.endswith(".json")]),
                         len(HOSTILE))

    def test_case_variants_do_not_share_a_lock(self):
        # three sessions at once: names equal but for case are different mailboxes
        hold = threading.Event()
        errors = []

        def run(name, password):
            try:
                self.session(name, password, hold)
            except Exception as e:  # reported below
                errors.append("%s: %r" % (name, e))

        threads = [threading.Thread(target=run, args=(n, "pw%d" % HOSTILE.index(n)))
                   for n in ("Mixed", "mixed", "MIXED")]
        for t in threads:
            t.start()
        # all three logged in and hold their locks; then they QUIT
        deadline = 20
        while deadline > 0 and self.popgate.log_text().count("event=login ") < 3:
            threading.Event().wait(0.2)
            deadline -= 0.2
        hold.set()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])
        self.assertNotIn("IN-USE", self.popgate.log_text())

    def test_nul_and_control_bytes_refused(self):
        before = self.state_entries()
        mixed_pw = ("pw%d" % HOSTILE.index("Mixed")).encode()
        attempts = [b"USER mi\x00xed", b"USER ../\x01x", b"USER a\x7fb"]
        # a NUL inside AUTH PLAIN's fields: a fourth field, an authzid for another user,
        # an empty password, and a user name of more than 256 bytes
        for msg in (b"\x00mi\x00xed\x00" + mixed_pw, b"../x\x00Mixed\x00" + mixed_pw,
                    b"\x00Mixed\x00", b"\x00" + b"z" * 300 + b"\x00pw"):
            attempts.append(b"AUTH PLAIN " + base64.b64encode(msg))
        for line in attempts:
            c = harness.Pop3Raw("127.0.0.1", self.popgate.port, timeout=30)
            self.addCleanup(c.close)
            c.send(line + b"\r\n")
            reply = c.read_line()
            self.assertTrue(reply.startswith(b"-ERR"), (line, reply))
            c.close()
        self.assertEqual(self.state_entries(), before)


if __name__ == "__main__":
    unittest.main()
