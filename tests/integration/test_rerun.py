#!/usr/bin/env python3
"""Issue 5: clients that keep mail on the server and remember UIDLs download each message
once, however often they run: fetchmail in keep mode with UIDL tracking, and a
getmail-style poplib client (a JSON file of seen UIDLs, RETR of unseen ones only, never
DELE), also across a popgate restart and across a mailbox rebuild (new UIDVALIDITY).

Plain POP3 on loopback; popgate reaches Dovecot over plain IMAP.

Run: POPGATE_BIN=build/asan/popgate python3 tests/integration/test_rerun.py -v
"""

import json
import os
import poplib
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import pop3_equal  # noqa: E402

PASSWORD = "rerun-pw"
POP_TIMEOUT = 20


def make_message(user, n, tag):
    """A distinct message with a Message-ID (rebuilds re-associate by it) and fully
    qualified addresses (so fetchmail's header rewriting has nothing to change)."""
    return (b"From: Sender <sender@example.org>\n"
            b"To: %s@example.org\n"
            b"Subject: %s message %d\n"
            b"Date: Mon, 01 Jan 2024 10:%02d:00 +0000\n"
            b"Message-ID: <%s-%d@example.org>\n"
            b"\n"
            b"Body of %s message %d.\n"
            b".a line starting with a dot\n"
            b"last line\n" % (user.encode(), tag, n, n, tag, n, tag, n))


# ---------------------------------------------------------------------------
# fetchmail

FETCHMAIL_MDA = """#!/bin/sh
# Delivers one message from fetchmail's stdin into a numbered file in the folder $1.
dir="$1"
n=$(ls "$dir" | wc -l)
exec cat > "$dir/msg.$(printf %04d "$n")"
"""

FETCHMAIL_RECEIVED = re.compile(
    rb"Received: from 127\.0\.0\.1 \[127\.0\.0\.1\]\n"
    rb"\tby [^\n]* with POP3 \(fetchmail-[^\n]*\)\n"
    rb"\tfor <[^\n]*> \(single-drop\); [^\n]*\n")


def strip_fetchmail_changes(msg):
    """Drops the Received header fetchmail prepends and restores CRLF line ends (see
    test_tls.FetchmailTests). Returns (header or None, rest)."""
    m = FETCHMAIL_RECEIVED.match(msg)
    if not m:
        return None, msg
    return m.group(0), harness.crlf(msg[m.end():])


class Fetchmail:
    """fetchmail in keep mode with UIDL tracking; the idfile persists between runs.
    sslproto '' : plain POP3 on loopback (fetchmail 6.4 otherwise sends STLS even when
    CAPA does not list it, and gives up on the -ERR)."""

    def __init__(self, case, port, user, password):
        self.case = case
        self.port = port
        self.user = user
        self.password = password
        self.home = tempfile.mkdtemp(prefix="popgate-rerun-fetchmail-")
        case.addCleanup(shutil.rmtree, self.home, True)
        self.idfile = os.path.join(self.home, ".fetchids")
        self.mda = os.path.join(self.home, "mda.sh")
        with open(self.mda, "w") as f:
            f.write(FETCHMAIL_MDA)
        os.chmod(self.mda, 0o755)
        self.runs = 0

    def run(self):
        """One fetchmail run; returns (rc, output, [delivered message bytes])."""
        self.runs += 1
        out_dir = os.path.join(self.home, "delivered-%d" % self.runs)
        os.mkdir(out_dir)
        rc_path = os.path.join(self.home, "fetchmailrc")
        local = pwd.getpwuid(os.geteuid()).pw_name
        with open(rc_path, "w") as f:
            f.write('set no syslog\n'
                    'poll 127.0.0.1 with proto POP3 port %d timeout 30 uidl\n'
                    '  user "%s" there with password "%s" is "%s" here\n'
                    '  sslproto \'\'\n'
                    '  keep no fetchall\n'
                    '  mda "%s %s"\n'
                    % (self.port, self.user, self.password, local, self.mda, out_dir))
        os.chmod(rc_path, stat.S_IRUSR | stat.S_IWUSR)
        env = dict(os.environ, HOME=self.home, FETCHMAILHOME=self.home)
        env.pop("FETCHMAILUSER", None)
        r = subprocess.run(
            ["fetchmail", "-f", rc_path, "--nodetach", "--nosyslog", "-v",
             "--idfile", self.idfile, "--pidfile", os.path.join(self.home, "fetchmail.pid")],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=60, env=env)
        delivered = []
        for name in sorted(os.listdir(out_dir)):
            with open(os.path.join(out_dir, name), "rb") as f:
                delivered.append(f.read())
        return r.returncode, r.stdout.decode("utf-8", "replace"), delivered


