#!/usr/bin/env python3
"""Integration tests of issue 4: popgate run as an operator runs it.

Two real Dovecot instances are the upstreams "a" and "b". A routed user exists on both
with the same password, and each of its mailboxes says which server holds it (an
X-Upstream header), so the message a session retrieves shows which upstream served it.

Covered: routing by user, user_map, domain, glob and default, their precedence, login
rewriting and the refusal of an unrouted user; SIGHUP (a RETR running on the old config
finishes from the old upstream while new sessions go to the new one; a broken file keeps
the old config; listeners open and close); SIGTERM with a session mid-RETR; a killed
worker is replaced; workers drop privileges; PROXY protocol v1 and v2 from trusted and
untrusted sources; IMAP ID carries the client address to Dovecot; the admin endpoint's
/metrics and /healthz.

Run: python3 tests/integration/test_operator.py -v
     (POPGATE_BIN selects the binary; default build/asan/popgate)
"""

import http.client
import json
import os
import pwd
import random
import re
import signal
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Pop3Raw  # noqa: E402

PASSWORD = "op-secret-7"
BIG_SIZE = 12 * 1024 * 1024
SHUTDOWN_TIMEOUT = 2
# Dovecot must see the login exactly as popgate sends it (its default lower-cases it),
# and the upstream that honours IMAP ID logs the client's port too.
DOVECOT_A_EXTRA = "auth_username_format = %u\n"
DOVECOT_B_EXTRA = (
    "auth_username_format = %u\n"
    "login_trusted_networks = 127.0.0.1/32\n"
    "login_log_format_elements = user=<%u> method=%m rip=%r rport=%{rport} lip=%l mpid=%e "
    "%c session=<%{session}>\n"
)

# users living on both upstreams, each mailbox marked with its server
ROUTED_USERS = [
    "vip@example.com", "plain@example.com", "mapuser", "someone@example.com",
    "dora@example.net", "hal@mail.example.org", "ivy@mail.example.info", "gus@example.info",
    "nobody-special", "alice", "new@move.test", "held@move.test",
]
# users on one upstream only
A_USERS = ["big@move.test", "stop@example.com", "w@example.com", "m@example.com"]
B_USERS = ["ppv1", "ppv2", "pppieces", "ppid", "ppplain"]

UP = {}  # "a" / "b" -> harness.Dovecot, started by setUpModule
_failed = []  # class names with a failure: their logs are kept


def tagged_message(user, tag):
    return ("From: test@example.org\nTo: %s\nSubject: mailbox of %s\nX-Upstream: %s\n"
            "Message-ID: <%s.%s@popgate-test>\n\nThis mailbox of %s lives on upstream %s.\n"
            % (user, user, tag, tag, user, user, tag)).encode()


def big_message_chunks(size=BIG_SIZE, seed=4):
    """About size bytes with LF line ends, some lines starting with '.' or only '.'."""
    rnd = random.Random(seed)
    words = [b"north", b"south", b"east", b"west", b".dot", b"x" * 30, b"\xc3\xa9t\xc3\xa9"]
    yield b"From: big@example.org\nTo: user@example.org\nSubject: big\nX-Upstream: A\n\n"
    produced = 0
    n = 0
    while produced < size:
        lines = []
        for _ in range(2000):
            n += 1
            if n % 499 == 0:
                line = b"."
            elif n % 97 == 0:
                line = b"." + b" ".join(rnd.choice(words) for _ in range(6))
            else:
                line = b" ".join(rnd.choice(words) for _ in range(rnd.randint(1, 12)))
            lines.append(line + b"\n")
        chunk = b"".join(lines)
        produced += len(chunk)
        yield chunk
    yield b"last line of the big message\n"


def dot_stuff(data):
    """The POP3 multi-line form of a message (CRLF form, ending in CRLF), terminator
    included."""
    return (b"\r\n" + data).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


def first_difference(a, b):
    n = min(len(a), len(b))
    i = 0
    step = 1 << 16
    while i < n and a[i:i + step] == b[i:i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def setUpModule():
    a = harness.Dovecot(extra_config=DOVECOT_A_EXTRA)
    b = harness.Dovecot(extra_config=DOVECOT_B_EXTRA)
    UP["a"], UP["b"] = a, b
    for user in ROUTED_USERS:
        for d, tag in ((a, "A"), (b, "B")):
            d.add_user(user, PASSWORD)
            d.add_message(user, tagged_message(user, tag))
    for user in A_USERS:
        a.add_user(user, PASSWORD)
    for user in B_USERS:
        b.add_user(user, PASSWORD)
        b.add_message(user, tagged_message(user, "B"))
    a.add_message("big@move.test", chunks=big_message_chunks())
    a.add_message("stop@example.com", chunks=big_message_chunks(seed=5))
    a.add_message("stop@example.com", tagged_message("stop@example.com", "A"))
    a.add_message("w@example.com", tagged_message("w@example.com", "A"))
    a.add_message("m@example.com", tagged_message("m@example.com", "A"))
    a.start()
    b.start()


def tearDownModule():
    for name, d in sorted(UP.items()):
        if _failed:
            d.keep = True
        d.stop()
        if _failed:
            print("\ndovecot %s: kept %s (dovecot.log)" % (name, d.root), file=sys.stderr)


# ---------------------------------------------------------------------------
# popgate processes, logs and config


class OpPopgate(harness.Popgate):
    """A popgate whose whole config comes from build(pg) (called with pg.port set)."""

    def __init__(self, build, **kw):
        super().__init__(UP["a"].port, **kw)
        self.build = build
        self.admin_port = harness.free_port()

    def config(self):
        return self.build(self)

    def write_config(self, cfg):
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            if isinstance(cfg, str):
                f.write(cfg)
            else:
                json.dump(cfg, f, indent=2)
        os.replace(tmp, self.config_path)


def upstreams(**b_extra):
    ups = {name: {"host": "127.0.0.1", "port": UP[name].port, "tls": "none"}
           for name in ("a", "b")}
    ups["b"].update(b_extra)
    return ups


def base_config(pg, routes, **top):
    cfg = {
        "listeners": [{"address": "127.0.0.1:%d" % pg.port}],
        "upstreams": upstreams(),
        "routes": routes,
        "state": {"dir": pg.state_dir},
        "workers": 1,
        "shutdown_timeout": 3,
    }
    cfg.update(top)
    return cfg


LOG_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)')


