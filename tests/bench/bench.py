#!/usr/bin/env python3
"""popgate against direct IMAP, measured in one run on one private Dovecot.

Usage (from the repository root, as root, with the release build):

    cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPOPGATE_TESTS=OFF
    cmake --build build/release --target popgate
    python3 tests/bench/bench.py            # full: ~10 min on 2 cores (mostly 2 x 5,000 logins)
    python3 tests/bench/bench.py --smoke    # about 30 s, for CI: cannot rot

Options: --rounds N (alternating rounds; medians are reported; default 3, 1 with --smoke),
--json PATH (default /tmp/popgate-bench.json, or /tmp/popgate-bench-smoke.json with
--smoke), --popgate BIN (default $POPGATE_RELEASE_BIN or build/release/popgate), --only
PHASE,... (sessions, retr, idle, bigbox), --clients N (20), --seconds S (per sessions
measurement, 5), --idle N (5000), --idle-messages N (50), --bigbox N (100000), --procs N
(load generator processes, default max(2, cores)), --verify (sha256 of every message, on in
smoke mode), --dovecot-fork (Dovecot's default of a new imap process per session),
--maildir-crlf (store CRLF; Dovecot then sends the files unconverted), --state-base DIR
(popgate's state folders there, e.g. on a tmpfs to see what fsync costs), --output-buffer
BYTES (popgate's limits.output_buffer), --fail-on-target (exit 3 when a target is missed).

Smoke mode (--smoke, about 30 s): 6 users of 20 messages, a 1 MB and a 2 MB message, 4
clients for 1 s per side, 40 idle sessions, a 2,000-message mailbox, 1 round. Its figures
are too small to mean much; it exists so that every code path of the benchmark runs.

What it does: starts a private Dovecot 2.3 IMAP server on 127.0.0.1 (tests/integration/
harness.py, with the process and client limits raised, imap-login in performance mode and
imap processes reused from session to session: Dovecot at its fastest, see --dovecot-fork),
writes the mailboxes straight into Maildir files (LF line ends and S=/W= sizes in the
names, as Dovecot's own delivery stores them): U users of 200 messages of 2-20 KB, one user
with messages of 1, 10 and 50 MB, one with 100,000 messages of 0.6-1.6 KB, and N idle users
of 50 messages. It starts release popgate in front of it: one with one worker per core, one
with a single worker, and fresh ones for the idle phase. A warm-up session per mailbox on
each side (Dovecot builds its indexes, popgate records its first UIDLs) is not measured.
Then, with the sides alternating in every round:

  sessions  C concurrent clients (20) doing full POP3 sessions through popgate (connect,
            USER, PASS, STAT, UIDL, LIST, QUIT) against the same work directly over IMAP
            (connect, LOGIN, SELECT, UID FETCH 1:* (UID RFC822.SIZE), LOGOUT), for a fixed
            time, each client on its own users (popgate allows one session per mailbox):
            sessions/s, p50/p99 latency, CPU seconds per session of popgate (master and
            workers) and of Dovecot (every process of the instance).
  retr      every message of the small users (C concurrent clients), and of the large user
            (one client, 8 times over: about 0.5 GB), through popgate (RETR) against UID
            FETCH BODY.PEEK[] directly: MB/s and CPU per MB of each side. Every message's
            length is checked (POP3: the dot-stuffed length against the one expected);
            with --smoke (or --verify) also its sha256, after undoing POP3's dot-stuffing.
  idle      N authenticated POP3 sessions (USER, PASS) held at once, plaintext and with TLS
            on both sides (implicit TLS client->popgate, IMAPS popgate->Dovecot), each on a
            fresh popgate: its PSS (/proc/PID/smaps_rollup, master + workers) with the
            sessions open minus the PSS before (after one session), per session.
  bigbox    the 100,000-message user: PASS to the STAT answer, the whole UIDL and LIST,
            against LOGIN + SELECT + UID FETCH 1:* (UID RFC822.SIZE) directly. The first
            login of each side (Dovecot builds its index, popgate fetches Message-ID hashes
            and records every UIDL) is reported apart, in the JSON.
  scaling   the sessions figure of popgate with one worker per core over one worker, with
            the CPU use of each party to tell which one was the limit.

CPU is counted per server in a cgroup-v1 cpuacct group made for it when the benchmark runs
as root (exact: processes that exit are counted too), else from /proc/PID/stat of its
process tree (utime+stime+cutime+cstime). On loopback the kernel charges a receiver's TCP
work to the sender, so each side's figure includes some of its peer's kernel time.

The load generator is Python asyncio in several processes (fork), with the same code for
POP3 and IMAP: StreamReader.readuntil on the terminator for lists, message bodies read in
1 MiB pieces, never held whole, and neither copied nor searched unless hashed (a POP3
body's end is its last 5 bytes: the client sends one command at a time). Its own CPU is
reported.
Results print as a table (figure, popgate, direct, ratio, target, PASS/FAIL) followed by
which party bounded the sessions figures (CPU use per wall second of popgate, Dovecot, the
generator and the whole machine, niced processes excluded), and are saved as JSON with
every round, the machine, the Dovecot settings and the first-login times.

Exit status: 0 when the benchmark ran correctly (missed targets do not fail it unless
--fail-on-target), 1 when it is broken: an error, a failed session, a wrong byte count or
digest. Everything started is stopped at exit (harness watchdogs cover a killed run).
"""

import argparse
import asyncio
import base64
import hashlib
import json
import multiprocessing
import os
import platform
import random
import re
import resource
import signal
import ssl
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402
import tlsutil  # noqa: E402

MB = 1024 * 1024
KIB = 1024
PASSWORD = b"bench-password"
NCPU = os.cpu_count() or 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
STREAM_LIMIT = 16 * MB  # StreamReader limit: the UIDL of 100,000 messages fits
CHUNK = 1 * MB  # message bodies are read in pieces: never whole in the generator
SESSION_TIMEOUT = 300.0

FULL = {
    "rounds": 3,
    "users": 60,             # small users
    "messages": 200,         # per small user
    "small_min": 2 * KIB,
    "small_max": 20 * KIB,
    "large_mb": [1, 10, 50],
    "large_passes": 8,       # the large user is read this often per measurement (~0.5 GB)
    "clients": 20,
    "seconds": 5.0,          # per sessions measurement
    "idle": 5000,
    "idle_messages": 50,
    "bigbox": 100000,
    "verify": False,
}
SMOKE = {
    "rounds": 1,
    "users": 6,
    "messages": 20,
    "small_min": 2 * KIB,
    "small_max": 20 * KIB,
    "large_mb": [1, 2],
    "large_passes": 1,
    "clients": 4,
    "seconds": 1.0,
    "idle": 40,
    "idle_messages": 5,
    "bigbox": 2000,
    "verify": True,
}

# popgate's limits.output_buffer (None: its default), from --output-buffer
OUTPUT_BUFFER = None

# what every worker process reads after the fork: {user: [(size, sha256 hex)]}
EXPECTED = {}


class BenchError(Exception):
    pass


def log(msg):
    print("[%7.1f] %s" % (time.monotonic() - T0, msg), flush=True)


T0 = time.monotonic()


# ---------------------------------------------------------------------------
# mailboxes, written straight into Maildir files