# ---------------------------------------------------------------------------
# getmail-style client


class GetmailStyle:
    """Keeps a JSON file of seen UIDLs; RETRs only unseen messages; never DELEs."""

    def __init__(self, case, user, password):
        self.user = user
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="popgate-rerun-getmail-")
        case.addCleanup(shutil.rmtree, self.dir, True)
        self.seen_path = os.path.join(self.dir, "oldmail.json")

    def seen(self):
        try:
            with open(self.seen_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def run(self, port):
        """One run; returns (uidl list shown by the server, {uidl: message bytes})."""
        seen = self.seen()
        c = poplib.POP3("127.0.0.1", port, timeout=POP_TIMEOUT)
        try:
            c.user(self.user)
            c.pass_(self.password)
            _, lines, _ = c.uidl()
            listing = [line.decode().split() for line in lines]
            shown = [uidl for _, uidl in listing]
            got = {}
            for num, uidl in listing:
                if uidl in seen:
                    continue
                _, msg_lines, _ = c.retr(int(num))
                got[uidl] = b"".join(line + b"\r\n" for line in msg_lines)
                seen[uidl] = time.time()
            resp = c.quit()
            if not resp.startswith(b"+OK"):
                raise AssertionError("QUIT answered %r" % resp)
        finally:
            try:
                c.close()
            except Exception:
                pass
        tmp = self.seen_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(seen, f)
        os.replace(tmp, self.seen_path)
        return shown, got


# ---------------------------------------------------------------------------


class RerunTests(unittest.TestCase):

    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.dovecot = harness.Dovecot()
        cls.addClassCleanup(cls.dovecot.stop)
        for user in ("fm", "gm", "rb"):
            cls.dovecot.add_user(user, PASSWORD)
            for n in range(1, 6):
                cls.dovecot.add_message(user, make_message(user, n, b"old"))
        cls.dovecot.start()

    def start_popgate(self, root=None, port=None):
        """A popgate in front of the class's Dovecot; stopped and sanitizer-checked at the
        end of the test. root: keep the same config/state folder across restarts."""
        p = harness.Popgate(self.dovecot.port, root=root, port=port)
        self.addCleanup(self.stop_popgate, p)
        p.start()
        return p

    def stop_popgate(self, p):
        if p.proc is not None:
            rc = p.stop()
            self.assertEqual(rc, 0, "popgate exit status; log tail:\n%s" % p.log_text()[-3000:])
            self.assertFalse(p.needed_sigkill, "popgate needed SIGKILL")
        p.check_after_exit()
        p.cleanup()

    def imap_bodies(self, user):
        """{uid: BODY[]} and the UIDVALIDITY."""
        with self.dovecot.imap(user) as im:
            return {u: im.body(u) for u in im.uids()}, im.uidvalidity

    def assert_same_messages(self, received, expected, what):
        """received: list of message bytes as POP3 gave them; expected: list of IMAP
        BODY[] bytes; compared as multisets, order free."""
        self.assertEqual(len(received), len(expected),
                         "%s: got %d messages, expected %d" % (what, len(received),
                                                                len(expected)))
        left = list(expected)
        for i, msg in enumerate(received):
            match = [j for j, body in enumerate(left) if pop3_equal(msg, body)]
            self.assertTrue(match, "%s: message %d matches no expected IMAP BODY[]:\n%r"
                            % (what, i + 1, msg[:400]))
            del left[match[0]]

    # -- 1: fetchmail

    def check_fetchmail_run(self, fm, expected, what, popgate):
        rc, out, delivered = fm.run()
        # fetchmail exits 0 when it delivered mail and 1 when there was none
        self.assertEqual(rc, 0 if expected else 1,
                         "%s: fetchmail exited %d:\n%s\npopgate log tail:\n%s"
                         % (what, rc, out[-4000:], popgate.log_text()[-3000:]))
        self.assertIn("POP3> UIDL", out, "%s: fetchmail did not use UIDL" % what)
        self.assertNotIn("POP3> DELE", out, "%s: fetchmail deleted in keep mode" % what)
        retrs = len(re.findall(r"POP3> (?:RETR|TOP) ", out))
        self.assertEqual(retrs, len(expected), "%s: fetchmail downloaded %d messages:\n%s"
                         % (what, retrs, out[-3000:]))
        stripped = []
        for i, msg in enumerate(delivered, 1):
            received, rest = strip_fetchmail_changes(msg)
            self.assertIsNotNone(received, "%s: message %d has no fetchmail Received header "
                                 "first: %r" % (what, i, msg[:300]))
            self.assertNotIn(b"\r", msg, "%s: message %d: fetchmail left a CR" % (what, i))
            stripped.append(rest)
        self.assert_same_messages(stripped, expected, "%s (fetchmail output:\n%s)"
                                  % (what, out[-3000:]))
        return out

    def test_fetchmail_keep_uidl_three_runs(self):
        popgate = self.start_popgate()
        fm = Fetchmail(self, popgate.port, "fm", PASSWORD)
        before, _ = self.imap_bodies("fm")
        self.assertEqual(len(before), 5)

        self.check_fetchmail_run(fm, list(before.values()), "run 1", popgate)
        self.assertTrue(os.path.exists(fm.idfile), "fetchmail wrote no idfile")
        self.check_fetchmail_run(fm, [], "run 2", popgate)

        for n in (6, 7):
            self.dovecot.add_message("fm", make_message("fm", n, b"new"))
        after, _ = self.imap_bodies("fm")
        self.assertEqual(len(after), 7, "IMAP after adding two")
        new = [after[u] for u in sorted(set(after) - set(before))]
        self.assertEqual(len(new), 2)
        self.check_fetchmail_run(fm, new, "run 3", popgate)

        final, _ = self.imap_bodies("fm")
        self.assertEqual(final, after, "IMAP changed: keep mode must not delete anything")
        with self.dovecot.imap("fm") as im:
            flags = im.flags()
        self.assertFalse([u for u, f in flags.items() if "\\Deleted" in f],
                         "messages flagged \\Deleted upstream: %r" % flags)

    # -- 2: getmail-style, across a popgate restart

    def test_getmail_style_across_restart(self):
        root = tempfile.mkdtemp(prefix="popgate-rerun-proxy-")
        self.addCleanup(shutil.rmtree, root, True)
        popgate = self.start_popgate(root=root)
        port = popgate.port
        gm = GetmailStyle(self, "gm", PASSWORD)
        before, validity = self.imap_bodies("gm")
        with self.dovecot.imap("gm") as im:
            expected_uidls = {im.uidl(u): u for u in im.uids()}

        shown1, got1 = gm.run(port)
        self.assertEqual(sorted(shown1), sorted(expected_uidls), "run 1 UIDL listing")
        self.assertEqual(len(set(shown1)), 5, "run 1: UIDLs not distinct: %r" % shown1)
        self.assertEqual(sorted(got1), sorted(shown1), "run 1 downloads everything")
        for uidl, msg in got1.items():
            self.assertTrue(pop3_equal(msg, before[expected_uidls[uidl]]),
                            "run 1: UIDL %s bytes differ from IMAP" % uidl)

        shown2, got2 = gm.run(port)
        self.assertEqual(shown2, shown1, "run 2 UIDL listing")
        self.assertEqual(got2, {}, "run 2 downloaded again")

        # restart popgate on the same state folder and port
        self.stop_popgate(popgate)
        self.assertTrue(os.listdir(os.path.join(root, "state")), "state folder is empty")
        popgate = self.start_popgate(root=root, port=port)

        shown_r, got_r = gm.run(port)
        self.assertEqual(shown_r, shown1, "UIDLs changed across the popgate restart")
        self.assertEqual(got_r, {}, "downloaded again after the popgate restart")

        for n in (6, 7):
            self.dovecot.add_message("gm", make_message("gm", n, b"new"))
        after, validity_after = self.imap_bodies("gm")
        self.assertEqual(validity_after, validity)
        new_uids = sorted(set(after) - set(before))
        self.assertEqual(len(new_uids), 2)

        shown3, got3 = gm.run(port)
        self.assertEqual(len(shown3), 7, "run 3 UIDL listing: %r" % shown3)
        self.assertEqual(len(set(shown3)), 7, "run 3: UIDLs not distinct: %r" % shown3)
        self.assertEqual([u for u in shown3 if u in shown1], shown1,
                         "run 3: the first five UIDLs changed")
        self.assertEqual(len(got3), 2, "run 3 downloaded %d messages: %r"
                         % (len(got3), sorted(got3)))
        self.assert_same_messages(list(got3.values()), [after[u] for u in new_uids], "run 3")
        final, _ = self.imap_bodies("gm")
        self.assertEqual(final, after, "IMAP changed: the client never deletes")

    # -- 3: getmail-style, across a mailbox rebuild (new UIDVALIDITY)

    def test_getmail_style_across_mailbox_rebuild(self):
        popgate = self.start_popgate()
        gm = GetmailStyle(self, "rb", PASSWORD)
        before, old_validity = self.imap_bodies("rb")

        shown1, got1 = gm.run(popgate.port)
        self.assertEqual(len(got1), 5, "run 1 downloads everything")
        self.assert_same_messages(list(got1.values()), list(before.values()), "run 1")
        by_body1 = {got1[u]: u for u in shown1}

        time.sleep(1.2)  # Dovecot derives the new UIDVALIDITY from the clock
        maildir = self.dovecot.maildir("rb")
        for name in os.listdir(maildir):
            if name == "dovecot-uidlist" or name.startswith("dovecot.index"):
                os.unlink(os.path.join(maildir, name))
        rebuilt, new_validity = self.imap_bodies("rb")
        self.assertNotEqual(new_validity, old_validity, "UIDVALIDITY did not change")
        self.assertEqual(sorted(rebuilt.values()), sorted(before.values()),
                         "the rebuild lost or changed messages")

        shown2, got2 = gm.run(popgate.port)
        self.assertEqual(sorted(shown2), sorted(shown1),
                         "UIDLs after the rebuild differ from before")
        self.assertEqual(got2, {}, "run after the rebuild downloaded %d messages again"
                         % len(got2))
        self.assertIn("event=state_reassociate", popgate.log_text())

        for n in (6, 7):
            self.dovecot.add_message("rb", make_message("rb", n, b"new"))
        after, _ = self.imap_bodies("rb")
        new_bodies = [b for u, b in after.items() if b not in by_body1]
        self.assertEqual(len(new_bodies), 2)
        shown3, got3 = gm.run(popgate.port)
        self.assertEqual(len(set(shown3)), 7, "run 3 UIDLs: %r" % shown3)
        self.assert_same_messages(list(got3.values()), new_bodies, "run 3")
        final, _ = self.imap_bodies("rb")
        self.assertEqual(final, after, "IMAP changed: the client never deletes")


if __name__ == "__main__":
    unittest.main()
