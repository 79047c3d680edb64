#!/usr/bin/env python3
"""Integration tests of issue 6: limits.max_connections and limits.max_connections_per_ip.

Every popgate here runs two workers (one for the reload test), so each limit is checked
across processes: the connections of a test are spread over both workers (checked through
/proc), a SIGKILLed worker's connections are released once the master has restarted it,
and after SIGHUP the draining generation's sessions still count. Behind a PROXY header the
real client's address is counted, not the balancer's.

Run: python3 tests/integration/test_conn_limits.py -v
Env: POPGATE_BIN  the popgate under test (default build/asan/popgate)
"""

import http.client
import json
import os
import signal
import socket
import ssl
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import tlsutil  # noqa: E402
from harness import Pop3Raw  # noqa: E402
from test_operator import proxy_v1, read_until_closed  # noqa: E402
from test_operator import wait_events as operator_wait_events  # noqa: E402

USER, PASSWORD = "limited", "limit-secret-3"
REFUSED = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
# idle clients in AUTHORIZATION must outlive a test, and a draining worker must keep them
SLOW = {"auth_timeout": 300}
SHUTDOWN_TIMEOUT = 60
DRAWS = 20

DOVECOT = None


def setUpModule():
    global DOVECOT
    DOVECOT = harness.Dovecot()
    DOVECOT.add_user(USER, PASSWORD)
    DOVECOT.add_message(USER, b"From: a@example.org\nSubject: limits\n\nhello\n")
    DOVECOT.start()


def tearDownModule():
    if DOVECOT is not None:
        DOVECOT.stop()


# ---------------------------------------------------------------------------
# logs, metrics, sockets


def wait_events(pg, event, mark=0, count=1, timeout=15.0, **match):
    return operator_wait_events(pg, event, mark, count, timeout, **match)


def metric(port, name, **labels):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    want = name + ("{%s}" % ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
                   if labels else "")
    for line in body.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[1])
    return None


def read_line(sock, timeout=20.0):
    data = bytearray()
    deadline = time.monotonic() + timeout
    while b"\n" not in data and time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def socket_inodes(pid):
    """The inodes of the sockets pid holds."""
    held = set()
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                held.add(int(link[8:-1]))
    except OSError:
        pass
    return held


