#!/usr/bin/env python3
"""Load test of issue 6 on loopback against a real Dovecot: LOAD_CLIENTS (default 1000)
POP3 clients at once, each with its own user (one POP3 session per mailbox), 10% of them
misbehaving (never read, send junk, drop the connection mid-RETR, dribble byte by byte,
flood with pipelined commands), the rest downloading their whole mailbox, some with
DELE + QUIT.

All clients connect and log in first; once every one is logged in (so LOAD_CLIENTS
sessions, and as many upstream IMAP connections, are open at once) they all go. Checks:
  - every well-behaved client got every message byte-identical to IMAP's BODY[] (sha256);
  - popgate's RSS, summed over its process tree, stays under a bound (printed);
  - afterwards IMAP holds exactly what it should: what was DELE'd and QUIT (with +OK) is
    gone, nothing else is.

The clients run in LOAD_PROCS (default 2) processes, each an asyncio loop.

Run: python3 tests/integration/test_load.py -v
Env: POPGATE_BIN (default build/asan/popgate), LOAD_CLIENTS (1000), LOAD_PROCS (2),
     LOAD_RSS_LIMIT_MB (bound on popgate's summed RSS; default depends on the build)
"""

import asyncio
import concurrent.futures
import hashlib
import multiprocessing
import os
import re
import resource
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

N_CLIENTS = int(os.environ.get("LOAD_CLIENTS", "1000"))
N_PROCS = int(os.environ.get("LOAD_PROCS", "2"))
BAD_KINDS = ["never_read", "junk", "drop_mid_retr", "dribble", "flood"]
MSGS_PER_USER = 3
BIG_SIZE = 1024 * 1024  # message 1 of never_read / drop_mid_retr users
FLOOD = 2000
MAX_BAD = 10  # popgate's default max_bad_commands
DOVECOT_EXTRA = """
default_process_limit = 3000
default_client_limit = 20000
mail_max_userip_connections = 100000
service imap-login {
  service_count = 0
  process_min_avail = 2
  client_limit = 4000
}
service imap {
  # every test user has the same system uid, so one imap process may serve many of
  # them at once: no fork and exec per login (which made 1000 logins take minutes)
  service_count = 0
  client_limit = 100
  process_limit = 200
  process_min_avail = 4
}
service auth {
  client_limit = 20000
}
service anvil {
  client_limit = 20000
}
"""


def user_name(i):
    return "load%04d" % i


def password(i):
    return "pw-%04d-load" % i