def log_fields(line):
    """{key: value} of one key=value log line; quoted values unquoted (escapes kept)."""
    out = {}
    for k, v in LOG_PAIR.findall(line):
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = v[1:-1]
        out.setdefault(k, v)
    return out


def log_events(pg, event, mark=0, **match):
    """Log lines (as field dicts) after byte offset mark with event= and every match."""
    text = pg.log_bytes()[mark:].decode("utf-8", "replace")
    out = []
    for line in text.splitlines():
        f = log_fields(line)
        if f.get("event") == event and all(f.get(k) == v for k, v in match.items()):
            out.append(f)
    return out


def wait_events(pg, event, mark=0, count=1, timeout=10.0, **match):
    deadline = time.monotonic() + timeout
    while True:
        found = log_events(pg, event, mark, **match)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def wait_dovecot_log(dovecot, needle, mark=0, timeout=5.0):
    """The lines of Dovecot's log after offset mark that hold needle (its log process
    writes a moment after the event)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in dovecot.log_text()[mark:].splitlines() if needle in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def wait_children(pid, n, timeout=10.0, exclude=()):
    deadline = time.monotonic() + timeout
    while True:
        kids = [k for k in harness.child_pids(pid) if k not in exclude]
        if len(kids) == n or time.monotonic() > deadline:
            return kids
        time.sleep(0.05)


def proc_ids(pid, key):
    """The four ids of the Uid: or Gid: line of /proc/PID/status."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return [int(x) for x in line.split()[1:5]]
    return None


def read_until_closed(sock, timeout=5.0):
    """(bytes received, True if the peer closed) within timeout."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                return bytes(data), True
            data += chunk
    except socket.timeout:
        return bytes(data), False
    except OSError:
        return bytes(data), True
    return bytes(data), False


def proxy_v1(src, sport, dport, dst="127.0.0.1"):
    return ("PROXY TCP4 %s %s %d %d\r\n" % (src, dst, sport, dport)).encode()


def proxy_v2(src, sport, dport, dst="127.0.0.1"):
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body))
            + body)


def http_get(port, path, timeout=5.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read().decode("utf-8", "replace")
    finally:
        conn.close()


METRIC_LINE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)(?:\s+\d+)?')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """A parsed Prometheus text exposition."""

    def __init__(self, text):
        self.text = text
        self.types = {}
        self.samples = {}
        self.errors = []
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("# TYPE "):
                parts = line.split()
                if len(parts) != 4:
                    self.errors.append("bad TYPE line %r" % line)
                else:
                    self.types[parts[2]] = parts[3]
                continue
            if line.startswith("#"):
                continue
            m = METRIC_LINE.fullmatch(line)
            if not m:
                self.errors.append("unparsable line %r" % line)
                continue
            labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
            try:
                value = float(m.group(3))
            except ValueError:
                self.errors.append("bad value in %r" % line)
                continue
            self.samples[(m.group(1), labels)] = value
        for name, _labels in self.samples:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in self.types and base not in self.types:
                self.errors.append("sample %s has no # TYPE line" % name)

    def get(self, name, **labels):
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def buckets(self, name):
        """[(le as float, count)] of a histogram, in the order of le."""
        out = []
        for (n, labels), v in self.samples.items():
            if n == name + "_bucket":
                le = dict(labels)["le"]
                out.append((float("inf") if le == "+Inf" else float(le), v))
        return sorted(out)


# ---------------------------------------------------------------------------
# the test base


class OperatorCase(harness.NoticesFailure, unittest.TestCase):
    """Popgates started by a class stop with it; their sanitizer reports fail it."""

    maxDiff = 4000

    @classmethod
    def start_popgate(cls, build, prepare=None):
        pg = OpPopgate(build)
        cls.addClassCleanup(cls._stop_popgate, pg)
        if prepare is not None:
            prepare(pg)
        pg.start()
        return pg

    @classmethod
    def _stop_popgate(cls, pg):
        pg.stop()
        report = pg.sanitizer_report()
        if report or cls.__name__ in _failed:
            print("\n%s: popgate log kept in %s" % (cls.__name__, pg.log_path), file=sys.stderr)
        else:
            pg.cleanup()
        if report:
            raise AssertionError("sanitizer report in popgate's log %s:\n%s"
                                 % (pg.log_path, report))

    def test_failed(self):
        _failed.append(type(self).__name__)

    def assert_running(self, pg):
        if not pg.is_running():
            report = pg.sanitizer_report() or pg.log_text()[-3000:]
            self.fail("popgate is no longer running (exit status %s); log %s:\n%s"
                      % (pg.proc and pg.proc.returncode, pg.log_path, report))

    def assert_ok(self, reply, what):
        self.assertTrue(reply.startswith(b"+OK"), "%s: expected +OK, got %r" % (what, reply))

    def raw(self, port, timeout=30, rcvbuf=None):
        c = Pop3Raw("127.0.0.1", port, timeout=timeout, rcvbuf=rcvbuf)
        self.addCleanup(c.close)
        self.assertTrue(c.greeting.startswith(b"+OK"), "greeting: %r" % c.greeting)
        return c

    def login(self, port, user, password=PASSWORD, rcvbuf=None):
        c = self.raw(port, rcvbuf=rcvbuf)
        r = c.login(user, password)
        self.assertTrue(r.startswith(b"+OK"), "PASS for %s answered %r" % (user, r))
        return c

    def served_by(self, pg, user, port=None):
        """Logs in as user, RETRs message 1 and QUITs; returns the X-Upstream of the
        message and checks popgate's session_end line names the same upstream."""
        mark = len(pg.log_bytes())
        c = self.login(port or pg.port, user)
        self.assert_ok(c.cmd("RETR 1"), "RETR 1 as %s" % user)
        data = c.read_multi()
        self.assert_ok(c.cmd("QUIT"), "QUIT as %s" % user)
        m = re.search(rb"^X-Upstream: (\w+)\r$", data, re.M)
        self.assertIsNotNone(m, "message 1 of %s has no X-Upstream header: %r"
                             % (user, data[:300]))
        tag = m.group(1).decode()
        ends = wait_events(pg, "session_end", mark, user=user)
        self.assertTrue(ends, "no event=session_end line for user=%s; log tail:\n%s"
                        % (user, pg.log_text()[-2000:]))
        self.assertEqual(ends[-1].get("upstream"), tag.lower(),
                         "session_end of %s names upstream=%s but the mail came from %s"
                         % (user, ends[-1].get("upstream"), tag))
        self.assertEqual(ends[-1].get("result"), "quit", "session_end of %s: %r"
                         % (user, ends[-1]))
        return tag