def accepted_by_port(port):
    """{client port: socket inode} of established connections whose local end is
    127.0.0.1:port (the server side)."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
            if state == "01" and local == "0100007F:%04X" % port:
                out[int(remote.split(":")[1], 16)] = inode
    return out


# ---------------------------------------------------------------------------
# the test base


class LimitCase(harness.NoticesFailure, unittest.TestCase):
    """One popgate per class, two workers by default; limits from the class."""

    WORKERS = 2
    LIMITS = {}

    @classmethod
    def extra_config(cls, pg):
        return {}

    @classmethod
    def setUpClass(cls):
        cls.admin_port = harness.free_port()
        extra = {"workers": cls.WORKERS, "shutdown_timeout": SHUTDOWN_TIMEOUT,
                 "admin": {"address": "127.0.0.1:%d" % cls.admin_port}}
        cls.pg = harness.Popgate(DOVECOT.port, limits=dict(SLOW, **cls.LIMITS), extra=extra)
        cls.pg.port = harness.free_port()
        extra.update(cls.extra_config(cls.pg))
        cls.pg.fixed_port = True
        cls.addClassCleanup(cls._stop_popgate)
        cls.pg.start()
        cls.wait_workers(cls.WORKERS)
        if not harness.wait_for_port(cls.admin_port, timeout=15):
            raise RuntimeError("admin listener does not accept")

    @classmethod
    def _stop_popgate(cls):
        cls.pg.stop()
        report = cls.pg.sanitizer_report()
        if report or getattr(cls, "_keep", False):
            print("\n%s: popgate log kept in %s" % (cls.__name__, cls.pg.log_path),
                  file=sys.stderr)
        else:
            cls.pg.cleanup()
        if report:
            raise AssertionError("sanitizer report in %s:\n%s" % (cls.pg.log_path, report))

    @classmethod
    def wait_workers(cls, n, exclude=(), timeout=20.0):
        deadline = time.monotonic() + timeout
        while True:
            kids = [k for k in harness.child_pids(cls.pg.pid) if k not in exclude]
            if len(kids) == n or time.monotonic() > deadline:
                return kids
            time.sleep(0.05)

    def test_failed(self):
        type(self)._keep = True

    def setUp(self):
        self.assertTrue(self.pg.is_running(), "popgate is not running")
        self.open = []

    def tearDown(self):
        # release everything this test held, so the next one starts from zero
        mark = len(self.pg.log_bytes())
        n = len(self.open)
        for s in self.open:
            s.close()
        if n:
            wait_events(self.pg, "session_end", mark, count=n)

    def connect(self, port=None, header=None):
        s = socket.create_connection(("127.0.0.1", port or self.pg.port), timeout=20)
        self.open.append(s)
        if header is not None:
            s.sendall(header)
        return s

    def admitted(self, port=None, header=None, what="connection"):
        s = self.connect(port, header)
        line = read_line(s)
        self.assertTrue(line.startswith(b"+OK"), "%s %d: expected a greeting, got %r; log:\n%s"
                        % (what, len(self.open), line, self.pg.log_text()[-2500:]))
        return s

    def refused(self, port=None, header=None, what="connection"):
        s = self.connect(port, header)
        data, closed = read_until_closed(s, timeout=10.0)
        self.assertEqual(data, REFUSED, "%s %d: expected the refusal, got %r"
                         % (what, len(self.open), data[:200]))
        self.assertTrue(closed, "%s %d: refused but not closed" % (what, len(self.open)))
        self.open.remove(s)
        s.close()
        return s

    def close_and_wait(self, s):
        """Closes one admitted client and waits until popgate has released it."""
        mark = len(self.pg.log_bytes())
        self.open.remove(s)
        s.close()
        ends = wait_events(self.pg, "session_end", mark)
        self.assertTrue(ends, "no session_end after a client closed")

    def workers_of(self, socks, port=None):
        """{worker pid: number of socks it serves}."""
        accepted = accepted_by_port(port or self.pg.port)
        out = {}
        for pid in harness.child_pids(self.pg.pid):
            held = socket_inodes(pid)
            out[pid] = sum(1 for s in socks if accepted.get(s.getsockname()[1]) in held)
        return out

    def spread_over_workers(self, n, port=None, header=None):
        """Opens n admitted connections that land on more than one worker (the workers
        race to accept on one socket; a one-sided draw is closed and drawn again)."""
        for _ in range(DRAWS):
            socks = [self.admitted(port, header) for _ in range(n)]
            spread = self.workers_of(socks, port)
            self.assertEqual(sum(spread.values()), n, "connections per worker: %r" % spread)
            if sum(1 for v in spread.values() if v) > 1:
                return socks, spread
            mark = len(self.pg.log_bytes())
            for s in socks:
                self.open.remove(s)
                s.close()
            wait_events(self.pg, "session_end", mark, count=n)
        self.fail("%d draws of %d connections all landed on one worker" % (DRAWS, n))

    def refusals(self, reason):
        return metric(self.admin_port, "popgate_connections_refused_total", reason=reason)


# ---------------------------------------------------------------------------
# the tests


class PerAddressTests(LimitCase):
    LIMITS = {"max_connections_per_ip": 4}

    def test_per_address_limit_over_two_workers(self):
        before = self.refusals("per_address")
        self.assertIsNotNone(before, "no popgate_connections_refused_total in /metrics")
        socks, spread = self.spread_over_workers(4)
        mark = len(self.pg.log_bytes())
        self.refused()
        lines = wait_events(self.pg, "connection_refused", mark)
        self.assertTrue(lines, "no event=connection_refused line")
        self.assertEqual(lines[0].get("reason"), "per-address limit", lines[0])
        self.assertEqual(lines[0].get("limit"), "4", lines[0])
        self.assertTrue(lines[0].get("client", "").startswith("127.0.0.1:"), lines[0])
        self.assertEqual(self.refusals("per_address"), before + 1)
        # one closes (on either worker): one more gets in, and works
        self.close_and_wait(socks[0])
        c = Pop3Raw.__new__(Pop3Raw)
        c.sock, c.buf, c.timeout, c.closed_by_peer = self.admitted(), bytearray(), 20, False
        self.assertTrue(c.login(USER, PASSWORD).startswith(b"+OK"), "login after a release")
        self.assertTrue(c.cmd("STAT").startswith(b"+OK 1 "), "STAT")
        self.refused(what="connection over the limit again")
        self.assertTrue(c.cmd("QUIT").startswith(b"+OK"), "QUIT")
        self.open.remove(c.sock)
        mark = len(self.pg.log_bytes())
        c.close()
        wait_events(self.pg, "session_end", mark)
        self.admitted(what="connection after a QUIT")
        self.refused(what="connection over the limit after a QUIT")
        self.assertEqual(self.refusals("per_address"), before + 3)
        self.assertEqual(self.refusals("total"), 0)


class TotalLimitTests(LimitCase):
    LIMITS = {"max_connections": 3, "max_connections_per_ip": 0}

    def test_total_limit_over_two_workers(self):
        socks, _ = self.spread_over_workers(3)
        mark = len(self.pg.log_bytes())
        self.refused()
        self.refused()
        lines = wait_events(self.pg, "connection_refused", mark, count=2)
        self.assertEqual(len(lines), 2, "event=connection_refused lines: %r" % lines)
        self.assertEqual(lines[0].get("reason"), "connection limit", lines[0])
        self.assertEqual(lines[0].get("limit"), "3", lines[0])
        self.assertEqual(self.refusals("total"), 2)
        self.close_and_wait(socks[1])
        self.admitted(what="connection after a release")
        self.refused(what="connection over the limit again")


class ProxyProtocolTests(LimitCase):
    LIMITS = {"max_connections_per_ip": 2}

    @classmethod
    def extra_config(cls, pg):
        cls.proxy_port = harness.free_port()
        return {"listeners": [
            {"address": "127.0.0.1:%d" % pg.port},
            {"address": "127.0.0.1:%d" % cls.proxy_port, "proxy_protocol": True,
             "trusted_proxies": ["127.0.0.1/32"], "plaintext_auth": "allow"},
        ]}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not harness.wait_for_port(cls.proxy_port, timeout=15):
            raise RuntimeError("the PROXY listener does not accept")

    def via_proxy(self, src, sport, admitted=True):
        header = proxy_v1(src, sport, self.proxy_port)
        what = "connection from %s through the proxy" % src
        if admitted:
            return self.admitted(self.proxy_port, header, what)
        return self.refused(self.proxy_port, header, what)

    def test_real_client_address_is_counted(self):
        before = self.refusals("per_address")
        a1 = self.via_proxy("203.0.113.7", 40001)
        self.via_proxy("203.0.113.7", 40002)
        mark = len(self.pg.log_bytes())
        self.via_proxy("203.0.113.7", 40003, admitted=False)
        lines = wait_events(self.pg, "connection_refused", mark)
        self.assertTrue(lines, "no event=connection_refused line")
        self.assertEqual(lines[0].get("client"), "203.0.113.7:40003", lines[0])
        self.assertEqual(lines[0].get("reason"), "per-address limit", lines[0])
        self.assertEqual(lines[0].get("limit"), "2", lines[0])
        ends = wait_events(self.pg, "session_end", mark, result="connection_limit")
        self.assertTrue(ends, "the refused session's end has no result=connection_limit")
        # another client behind the same balancer has its own count
        self.via_proxy("198.51.100.4", 40004)
        self.via_proxy("198.51.100.4", 40005)
        self.via_proxy("198.51.100.4", 40006, admitted=False)
        # the balancer's own address (127.0.0.1) holds none of those five
        self.admitted(what="direct connection")
        self.admitted(what="direct connection")
        self.refused(what="direct connection")
        # a PROXY client's release frees its own address
        self.close_and_wait(a1)
        self.via_proxy("203.0.113.7", 40007)
        self.via_proxy("203.0.113.7", 40008, admitted=False)
        self.assertEqual(self.refusals("per_address"), before + 4)

    def test_proxied_clients_over_two_workers(self):
        header = proxy_v1("192.0.2.99", 41000, self.proxy_port)
        self.spread_over_workers(2, self.proxy_port, header)
        self.via_proxy("192.0.2.99", 41001, admitted=False)


class ImplicitTlsTests(LimitCase):
    LIMITS = {"max_connections_per_ip": 2}

    @classmethod
    def extra_config(cls, pg):
        pki = tlsutil.shared_pki()
        cls.ca = pki.ca.cert
        return {"listeners": [{"address": "127.0.0.1:%d" % pg.port, "tls": "implicit",
                               "cert": pki.server.cert, "key": pki.server.key}]}

    def tls_admitted(self):
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.check_hostname = False
        s = ctx.wrap_socket(self.connect(), server_hostname="localhost")
        self.open[-1] = s
        line = read_line(s)
        self.assertTrue(line.startswith(b"+OK"), "greeting over TLS: %r" % line)
        return s

    def test_refused_before_the_handshake(self):
        self.tls_admitted()
        self.tls_admitted()
        mark = len(self.pg.log_bytes())
        s = self.connect()
        data, closed = read_until_closed(s, timeout=10.0)
        self.assertEqual(data, b"", "a refused implicit-TLS client got plaintext")
        self.assertTrue(closed, "the connection over the limit was not closed")
        lines = wait_events(self.pg, "connection_refused", mark)
        self.assertTrue(lines and lines[0].get("reason") == "per-address limit", lines)
        self.open.remove(s)
        s.close()


class KilledWorkerTests(LimitCase):
    LIMITS = {"max_connections_per_ip": 4}

    def test_killed_workers_connections_are_released(self):
        socks, spread = self.spread_over_workers(4)
        self.refused()
        victim = max(spread, key=spread.get)
        lost = spread[victim]
        mark = len(self.pg.log_bytes())
        os.kill(victim, signal.SIGKILL)
        exited = wait_events(self.pg, "worker_exited", mark, pid=str(victim))
        self.assertTrue(exited, "no event=worker_exited for %d" % victim)
        self.assertTrue(wait_events(self.pg, "worker_started", mark),
                        "the master did not start a new worker")
        kids = self.wait_workers(self.WORKERS, exclude=(victim,))
        self.assertEqual(len(kids), self.WORKERS, "workers after the kill: %s" % kids)
        # the victim's clients see their connections close; the others stay
        dead = [s for s in socks if read_until_closed(s, timeout=0.3)[1]]
        self.assertEqual(len(dead), lost, "connections that closed with worker %d" % victim)
        for s in dead:  # no session_end will come for them
            self.open.remove(s)
            s.close()
        # its share is released: exactly as many get in as it held
        for i in range(lost):
            self.admitted(what="connection %d after the kill" % (i + 1))
        self.refused(what="connection over the limit after the kill")


class ReloadTests(LimitCase):
    WORKERS = 1
    LIMITS = {"max_connections_per_ip": 3}

    def test_old_generation_still_counts(self):
        pg = self.pg
        old = self.wait_workers(1)
        socks = [self.admitted() for _ in range(3)]
        self.refused()
        # a new config (one more per address) and a new generation of workers
        pg.limits = dict(SLOW, max_connections_per_ip=4)
        mark = len(pg.log_bytes())
        with open(pg.config_path + ".tmp", "w") as f:
            json.dump(pg.config(), f, indent=2)
        os.replace(pg.config_path + ".tmp", pg.config_path)
        os.kill(pg.pid, signal.SIGHUP)
        self.assertTrue(wait_events(pg, "reloaded", mark), "no event=reloaded; log:\n%s"
                        % pg.log_text()[-2000:])
        self.assertTrue(wait_events(pg, "worker_started", mark), "no new worker")
        self.assertTrue(wait_events(pg, "worker_stopping", mark), "the old worker did not stop")
        kids = self.wait_workers(2)
        self.assertEqual(len(kids), 2, "old and new worker: %s" % kids)
        self.assertIn(old[0], kids, "the old worker left while it had sessions")
        # the three sessions of the draining worker count with the new one's
        self.admitted(what="connection after the reload")
        self.refused(what="connection over the new limit")
        self.close_and_wait(socks[0])
        self.admitted(what="connection after an old session ended")
        self.refused(what="connection over the new limit again")
        self.assertIn(old[0], harness.child_pids(pg.pid), "the old worker is still draining")


if __name__ == "__main__":
    unittest.main()
