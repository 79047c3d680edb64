#!/usr/bin/env python3
"""`popgate import-uidls` against a real Dovecot: an old POP3 server's UIDL list is merged
into the state, and the next POP3 login through popgate shows the old UIDLs.

Run: POPGATE_BIN=build/asan/popgate python3 tests/integration/test_import.py -v
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# Body padding per message: the 3rd and 4th messages have the same size, so only their
# order tells them apart.
PADS = (10, 20, 30, 30, 40, 50)


def message(user, i):
    return (b"Message-ID: <%s-%d@test>\r\nSubject: %s %d\r\n\r\n%s\r\n"
            % (user.encode(), i, user.encode(), i, b"x" * PADS[i]))


def old_list(user, gone_at=2, with_msgid=(0, 4)):
    """The old server's list for the first five of user's messages, in its order (the
    Maildir order, ascending UID), with LEGACY-n UIDLs, and one entry (at gone_at) for a
    message deleted before the migration. Returns (text, {message index: legacy UIDL})."""
    rows = [(i, len(message(user, i))) for i in range(5)]
    rows.insert(gone_at, (None, 777))
    lines, expect = ["# UIDL of the old server, with LIST sizes"], {}
    for n, (i, size) in enumerate(rows, 1):
        uidl = "LEGACY-%04d" % n
        line = "%d %s %d" % (n, uidl, size)
        if i is None:
            line += " <gone@test>"
        else:
            expect[i] = uidl
            if i in with_msgid:
                line += " <%s-%d@test>" % (user, i)
        lines.append(line)
    return "\n".join(lines) + "\n", expect


class ImportTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dovecot = harness.Dovecot()
        cls.addClassCleanup(cls.dovecot.stop)
        cls.users = ("mig", "dir1", "tpl", "busy", "bad")
        for user in cls.users:
            cls.dovecot.add_user(user, user + "-pw")
            for i in range(6):
                cls.dovecot.add_message(user, message(user, i))
        cls.dovecot.start()
        # "tpl@example.org" logs in upstream as "tpl": its state key is "tpl"
        routes = [{"domain": "example.org", "upstream": "main", "login": "%n"},
                  {"default": True, "upstream": "main"}]
        cls.popgate = harness.Popgate(cls.dovecot.port, extra={"routes": routes})
        cls.addClassCleanup(cls._stop)
        cls.popgate.start()
        cls.tmp = tempfile.mkdtemp(prefix="popgate-import-", dir=cls.popgate.root)

    @classmethod
    def _stop(cls):
        cls.popgate.stop()
        cls.popgate.check_after_exit()
        cls.popgate.cleanup()

    # -- helpers

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def run_import(self, *args):
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        p = subprocess.run([self.popgate.binary, "import-uidls", "-c", self.popgate.config_path]
                           + list(args), capture_output=True, timeout=60, env=env,
                           cwd=self.tmp)
        for marker in harness.SANITIZER_MARKERS:
            self.assertNotIn(marker, p.stderr, p.stderr.decode(errors="replace"))
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def state_path(self, key):
        return os.path.join(self.popgate.state_dir, key + ".json")

    def read_state(self, key):
        path = self.state_path(key)
        for _ in range(100):  # a login's save runs off the loop, just after its answer
            if os.path.exists(path):
                break
            time.sleep(0.05)
        with open(self.state_path(key), "rb") as f:
            return f.read()

    def pop(self):
        c = harness.Pop3Raw("127.0.0.1", self.popgate.port, timeout=20)
        self.addCleanup(c.close)
        return c

    def login(self, user, upstream_user=None):
        """Logs in, retrying while the previous session's lock is being released."""
        password = (upstream_user or user) + "-pw"
        deadline = time.monotonic() + 10
        while True:
            c = self.pop()
            reply = c.login(user, password)
            if reply.startswith(b"+OK") or time.monotonic() > deadline:
                break
            c.close()
            time.sleep(0.2)
        self.assertTrue(reply.startswith(b"+OK"), "login %s: %r" % (user, reply))
        return c

    def uidls_by_message(self, user, upstream_user=None):
        """{message index: UIDL} over one POP3 session, messages told apart by RETR."""
        upstream_user = upstream_user or user
        c = self.login(user, upstream_user)
        self.assertTrue(c.cmd("UIDL").startswith(b"+OK"))
        uidls = dict(line.decode().split() for line in c.read_multi_lines())
        result = {}
        for n, uidl in uidls.items():
            self.assertTrue(c.cmd("RETR %s" % n).startswith(b"+OK"))
            data = b"\r\n".join(c.read_multi_lines()) + b"\r\n"
            m = re.search(rb"^Subject: \S+ (\d+)\r$", data, re.M)
            self.assertIsNotNone(m, "RETR %s: %r" % (n, data[:200]))
            i = int(m.group(1))
            self.assertEqual(data, message(upstream_user, i), "RETR %s" % n)
            self.assertNotIn(i, result)
            result[i] = uidl
        self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        c.close()
        return result

    def template_uidls(self, user):
        """{message index: UIDL} that the default template gives over IMAP (UID order)."""
        with self.dovecot.imap(user) as im:
            return {i: im.uidl(uid) for i, uid in enumerate(im.uids())}

    def check_uidls(self, shown, expect, user):
        templated = self.template_uidls(user)
        want = {i: expect.get(i, templated[i]) for i in range(6)}
        self.assertEqual(shown, want, "UIDLs by message (legacy where matched, else template)")

    # -- tests

    def test_import_then_login_shows_legacy_uidls(self):
        text, expect = old_list("mig")
        path = self.write("mig.uidl", text)

        rc, out, err = self.run_import("--user", "mig", path)
        self.assertEqual(rc, 0, err)
        self.assertIn("mig: %s: 6 entries imported (6 new, 0 already matched kept, "
                      "6 waiting for the next login); state saved" % path, out)
        first = self.read_state("mig")
        doc = json.loads(first)
        self.assertEqual([e["uidl"] for e in doc["legacy"]],
                         ["LEGACY-%04d" % n for n in range(1, 7)])
        self.assertEqual(doc["messages"], [], "the import never touches the mailbox")

        # twice: nothing new, the document is left as it is
        rc, out, err = self.run_import("--user", "mig", path)
        self.assertEqual(rc, 0, err)
        self.assertIn("(0 new, 0 already matched kept, 6 waiting for the next login); "
                      "nothing new, state unchanged", out)
        self.assertEqual(self.read_state("mig"), first)

        shown = self.uidls_by_message("mig")
        self.check_uidls(shown, expect, "mig")
        self.assertNotIn("LEGACY-0003", shown.values(), "the deleted message's entry")
        doc = json.loads(self.read_state("mig"))
        matched = sorted(e["uidl"] for e in doc["legacy"] if e.get("matched"))
        self.assertEqual(matched, sorted(expect.values()))

        # a second session shows the same
        self.assertEqual(self.uidls_by_message("mig"), shown)

        # importing again after the login keeps what it matched and changes nothing
        after_login = self.read_state("mig")
        rc, out, err = self.run_import("--user", "mig", path)
        self.assertEqual(rc, 0, err)
        self.assertIn("(0 new, 5 already matched kept, 1 waiting for the next login); "
                      "nothing new, state unchanged", out)
        self.assertEqual(self.read_state("mig"), after_login)
        self.assertEqual(self.uidls_by_message("mig"), shown)

    def test_dir_mode_two_users(self):
        text1, expect1 = old_list("dir1", gone_at=0)
        text2, expect2 = old_list("tpl", gone_at=5, with_msgid=())
        self.write("dir/dir1.uidl", text1)
        # the JSON form, for the user as POP3 clients type it; routed to login "tpl"
        messages = []
        for line in text2.splitlines()[1:]:
            fields = line.split(None, 3)
            messages.append({"uidl": fields[1], "size": int(fields[2]),
                             "message_id": fields[3] if len(fields) > 3 else None})
        self.write("dir/tpl@example.org.json",
                   json.dumps({"user": "tpl@example.org", "messages": messages}))
        os.mkdir(os.path.join(self.tmp, "dir", "subfolder"))  # not a regular file: skipped
        self.write("dir/.hidden", "not a list\n")

        rc, out, err = self.run_import("--dir", os.path.join(self.tmp, "dir"))
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 2, out)
        self.assertTrue(lines[0].startswith("dir1: "), out)
        self.assertTrue(lines[1].startswith("tpl@example.org (login tpl): "), out)
        for line in lines:
            self.assertIn("6 entries imported (6 new,", line)
        # the state key is the routed login, not the name as typed
        self.assertTrue(os.path.exists(self.state_path("tpl")))
        self.assertFalse(os.path.exists(self.state_path("tpl_40example.org")))

        rc, out, err = self.run_import("--dir", os.path.join(self.tmp, "dir"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.count("nothing new, state unchanged"), 2, out)

        self.check_uidls(self.uidls_by_message("dir1"), expect1, "dir1")
        self.check_uidls(self.uidls_by_message("tpl@example.org", "tpl"), expect2, "tpl")

    def test_malformed_list_fails_with_file_and_line(self):
        path = self.write("bad.uidl", "1 LEGACY-0001 120\n2 LEGACY-0002 12x\n")
        rc, out, err = self.run_import("--user", "bad", path)
        self.assertNotEqual(rc, 0)
        self.assertIn("%s:2: error: " % path, err)
        self.assertEqual(out, "")
        self.assertFalse(os.path.exists(self.state_path("bad")), "nothing saved")

        # in --dir mode one bad list fails the run, the others are imported
        text, _ = old_list("dir1")
        self.write("mixed/bad.txt", "# header\n1 LEGACY-0001\n")
        self.write("mixed/dir1.uidl", text)
        rc, out, err = self.run_import("--dir", os.path.join(self.tmp, "mixed"))
        self.assertEqual(rc, 1, err)
        self.assertIn("%s:2: error: " % os.path.join(self.tmp, "mixed", "bad.txt"), err)
        self.assertIn("1 of 2 users failed", err)
        self.assertTrue(out.startswith("dir1: "), out)

    def test_import_refused_while_a_session_holds_the_mailbox(self):
        text, expect = old_list("busy")
        path = self.write("busy.uidl", text)
        c = self.login("busy")
        rc, out, err = self.run_import("--user", "busy", path)
        self.assertNotEqual(rc, 0)
        self.assertIn("%s: error: user \"busy\": the mailbox is in use by a POP3 session" % path,
                      err)
        self.assertEqual(out, "")
        self.assertTrue(c.cmd("QUIT").startswith(b"+OK"))
        c.close()
        doc = json.loads(self.read_state("busy"))
        self.assertEqual(doc.get("legacy", []), [], "nothing imported while in use")

        deadline = time.monotonic() + 10
        while True:  # the lock is released just after QUIT's answer
            rc, out, err = self.run_import("--user", "busy", path)
            if rc == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(rc, 0, err)
        # The first session gave every message a template UIDL, which clients may have
        # seen: those stay, and the legacy entries stay pending.
        shown = self.uidls_by_message("busy")
        self.check_uidls(shown, {}, "busy")


if __name__ == "__main__":
    unittest.main()