# ---------------------------------------------------------------------------
# routing


ROUTES = [
    {"user": "vip@example.com", "upstream": "b"},
    {"domain": "example.com", "upstream": "a"},
    {"domain": "example.net", "upstream": "b"},
    {"domain": "example.org", "upstream": "b", "login": "%n", "lowercase": True},
    {"match": "*@*.example.org", "upstream": "a"},
    {"match": "*@mail.*", "upstream": "b"},
    {"match": "*@example.*", "upstream": "a"},
    {"default": True, "upstream": "b"},
]
USER_MAP = (
    "# user upstream [login]\n"
    "vip@example.com a\n"
    "plain@example.com b\n"
    "mapped@example.com b mapuser\n"
)


class RoutingTests(OperatorCase):
    """Each kind of route sends its users to the right upstream, most specific first."""

    @classmethod
    def setUpClass(cls):
        def prepare(pg):
            pg.user_map_path = os.path.join(pg.root, "users.map")
            with open(pg.user_map_path, "w") as f:
                f.write(USER_MAP)

        cls.pg = cls.start_popgate(
            lambda pg: base_config(pg, ROUTES, user_map=pg.user_map_path), prepare)

    def tearDown(self):
        self.assert_running(self.pg)

    def expect(self, user, upstream, why):
        got = self.served_by(self.pg, user)
        self.assertEqual(got, upstream, "%s (%s) was served by upstream %s, expected %s"
                         % (user, why, got, upstream))

    def test_user_route_beats_user_map_and_domain(self):
        self.expect("vip@example.com", "B", "user route b; user_map a; domain example.com a")

    def test_user_map_beats_domain(self):
        self.expect("plain@example.com", "B", "user_map b; domain example.com a")

    def test_user_map_login(self):
        mark = len(UP["b"].log_text())
        self.expect("mapped@example.com", "B", "user_map line 'mapped@example.com b mapuser'")
        self.assertTrue(wait_dovecot_log(UP["b"], "Login: user=<mapuser>,", mark),
                        "Dovecot b logged no login of 'mapuser'")

    def test_domain_route(self):
        self.expect("someone@example.com", "A", "domain example.com a")

    def test_domain_beats_glob(self):
        self.expect("dora@example.net", "B", "domain example.net b; glob *@example.* a")

    def test_first_matching_glob_in_file_order(self):
        self.expect("hal@mail.example.org", "A", "globs *@*.example.org a, then *@mail.* b")
        self.expect("ivy@mail.example.info", "B", "only glob *@mail.* b")
        self.expect("gus@example.info", "A", "only glob *@example.* a")

    def test_default_route(self):
        self.expect("nobody-special", "B", "no user, map, domain or glob: default b")

    def test_login_template_and_lowercase_reach_upstream(self):
        # Dovecot knows "alice" only (and does not lower-case names itself here)
        mark_b = len(UP["b"].log_text())
        mark = len(self.pg.log_bytes())
        self.expect("Alice@Example.ORG", "B", 'domain example.org b, login "%n", lowercase')
        self.assertTrue(wait_dovecot_log(UP["b"], "Login: user=<alice>,", mark_b),
                        "Dovecot b logged no login of 'alice':\n%s" % UP["b"].log_text()[mark_b:])
        routed = log_events(self.pg, "routed", mark, user="Alice@Example.ORG")
        self.assertTrue(routed, "no event=routed line for Alice@Example.ORG")
        self.assertEqual((routed[-1].get("source"), routed[-1].get("login")), ("domain", "alice"),
                         "event=routed: %r" % routed[-1])

    def test_no_route_is_auth_error(self):
        pg = self.start_popgate(
            lambda p: base_config(p, [{"domain": "example.com", "upstream": "a"}]))
        mark = len(pg.log_bytes())
        c = self.raw(pg.port)
        r_unrouted = c.login("stranger@nowhere.test", PASSWORD)
        self.assertTrue(r_unrouted.startswith(b"-ERR [AUTH]"),
                        "PASS for a user no route matches: expected -ERR [AUTH], got %r"
                        % r_unrouted)
        r_badpass = c.login("someone@example.com", "wrong-password")
        self.assertEqual(r_unrouted, r_badpass,
                         "an unrouted user must get the same answer as a wrong password")
        self.assert_ok(c.login("someone@example.com", PASSWORD), "routed user afterwards")
        self.assert_ok(c.cmd("QUIT"), "QUIT")
        lines = wait_events(pg, "login_failed", mark, user="stranger@nowhere.test")
        self.assertTrue(lines, "no event=login_failed line for the unrouted user; log:\n%s"
                        % pg.log_text()[-2000:])
        self.assertIn("no route", lines[0].get("reason", ""), "login_failed: %r" % lines[0])
        self.assertNotIn(PASSWORD, pg.log_text(), "a password reached the log")