class Generator:
    """Message bytes from a fixed pool of 74-byte CRLF lines (base64 text, every 37th line
    starting with '.', so dot-stuffing is exercised)."""

    LINE = 74

    def __init__(self, seed=7):
        self.rnd = random.Random(seed)
        raw = base64.b64encode(self.rnd.randbytes(3 * MB))
        lines = []
        for i in range(len(raw) // 72):
            chunk = raw[i * 72:(i + 1) * 72]
            if i % 37 == 0:
                chunk = b"." + chunk[1:]
            lines.append(chunk + b"\r\n")
        self.pool = b"".join(lines)
        self.nlines = len(lines)

    def header(self, user, n, extra=b""):
        return (b"From: Sender %d <sender%d@example.org>\r\nTo: %s@example.net\r\n"
                b"Subject: bench message %d for %s\r\n"
                b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
                b"Message-ID: <%d.%s@bench.example>\r\nMIME-Version: 1.0\r\n%s\r\n"
                % (n % 97, n % 97, user.encode(), n, user.encode(), n, user.encode(), extra))

    def body(self, size):
        """About size bytes of whole lines."""
        want = max(1, size // self.LINE)
        out = []
        while want > 0:
            start = self.rnd.randrange(self.nlines)
            take = min(want, self.nlines - start)
            out.append(self.pool[start * self.LINE:(start + take) * self.LINE])
            want -= take
        return b"".join(out)

    def small(self, user, n, lo, hi):
        h = self.header(user, n, b"Content-Type: text/plain; charset=us-ascii\r\n")
        return h + self.body(self.rnd.randint(lo, hi) - len(h))


class Mailboxes:
    """Users and Maildirs for a harness.Dovecot that has not started yet."""

    def __init__(self, dovecot, crlf=False):
        self.d = dovecot
        self.crlf = crlf
        self.counter = 0
        self.uid, self.gid = harness.ensure_system_user()

    def home(self, name):
        home = os.path.join(self.d.root, "home", name)
        for sub in ("Maildir/new", "Maildir/cur", "Maildir/tmp"):
            os.makedirs(os.path.join(home, sub), exist_ok=True)
        return home

    def add_user(self, name, home=None):
        # harness.Dovecot.add_user rewrites the passwd file per user: too slow for 5,000
        self.d.users[name] = (PASSWORD, home or self.home(name))

    def write(self, name, chunks):
        """Writes one message (CRLF chunks of whole lines) into cur/ (Dovecot gives UIDs
        in file-name order), with LF line ends unless crlf, as Dovecot's own delivery
        stores mail by default (mail_save_crlf = no). Returns (IMAP size, sha256 hex, the
        dots POP3's stuffing adds) of the CRLF form that IMAP serves."""
        self.counter += 1
        cur = os.path.join(self.d.users[name][1], "Maildir", "cur")
        h = hashlib.sha256()
        size = stored = dots = 0
        tmp = os.path.join(cur, ".tmp")
        with open(tmp, "wb") as f:
            for c in chunks:
                h.update(c)
                size += len(c)
                dots += c.count(b"\r\n.") + c.startswith(b".")  # chunks start lines
                if not self.crlf:
                    c = c.replace(b"\r\n", b"\n")
                f.write(c)
                stored += len(c)
        os.rename(tmp, os.path.join(cur, "1700000000.M%09dP1.bench,S=%d,W=%d:2,"
                                    % (self.counter, stored, size)))
        return size, h.hexdigest(), dots

    def finish(self):
        self.d._write_passwd()
        subprocess.run(["chown", "-R", "%d:%d" % (self.uid, self.gid),
                        os.path.join(self.d.root, "home")], check=True, timeout=600)
        subprocess.run(["chmod", "-R", "u+rwX,go-rwx", os.path.join(self.d.root, "home")],
                       check=True, timeout=600)
        os.chmod(os.path.join(self.d.root, "home"), 0o755)


def build_mailboxes(d, p, crlf=False):
    """Every mailbox of the run; returns {"small": [...], "large": name, "bigbox": name,
    "idle": [...]} and fills EXPECTED."""
    gen = Generator()
    mb = Mailboxes(d, crlf)
    os.makedirs(os.path.join(d.root, "home"), exist_ok=True)
    small = ["small%03d" % i for i in range(p["users"])]
    for name in small:
        mb.add_user(name)
        EXPECTED[name] = [mb.write(name, [gen.small(name, n, p["small_min"], p["small_max"])])
                          for n in range(p["messages"])]
    mb.add_user("large")
    EXPECTED["large"] = []
    for n, size_mb in enumerate(p["large_mb"]):
        h = gen.header("large", n, b"Content-Type: application/octet-stream\r\n"
                       b"Content-Transfer-Encoding: base64\r\n")

        def chunks(total=size_mb * MB - len(h), h=h):
            yield h
            left = total
            while left > 0:
                c = gen.body(min(left, 4 * MB))
                left -= len(c)
                yield c
        EXPECTED["large"].append(mb.write("large", chunks()))
    mb.add_user("bigbox")
    EXPECTED["bigbox"] = [mb.write("bigbox", [gen.small("bigbox", n, 600, 1600)])
                          for n in range(p["bigbox"])]
    # idle users: their own Maildirs (one shared mailbox would make 5,000 sessions
    # contend for its index), each file hard-linked from the first user's
    idle = ["idle%05d" % i for i in range(p["idle"])]
    if idle:
        mb.add_user(idle[0])
        for n in range(p["idle_messages"]):
            mb.write(idle[0], [gen.small(idle[0], n, p["small_min"], p["small_max"])])
        first_cur = os.path.join(d.users[idle[0]][1], "Maildir", "cur")
        names = sorted(os.listdir(first_cur))
        for name in idle[1:]:
            mb.add_user(name)
            cur = os.path.join(d.users[name][1], "Maildir", "cur")
            for f in names:
                os.link(os.path.join(first_cur, f), os.path.join(cur, f))
    mb.finish()
    return {"small": small, "large": "large", "bigbox": "bigbox", "idle": idle}


# ---------------------------------------------------------------------------
# servers


def dovecot_extra(pki, imaps_port, reuse=True):
    """Limits raised for thousands of sessions from 127.0.0.1, imap-login in performance
    mode, and (reuse) imap processes that serve one session after another instead of one
    new process per session: Dovecot at its fastest, the strict reference."""
    limit = 12000
    return "\n".join([
        "default_process_limit = %d" % limit,
        "default_client_limit = %d" % (2 * limit),
        "mail_max_userip_connections = %d" % (2 * limit),
        "ssl = yes",
        "ssl_cert = <%s" % pki.server.chain,
        "ssl_key = <%s" % pki.server.key,
        "service imap-login {",
        "  inet_listener imaps {",
        "    address = 127.0.0.1",
        "    port = %d" % imaps_port,
        "    ssl = yes",
        "  }",
        "  service_count = 0",
        "  process_min_avail = %d" % NCPU,
        "}",
        "service imap {",
        "  process_limit = %d" % limit,
        "  service_count = %d" % (0 if reuse else 1),
        "  process_min_avail = %d" % (2 * NCPU if reuse else 0),
        "}",
        "",
    ])


class BenchPopgate(harness.Popgate):
    """Release popgate with `workers`, a plain or implicit-TLS listener, a plain or IMAPS
    upstream."""

    def __init__(self, binary, dovecot, workers, pki=None, tls=False, state_base=None):
        super().__init__(upstream_port=dovecot.port, binary=binary)
        if state_base:
            self.state_dir = os.path.join(state_base, os.path.basename(self.root))
        self.dovecot = dovecot
        self.workers = workers
        self.pki = pki
        self.tls = tls

    def config(self):
        listener = {"address": "127.0.0.1:%d" % self.port}
        upstream = {"host": "127.0.0.1", "port": self.dovecot.port, "tls": "none"}
        if self.tls:
            listener.update({"tls": "implicit", "cert": self.pki.server.cert,
                             "key": self.pki.server.key})
            upstream.update({"port": self.dovecot.imaps_port, "tls": "implicit",
                             "ca_file": self.pki.ca.cert})
        cfg = {
            "workers": self.workers,
            "log": "stderr",
            "listeners": [listener],
            "upstreams": {"main": upstream},
            "routes": [{"default": True, "upstream": "main"}],
            "state": {"dir": self.state_dir},
        }
        # every benchmark client comes from 127.0.0.1: no per-address limit, room for the
        # idle phase's sessions
        cfg["limits"] = {"max_connections_per_ip": 0, "max_connections": 100000}
        if OUTPUT_BUFFER:
            cfg["limits"]["output_buffer"] = OUTPUT_BUFFER
        return cfg


def proc_cpu(pid):
    """utime+stime+cutime+cstime of one process in seconds (0 if it is gone)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            rest = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in rest[11:15]) / CLK_TCK


def tree_cpu(root):
    """CPU seconds of root and every live process below it, their reaped children
    included (cutime/cstime): what a server has spent so far."""
    return sum(proc_cpu(p) for p in harness.tree_pids(root))


class CpuMeter:
    """CPU seconds used by a server's processes since they were attached, dead ones
    included. Uses a cgroup-v1 cpuacct group when this process may make one (exact: a
    process that exits is still counted); otherwise sums /proc/PID/stat over the process
    tree (utime+stime+cutime+cstime), which loses the CPU of children their parent has not
    reaped yet."""

    ROOT = "/sys/fs/cgroup/cpuacct"

    def __init__(self, name, pid):
        self.pid = pid
        self.path = None
        base = os.path.join(self.ROOT, "popgate-bench-%d-%s" % (os.getpid(), name))
        try:
            os.mkdir(base)
            self.path = base
            for p in harness.tree_pids(pid):
                with open(os.path.join(base, "cgroup.procs"), "w") as f:
                    f.write(str(p))
        except OSError:
            if self.path:
                self.close()
            self.path = None

    @property
    def method(self):
        return "cgroup cpuacct" if self.path else "/proc stat tree"

    def seconds(self):
        if self.path:
            with open(os.path.join(self.path, "cpuacct.usage")) as f:
                return int(f.read()) / 1e9
        return tree_cpu(self.pid)

    def close(self):
        """Moves what is left back to the root group and removes the group."""
        if not self.path:
            return
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                left = f.read().split()
            for p in left:
                try:
                    with open(os.path.join(self.ROOT, "cgroup.procs"), "w") as f:
                        f.write(p)
                except OSError:
                    pass
            for _ in range(50):
                try:
                    os.rmdir(self.path)
                    break
                except OSError:
                    time.sleep(0.1)
        except OSError:
            pass
        self.path = None

    stop = close  # what harness.stop_all() calls


def machine_busy():
    """(busy, total) jiffies of all CPUs from /proc/stat; time of niced processes (a
    background job at nice 19 takes only what is left) counts as idle."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[1] + v[3] + v[4]
    return sum(v[:8]) - idle, sum(v[:8])


def tree_mem_kb(root, key=b"Pss:"):
    total = 0
    for pid in harness.tree_pids(root):
        try:
            with open("/proc/%d/smaps_rollup" % pid, "rb") as f:
                for line in f:
                    if line.startswith(key):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


# ---------------------------------------------------------------------------
# protocol clients (asyncio streams; POP3 and IMAP written the same way)


async def connect(port, tls_ctx):
    return await asyncio.open_connection(
        "127.0.0.1", port, limit=STREAM_LIMIT, ssl=tls_ctx,
        server_hostname="localhost" if tls_ctx else None)


async def pop3_status(r, what):
    line = await r.readline()
    if not line.startswith(b"+OK"):
        raise BenchError("POP3 %s: %r" % (what, line[:200]))
    return line


async def pop3_multi(r, what):
    """Status line and multi-line data (still dot-stuffed, without the terminator)."""
    await pop3_status(r, what)
    head = await r.readexactly(3)
    if head == b".\r\n":
        return b""
    return head + (await r.readuntil(b"\r\n.\r\n"))[:-3]


async def pop3_login(r, w, user):
    await pop3_status(r, "greeting")
    w.write(b"USER %s\r\n" % user.encode())
    await pop3_status(r, "USER")
    w.write(b"PASS %s\r\n" % PASSWORD)
    await pop3_status(r, "PASS")


async def imap_cmd(r, w, tag, cmd, bulk=False):
    """Sends one command; returns (untagged data, tagged line). bulk: many untagged
    lines expected, read in one readuntil."""
    w.write(b"%s %s\r\n" % (tag, cmd))
    if bulk:
        data = await r.readuntil(b"\r\n" + tag + b" ")
        tagged = tag + b" " + await r.readline()
    else:
        lines = []
        while True:
            line = await r.readline()
            if not line:
                raise BenchError("IMAP connection closed at %r" % cmd[:40])
            if line.startswith(tag + b" "):
                tagged = line
                break
            lines.append(line)
        data = b"".join(lines)
    if not tagged.startswith(tag + b" OK"):
        raise BenchError("IMAP %r: %r" % (cmd[:40], tagged[:200]))
    return data, tagged


EXISTS_RE = re.compile(rb"\* (\d+) EXISTS")


async def imap_login_select(r, w, user):
    greeting = await r.readline()
    if not greeting.startswith(b"* OK"):
        raise BenchError("IMAP greeting: %r" % greeting[:200])
    await imap_cmd(r, w, b"a1", b"LOGIN %s %s" % (user.encode(), PASSWORD))
    data, _ = await imap_cmd(r, w, b"a2", b"SELECT INBOX")
    m = EXISTS_RE.search(data)
    if not m:
        raise BenchError("SELECT without EXISTS: %r" % data[:300])
    return int(m.group(1))


async def imap_sizes(r, w, exists):
    if exists == 0:
        await imap_cmd(r, w, b"a3", b"UID FETCH 1:* (UID RFC822.SIZE)")
        return b""
    data, _ = await imap_cmd(r, w, b"a3", b"UID FETCH 1:* (UID RFC822.SIZE)", bulk=True)
    got = data.count(b" FETCH (")
    if got != exists:
        raise BenchError("size fetch gave %d of %d messages" % (got, exists))
    return data


async def pop3_session(port, tls_ctx, user):
    r, w = await connect(port, tls_ctx)
    try:
        await pop3_login(r, w, user)
        w.write(b"STAT\r\n")
        n = int((await pop3_status(r, "STAT")).split()[1])
        for cmd in (b"UIDL", b"LIST"):
            w.write(cmd + b"\r\n")
            data = await pop3_multi(r, cmd.decode())
            if data.count(b"\r\n") != n:
                raise BenchError("%s gave %d lines, STAT said %d"
                                 % (cmd.decode(), data.count(b"\r\n"), n))
        w.write(b"QUIT\r\n")
        await pop3_status(r, "QUIT")
        return n
    finally:
        w.close()


async def imap_session(port, tls_ctx, user):
    r, w = await connect(port, tls_ctx)
    try:
        exists = await imap_login_select(r, w, user)
        await imap_sizes(r, w, exists)
        await imap_cmd(r, w, b"a4", b"LOGOUT")
        return exists
    finally:
        w.close()


async def read_piece(r):
    chunk = await r.read(CHUNK)
    if not chunk:
        raise BenchError("connection closed in a multi-line response")
    return chunk


async def pop3_body(r, h, dots):
    """Reads a multi-line response's data after its status line, up to the terminating
    line, in pieces (a whole 50 MB message in a growing buffer would cost the generator
    more than the servers). Returns the un-dot-stuffed length; h: a sha256 to feed the
    un-dot-stuffed bytes, or None; dots: the stuffing the message needs."""
    if h is not None:
        return await pop3_body_verify(r, h)
    # Without a digest the bytes are neither copied nor searched (bytes.count alone cost
    # the generator more than popgate spent): the client sends one command at a time,
    # so the data ends exactly with the terminator, and a stuffed body never holds
    # CRLF "." CRLF. The stuffed length is checked against the expected one.
    got = 0
    tail = b"\n"
    while True:
        chunk = await read_piece(r)
        got += len(chunk)
        tail = (tail + chunk[-5:])[-5:]
        if tail.endswith(b"\r\n.\r\n") or (got == 3 and tail == b"\n.\r\n"):
            return got - 3 - dots


async def pop3_body_verify(r, h):
    total = 0
    pending = b""
    while True:
        chunk = await read_piece(r)
        data = pending + chunk if pending else chunk
        nl = data.rfind(b"\n")
        if nl < 0:
            pending = data
            continue
        # whole lines only, so block always begins at a line start
        block, pending = data[:nl + 1], data[nl + 1:]
        end = harness.multiline_end(block)
        if end >= 0:
            if len(block) > end + 3 or pending:
                raise BenchError("data after the terminating line")
            block = block[:end]
        total += len(block) - block.count(b"\n.") - (1 if block[:1] == b"." else 0)
        if h is not None:
            h.update((b"\n" + block).replace(b"\n.", b"\n")[1:])
        if end >= 0:
            return total


async def imap_literal(r, n, h):
    left = n
    while left:
        chunk = await r.read(min(left, CHUNK))
        if not chunk:
            raise BenchError("connection closed in a literal")
        if h is not None:
            h.update(chunk)
        left -= len(chunk)
    return n


def check_message(user, i, got, h):
    size, digest, _ = EXPECTED[user][i]
    if got != size:
        raise BenchError("%s message %d: %d bytes, expected %d" % (user, i + 1, got, size))
    if h is not None and h.hexdigest() != digest:
        raise BenchError("%s message %d: sha256 differs" % (user, i + 1))
    return size


async def pop3_retr_all(port, tls_ctx, user, verify):
    r, w = await connect(port, tls_ctx)
    total = 0
    try:
        await pop3_login(r, w, user)
        w.write(b"STAT\r\n")
        n = int((await pop3_status(r, "STAT")).split()[1])
        if n != len(EXPECTED[user]):
            raise BenchError("%s: STAT %d, expected %d" % (user, n, len(EXPECTED[user])))
        for i in range(n):
            w.write(b"RETR %d\r\n" % (i + 1))
            await pop3_status(r, "RETR")
            h = hashlib.sha256() if verify else None
            total += check_message(user, i, await pop3_body(r, h, EXPECTED[user][i][2]), h)
        w.write(b"QUIT\r\n")
        await pop3_status(r, "QUIT")
    finally:
        w.close()
    return total


FETCH_UID_RE = re.compile(rb"[( ]UID (\d+)")
LITERAL_RE = re.compile(rb"\{(\d+)\}\r\n$")


async def imap_retr_all(port, tls_ctx, user, verify):
    r, w = await connect(port, tls_ctx)
    total = 0
    try:
        exists = await imap_login_select(r, w, user)
        if exists != len(EXPECTED[user]):
            raise BenchError("%s: EXISTS %d, expected %d" % (user, exists,
                                                             len(EXPECTED[user])))
        uids = [int(u) for u in FETCH_UID_RE.findall(await imap_sizes(r, w, exists))]
        if len(uids) != exists:
            raise BenchError("%s: %d UIDs in the size fetch, EXISTS %d"
                             % (user, len(uids), exists))
        for i, uid in enumerate(uids):
            tag = b"f%d" % i
            w.write(b"%s UID FETCH %d BODY.PEEK[]\r\n" % (tag, uid))
            got = None
            h = hashlib.sha256() if verify else None
            while True:
                line = await r.readline()
                if line.startswith(tag + b" "):
                    if not line.startswith(tag + b" OK"):
                        raise BenchError("UID FETCH %d: %r" % (uid, line))
                    break
                m = LITERAL_RE.search(line)
                if m:
                    got = await imap_literal(r, int(m.group(1)), h)
                elif not line:
                    raise BenchError("IMAP connection closed in UID FETCH")
            if got is None:
                raise BenchError("UID FETCH %d: no literal" % uid)
            total += check_message(user, i, got, h)
        await imap_cmd(r, w, b"a9", b"LOGOUT")
    finally:
        w.close()
    return total


def client_ctx(cafile):
    if not cafile:
        return None
    return ssl.create_default_context(cafile=cafile)


# ---------------------------------------------------------------------------
# load generator processes


async def sleep_until(t):
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_with_timeout(coro):
    return await asyncio.wait_for(coro, SESSION_TIMEOUT)


async def sessions_work(p, _conn):
    """Each client runs whole sessions on its own users until end_at."""
    session = pop3_session if p["proto"] == "pop3" else imap_session
    ctx = client_ctx(p.get("cafile"))
    res = {"count": 0, "latencies": [], "errors": [], "ends": []}
    await sleep_until(p["start_at"])

    async def client(users):
        i = 0
        while time.monotonic() < p["end_at"]:
            user = users[i % len(users)]
            i += 1
            t = time.monotonic()
            try:
                await run_with_timeout(session(p["port"], ctx, user))
            except Exception as e:
                res["errors"].append("%s: %s: %s" % (user, type(e).__name__, e))
                continue
            now = time.monotonic()
            res["count"] += 1
            res["latencies"].append(now - t)
            res["ends"].append(now)

    await asyncio.gather(*(client(u) for u in p["clients"]))
    res["ends"] = [max(res["ends"])] if res["ends"] else []
    return res


async def retr_work(p, _conn):
    """Each client downloads every message of its users once."""
    retr = pop3_retr_all if p["proto"] == "pop3" else imap_retr_all
    ctx = client_ctx(p.get("cafile"))
    res = {"bytes": 0, "errors": [], "ends": []}
    await sleep_until(p["start_at"])

    async def client(users):
        for user in users:
            try:
                got = await run_with_timeout(retr(p["port"], ctx, user, p["verify"]))
                res["bytes"] += got
            except Exception as e:
                res["errors"].append("%s: %s: %s" % (user, type(e).__name__, e))
        res["ends"].append(time.monotonic())

    await asyncio.gather(*(client(u) for u in p["clients"]))
    res["ends"] = [max(res["ends"])] if res["ends"] else []
    return res


async def idle_work(p, conn):
    """Opens and authenticates one POP3 session per user, reports, holds them until the
    parent says close."""
    ctx = client_ctx(p.get("cafile"))
    sem = asyncio.Semaphore(p.get("parallel", 32))
    writers = []
    errors = []
    retried = []

    async def one(user):
        async with sem:
            for attempt in range(3):
                w = None
                try:
                    r, w = await run_with_timeout(connect(p["port"], ctx))
                    await run_with_timeout(pop3_login(r, w, user))
                    writers.append(w)
                    return
                except Exception as e:
                    if w is not None:
                        w.close()
                    # thousands of logins at once on a small machine: popgate may time
                    # out upstream and answer [SYS/TEMP], and a client tries again
                    if "[SYS/TEMP]" in str(e) and attempt < 2:
                        retried.append("%s: %s" % (user, e))
                        await asyncio.sleep(1)
                        continue
                    errors.append("%s: %s: %s" % (user, type(e).__name__, e))
                    return

    await asyncio.gather(*(one(u) for u in p["users"]))
    conn.send(("ready", {"opened": len(writers), "errors": errors[:20],
                         "nerrors": len(errors), "retried": len(retried),
                         "retried_first": retried[:3]}))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    for w in writers:
        w.close()
    await asyncio.sleep(0.2)
    return {"errors": errors}


WORK = {"sessions": sessions_work, "retr": retr_work, "idle": idle_work}


def _worker_main(kind, params, conn):
    # not the harness's handlers: a worker must never stop the servers
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    harness._set_pdeathsig()
    t0 = os.times()
    try:
        res = asyncio.run(WORK[kind](params, conn))
        t1 = os.times()
        res["cpu"] = (t1.user - t0.user) + (t1.system - t0.system)
        conn.send(("done", res))
    except BaseException as e:  # reported to the parent, which fails the run
        conn.send(("error", "%s: %s" % (type(e).__name__, e)))
    conn.close()


class Load:
    """Generator processes; params_list: one dict per process."""

    def __init__(self, kind, params_list):
        ctx = multiprocessing.get_context("fork")
        self.procs = []
        self.conns = []
        for params in params_list:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(kind, params, child), daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)

    def recv_all(self, expect, timeout):
        out = []
        deadline = time.monotonic() + timeout
        for c, proc in zip(self.conns, self.procs):
            if not c.poll(max(0.0, deadline - time.monotonic())):
                raise BenchError("load generator %d: no %r within %d s"
                                 % (proc.pid, expect, timeout))
            try:
                what, res = c.recv()
            except EOFError:
                raise BenchError("load generator %d died" % proc.pid)
            if what == "error":
                raise BenchError("load generator: %s" % res)
            if what != expect:
                raise BenchError("load generator sent %r, expected %r" % (what, expect))
            out.append(res)
        return out

    def send_all(self, msg):
        for c in self.conns:
            c.send(msg)

    def join(self):
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()


def split(items, n):
    return [items[i::n] for i in range(n)]


def client_users(users, clients):
    """Client c gets users c, c+clients, ...: no two clients share a user (popgate allows
    one POP3 session per mailbox)."""
    if len(users) < clients:
        raise BenchError("%d clients need at least as many users (have %d)"
                         % (clients, len(users)))
    return [users[c::clients] for c in range(clients)]


# ---------------------------------------------------------------------------
# measurements


class Run:
    def __init__(self, args, p, dovecot, boxes, pki):
        self.args = args
        self.p = p
        self.d = dovecot
        self.boxes = boxes
        self.pki = pki
        self.procs = args.procs
        self.broken = []
        self.meters = {}

    def meter(self, server):
        """The CpuMeter of a started server (popgate or Dovecot), made on first use."""
        if server.pid not in self.meters:
            m = CpuMeter("pg%d" % server.pid, server.pid)
            self.meters[server.pid] = m
            # stopped with the servers on SIGTERM/SIGHUP and at exit, too
            harness._register(m)
        return self.meters[server.pid]

    def close_meters(self):
        for m in self.meters.values():
            m.close()
            harness._unregister(m)

    def fail(self, what, errors, nerrors=None):
        nerrors = len(errors) if nerrors is None else nerrors
        if nerrors:
            msg = "%s: %d errors, first: %s" % (what, nerrors, "; ".join(errors[:3]))
            log("BROKEN " + msg)
            self.broken.append(msg)

    def measure(self, kind, side, pg, params, users_per_client):
        """One timed load of kind against side ('popgate' pg, or 'direct')."""
        port = pg.port if side != "direct" else self.d.port
        nproc = min(self.procs, len(users_per_client))
        start_at = time.monotonic() + 0.3
        common = dict(params, port=port, proto="imap" if side == "direct" else "pop3",
                      start_at=start_at)
        plist = [dict(common, clients=cl) for cl in split(users_per_client, nproc)]
        load = Load(kind, plist)
        while time.monotonic() < start_at:
            time.sleep(0.001)
        cpu0_pg = self.meter(pg).seconds() if pg else 0.0
        cpu0_d = self.meter(self.d).seconds()
        busy0 = machine_busy()
        try:
            results = load.recv_all("done", timeout=params.get("end_at", start_at) -
                                    start_at + 1800)
        finally:
            load.join()
        cpu_pg = (self.meter(pg).seconds() - cpu0_pg) if pg else 0.0
        cpu_d = self.meter(self.d).seconds() - cpu0_d
        busy1 = machine_busy()
        busy = NCPU * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
        ends = [e for r in results for e in r["ends"]]
        wall = (max(ends) - start_at) if ends else float("nan")
        errors = [e for r in results for e in r["errors"]]
        self.fail("%s %s" % (kind, side), errors)
        return {
            "wall": wall,
            "cpu_popgate": cpu_pg,
            "cpu_dovecot": cpu_d,
            "cpu_generator": sum(r["cpu"] for r in results),
            "util_machine": busy,
            "errors": len(errors),
            "results": results,
        }

    # -- sessions

    def sessions(self, side, pg):
        p = self.p
        per_client = client_users(self.boxes["small"], p["clients"])
        start = time.monotonic() + 0.3
        m = self.measure("sessions", side, pg if side != "direct" else None,
                         {"end_at": start + p["seconds"]}, per_client)
        lat = sorted(x for r in m.pop("results") for x in r["latencies"])
        n = len(lat)
        if n == 0:
            self.broken.append("sessions %s: no session completed" % side)
            return None
        m.update({
            "sessions": n,
            "rate": n / m["wall"],
            "p50_ms": 1000 * lat[n // 2],
            "p99_ms": 1000 * lat[min(n - 1, int(n * 0.99))],
            "popgate_cpu_per_session": m["cpu_popgate"] / n,
            "dovecot_cpu_per_session": m["cpu_dovecot"] / n,
            "generator_cpu_per_session": m["cpu_generator"] / n,
            "util_popgate": m["cpu_popgate"] / m["wall"],
            "util_dovecot": m["cpu_dovecot"] / m["wall"],
            "util_generator": m["cpu_generator"] / m["wall"],
        })
        log("sessions %-9s %7.1f/s p50 %6.1f ms p99 %6.1f ms  cpu/session popgate %.2f ms "
            "dovecot %.2f ms generator %.2f ms" % (
                side, m["rate"], m["p50_ms"], m["p99_ms"],
                1000 * m["popgate_cpu_per_session"], 1000 * m["dovecot_cpu_per_session"],
                1000 * m["generator_cpu_per_session"]))
        return m

    # -- retr

    def retr(self, which, side, pg):
        if which == "small":
            per_client = client_users(self.boxes["small"], self.p["clients"])
        else:
            # one client, as a device fetching big mail; several passes, so the figure
            # is not a fraction of a second's
            per_client = [[self.boxes["large"]] * self.p["large_passes"]]
        expected = sum(s for cl in per_client for u in cl for s, _, _ in EXPECTED[u])
        m = self.measure("retr", side, pg if side != "direct" else None,
                         {"verify": self.p["verify"]}, per_client)
        got = sum(r["bytes"] for r in m.pop("results"))
        if got != expected and not m["errors"]:
            self.broken.append("retr %s %s: %d bytes, expected %d"
                               % (which, side, got, expected))
        mbytes = got / MB
        m.update({
            "bytes": got,
            "mb_per_s": mbytes / m["wall"],
            "popgate_cpu_per_mb": m["cpu_popgate"] / mbytes if mbytes else float("nan"),
            "dovecot_cpu_per_mb": m["cpu_dovecot"] / mbytes if mbytes else float("nan"),
            "generator_cpu_per_mb": m["cpu_generator"] / mbytes if mbytes else float("nan"),
        })
        log("retr %-5s %-9s %7.1f MB/s (%.1f MB)  cpu/MB popgate %.2f ms dovecot %.2f ms "
            "generator %.2f ms" % (which, side, m["mb_per_s"], mbytes,
                                   1000 * m["popgate_cpu_per_mb"],
                                   1000 * m["dovecot_cpu_per_mb"],
                                   1000 * m["generator_cpu_per_mb"]))
        return m

    # -- idle

    def idle(self, tls):
        label = "tls" if tls else "plain"
        pg = BenchPopgate(self.args.popgate, self.d, NCPU, self.pki, tls=tls,
                          state_base=self.args.state_base).start()
        cafile = self.pki.ca.cert if tls else None
        try:
            users = self.boxes["idle"]
            self.settle()
            # one session first, so libraries and TLS state are in the baseline
            for attempt in range(5):
                try:
                    asyncio.run(pop3_session(pg.port, client_ctx(cafile), users[0]))
                    break
                except (BenchError, OSError) as e:
                    if attempt == 4:
                        raise
                    log("idle %s: first session failed (%s), again" % (label, e))
                    time.sleep(3)
            time.sleep(0.5)
            base = tree_mem_kb(pg.pid)
            base_rss = tree_mem_kb(pg.pid, b"Rss:")
            nproc = max(1, min(self.procs, len(users)))
            t = time.monotonic()
            load = Load("idle", [{"port": pg.port, "cafile": cafile, "users": u}
                                 for u in split(users, nproc)])
            try:
                ready = load.recv_all("ready", timeout=900)
                open_s = time.monotonic() - t
                time.sleep(1.0)
                pss = tree_mem_kb(pg.pid)
                rss = tree_mem_kb(pg.pid, b"Rss:")
                opened = sum(r["opened"] for r in ready)
                nerr = sum(r["nerrors"] for r in ready)
                retried = sum(r["retried"] for r in ready)
                if retried:
                    log("idle %s: %d logins answered [SYS/TEMP] and were tried again, e.g. %s"
                        % (label, retried, [x for r in ready for x in r["retried_first"]][:1]))
                self.fail("idle %s" % label, [e for r in ready for e in r["errors"]], nerr)
                load.send_all("close")
                done = load.recv_all("done", timeout=300)
            finally:
                load.join()
        finally:
            pg.stop()
            pg.cleanup()
        per = (pss - base) / opened if opened else float("nan")
        m = {"sessions": opened, "pss_base_kib": base, "pss_kib": pss,
             "rss_base_kib": base_rss, "rss_kib": rss, "kib_per_session": per,
             "rss_kib_per_session": (rss - base_rss) / opened if opened else float("nan"),
             "open_seconds": open_s, "sys_temp_retries": retried,
             "cpu_generator": sum(r["cpu"] for r in done)}
        log("idle %-5s %d sessions: PSS %d -> %d KiB, %.1f KiB/session (RSS %.1f), opened "
            "in %.1f s" % (label, opened, base, pss, per, m["rss_kib_per_session"], open_s))
        return m

    def settle(self, timeout=300):
        """Waits until Dovecot is quiet (under 0.1 CPU seconds a second): thousands of
        sessions just closed keep it busy for a while."""
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            c = self.meter(self.d).seconds()
            time.sleep(1)
            if self.meter(self.d).seconds() - c < 0.1:
                break
        waited = time.monotonic() - t
        if waited > 2:
            log("waited %.0f s for Dovecot to settle" % waited)

    # -- bigbox

    async def _bigbox_pop3(self, port):
        r, w = await connect(port, None)
        try:
            await pop3_status(r, "greeting")
            w.write(b"USER bigbox\r\n")
            await pop3_status(r, "USER")
            t0 = time.monotonic()
            w.write(b"PASS %s\r\n" % PASSWORD)
            await pop3_status(r, "PASS")
            w.write(b"STAT\r\n")
            n = int((await pop3_status(r, "STAT")).split()[1])
            t1 = time.monotonic()
            out = {"pass_to_stat": t1 - t0, "messages": n}
            for cmd in (b"UIDL", b"LIST"):
                t = time.monotonic()
                w.write(cmd + b"\r\n")
                data = await pop3_multi(r, cmd.decode())
                out[cmd.decode().lower()] = time.monotonic() - t
                if data.count(b"\r\n") != n:
                    raise BenchError("bigbox %s: %d lines, STAT %d" % (cmd.decode(),
                                                                       data.count(b"\r\n"), n))
            w.write(b"QUIT\r\n")
            await pop3_status(r, "QUIT")
        finally:
            w.close()
        if n != len(EXPECTED["bigbox"]):
            raise BenchError("bigbox STAT %d, expected %d" % (n, len(EXPECTED["bigbox"])))
        return out

    async def _bigbox_imap(self, port):
        r, w = await connect(port, None)
        try:
            greeting = await r.readline()
            if not greeting.startswith(b"* OK"):
                raise BenchError("IMAP greeting %r" % greeting)
            t0 = time.monotonic()
            await imap_cmd(r, w, b"a1", b"LOGIN bigbox %s" % PASSWORD)
            t1 = time.monotonic()
            data, _ = await imap_cmd(r, w, b"a2", b"SELECT INBOX")
            t2 = time.monotonic()
            n = int(EXISTS_RE.search(data).group(1))
            await imap_sizes(r, w, n)
            t3 = time.monotonic()
            await imap_cmd(r, w, b"a4", b"LOGOUT")
        finally:
            w.close()
        if n != len(EXPECTED["bigbox"]):
            raise BenchError("bigbox EXISTS %d, expected %d" % (n, len(EXPECTED["bigbox"])))
        return {"login_to_sizes": t3 - t0, "login": t1 - t0, "select": t2 - t1,
                "fetch_sizes": t3 - t2, "messages": n}

    def bigbox(self, side, pg):
        try:
            if side == "direct":
                m = asyncio.run(self._bigbox_imap(self.d.port))
                log("bigbox direct   LOGIN..sizes %.3f s (LOGIN %.3f SELECT %.3f FETCH %.3f)"
                    % (m["login_to_sizes"], m["login"], m["select"], m["fetch_sizes"]))
            else:
                m = asyncio.run(self._bigbox_pop3(pg.port))
                log("bigbox popgate  PASS..STAT %.3f s, UIDL %.3f s, LIST %.3f s"
                    % (m["pass_to_stat"], m["uidl"], m["list"]))
        except Exception as e:
            self.fail("bigbox %s" % side, ["%s: %s" % (type(e).__name__, e)])
            return None
        return m

    # -- warm-up: Dovecot builds its indexes, popgate records its first UIDLs

    def warm(self, pgs):
        t = time.monotonic()
        users = self.boxes["small"] + [self.boxes["large"]] + self.boxes["idle"][:1]
        for pg in [None] + list(pgs):
            asyncio.run(self._warm_users(pg.port if pg else self.d.port,
                                         "imap" if pg is None else "pop3", users))
        log("warm-up of %d mailboxes (indexes, first UIDLs) took %.1f s"
            % (len(users), time.monotonic() - t))
        first = {}
        first["direct"] = self.bigbox("direct", None)
        for i, pg in enumerate(pgs):
            first["popgate%d" % i] = self.bigbox("popgate", pg)
        return first

    async def _warm_users(self, port, proto, users):
        session = pop3_session if proto == "pop3" else imap_session
        sem = asyncio.Semaphore(8)

        async def one(u):
            async with sem:
                try:
                    await run_with_timeout(session(port, None, u))
                except Exception as e:
                    self.fail("warm-up %s %s" % (proto, u), ["%s: %s" % (type(e).__name__, e)])

        await asyncio.gather(*(one(u) for u in users))


# ---------------------------------------------------------------------------
# report


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def summarize(rounds):
    """Median of every numeric field over the rounds of one (phase, side)."""
    keys = set()
    for r in rounds:
        if r:
            keys.update(k for k, v in r.items() if isinstance(v, (int, float)))
    return {k: med([r.get(k) for r in rounds if r]) for k in sorted(keys)}


def div(a, b):
    return a / b if b else float("nan")


def row(name, pop, direct, ratio, target, ok, unit=""):
    return {"figure": name, "popgate": pop, "direct": direct, "ratio": ratio,
            "target": target, "result": None if ok is None else ("PASS" if ok else "FAIL"),
            "unit": unit}


def build_table(s):
    """The table rows of every phase that has its figures (a phase that broke has none)."""
    rows = []
    for part in (_table_sessions, _table_retr, _table_idle, _table_bigbox):
        try:
            rows += part(s)
        except KeyError:
            pass
    return rows


def _table_sessions(s):
    rows = []
    if "sessions" in s:
        a, d = s["sessions"]["popgate"], s["sessions"]["direct"]
        one = s["sessions"]["popgate1"]
        r = div(a["rate"], d["rate"])
        rows.append(row("sessions/s (%d workers)" % NCPU, a["rate"], d["rate"], r, ">= 0.85x",
                        r >= 0.85))
        rows.append(row("session p50 latency", a["p50_ms"], d["p50_ms"],
                        div(a["p50_ms"], d["p50_ms"]), "", None, "ms"))
        rows.append(row("session p99 latency", a["p99_ms"], d["p99_ms"],
                        div(a["p99_ms"], d["p99_ms"]), "", None, "ms"))
        r = div(a["popgate_cpu_per_session"], d["dovecot_cpu_per_session"])
        rows.append(row("CPU/session popgate vs Dovecot", 1000 * a["popgate_cpu_per_session"],
                        1000 * d["dovecot_cpu_per_session"], r, "<= 0.25x", r <= 0.25, "ms"))
        rows.append(row("  Dovecot CPU/session behind popgate",
                        1000 * a["dovecot_cpu_per_session"],
                        1000 * d["dovecot_cpu_per_session"],
                        div(a["dovecot_cpu_per_session"], d["dovecot_cpu_per_session"]), "",
                        None, "ms"))
        rows.append(row("  generator CPU/session", 1000 * a["generator_cpu_per_session"],
                        1000 * d["generator_cpu_per_session"],
                        div(a["generator_cpu_per_session"], d["generator_cpu_per_session"]), "",
                        None, "ms"))
        r = div(a["rate"], one["rate"])
        rows.append(row("scaling: %d workers / 1 worker" % NCPU, a["rate"], one["rate"], r,
                        ">= 1.6x", r >= 1.6, "/s"))
    return rows


def _table_retr(s):
    rows = []
    if "retr" in s:
        for which, target in (("large", 0.9), ("small", 0.8)):
            a, d = s["retr"]["popgate_" + which], s["retr"]["direct_" + which]
            r = div(a["mb_per_s"], d["mb_per_s"])
            rows.append(row("retr %s MB/s" % which, a["mb_per_s"], d["mb_per_s"], r,
                            ">= %.1fx" % target, r >= target))
            r = div(a["popgate_cpu_per_mb"], d["dovecot_cpu_per_mb"])
            rows.append(row("CPU/MB %s popgate vs Dovecot" % which,
                            1000 * a["popgate_cpu_per_mb"], 1000 * d["dovecot_cpu_per_mb"], r,
                            "<= 0.25x", r <= 0.25, "ms"))
    return rows


def _table_idle(s):
    rows = []
    if "idle" in s:
        for label, limit in (("plain", 24), ("tls", 64)):
            if label not in s["idle"]:
                continue
            v = s["idle"][label]["kib_per_session"]
            rows.append(row("idle %s KiB/session (%d)" % (label, s["idle"][label]["sessions"]),
                            v, None, None, "<= %d KiB" % limit, v <= limit, "KiB"))
    return rows


def _table_bigbox(s):
    rows = []
    if "bigbox" in s:
        a, d = s["bigbox"]["popgate"], s["bigbox"]["direct"]
        r = div(a["pass_to_stat"], d["login_to_sizes"])
        rows.append(row("bigbox PASS-to-STAT (%d msgs)" % a["messages"], a["pass_to_stat"],
                        d["login_to_sizes"], r, "<= 1.2x", r <= 1.2, "s"))
        rows.append(row("bigbox UIDL", a["uidl"], None, None, "< 0.3 s", a["uidl"] < 0.3, "s"))
        rows.append(row("bigbox LIST", a["list"], None, None, "< 0.3 s", a["list"] < 0.3, "s"))
    return rows


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return "%.3f" % v if abs(v) < 10 else "%.1f" % v
    return str(v)


def print_table(rows):
    head = ("figure", "popgate", "direct", "ratio", "target", "result")
    lines = [[r["figure"] + (" [%s]" % r["unit"] if r["unit"] else ""), fmt(r["popgate"]),
              fmt(r["direct"]), fmt(r["ratio"]), r["target"], r["result"] or ""]
             for r in rows]
    widths = [max(len(x[i]) for x in lines + [head]) for i in range(len(head))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for x in lines:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(x, widths)) + " |")
    print("\n".join(out))


def limit_note(s):
    """Which party bounded the sessions figures, from CPU use per wall second."""
    if "popgate1" not in s.get("sessions", {}) or "popgate" not in s["sessions"]:
        return ""
    notes = []
    for key, workers in (("popgate", NCPU), ("popgate1", 1)):
        m = s["sessions"][key]
        total = m["util_popgate"] + m["util_dovecot"] + m["util_generator"]
        others = max(0.0, m["util_machine"] - total)
        if m["util_popgate"] >= 0.9 * workers:
            who = "popgate (its %d worker%s busy)" % (workers, "s" if workers > 1 else "")
        elif m["util_machine"] >= 0.85 * NCPU and others > 0.25 * NCPU:
            who = "the machine's cores, %.2f of them taken by other processes" % others
        elif total >= 0.85 * NCPU:
            big = max(("Dovecot", m["util_dovecot"]), ("popgate", m["util_popgate"]),
                      ("the generator", m["util_generator"]), key=lambda x: x[1])
            who = "the machine's %d cores (largest user: %s)" % (NCPU, big[0])
        else:
            who = "latency, not CPU (cores not saturated)"
        notes.append("%d worker%s: CPU cores in use popgate %.2f, Dovecot %.2f, generator "
                     "%.2f, everything %.2f of %d -> limit: %s"
                     % (workers, "s" if workers > 1 else "", m["util_popgate"],
                        m["util_dovecot"], m["util_generator"], m["util_machine"], NCPU, who))
    return "\n".join(notes)


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 1024
    return {"cpus": NCPU, "cpu_model": model, "mem_mib": mem, "kernel": platform.release(),
            "loadavg_at_start": os.getloadavg(), "python": platform.python_version(),
            "dovecot": subprocess.run(["dovecot", "--version"], capture_output=True,
                                      text=True).stdout.strip()}


# ---------------------------------------------------------------------------
# main


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="small and quick (CI)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--json")
    ap.add_argument("--popgate", default=os.environ.get("POPGATE_RELEASE_BIN") or
                    os.path.join(harness.REPO_ROOT, "build", "release", "popgate"))
    ap.add_argument("--procs", type=int, default=max(2, NCPU),
                    help="load generator processes")
    ap.add_argument("--only", default="sessions,retr,idle,bigbox")
    ap.add_argument("--clients", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--idle", type=int, help="idle sessions")
    ap.add_argument("--idle-messages", type=int, help="messages in each idle mailbox")
    ap.add_argument("--bigbox", type=int, help="messages in the big mailbox")
    ap.add_argument("--verify", action="store_true", help="sha256 of every message")
    ap.add_argument("--dovecot-fork", action="store_true",
                    help="Dovecot's default: a new imap process per session (much slower "
                    "per login) instead of reused imap processes")
    ap.add_argument("--maildir-crlf", action="store_true",
                    help="store messages with CRLF line ends (Dovecot then sends them "
                    "without conversion, largely in the kernel) instead of LF")
    ap.add_argument("--state-base", help="put popgate's state folders below this folder "
                    "(e.g. a tmpfs, to see what fsync costs); default: the temporary folder")
    ap.add_argument("--output-buffer", type=int,
                    help="popgate's limits.output_buffer in bytes (default: popgate's)")
    ap.add_argument("--fail-on-target", action="store_true")
    args = ap.parse_args(argv)
    p = dict(SMOKE if args.smoke else FULL)
    for k in ("rounds", "clients", "seconds", "idle", "idle_messages", "bigbox"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    if args.verify:
        p["verify"] = True
    p["popgate_output_buffer"] = args.output_buffer or "default"
    p["users"] = max(p["users"], p["clients"])
    args.phases = set(x.strip() for x in args.only.split(",") if x.strip())
    unknown = args.phases - {"sessions", "retr", "idle", "bigbox"}
    if unknown:
        ap.error("unknown phase(s): %s" % ", ".join(sorted(unknown)))
    if "idle" not in args.phases:
        p["idle"] = 0
    if not args.json:
        args.json = "/tmp/popgate-bench%s.json" % ("-smoke" if args.smoke else "")
    return args, p


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 65536 and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
            return 65536
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main(argv):
    global OUTPUT_BUFFER
    args, p = parse_args(argv)
    OUTPUT_BUFFER = args.output_buffer
    if not os.access(args.popgate, os.X_OK):
        print("bench: popgate binary not found: %s (build the release tree, see the "
              "module doc)" % args.popgate, file=sys.stderr)
        return 1
    nofile = raise_fd_limit()
    if nofile < 2 * p["idle"] + 1000:
        p["idle"] = max(10, (nofile - 1000) // 2)
        log("file descriptor limit %d: idle sessions cut to %d" % (nofile, p["idle"]))
    started = time.time()
    log("mode %s, %d rounds, popgate %s, %d generator processes"
        % ("smoke" if args.smoke else "full", p["rounds"], args.popgate, args.procs))
    pki = tlsutil.shared_pki()
    imaps_port = harness.free_port()
    dv_conf = dovecot_extra(pki, imaps_port, reuse=not args.dovecot_fork)
    d = harness.Dovecot(extra_config=dv_conf)
    d.imaps_port = imaps_port
    t = time.monotonic()
    boxes = build_mailboxes(d, p, crlf=args.maildir_crlf)
    log("mailboxes written in %.1f s: %d small users x %d, large %s MB, bigbox %d, "
        "%d idle users" % (time.monotonic() - t, p["users"], p["messages"],
                           "+".join(str(x) for x in p["large_mb"]), p["bigbox"], p["idle"]))
    d.start()
    if not harness.wait_for_port(imaps_port, timeout=20):
        raise BenchError("Dovecot's IMAPS port never accepted")
    pg = BenchPopgate(args.popgate, d, NCPU, state_base=args.state_base).start()
    pg1 = BenchPopgate(args.popgate, d, 1, state_base=args.state_base).start()
    run = Run(args, p, d, boxes, pki)
    for srv in (d, pg, pg1):
        run.meter(srv)
    data_cpu_method = run.meter(d).method
    log("popgate pids: %s (%d workers), %s (1 worker); Dovecot master %d"
        % (harness.tree_pids(pg.pid), NCPU, harness.tree_pids(pg1.pid), d.pid))
    data = {"mode": "smoke" if args.smoke else "full", "params": p, "machine": machine(),
            "popgate": args.popgate, "dovecot_extra_config": dv_conf,
            "dovecot_imap_processes": "new per session" if args.dovecot_fork else "reused",
            "maildir_line_ends": "CRLF" if args.maildir_crlf else "LF",
            "rounds": {}, "medians": {}}
    raw = {"sessions": {}, "retr": {}, "bigbox": {}, "idle": {}}
    try:
        first = run.warm([pg, pg1])
        data["bigbox_first_login"] = first
        for rnd in range(p["rounds"]):
            log("round %d of %d" % (rnd + 1, p["rounds"]))
            if "sessions" in args.phases:
                sides = [("popgate", pg), ("direct", None), ("popgate1", pg1)]
                sides = sides[rnd % 3:] + sides[:rnd % 3]
                for key, which in sides:
                    raw["sessions"].setdefault(key, []).append(
                        run.sessions("direct" if which is None else key, which))
            if "retr" in args.phases:
                sides = [("popgate", pg), ("direct", None)]
                if rnd % 2:
                    sides.reverse()
                for which in ("large", "small"):
                    for key, srv in sides:
                        raw["retr"].setdefault("%s_%s" % (key, which), []).append(
                            run.retr(which, key, srv))
            if "bigbox" in args.phases:
                sides = [("popgate", pg), ("direct", None)]
                if rnd % 2:
                    sides.reverse()
                for key, srv in sides:
                    raw["bigbox"].setdefault(key, []).append(run.bigbox(key, srv))
        if "idle" in args.phases:
            for label, tls in (("plain", False), ("tls", True)):
                try:
                    raw["idle"][label] = [run.idle(tls)]
                except Exception as e:  # the other idle figure is still worth having
                    run.fail("idle %s" % label, ["%s: %s" % (type(e).__name__, e)])
    except Exception as e:
        run.broken.append("%s: %s" % (type(e).__name__, e))
        log("BROKEN %s: %s" % (type(e).__name__, e))
    finally:
        for srv in (pg, pg1):
            srv.stop()
            srv.cleanup()
        d.stop()
        run.close_meters()
    for phase, sides in raw.items():
        if sides:
            data["medians"][phase] = {k: summarize(v) for k, v in sides.items()}
    data["rounds"] = raw
    data["cpu_method"] = data_cpu_method

    rows = build_table(data["medians"])
    if not rows and not run.broken:
        run.broken.append("no figures")
    data["table"] = rows
    data["limit"] = limit_note(data["medians"])
    data["broken"] = run.broken
    data["seconds"] = time.time() - started
    with open(args.json, "w") as f:
        json.dump(data, f, indent=2, default=str)
    print()
    print("popgate benchmark (%s, %d round%s, medians), %d CPUs (%s), %d MiB, load %.2f "
          "at start" % (data["mode"], p["rounds"], "s" if p["rounds"] > 1 else "",
                        NCPU, data["machine"]["cpu_model"], data["machine"]["mem_mib"],
                        data["machine"]["loadavg_at_start"][0]))
    if rows:
        print_table(rows)
    if data["limit"]:
        print(data["limit"])
    print("JSON: %s; %.0f s" % (args.json, data["seconds"]))
    if run.broken:
        print("BENCHMARK BROKEN:\n  " + "\n  ".join(run.broken))
        return 1
    missed = [r["figure"] for r in rows if r["result"] == "FAIL"]
    if missed:
        print("targets missed: %s" % ", ".join(m.strip() for m in missed))
        if args.fail_on_target:
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
