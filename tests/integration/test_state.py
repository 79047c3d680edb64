#!/usr/bin/env python3
"""Per-user state through popgate against a real Dovecot: the state document, the
one-session-per-mailbox lock ([IN-USE]) and its release when a worker dies.

Run: POPGATE_BIN=build/asan/popgate python3 tests/integration/test_state.py -v
"""
import json
import os
import signal
import stat
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class StateTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dovecot = harness.Dovecot()
        cls.addClassCleanup(cls.dovecot.stop)
        cls.dovecot.add_user("rebuild", "rebuild-pw")
        for user in ("st", "lock", "crash"):
            cls.dovecot.add_user(user, user + "-pw")
            for i in range(3):
                cls.dovecot.add_message(user, b"Subject: s%d\r\n\r\nbody %d\r\n" % (i, i))
        # two messages with the same Message-ID and size: re-associated by order
        for i in range(4):
            cls.dovecot.add_message("rebuild", b"Message-ID: <m%d@test>\r\nSubject: r%d\r\n\r\n"
                                    b"body %d\r\n" % (i if i < 3 else 2, i, i))
        cls.dovecot.start()
        cls.popgate = harness.Popgate(cls.dovecot.port, extra={"workers": 2})
        cls.addClassCleanup(cls._stop)
        cls.popgate.start()

    @classmethod
    def _stop(cls):
        cls.popgate.stop()
        cls.popgate.check_after_exit()
        cls.popgate.cleanup()

    def pop(self):
        c = harness.Pop3Raw("127.0.0.1", self.popgate.port, timeout=20)
        self.addCleanup(c.close)
        return c

    def state_file(self, user):
        path = os.path.join(self.popgate.state_dir, user + ".json")
        for _ in range(100):  # the save runs off the loop, just after the login answer
            if os.path.exists(path):
                return path
            time.sleep(0.05)
        self.fail("no state document %s; folder holds %r"
                  % (path, os.listdir(self.popgate.state_dir)))

    def test_state_document_records_shown_uidls(self):
        c = self.pop()
        self.assertTrue(c.login("st", "st-pw").startswith(b"+OK"))
        self.assertTrue(c.cmd("UIDL").startswith(b"+OK"))
        shown = dict(line.decode().split() for line in c.read_multi_lines())
        self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        path = self.state_file("st")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, "state file mode")
        with open(path) as f:
            doc = json.load(f)
        self.assertEqual(doc["version"], 1)
        self.assertEqual(doc["user"], "st")
        self.assertGreater(doc["last_login"], 0)
        recorded = sorted(m["uidl"] for m in doc["messages"])
        self.assertEqual(recorded, sorted(shown.values()), "UIDLs in the state vs UIDL output")
        with self.dovecot.imap("st") as im:
            self.assertEqual(sorted(shown.values()), sorted(im.uidl(u) for u in im.uids()))

    def test_second_session_gets_in_use(self):
        first = self.pop()
        self.assertTrue(first.login("lock", "lock-pw").startswith(b"+OK"))
        for _ in range(3):  # workers are two: whichever takes it, the lock is shared
            second = self.pop()
            self.assertTrue(second.cmd("USER lock").startswith(b"+OK"))
            reply = second.cmd("PASS lock-pw")
            self.assertTrue(reply.startswith(b"-ERR [IN-USE]"), "second login: %r" % reply)
            # the session stays in AUTHORIZATION and may retry later
            self.assertTrue(second.cmd("NOOP").startswith(b"-ERR"))
            second.close()
        self.assertTrue(first.cmd("QUIT").startswith(b"+OK"))
        third = self.pop()
        deadline = time.monotonic() + 10
        while True:
            reply = third.login("lock", "lock-pw")
            if reply.startswith(b"+OK") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertTrue(reply.startswith(b"+OK"), "login after QUIT: %r" % reply)
        third.cmd("QUIT")

    def test_lock_released_when_worker_dies(self):
        c = self.pop()
        self.assertTrue(c.login("crash", "crash-pw").startswith(b"+OK"))
        holders = [p for p in harness.child_pids(self.popgate.pid)
                   if os.path.exists("/proc/%d/fd" % p)
                   and any(os.readlink("/proc/%d/fd/%s" % (p, fd)).endswith("crash.lock")
                           for fd in os.listdir("/proc/%d/fd" % p))]
        self.assertEqual(len(holders), 1, "one worker holds crash.lock: %r" % holders)
        os.kill(holders[0], signal.SIGKILL)
        deadline = time.monotonic() + 15
        reply = b""
        while time.monotonic() < deadline:
            try:
                d = self.pop()
                reply = d.login("crash", "crash-pw")
                if reply.startswith(b"+OK"):
                    d.cmd("QUIT")
                    break
            except (OSError, harness.Pop3Error):
                pass
            time.sleep(0.3)
        self.assertTrue(reply.startswith(b"+OK"), "login after the holder died: %r" % reply)


    def uidl_by_body(self, user):
        """{message bytes: UIDL} over one session."""
        c = self.pop()
        self.assertTrue(c.login(user, user + "-pw").startswith(b"+OK"))
        self.assertTrue(c.cmd("UIDL").startswith(b"+OK"))
        uidls = dict(line.decode().split() for line in c.read_multi_lines())
        result = {}
        for n, uidl in uidls.items():
            self.assertTrue(c.cmd("RETR %s" % n).startswith(b"+OK"))
            body = b"\r\n".join(c.read_multi_lines())
            result.setdefault(body, []).append(uidl)
        self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        c.close()
        return result

    def test_uidvalidity_change_keeps_every_uidl(self):
        before = self.uidl_by_body("rebuild")
        self.assertEqual(sum(len(v) for v in before.values()), 4)
        with self.dovecot.imap("rebuild") as im:
            old_validity = im.uidvalidity
        time.sleep(1.2)  # Dovecot derives a new UIDVALIDITY from the clock
        # The mailbox is rebuilt (restored from backup): new UIDVALIDITY, new UIDs.
        maildir = self.dovecot.maildir("rebuild")
        for name in os.listdir(maildir):
            if name == "dovecot-uidlist" or name.startswith("dovecot.index"):
                os.unlink(os.path.join(maildir, name))
        with self.dovecot.imap("rebuild") as im:
            self.assertNotEqual(im.uidvalidity, old_validity, "UIDVALIDITY did not change")
        after = self.uidl_by_body("rebuild")
        self.assertEqual({k: sorted(v) for k, v in after.items()},
                         {k: sorted(v) for k, v in before.items()},
                         "UIDLs after the UIDVALIDITY change")
        log = self.popgate.log_text()
        self.assertIn("event=state_reassociate", log)


if __name__ == "__main__":
    unittest.main()