# ---------------------------------------------------------------------------
# reload


class ReloadTests(OperatorCase):
    """SIGHUP: a new config for new sessions, running ones finish on theirs."""

    @classmethod
    def setUpClass(cls):
        cls.pg = cls.start_popgate(cls.config_for)

    @staticmethod
    def config_for(pg, move_to="a", extra_listeners=()):
        cfg = base_config(pg, [{"domain": "move.test", "upstream": move_to},
                               {"default": True, "upstream": "a"}],
                          admin={"address": "127.0.0.1:%d" % pg.admin_port})
        for port in extra_listeners:
            cfg["listeners"].append({"address": "127.0.0.1:%d" % port})
        return cfg

    def setUp(self):
        # every test starts from the base config, whatever the one before left
        self.reload(self.config_for(self.pg))

    def tearDown(self):
        self.assert_running(self.pg)

    def reload(self, cfg, expect_ok=True):
        """Writes cfg (a dict, or text) and sends SIGHUP; waits for the outcome. After a
        good reload, waits for the new workers and for the old ones to stop listening."""
        pg = self.pg
        # workers still draining from an earlier reload (idle: they go within
        # shutdown_timeout) would not announce their stop again
        old = wait_children(pg.pid, 1, timeout=10)
        self.assertEqual(len(old), 1, "workers before the reload: %s" % old)
        mark = len(pg.log_bytes())
        pg.write_config(cfg)
        os.kill(pg.pid, signal.SIGHUP)
        deadline = time.monotonic() + 15
        ok = failed = []
        while time.monotonic() < deadline:
            ok = log_events(pg, "reloaded", mark)
            failed = log_events(pg, "reload_failed", mark)
            if ok or failed:
                break
            time.sleep(0.05)
        self.assertTrue(ok or failed, "no event=reloaded or reload_failed within 15 s of "
                        "SIGHUP; log:\n%s" % pg.log_text()[-2000:])
        if expect_ok:
            self.assertTrue(ok, "reload of a valid config failed; log:\n%s"
                            % pg.log_bytes()[mark:].decode(errors="replace")[-3000:])
            n = cfg["workers"]
            started = wait_events(pg, "worker_started", mark, count=n)
            self.assertGreaterEqual(len(started), n, "new workers did not start")
            # each old worker has stopped listening: it said so, or it is gone (one
            # forked a moment ago may die of SIGTERM before it serves anything)
            deadline = time.monotonic() + 10
            while True:
                alive = [p for p in old if p in harness.child_pids(pg.pid)]
                stopping = log_events(pg, "worker_stopping", mark)
                if len(stopping) >= len(alive) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.assertGreaterEqual(len(stopping), len(alive),
                                    "old workers %s did not begin to stop" % alive)
        else:
            self.assertTrue(failed and not ok, "a broken config was not refused; log:\n%s"
                            % pg.log_bytes()[mark:].decode(errors="replace")[-3000:])
        return mark, old

    def metrics(self):
        status, _ctype, body = http_get(self.pg.admin_port, "/metrics")
        self.assertEqual(status, 200, "GET /metrics: %s %r" % (status, body[:200]))
        m = Metrics(body)
        self.assertEqual(m.errors, [], "malformed /metrics")
        return m

    def test_sighup_moves_domain_while_retr_runs(self):
        pg = self.pg
        self.assertEqual(self.served_by(pg, "new@move.test"), "A", "before the reload")
        with UP["a"].imap("big@move.test") as im:
            uid = im.uids()[0]
            expected = dot_stuff(im.body(uid))
        c = self.login(pg.port, "big@move.test", rcvbuf=16384)
        self.assert_ok(c.cmd("RETR 1"), "RETR 1 of the big message")
        got = bytearray(c.buf)
        c.buf.clear()
        while len(got) < 256 * 1024:
            chunk = c.sock.recv(16384)
            self.assertTrue(chunk, "popgate closed the connection after %d bytes" % len(got))
            got += chunk
            time.sleep(0.001)
        self.assertLess(len(got), len(expected) // 2, "the RETR went too fast to test")

        mark, old_workers = self.reload(self.config_for(pg, move_to="b"))
        self.assertTrue(set(old_workers) & set(harness.child_pids(pg.pid)),
                        "the old worker with the running RETR is gone")
        self.assertEqual(self.served_by(pg, "new@move.test"), "B",
                         "a new session after the reload moving move.test to b")

        # the RETR started on the old config goes on, from upstream a
        c.sock.settimeout(30)
        while len(got) < len(expected):
            chunk = c.sock.recv(1 << 16)
            if not chunk:
                break
            got += chunk
        self.assertEqual(len(got), len(expected),
                         "the RETR running across the reload: got %d bytes, expected %d"
                         % (len(got), len(expected)))
        got = bytes(got)
        i = first_difference(got, expected)
        self.assertTrue(got == expected,
                        "the RETR running across the reload differs from upstream a's message "
                        "at offset %d: got %r, expected %r"
                        % (i, got[i:i + 40], expected[i:i + 40]))
        self.assert_ok(c.cmd("QUIT"), "QUIT after the RETR")
        ends = wait_events(pg, "session_end", mark, user="big@move.test")
        self.assertTrue(ends and ends[-1].get("upstream") == "a",
                        "session_end of the RETR across the reload: %r" % ends)
        left = wait_children(pg.pid, 1)
        self.assertFalse(set(old_workers) & set(left),
                         "old workers %s still run after their last session ended" % old_workers)

    def test_broken_config_keeps_the_old_one(self):
        pg = self.pg
        before = self.metrics()
        failed0 = before.get("popgate_config_reloads_total", result="failed")
        ok0 = before.get("popgate_config_reloads_total", result="ok")
        self.assertIsNotNone(failed0, "no popgate_config_reloads_total{result=\"failed\"}")
        workers0 = harness.child_pids(pg.pid)
        broken = json.dumps(self.config_for(pg, move_to="b"), indent=2)
        broken = broken.replace('"workers": 1,', '"workers": 1')  # a JSON syntax error
        mark, _ = self.reload(broken, expect_ok=False)
        errors = log_events(pg, "config_error", mark)
        self.assertTrue(errors, "no event=config_error line for the broken file")
        self.assertTrue(any(re.search(r":\d+:\d+: error", e.get("detail", "")) for e in errors),
                        "config_error lines name no line:column: %r" % errors)
        self.assertEqual(harness.child_pids(pg.pid), workers0, "workers changed on a refused reload")
        self.assertEqual(self.served_by(pg, "new@move.test"), "A",
                         "after a refused reload the old config (move.test on a) serves")
        after = self.metrics()
        self.assertEqual(after.get("popgate_config_reloads_total", result="failed"), failed0 + 1)
        self.assertEqual(after.get("popgate_config_reloads_total", result="ok"), ok0)
        # and a good file afterwards is taken
        self.reload(self.config_for(pg, move_to="b"))
        self.assertEqual(self.served_by(pg, "new@move.test"), "B", "after a good reload")

    def test_listener_added_and_removed(self):
        pg = self.pg
        port2 = harness.free_port()
        self.assertFalse(harness.port_accepts(port2), "port %d is busy" % port2)
        self.reload(self.config_for(pg, extra_listeners=[port2]))
        self.assertTrue(harness.wait_for_port(port2, timeout=5),
                        "listener 127.0.0.1:%d added on reload does not accept" % port2)
        self.assertEqual(self.served_by(pg, "new@move.test", port=port2), "A",
                         "session on the added listener")

        # one session per mailbox: the held one is another user's
        held = self.login(port2, "held@move.test")
        _mark, old_workers = self.reload(self.config_for(pg))
        self.assertEqual(self.served_by(pg, "new@move.test"), "A",
                         "the listener kept after the reload serves")
        r = held.cmd("STAT")
        self.assertTrue(re.match(rb"\+OK 1 \d+$", r),
                        "a session on the removed listener breaks at the reload: STAT %r" % r)
        self.assert_ok(held.cmd("RETR 1"), "RETR on the removed listener's running session")
        held.read_multi()
        self.assert_ok(held.cmd("QUIT"), "QUIT on the removed listener's running session")
        wait_children(pg.pid, 1, timeout=10)
        deadline = time.monotonic() + 10
        while harness.port_accepts(port2) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertFalse(harness.port_accepts(port2),
                         "listener 127.0.0.1:%d removed on reload still accepts after its "
                         "old worker's sessions ended (children now %s, old %s)"
                         % (port2, harness.child_pids(pg.pid), old_workers))


# ---------------------------------------------------------------------------
# shutdown


class ShutdownTests(OperatorCase):
    """SIGTERM: running sessions get shutdown_timeout seconds, then are closed."""

    def test_sigterm_during_retr(self):
        pg = self.start_popgate(lambda p: base_config(
            p, [{"default": True, "upstream": "a"}], shutdown_timeout=SHUTDOWN_TIMEOUT))
        user = "stop@example.com"
        with UP["a"].imap(user) as im:
            uids = im.uids()
            expected = dot_stuff(im.body(uids[0]))
        self.assertEqual(len(uids), 2)
        c = self.login(pg.port, user, rcvbuf=16384)
        self.assert_ok(c.cmd("DELE 2"), "DELE 2")
        self.assert_ok(c.cmd("RETR 1"), "RETR 1 of the big message")
        got = bytearray(c.buf)
        c.buf.clear()
        while len(got) < 128 * 1024:
            chunk = c.sock.recv(16384)
            self.assertTrue(chunk, "closed after %d bytes, before SIGTERM" % len(got))
            got += chunk
        mark = len(pg.log_bytes())
        t0 = time.monotonic()
        pg.proc.send_signal(signal.SIGTERM)

        # read on slowly, well past shutdown_timeout: about 1.6 MB/s for 12 MB
        exited_at = None
        closed = False
        c.sock.settimeout(1.0)
        while time.monotonic() - t0 < SHUTDOWN_TIMEOUT + 20:
            if exited_at is None and pg.proc.poll() is not None:
                exited_at = time.monotonic()
            try:
                chunk = c.sock.recv(16384)
            except socket.timeout:
                continue  # no QUIT is sent: popgate must close it, complete or not
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
            if exited_at is None:
                time.sleep(0.01)  # slow until popgate is gone, then drain what is in flight
        self.assertTrue(closed, "the session was not closed %d s after SIGTERM "
                        "(shutdown_timeout %d)" % (SHUTDOWN_TIMEOUT + 20, SHUTDOWN_TIMEOUT))
        got = bytes(got)
        if got != expected:
            i = first_difference(got, expected)
            self.assertEqual(i, len(got),
                             "after SIGTERM the client got bytes that are not the message: "
                             "at offset %d got %r, expected %r"
                             % (i, got[i:i + 40], expected[i:i + 40]))
            # a strict prefix, closed: a client cannot take it for a whole message
            self.assertFalse(got.endswith(b"\r\n.\r\n"),
                             "a truncated message ended with the terminating '.'")

        try:
            pg.proc.wait(timeout=max(0.1, SHUTDOWN_TIMEOUT + 5 - (time.monotonic() - t0)))
        except Exception:
            pass
        if exited_at is None and pg.proc.poll() is not None:
            exited_at = time.monotonic()
        self.assertIsNotNone(exited_at, "the master still runs %d s after SIGTERM "
                             "(shutdown_timeout %d)" % (SHUTDOWN_TIMEOUT + 5, SHUTDOWN_TIMEOUT))
        self.assertLessEqual(exited_at - t0, SHUTDOWN_TIMEOUT + 5)
        self.assertEqual(pg.proc.returncode, 0, "master exit status after SIGTERM")
        ends = log_events(pg, "session_end", mark, user=user)
        self.assertTrue(ends, "no event=session_end for the session cut by the shutdown")
        if got != expected:
            self.assertEqual(ends[-1].get("result"), "shutdown", "session_end: %r" % ends[-1])

        with UP["a"].imap(user) as im:
            self.assertEqual(im.uids(), uids, "messages changed without QUIT")
            flags = im.flags()
        self.assertNotIn("\\Deleted", flags.get(uids[1], set()),
                         "message 2, DELE'd without QUIT, is flagged \\Deleted")


# ---------------------------------------------------------------------------
# workers


class WorkerTests(OperatorCase):
    """"workers" processes under "user"; a killed one is replaced."""

    WORKERS = 2

    @classmethod
    def setUpClass(cls):
        cls.uid, cls.gid = harness.ensure_system_user()
        cls.user_name = pwd.getpwuid(cls.uid).pw_name

        def prepare(pg):
            # the workers reach only their state folder once they are the test user
            os.makedirs(pg.state_dir, exist_ok=True)
            os.chmod(pg.root, 0o711)
            os.chown(pg.state_dir, cls.uid, cls.gid)

        top = {"workers": cls.WORKERS}
        if os.geteuid() == 0:
            top["user"] = cls.user_name
        cls.pg = cls.start_popgate(
            lambda pg: base_config(pg, [{"default": True, "upstream": "a"}], **top), prepare)

    def tearDown(self):
        self.assert_running(self.pg)

    def test_workers_count_and_user(self):
        if os.geteuid() != 0:
            self.skipTest("privilege drop needs root")
        kids = wait_children(self.pg.pid, self.WORKERS)
        self.assertEqual(len(kids), self.WORKERS, "worker processes of the master: %s" % kids)
        for pid in kids:
            self.assertEqual(proc_ids(pid, "Uid"), [self.uid] * 4,
                             "uids of worker %d (expected %s's %d)" % (pid, self.user_name,
                                                                      self.uid))
            self.assertEqual(proc_ids(pid, "Gid"), [self.gid] * 4, "gids of worker %d" % pid)
        for _ in range(4):  # sessions spread over the workers
            self.assertEqual(self.served_by(self.pg, "w@example.com"), "A")

    def test_killed_worker_is_replaced(self):
        pg = self.pg
        kids = wait_children(pg.pid, self.WORKERS)
        self.assertEqual(len(kids), self.WORKERS)
        mark = len(pg.log_bytes())
        os.kill(kids[0], signal.SIGKILL)
        new = wait_children(pg.pid, self.WORKERS, exclude=(kids[0],), timeout=10)
        deadline = time.monotonic() + 10
        while (len(new) != self.WORKERS or kids[0] in new) and time.monotonic() < deadline:
            time.sleep(0.05)
            new = harness.child_pids(pg.pid)
        self.assertNotIn(kids[0], new, "the killed worker is still there")
        self.assertEqual(len(new), self.WORKERS,
                         "workers after killing %d: %s (before %s)" % (kids[0], new, kids))
        exited = log_events(pg, "worker_exited", mark, pid=str(kids[0]))
        self.assertTrue(exited, "no event=worker_exited for pid %d" % kids[0])
        self.assertEqual(exited[0].get("signal"), "9", "worker_exited: %r" % exited[0])
        for _ in range(4):
            self.assertEqual(self.served_by(pg, "w@example.com"), "A")


# ---------------------------------------------------------------------------
# PROXY protocol and IMAP ID


class ProxyProtocolTests(OperatorCase):
    """Listeners behind a load balancer; the client address goes on to Dovecot."""

    @classmethod
    def setUpClass(cls):
        cls.trusted_port = harness.free_port()
        cls.untrusted_port = harness.free_port()

        def build(pg):
            cfg = base_config(pg, [{"default": True, "upstream": "b"}])
            cfg["upstreams"] = upstreams(send_client_ip=True)
            # the proxied clients are not on loopback: allow their plaintext logins
            cfg["listeners"] += [
                {"address": "127.0.0.1:%d" % cls.trusted_port, "proxy_protocol": True,
                 "trusted_proxies": ["127.0.0.1/32"], "plaintext_auth": "allow"},
                {"address": "127.0.0.1:%d" % cls.untrusted_port, "proxy_protocol": True,
                 "trusted_proxies": ["192.0.2.0/24", "::1/128"], "plaintext_auth": "allow"},
            ]
            return cfg

        cls.pg = cls.start_popgate(build)
        for port in (cls.trusted_port, cls.untrusted_port):
            if not harness.wait_for_port(port, timeout=10):
                raise RuntimeError("proxy listener %d does not accept" % port)

    def tearDown(self):
        self.assert_running(self.pg)

    def connect(self, port):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(s.close)
        return s

    def proxied_session(self, user, header_parts):
        """Sends the header (in parts, with pauses between them), then logs in as user,
        STATs and QUITs over the same connection."""
        mark = len(self.pg.log_bytes())
        s = self.connect(self.trusted_port)
        for i, part in enumerate(header_parts):
            if i:
                time.sleep(0.2)
            s.sendall(part)
        c = Pop3Raw.__new__(Pop3Raw)
        c.sock, c.buf, c.timeout, c.closed_by_peer = s, bytearray(), 10, False
        try:
            greeting = c.read_line()
        except (OSError, harness.Pop3Error) as e:
            self.fail("no greeting after a PROXY header from a trusted source: %s; log:\n%s"
                      % (e, self.pg.log_text()[-2000:]))
        self.assertTrue(greeting.startswith(b"+OK"), "greeting: %r" % greeting)
        self.assert_ok(c.login(user, PASSWORD), "login as %s behind PROXY" % user)
        self.assert_ok(c.cmd("STAT"), "STAT")
        self.assert_ok(c.cmd("QUIT"), "QUIT")
        ends = wait_events(self.pg, "session_end", mark, user=user)
        self.assertTrue(ends, "no event=session_end for %s; log:\n%s"
                        % (user, self.pg.log_text()[-2000:]))
        return ends[-1]

    def dovecot_login_line(self, user):
        lines = wait_dovecot_log(UP["b"], "imap-login: Info: Login: user=<%s>," % user)
        return lines[-1] if lines else None

    def test_v1_header_from_trusted_source(self):
        end = self.proxied_session("ppv1", [proxy_v1("203.0.113.7", 40000, self.trusted_port)])
        self.assertEqual(end.get("client"), "203.0.113.7:40000", "session_end: %r" % end)

    def test_v2_header_from_trusted_source(self):
        end = self.proxied_session("ppv2", [proxy_v2("203.0.113.9", 40009, self.trusted_port)])
        self.assertEqual(end.get("client"), "203.0.113.9:40009", "session_end: %r" % end)

    def test_header_in_pieces(self):
        h = proxy_v2("198.51.100.4", 40004, self.trusted_port)
        end = self.proxied_session("pppieces", [h[:7], h[7:20], h[20:]])
        self.assertEqual(end.get("client"), "198.51.100.4:40004", "session_end: %r" % end)

    def test_untrusted_source_is_closed_without_greeting(self):
        mark = len(self.pg.log_bytes())
        s = self.connect(self.untrusted_port)
        s.sendall(proxy_v1("203.0.113.7", 40000, self.untrusted_port))
        data, closed = read_until_closed(s, timeout=5)
        self.assertEqual(data, b"", "an untrusted source got %r" % data[:200])
        self.assertTrue(closed, "connection from an untrusted source not closed within 5 s")
        self.assertTrue(wait_events(self.pg, "proxy_refused", mark),
                        "no event=proxy_refused line")

    def test_connection_without_header_is_closed_without_greeting(self):
        mark = len(self.pg.log_bytes())
        s = self.connect(self.trusted_port)
        data, closed = read_until_closed(s, timeout=0.5)
        self.assertEqual((data, closed), (b"", False),
                         "before any header popgate sent %r (closed: %s)" % (data, closed))
        s.sendall(b"USER ppv1\r\n")
        data, closed = read_until_closed(s, timeout=5)
        self.assertEqual(data, b"", "a connection without a PROXY header got %r" % data[:200])
        self.assertTrue(closed, "a connection without a PROXY header was not closed in 5 s")
        self.assertTrue(wait_events(self.pg, "proxy_refused", mark),
                        "no event=proxy_refused line")

    def test_id_carries_client_address_to_dovecot(self):
        self.proxied_session("ppid", [proxy_v1("203.0.113.7", 40000, self.trusted_port)])
        line = self.dovecot_login_line("ppid")
        self.assertIsNotNone(line, "Dovecot b logged no login of ppid:\n%s"
                             % UP["b"].log_text()[-2000:])
        self.assertIn("rip=203.0.113.7,", line, "Dovecot's login line: %s" % line)
        self.assertIn("rport=40000,", line, "Dovecot's login line: %s" % line)
        # without PROXY the address is the TCP peer's, port included
        c = self.raw(self.pg.port)
        port = c.sock.getsockname()[1]
        self.assert_ok(c.login("ppplain", PASSWORD), "login ppplain")
        self.assert_ok(c.cmd("QUIT"), "QUIT")
        line = self.dovecot_login_line("ppplain")
        self.assertIsNotNone(line, "Dovecot b logged no login of ppplain")
        self.assertIn("rip=127.0.0.1, rport=%d," % port, line,
                      "Dovecot's login line for a direct client on port %d: %s" % (port, line))


# ---------------------------------------------------------------------------
# metrics


class MetricsTests(OperatorCase):
    """The admin listener: Prometheus text that adds up over the workers, and /healthz."""

    @classmethod
    def setUpClass(cls):
        def build(pg):
            cfg = base_config(pg, [{"user": "down@example.com", "upstream": "down"},
                                   {"default": True, "upstream": "a"}],
                              workers=2, admin={"address": "127.0.0.1:%d" % pg.admin_port})
            cfg["upstreams"]["down"] = {"host": "127.0.0.1", "port": cls.down_port,
                                        "tls": "none"}
            return cfg

        cls.down_port = harness.free_port()  # nothing listens there
        cls.started = time.time()
        cls.pg = cls.start_popgate(build)
        if not harness.wait_for_port(cls.pg.admin_port, timeout=10):
            raise RuntimeError("admin listener does not accept")

    def tearDown(self):
        self.assert_running(self.pg)

    def scrape(self):
        status, ctype, body = http_get(self.pg.admin_port, "/metrics")
        self.assertEqual(status, 200, "GET /metrics: %s %r" % (status, body[:200]))
        self.assertTrue(ctype.startswith("text/plain"), "Content-Type %r" % ctype)
        m = Metrics(body)
        self.assertEqual(m.errors, [], "malformed /metrics:\n%s" % body)
        return m

    def test_counters_after_sessions(self):
        pg = self.pg
        before = self.scrape()
        names = ["popgate_sessions_active", "popgate_retrieved_bytes_total",
                 "popgate_retrieved_messages_total", "popgate_deleted_messages_total",
                 "popgate_login_duration_seconds_count", "popgate_workers",
                 "popgate_start_time_seconds"]
        for name in names:
            self.assertIsNotNone(before.get(name), "no %s in /metrics" % name)

        def val(m, name, **labels):
            v = m.get(name, **labels)
            self.assertIsNotNone(v, "no %s%r in /metrics:\n%s" % (name, labels, m.text))
            return v

        with UP["a"].imap("m@example.com") as im:
            size = im.sizes()[im.uids()[0]]
        # a good login with a RETR, a wrong password, an upstream that is down
        c = self.login(pg.port, "m@example.com")
        self.assert_ok(c.cmd("RETR 1"), "RETR 1")
        c.read_multi()
        self.assert_ok(c.cmd("QUIT"), "QUIT")
        c = self.raw(pg.port)
        r = c.login("m@example.com", "wrong-password")
        self.assertTrue(r.startswith(b"-ERR [AUTH]"), "wrong password: %r" % r)
        self.assert_ok(c.cmd("QUIT"), "QUIT")
        c = self.raw(pg.port)
        r = c.login("down@example.com", PASSWORD)
        self.assertTrue(r.startswith(b"-ERR [SYS/TEMP]"), "upstream down: %r" % r)
        self.assert_ok(c.cmd("QUIT"), "QUIT")

        deadline = time.monotonic() + 5
        while True:
            after = self.scrape()
            done = (val(after, "popgate_sessions_total", result="quit")
                    - val(before, "popgate_sessions_total", result="quit")) >= 3
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.1)

        def delta(name, **labels):
            return val(after, name, **labels) - val(before, name, **labels)

        self.assertEqual(delta("popgate_sessions_total", result="quit"), 3,
                         "sessions ended by QUIT")
        self.assertEqual(delta("popgate_logins_total", result="ok"), 1, "logins ok")
        self.assertEqual(delta("popgate_logins_total", result="auth_failed"), 1,
                         "logins auth_failed")
        self.assertEqual(delta("popgate_logins_total", result="temp_failed"), 1,
                         "logins temp_failed")
        self.assertEqual(delta("popgate_upstream_errors_total", **{"class": "connect"}), 1,
                         "upstream errors of class connect")
        self.assertEqual(delta("popgate_retrieved_messages_total"), 1, "messages retrieved")
        self.assertGreaterEqual(delta("popgate_retrieved_bytes_total"), size,
                                "bytes retrieved for a %d-byte message" % size)
        self.assertLess(delta("popgate_retrieved_bytes_total"), size + 4096)
        self.assertEqual(delta("popgate_deleted_messages_total"), 0, "messages deleted")
        self.assertEqual(val(after, "popgate_sessions_active"), 0, "sessions active")
        self.assertEqual(delta("popgate_login_duration_seconds_count"), 3,
                         "login latency observations (three logins answered)")
        buckets = after.buckets("popgate_login_duration_seconds")
        self.assertTrue(buckets and buckets[-1][0] == float("inf"), "no +Inf bucket")
        counts = [v for _le, v in buckets]
        self.assertEqual(counts, sorted(counts), "histogram buckets not cumulative")
        self.assertEqual(counts[-1], val(after, "popgate_login_duration_seconds_count"))
        self.assertIsNotNone(after.get("popgate_login_duration_seconds_sum"))
        self.assertEqual(val(after, "popgate_workers"), 2, "popgate_workers")
        start = val(after, "popgate_start_time_seconds")
        self.assertTrue(self.started - 5 <= start <= time.time() + 1,
                        "popgate_start_time_seconds %s, started about %s" % (start, self.started))
        for result in ("ok", "failed"):
            self.assertIsNotNone(after.get("popgate_config_reloads_total", result=result))
        self.assertEqual(after.types.get("popgate_login_duration_seconds"), "histogram")
        self.assertEqual(after.types.get("popgate_logins_total"), "counter")
        self.assertEqual(after.types.get("popgate_sessions_active"), "gauge")

    def test_healthz(self):
        status, _ctype, body = http_get(self.pg.admin_port, "/healthz")
        self.assertEqual((status, body.strip()), (200, "ok"), "GET /healthz")


if __name__ == "__main__":
    unittest.main()
