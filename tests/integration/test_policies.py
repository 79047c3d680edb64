#!/usr/bin/env python3
"""What POP3 actions do upstream, per the mapping settings, checked through a direct IMAP
connection afterwards: on_delete expunge / move / flag / hide, on_retr seen, LOGIN-DELAY,
per-route overrides.

Run: POPGATE_BIN=build/asan/popgate python3 tests/integration/test_policies.py -v
"""
import imaplib
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

USERS = ("expunger", "mover", "flagger", "hider", "seer", "delayed")


def flags_of(dovecot, user, mailbox="INBOX"):
    """{uid: set of flags} of a mailbox, read directly over IMAP."""
    conn = imaplib.IMAP4("127.0.0.1", dovecot.port, timeout=30)
    try:
        conn.login(user, user + "-pw")
        typ, _ = conn.select('"%s"' % mailbox, readonly=True)
        if typ != "OK":
            return None
        typ, data = conn.uid("FETCH", "1:*", "(FLAGS)")
        result = {}
        for item in data:
            if not item:
                continue
            text = item.decode() if isinstance(item, bytes) else item[0].decode()
            m = re.search(r"UID (\d+)", text)
            f = re.search(r"FLAGS \(([^)]*)\)", text)
            if m and f:
                # \Recent belongs to whichever session saw the message first
                result[int(m.group(1))] = set(f.group(1).split()) - {"\\Recent"}
        return result
    finally:
        try:
            conn.logout()
        except Exception:
            pass


class PolicyTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dovecot = harness.Dovecot()
        cls.addClassCleanup(cls.dovecot.stop)
        for user in USERS:
            cls.dovecot.add_user(user, user + "-pw")
            for i in range(4):
                cls.dovecot.add_message(user, b"Subject: p%d\r\n\r\nbody %d\r\n" % (i, i))
        cls.dovecot.start()
        cls.popgate = harness.Popgate(cls.dovecot.port, extra={
            "mapping": {"on_delete": "expunge"},
            "routes": [
                {"user": "mover", "upstream": "main", "mapping": {"on_delete": "move:Trash"}},
                {"user": "flagger", "upstream": "main",
                 "mapping": {"on_delete": "flag:popgate_deleted"}},
                {"user": "hider", "upstream": "main", "mapping": {"on_delete": "hide"}},
                {"user": "seer", "upstream": "main", "mapping": {"on_retr": "seen"}},
                {"user": "delayed", "upstream": "main", "mapping": {"login_delay": 900}},
                {"default": True, "upstream": "main"},
            ],
        })
        cls.addClassCleanup(cls._stop)
        cls.popgate.start()

    @classmethod
    def _stop(cls):
        cls.popgate.stop()
        cls.popgate.check_after_exit()
        cls.popgate.cleanup()

    def session(self, user, commands):
        c = harness.Pop3Raw("127.0.0.1", self.popgate.port, timeout=30)
        self.addCleanup(c.close)
        reply = c.login(user, user + "-pw")
        self.assertTrue(reply.startswith(b"+OK"), "%s login: %r" % (user, reply))
        for cmd in commands:
            r = c.cmd(cmd)
            self.assertTrue(r.startswith(b"+OK"), "%s %s: %r" % (user, cmd, r))
            if cmd.startswith(("RETR", "TOP", "UIDL", "LIST")) and " " not in cmd[4:].strip():
                c.read_multi_lines()
            elif cmd.startswith(("RETR", "TOP")):
                c.read_multi_lines()
        r = c.cmd("QUIT")
        self.assertTrue(r.startswith(b"+OK"), "%s QUIT: %r" % (user, r))
        c.close()

    def stat(self, user):
        c = harness.Pop3Raw("127.0.0.1", self.popgate.port, timeout=30)
        self.addCleanup(c.close)
        self.assertTrue(c.login(user, user + "-pw").startswith(b"+OK"))
        r = c.cmd("STAT")
        c.cmd("QUIT")
        c.close()
        return int(r.split()[1])

    def test_expunge_removes_exactly_those(self):
        before = flags_of(self.dovecot, "expunger")
        self.session("expunger", ["DELE 2"])
        after = flags_of(self.dovecot, "expunger")
        self.assertEqual(sorted(after), sorted(before)[:1] + sorted(before)[2:])

    def test_move_to_trash(self):
        before = flags_of(self.dovecot, "mover")
        conn = imaplib.IMAP4("127.0.0.1", self.dovecot.port, timeout=30)
        conn.login("mover", "mover-pw")
        conn.create("Trash")
        conn.logout()
        self.session("mover", ["DELE 1", "DELE 3"])
        after = flags_of(self.dovecot, "mover")
        self.assertEqual(len(after), len(before) - 2, "INBOX after move: %r" % after)
        self.assertEqual(len(flags_of(self.dovecot, "mover", "Trash")), 2, "Trash holds both")
        self.assertEqual(self.stat("mover"), len(before) - 2)

    def test_flag_keeps_message_for_imap_and_hides_it_from_pop3(self):
        before = flags_of(self.dovecot, "flagger")
        self.session("flagger", ["DELE 2"])
        after = flags_of(self.dovecot, "flagger")
        self.assertEqual(sorted(after), sorted(before), "flag: nothing removed upstream")
        flagged = [u for u, f in after.items() if "popgate_deleted" in f]
        self.assertEqual(flagged, [sorted(before)[1]], "the keyword is on message 2 only")
        self.assertEqual(self.stat("flagger"), len(before) - 1, "hidden from the next session")

    def test_hide_changes_nothing_upstream(self):
        before = flags_of(self.dovecot, "hider")
        self.session("hider", ["DELE 1"])
        self.assertEqual(flags_of(self.dovecot, "hider"), before, "hide: upstream unchanged")
        self.assertEqual(self.stat("hider"), len(before) - 1, "hidden from the next session")

    def test_on_retr_seen_sets_seen_but_top_does_not(self):
        self.session("seer", ["RETR 1", "TOP 2 0"])
        flags = flags_of(self.dovecot, "seer")
        uids = sorted(flags)
        self.assertIn("\\Seen", flags[uids[0]], "RETR'd message is \\Seen")
        self.assertNotIn("\\Seen", flags[uids[1]], "TOP never sets \\Seen")

    def test_login_delay(self):
        c = harness.Pop3Raw("127.0.0.1", self.popgate.port, timeout=30)
        self.addCleanup(c.close)
        self.assertTrue(c.cmd("CAPA").startswith(b"+OK"))
        capa = [line.decode() for line in c.read_multi_lines()]
        self.assertNotIn("LOGIN-DELAY 900 USER", capa, "top-level has no delay")
        c.close()
        self.session("delayed", [])
        d = harness.Pop3Raw("127.0.0.1", self.popgate.port, timeout=30)
        self.addCleanup(d.close)
        self.assertTrue(d.cmd("USER delayed").startswith(b"+OK"))
        reply = d.cmd("PASS delayed-pw")
        self.assertTrue(reply.startswith(b"-ERR [LOGIN-DELAY]"), "second login: %r" % reply)


if __name__ == "__main__":
    unittest.main()
