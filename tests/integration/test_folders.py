#!/usr/bin/env python3
"""mapping.folders: several IMAP folders merged into one POP3 maildrop, against real
Dovecot. Message numbers run through the folders in the configured order; RETR gives each
folder's bytes; UIDLs are unique across folders and stable; DELE and on_retr "seen" reach
the right folder at QUIT; a folder the user lacks is left out with a log line; a folder
rebuilt under a running session (new UIDVALIDITY) is never read by its old UIDs.
Also uidl_format "%g": UIDLs from the server's stable id (Dovecot's X-GUID), which
survive a rebuilt mailbox even for messages without a Message-ID.

Run: POPGATE_BIN=build/asan/popgate python3 tests/integration/test_folders.py -v
"""
import glob
import hashlib
import imaplib
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from test_policies import flags_of  # noqa: E402

FOLDERS = ["INBOX", "Spam", "Nowhere", "Archive"]


def imap_conn(dovecot, user):
    conn = imaplib.IMAP4("127.0.0.1", dovecot.port, timeout=30)
    conn.login(user, user + "-pw")
    return conn


def fill(dovecot, user, layout):
    """Creates the folders of layout ({folder: [message bytes]}) over IMAP and APPENDs the
    messages, so Dovecot gives every folder its own UIDVALIDITY and UIDs from 1."""
    conn = imap_conn(dovecot, user)
    try:
        for folder, messages in layout.items():
            if folder != "INBOX":
                typ, data = conn.create(folder)
                assert typ == "OK", data
            for m in messages:
                typ, data = conn.append(folder, None, None, m)
                assert typ == "OK", data
    finally:
        conn.logout()


def bodies(dovecot, user, folder):
    """[(uid, bytes)] of a folder, by UID."""
    conn = imap_conn(dovecot, user)
    try:
        typ, _ = conn.select('"%s"' % folder, readonly=True)
        assert typ == "OK"
        typ, data = conn.uid("FETCH", "1:*", "(BODY.PEEK[])")
        out = []
        for item in data:
            if isinstance(item, tuple):
                head = item[0].decode()
                uid = int(head.split("UID ")[1].split()[0].rstrip(")"))
                out.append((uid, item[1]))
        return sorted(out)
    finally:
        conn.logout()


def message(folder, i):
    return (b"From: a@example.com\r\nMessage-ID: <%s-%d@example.com>\r\nSubject: %s %d\r\n\r\n"
            b"body of %s %d\r\n.leading dot\r\n" % (folder.encode(), i, folder.encode(), i,
                                                    folder.encode(), i))


class FolderTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dovecot = harness.Dovecot()
        cls.addClassCleanup(cls.dovecot.stop)
        for user in ("merged", "seer", "rebuilt", "mover", "guid"):
            cls.dovecot.add_user(user, user + "-pw")
        cls.dovecot.start()
        fill(cls.dovecot, "merged", {"INBOX": [message("INBOX", i) for i in range(3)],
                                     "Spam": [message("Spam", i) for i in range(2)],
                                     "Archive": [message("Archive", 0)]})
        fill(cls.dovecot, "seer", {"INBOX": [message("INBOX", 0)],
                                   "Spam": [message("Spam", 0), message("Spam", 1)]})
        fill(cls.dovecot, "rebuilt", {"INBOX": [message("INBOX", i) for i in range(2)],
                                      "Spam": [message("Spam", i) for i in range(3)]})
        fill(cls.dovecot, "mover", {"INBOX": [message("INBOX", 0)],
                                    "Spam": [message("Spam", 0)], "Trash": []})
        # no Message-ID: only the server's id can keep these UIDLs across a rebuild
        fill(cls.dovecot, "guid", {"INBOX": [b"Subject: plain %d\r\n\r\nno id %d\r\n" % (i, i)
                                             for i in range(3)],
                                   "Spam": [message("Spam", 0)]})
        cls.popgate = harness.Popgate(cls.dovecot.port, extra={
            "mapping": {"folders": FOLDERS},
            "routes": [
                {"user": "seer", "upstream": "main", "mapping": {"on_retr": "seen"}},
                {"user": "mover", "upstream": "main",
                 "mapping": {"folders": ["INBOX", "Spam"], "on_delete": "move:Trash"}},
                {"user": "guid", "upstream": "main",
                 "mapping": {"folders": ["INBOX", "Spam"], "uidl_format": "%g"}},
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

    def login(self, user):
        c = harness.Pop3Raw("127.0.0.1", self.popgate.port, timeout=30)
        self.addCleanup(c.close)
        reply = c.login(user, user + "-pw")
        self.assertTrue(reply.startswith(b"+OK"), "%s login: %r" % (user, reply))
        return c

    def listing(self, c, cmd):
        self.assertTrue(c.cmd(cmd).startswith(b"+OK"))
        return [line.decode().split() for line in c.read_multi_lines()]

    def expected(self, user):
        """What POP3 must show: every configured folder's messages, in order."""
        out = []
        for folder in FOLDERS:
            try:
                out += [(folder, uid, data) for uid, data in bodies(self.dovecot, user, folder)]
            except AssertionError:
                pass  # a folder the user lacks
        return out

    def test_merged_view_retr_uidl_and_delete(self):
        want = self.expected("merged")
        self.assertEqual([f for f, _, _ in want], ["INBOX"] * 3 + ["Spam"] * 2 + ["Archive"])
        c = self.login("merged")
        sizes = self.listing(c, "LIST")
        self.assertEqual([int(s) for _, s in sizes], [len(d) for _, _, d in want])
        uidls = [u for _, u in self.listing(c, "UIDL")]
        self.assertEqual(len(set(uidls)), len(uidls), "UIDLs unique across folders: %r" % uidls)
        for n, (folder, uid, data) in enumerate(want, 1):
            self.assertTrue(c.cmd("RETR %d" % n).startswith(b"+OK"), (n, folder))
            got = b"".join(line + b"\r\n" for line in c.read_multi_lines())
            self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(data).hexdigest(),
                             "message %d (%s uid %d)" % (n, folder, uid))
        # TOP of a later folder after RETRs in the others: the folder is selected again
        self.assertTrue(c.cmd("TOP 4 0").startswith(b"+OK"))
        self.assertIn(b"Subject: Spam 0", b"\r\n".join(c.read_multi_lines()))
        for n in (2, 5, 6):
            self.assertTrue(c.cmd("DELE %d" % n).startswith(b"+OK"))
        self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        c.close()
        self.assertIn("event=folder_missing folder=Nowhere", self.popgate.log_text())

        # exactly the DELE'd messages left their own folders
        self.assertEqual([u for u, _ in bodies(self.dovecot, "merged", "INBOX")],
                         [want[0][1], want[2][1]])
        self.assertEqual([u for u, _ in bodies(self.dovecot, "merged", "Spam")], [want[3][1]])
        self.assertEqual(bodies(self.dovecot, "merged", "Archive"), [])
        # and the survivors keep their UIDLs
        c = self.login("merged")
        self.assertEqual([u for _, u in self.listing(c, "UIDL")],
                         [uidls[0], uidls[2], uidls[3]])
        c.cmd("QUIT")

    def test_seen_is_set_in_each_folder(self):
        c = self.login("seer")
        for n in (1, 3):
            self.assertTrue(c.cmd("RETR %d" % n).startswith(b"+OK"))
            c.read_multi_lines()
        self.assertTrue(c.cmd("TOP 2 0").startswith(b"+OK"))
        c.read_multi_lines()
        self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        inbox = flags_of(self.dovecot, "seer", "INBOX")
        spam = flags_of(self.dovecot, "seer", "Spam")
        self.assertEqual([("\\Seen" in f) for _, f in sorted(inbox.items())], [True])
        self.assertEqual([("\\Seen" in f) for _, f in sorted(spam.items())], [False, True])

    def test_move_from_every_folder(self):
        c = self.login("mover")
        self.assertTrue(c.cmd("DELE 1").startswith(b"+OK"))
        self.assertTrue(c.cmd("DELE 2").startswith(b"+OK"))
        self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        self.assertEqual(bodies(self.dovecot, "mover", "INBOX"), [])
        self.assertEqual(bodies(self.dovecot, "mover", "Spam"), [])
        trash = [d for _, d in bodies(self.dovecot, "mover", "Trash")]
        self.assertEqual(sorted(trash), sorted([message("INBOX", 0), message("Spam", 0)]))

    def rebuild(self, user, folder):
        """Makes Dovecot forget a folder's UIDs: a new UIDVALIDITY and UIDs from 1."""
        md = self.dovecot.maildir(user)
        sub = md if folder == "INBOX" else os.path.join(md, "." + folder)
        for path in glob.glob(os.path.join(sub, "dovecot-uidlist")) + \
                glob.glob(os.path.join(sub, "dovecot.index*")):
            os.unlink(path)

    def test_rebuilt_folder(self):
        c = self.login("rebuilt")
        uidls = [u for _, u in self.listing(c, "UIDL")]
        self.assertEqual(len(uidls), 5)
        # RETR from INBOX leaves INBOX selected; then Spam is rebuilt under the session
        self.assertTrue(c.cmd("RETR 1").startswith(b"+OK"))
        c.read_multi_lines()
        self.rebuild("rebuilt", "Spam")
        reply = c.cmd("RETR 4")
        self.assertTrue(reply.startswith(b"-ERR"), "old UIDs of a rebuilt folder: %r" % reply)
        self.assertIn(b"no longer available", reply)
        # INBOX is untouched and still served
        self.assertTrue(c.cmd("RETR 2").startswith(b"+OK"))
        c.read_multi_lines()
        self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        # Dovecot refuses the SELECT of a folder rebuilt under a live session ("deleted under
        # us"); a server that serves it with a new UIDVALIDITY is refused by popgate itself
        self.assertRegex(self.popgate.log_text(),
                         r"event=message_gone msg=4 uid=\d+ reason=\"(UIDVALIDITY of Spam changed"
                         r"|SELECT Spam refused)")
        # the next session re-associates Spam's messages by Message-ID: same UIDLs
        c = self.login("rebuilt")
        self.assertEqual([u for _, u in self.listing(c, "UIDL")], uidls)
        c.cmd("QUIT")
        self.assertRegex(self.popgate.log_text(),
                         r"event=state_reassociate folder=Spam old_uidvalidity=\d+")

    def x_guids(self, user, folder):
        conn = imap_conn(self.dovecot, user)
        try:
            conn.select('"%s"' % folder, readonly=True)
            typ, data = conn.uid("FETCH", "1:*", "(X-GUID)")
            self.assertEqual(typ, "OK")
            out = {}
            for item in data:
                text = item.decode()
                uid = int(text.split("UID ")[1].split()[0])
                out[uid] = text.split("X-GUID ")[1].split()[0].rstrip(")").strip('"')
            return [out[k] for k in sorted(out)]
        finally:
            conn.logout()

    def test_guid_uidls(self):
        want = self.x_guids("guid", "INBOX") + self.x_guids("guid", "Spam")
        self.assertEqual(len(want), 4)
        c = self.login("guid")
        self.assertEqual([u for _, u in self.listing(c, "UIDL")], want)
        c.cmd("QUIT")
        c.close()
        # a rebuilt INBOX: new UIDVALIDITY and UIDs, no Message-IDs, same UIDLs
        self.rebuild("guid", "INBOX")
        c = self.login("guid")
        self.assertEqual([u for _, u in self.listing(c, "UIDL")], want)
        c.cmd("QUIT")


if __name__ == "__main__":
    unittest.main()