def kind_of(i):
    """Every tenth client misbehaves, cycling through BAD_KINDS; of the good ones every
    fifth deletes message 1 and QUITs."""
    if i % 10 == 9:
        return BAD_KINDS[(i // 10) % len(BAD_KINDS)]
    return "good_dele" if i % 5 == 0 else "good"


def message(i, n, size=None):
    head = (b"From: s%d@example.org\r\nTo: %s@example.org\r\nSubject: load %d/%d\r\n"
            b"Message-ID: <load-%d-%d@example.org>\r\n\r\n"
            % (n, user_name(i).encode(), i, n, i, n))
    lines = []
    k = 0
    total = len(head)
    target = size or (300 + (i * 37 + n * 101) % 2500)
    while total < target:
        k += 1
        if k % 7 == 0:
            line = b".a line starting with a dot %d\r\n" % k
        elif k % 23 == 0:
            line = b".\r\n"
        else:
            line = b"line %d of message %d for user %d %s\r\n" % (k, n, i, b"x" * (k % 40))
        lines.append(line)
        total += len(line)
    return head + b"".join(lines)


# ---------------------------------------------------------------------------
# the clients (run in child processes)


class Conn:
    def __init__(self, reader, writer):
        self.r = reader
        self.w = writer

    async def line(self, timeout=120):
        data = await asyncio.wait_for(self.r.readline(), timeout)
        if not data:
            raise ConnectionError("closed by popgate")
        return data

    async def cmd(self, text, timeout=120):
        self.w.write(text + b"\r\n")
        await self.w.drain()
        return (await self.line(timeout)).rstrip(b"\r\n")

    async def multi(self, timeout=300):
        """Un-dot-stuffed data of a multi-line answer."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            line = await self.line(max(1, deadline - time.monotonic()))
            if line == b".\r\n":
                return b"".join(out)
            if line.startswith(b"."):
                line = line[1:]
            out.append(line)

    def abort(self):
        try:
            sock = self.w.get_extra_info("socket")
            if sock is not None:  # RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        except OSError:
            pass
        self.w.close()


async def open_conn(port):
    for attempt in range(20):
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, limit=1 << 22), 30)
            return Conn(r, w)
        except (OSError, asyncio.TimeoutError):
            if attempt == 19:
                raise
            await asyncio.sleep(0.2 + 0.1 * attempt)


async def login(port, i, dribble=False):
    """Returns (conn, None) or (None, error text). Retries [IN-USE] (none expected)."""
    last = ""
    for attempt in range(5):
        c = await open_conn(port)
        greeting = await c.line(60)
        if not greeting.startswith(b"+OK"):
            return None, "greeting %r" % greeting
        if dribble:
            for text in (b"USER %s\r\n" % user_name(i).encode(),
                         b"PASS %s\r\n" % password(i).encode()):
                for b in text:
                    c.w.write(bytes([b]))
                    await c.w.drain()
                    await asyncio.sleep(0.02)
                r = (await c.line(120)).rstrip(b"\r\n")
                if not r.startswith(b"+OK"):
                    break
        else:
            r = await c.cmd(b"USER " + user_name(i).encode())
            if r.startswith(b"+OK"):
                r = await c.cmd(b"PASS " + password(i).encode(), timeout=180)
        if r.startswith(b"+OK"):
            return c, None
        last = r.decode("latin-1")
        c.w.close()
        if b"[IN-USE]" not in r:
            break
        await asyncio.sleep(1)
    return None, "login answered %r" % last


async def download(c, res):
    """STAT, UIDL, RETR each: res['digests'] = {uid: sha256}."""
    r = await c.cmd(b"STAT")
    m = re.match(rb"\+OK (\d+) (\d+)$", r)
    if not m:
        raise RuntimeError("STAT %r" % r)
    count = int(m.group(1))
    r = await c.cmd(b"UIDL")
    if not r.startswith(b"+OK"):
        raise RuntimeError("UIDL %r" % r)
    uid_of = {}
    for line in (await c.multi()).split(b"\r\n"):
        if line:
            n, u = line.split()
            uid_of[int(n)] = int(u[:8], 16)
    res["uids"] = sorted(uid_of.values())
    for n in range(1, count + 1):
        r = await c.cmd(b"RETR %d" % n)
        if not r.startswith(b"+OK"):
            raise RuntimeError("RETR %d %r" % (n, r))
        body = await c.multi()
        res["digests"][uid_of[n]] = hashlib.sha256(body).hexdigest()
    return uid_of


async def run_client(port, i, go, end, ready_cb, res):
    kind = kind_of(i)
    res.update(i=i, user=user_name(i), kind=kind, digests={}, deleted=[], quit=None,
               error=None, logged_in=False)
    c = None
    try:
        c, err = await login(port, i, dribble=(kind == "dribble"))
        ready_cb()
        if c is None:
            res["error"] = err
            return
        res["logged_in"] = True
        await go.wait()
        if kind in ("good", "good_dele"):
            uid_of = await download(c, res)
            if kind == "good_dele":
                r = await c.cmd(b"DELE 1")
                if not r.startswith(b"+OK"):
                    raise RuntimeError("DELE 1 %r" % r)
                res["dele_uid"] = uid_of[1]
            r = await c.cmd(b"QUIT", timeout=180)
            res["quit"] = r.decode("latin-1")
            if r.startswith(b"+OK") and kind == "good_dele":
                res["deleted"] = [uid_of[1]]
        elif kind == "never_read":
            c.w.write(b"DELE 2\r\nRETR 1\r\n")
            await c.w.drain()
            await end.wait()
            c.abort()
        elif kind == "junk":
            answered = 0
            try:
                for n in range(1, 4 * MAX_BAD):
                    r = await c.cmd(b"\x00\xff\x1b junk %d \x80\x81" % n, timeout=60)
                    if not r.startswith(b"-ERR"):
                        raise RuntimeError("junk answered %r" % r)
                    answered += 1
            except (ConnectionError, OSError):
                pass
            res["junk_lines_until_close"] = answered
            rest = await asyncio.wait_for(c.r.read(), 60)
            res["junk_closed"] = True
            if rest:
                res["junk_rest"] = rest[:100].decode("latin-1")
        elif kind == "drop_mid_retr":
            r = await c.cmd(b"DELE 2")
            c.w.write(b"RETR 1\r\n")
            await c.w.drain()
            await asyncio.wait_for(c.r.readexactly(4096), 120)
            c.abort()
        elif kind == "dribble":
            for text in (b"STAT\r\n", b"RETR 1\r\n"):
                for b in text:
                    c.w.write(bytes([b]))
                    await c.w.drain()
                    await asyncio.sleep(0.02)
                r = (await c.line()).rstrip(b"\r\n")
                if not r.startswith(b"+OK"):
                    raise RuntimeError("dribbled %r answered %r" % (text, r))
            res["dribble_retr1"] = hashlib.sha256(await c.multi()).hexdigest()
            r = await c.cmd(b"QUIT")
            res["quit"] = r.decode("latin-1")
        elif kind == "flood":
            c.w.write(b"NOOP\r\n" * FLOOD + b"QUIT\r\n")
            await c.w.drain()
            for k in range(FLOOD):
                r = (await c.line()).rstrip(b"\r\n")
                if r != b"+OK":
                    raise RuntimeError("flood answer %d: %r" % (k + 1, r))
            r = (await c.line()).rstrip(b"\r\n")
            res["quit"] = r.decode("latin-1")
    except Exception as e:  # recorded, judged by the test
        res["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        if c is not None:
            try:
                c.w.close()
            except Exception:
                pass


async def client_proc_main(port, indices, ready_q, go_ev, end_ev, result_q):
    loop = asyncio.get_running_loop()
    go = asyncio.Event()
    end = asyncio.Event()
    pending = [len(indices)]

    def ready_cb():
        pending[0] -= 1
        if pending[0] == 0:
            ready_q.put(os.getpid())

    results = [dict() for _ in indices]
    tasks = []
    for k, i in enumerate(indices):
        tasks.append(asyncio.create_task(run_client(port, i, go, end, ready_cb, results[k])))
        await asyncio.sleep(0.003)  # no SYN storm
    pool = concurrent.futures.ThreadPoolExecutor(2)
    await loop.run_in_executor(pool, go_ev.wait, 600)
    go.set()
    good = [t for t, i in zip(tasks, indices) if kind_of(i) != "never_read"]
    await asyncio.wait(good, timeout=600)
    ready_q.put(("done", os.getpid()))
    # the never-reading clients hold their sessions until everyone else is done
    await loop.run_in_executor(pool, end_ev.wait, 600)
    end.set()
    await asyncio.wait(tasks, timeout=60)
    result_q.put(results)


def client_proc(port, indices, ready_q, go_ev, end_ev, result_q):
    raise_nofile()
    asyncio.run(client_proc_main(port, indices, ready_q, go_ev, end_ev, result_q))


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536))
    if hard == resource.RLIM_INFINITY:
        want = max(soft, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def sha(data):
    return hashlib.sha256(data).hexdigest()


class LoadTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        nofile = raise_nofile()
        if nofile < 4 * N_CLIENTS + 1000:
            raise unittest.SkipTest("RLIMIT_NOFILE %d is too low for %d clients"
                                    % (nofile, N_CLIENTS))
        t = time.monotonic()
        cls.dovecot = harness.Dovecot(extra_config=DOVECOT_EXTRA)
        cls.addClassCleanup(cls.dovecot.stop)
        d = cls.dovecot
        cls.written = {}
        for i in range(N_CLIENTS):
            d.add_user(user_name(i), password(i))
        for i in range(N_CLIENTS):
            big = kind_of(i) in ("never_read", "drop_mid_retr")
            for n in range(1, MSGS_PER_USER + 1):
                d.add_message(user_name(i), message(i, n, BIG_SIZE if big and n == 1 else None))
        d.start()
        # what IMAP holds, read over IMAP (a few threads: 1000 logins)
        cls.imap_before = {}

        def read_user(i):
            with d.imap(user_name(i)) as im:
                return i, {uid: sha(im.body(uid)) for uid in im.uids()}
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            for i, digests in ex.map(read_user, range(N_CLIENTS)):
                cls.imap_before[i] = digests
        cls.setup_seconds = time.monotonic() - t
        # every client comes from 127.0.0.1: lift the per-address limit above them all
        cls.pg = harness.Popgate(d.port, limits={"max_connections_per_ip": 2 * N_CLIENTS})
        cls.addClassCleanup(cls._stop_popgate)
        cls.pg.start()

    @classmethod
    def _stop_popgate(cls):
        cls.pg.stop()
        report = cls.pg.sanitizer_report()
        if report or getattr(cls, "_keep_log", False):
            print("\nload test: popgate log kept in %s" % cls.pg.log_path, file=sys.stderr)
        else:
            cls.pg.cleanup()
        if report:
            raise AssertionError("sanitizer report in popgate's log %s:\n%s"
                                 % (cls.pg.log_path, report))

    def test_1000_clients_10_percent_misbehaving(self):
        type(self)._keep_log = True
        pg = self.pg
        self.assertEqual(len(self.imap_before), N_CLIENTS, "premise: IMAP read")
        for i, digests in self.imap_before.items():
            self.assertEqual(len(digests), MSGS_PER_USER, "premise: %s's mailbox" % user_name(i))
        sampler = harness.TreeRss(pg.pid, interval=0.2)
        time.sleep(0.5)
        idle_kb = sampler.sample()
        sampler.peak = 0
        sampler.start()
        self.addCleanup(sampler.stop_event.set)

        ctx = multiprocessing.get_context("fork")
        ready_q, result_q = ctx.Queue(), ctx.Queue()
        go_ev, end_ev = ctx.Event(), ctx.Event()
        parts = [list(range(k, N_CLIENTS, N_PROCS)) for k in range(N_PROCS)]
        procs = [ctx.Process(target=client_proc,
                             args=(pg.port, part, ready_q, go_ev, end_ev, result_q),
                             daemon=True) for part in parts]
        t0 = time.monotonic()
        for p in procs:
            p.start()
        self.addCleanup(lambda: [p.kill() for p in procs if p.is_alive()])
        for _ in procs:
            ready_q.get(timeout=600)
        t_login = time.monotonic() - t0
        time.sleep(0.5)
        sessions_kb = sampler.sample()
        go_ev.set()
        # the never-reading clients stay until the others are done
        for _ in procs:
            ready_q.get(timeout=700)
        t_good = time.monotonic() - t0
        end_ev.set()
        results = []
        for _ in procs:
            results += result_q.get(timeout=300)
        for p in procs:
            p.join(30)
        t_all = time.monotonic() - t0
        sampler.stop_event.set()
        sampler.join(5)
        peak_kb = sampler.peak

        by_kind = {}
        for r in results:
            by_kind.setdefault(r["kind"], []).append(r)
        n_bad = sum(len(v) for k, v in by_kind.items() if k in BAD_KINDS)
        print("\nload test: %d clients (%d misbehaving: %s) in %d processes; setup %.1f s; "
              "all logged in after %.1f s, good ones done after %.1f s, all after %.1f s; "
              "popgate tree RSS idle %d kB, with all sessions open %d kB, peak %d kB"
              % (len(results), n_bad,
                 ", ".join("%s %d" % (k, len(by_kind.get(k, []))) for k in BAD_KINDS),
                 N_PROCS, self.setup_seconds, t_login, t_good, t_all, idle_kb, sessions_kb,
                 peak_kb), file=sys.stderr)
        self.assertEqual(len(results), N_CLIENTS, "results from every client")

        # 1. every well-behaved client got every message byte-identical
        problems = []
        for r in results:
            i = r["i"]
            if not r["logged_in"]:
                problems.append("%s (%s): %s" % (r["user"], r["kind"], r["error"]))
                continue
            if r["kind"] in ("good", "good_dele"):
                if r["error"]:
                    problems.append("%s (%s): %s" % (r["user"], r["kind"], r["error"]))
                    continue
                if r["digests"] != self.imap_before[i]:
                    problems.append("%s: digests differ from IMAP (%d of %d received)"
                                    % (r["user"], len(r["digests"]), len(self.imap_before[i])))
                if not (r["quit"] or "").startswith("+OK"):
                    problems.append("%s: QUIT answered %r" % (r["user"], r["quit"]))
            elif r["kind"] == "dribble":
                first = min(self.imap_before[i])
                if r["error"] or r.get("dribble_retr1") != self.imap_before[i][first]:
                    problems.append("%s (dribble): %s" % (r["user"], r["error"] or
                                                          "RETR 1 differs from IMAP"))
            elif r["kind"] == "flood":
                if r["error"] or not (r["quit"] or "").startswith("+OK"):
                    problems.append("%s (flood): %s, QUIT %r" % (r["user"], r["error"],
                                                                  r["quit"]))
            elif r["kind"] == "junk":
                if not r.get("junk_closed") or r.get("junk_lines_until_close", 99) > MAX_BAD:
                    problems.append("%s (junk): not disconnected after %s bad lines (%s)"
                                    % (r["user"], r.get("junk_lines_until_close"),
                                       r["error"]))
        self.assertEqual(problems, [], "%d clients had problems (log %s):\n%s"
                         % (len(problems), pg.log_path, "\n".join(problems[:40])))

        # 2. popgate's memory stayed bounded
        limit_kb = self.rss_limit_kb(idle_kb)
        self.assertLess(peak_kb, limit_kb, "popgate's summed RSS peaked at %d kB (idle %d kB) "
                        "with %d clients; bound %d kB" % (peak_kb, idle_kb, N_CLIENTS,
                                                          limit_kb))

        # 3. IMAP holds exactly what it should
        time.sleep(1)
        deleted = {r["i"]: set(r["deleted"]) for r in results}

        def after(i):
            with self.dovecot.imap(user_name(i)) as im:
                return i, im.uids()
        wrong = []
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            for i, uids in ex.map(after, range(N_CLIENTS)):
                want = sorted(set(self.imap_before[i]) - deleted[i])
                if uids != want:
                    wrong.append("%s (%s): UIDs %r, expected %r" % (user_name(i), kind_of(i),
                                                                   uids, want))
        self.assertEqual(wrong, [], "%d mailboxes are not what DELE+QUIT left:\n%s"
                         % (len(wrong), "\n".join(wrong[:40])))
        n_deleted = sum(len(v) for v in deleted.values())
        self.assertEqual(n_deleted, len(by_kind.get("good_dele", [])),
                         "premise: every good_dele client deleted one message")
        type(self)._keep_log = False
        self.assertLess(t_all, 600, "took %.0f s" % t_all)

    @staticmethod
    def rss_limit_kb(idle_kb):
        env = os.environ.get("LOAD_RSS_LIMIT_MB")
        if env:
            return int(env) * 1024
        # A session's buffers are capped (client in 4 kB, out 64 kB, upstream in 64 kB,
        # IMAP parser 16 kB, commands 8 kB...): 1000 sessions may hold ~160 MB at worst.
        # Generous: idle + 256 kB per client, + 512 MB for ASan's quarantine (256 MB a
        # process by default) and shadow memory.
        return idle_kb + N_CLIENTS * 256 + 512 * 1024


if __name__ == "__main__":
    unittest.main()
