#!/usr/bin/env python3
"""popgate's resident memory while a 200 MB message streams to a slow POP3 client.

Uses a non-sanitized build (POPGATE_RELEASE_BIN, default build/release/popgate): the
client reads the first part slowly, then the rest at full speed, while a thread samples
VmRSS from /proc/PID/status, summed over the master and its workers. Passes if the peak
(sampled VmRSS and the kernel's VmHWM, each summed)
stays under 20 MB and the bytes received equal IMAP's BODY[] (length and sha256).

Run: python3 tests/integration/test_memory.py -v
Env: MEMORY_TEST_MB (message size, default 200), MEMORY_TEST_SLOW_MB (read slowly, default
     120), MEMORY_TEST_RATE_MB (slow rate in MB/s, default 5), MEMORY_LIMIT_MB (default 20)
"""

import hashlib
import os
import re
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

MB = 1024 * 1024
MESSAGE_MB = int(os.environ.get("MEMORY_TEST_MB", "200"))
SLOW_MB = int(os.environ.get("MEMORY_TEST_SLOW_MB", "120"))
RATE_MB = float(os.environ.get("MEMORY_TEST_RATE_MB", "5"))
LIMIT_MB = float(os.environ.get("MEMORY_LIMIT_MB", "20"))


def huge_message_chunks(size):
    """A CRLF message of about size bytes, produced 1 MB at a time; some lines start with
    '.', some are only '.', so the dot-stuffer works all the way through."""
    yield (b"From: huge@example.org\r\nTo: big@example.org\r\nSubject: %d MB\r\n"
           b"Message-ID: <huge@example.org>\r\n\r\n" % (size // MB))
    lines = []
    for i in range(14000):
        if i % 500 == 0:
            lines.append(b".\r\n")
        elif i % 37 == 0:
            lines.append(b".leading dot line %d of the pattern block\r\n" % i)
        else:
            lines.append(b"pattern line %06d abcdefghijklmnopqrstuvwxyz 0123456789 ABCDEF\r\n"
                         % i)
    block = b"".join(lines)
    produced = 0
    n = 0
    while produced < size:
        n += 1
        chunk = b"block %d\r\n" % n + block
        produced += len(chunk)
        yield chunk
    yield b"end of the huge message\r\n"


class SlowPop3(harness.Pop3Raw):
    """Reads small pieces, paced to rate bytes/s until slow_bytes arrived, then freely."""

    def __init__(self, *args, rate, slow_bytes, **kwargs):
        self.rate = rate
        self.slow_bytes = slow_bytes
        self.received = 0
        self.t0 = None
        super().__init__(*args, **kwargs)

    def _fill(self, size=1 << 20):
        if self.t0 is None:
            self.t0 = time.monotonic()
        slow = self.received < self.slow_bytes
        chunk = self.sock.recv(16384 if slow else size)
        if not chunk:
            self.closed_by_peer = True
            raise harness.Pop3Error("connection closed by popgate after %d bytes"
                                    % self.received)
        self.buf += chunk
        self.received += len(chunk)
        if slow:
            ahead = self.received / self.rate - (time.monotonic() - self.t0)
            if ahead > 0:
                time.sleep(ahead)
        return len(chunk)


class RssSampler(threading.Thread):
    def __init__(self, pid, interval=0.05):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.max_rss = 0
        self.max_hwm = 0
        self.samples = 0
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def sample(self):
        # popgate is a master and its workers: what counts is all of them together.
        total_rss = total_hwm = 0
        seen = False
        for pid in harness.tree_pids(self.pid):
            rss, hwm = harness.read_rss_kb(pid)
            if rss is not None:
                seen = True
                total_rss += rss
            if hwm is not None:
                total_hwm += hwm
        if seen:
            self.samples += 1
            self.max_rss = max(self.max_rss, total_rss)
            self.max_hwm = max(self.max_hwm, total_hwm)


class MemoryTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dovecot = harness.Dovecot()
        cls.addClassCleanup(cls.dovecot.stop)
        cls.dovecot.add_user("big", "big-pw")
        t = time.monotonic()
        cls.dovecot.add_message("big", chunks=huge_message_chunks(MESSAGE_MB * MB))
        cls.dovecot.start()
        with cls.dovecot.imap("big", timeout=300) as im:
            [cls.uid] = im.uids()
            cls.size = im.sizes()[cls.uid]
            cls.imap_len, cls.imap_sha = im.body_digest(cls.uid)
        print("\nmemory test: %d-byte message written and read over IMAP in %.1f s"
              % (cls.size, time.monotonic() - t), file=sys.stderr)
        cls.popgate = harness.Popgate(cls.dovecot.port, env_var="POPGATE_RELEASE_BIN",
                                      default_binary="build/release/popgate")
        cls.addClassCleanup(cls._stop_popgate)
        cls.popgate.start()

    @classmethod
    def _stop_popgate(cls):
        cls.popgate.stop()
        cls.popgate.check_after_exit()
        cls.popgate.cleanup()

    def test_200mb_message_to_slow_client_in_bounded_memory(self):
        self.assertEqual(self.imap_len, self.size, "IMAP BODY[] length vs RFC822.SIZE")
        sampler = RssSampler(self.popgate.pid)
        sampler.sample()
        idle_rss = sampler.max_rss
        sampler.start()
        self.addCleanup(sampler.stop_event.set)

        c = SlowPop3("127.0.0.1", self.popgate.port, timeout=60, rcvbuf=65536,
                     rate=RATE_MB * MB, slow_bytes=SLOW_MB * MB)
        self.addCleanup(c.close)
        self.assertTrue(c.login("big", "big-pw").startswith(b"+OK"), "login")
        t = time.monotonic()
        h = hashlib.sha256()
        length = 0
        try:
            status = c.cmd("RETR 1")
            m = re.match(rb"\+OK (\d+) octets", status)
            self.assertTrue(m, "RETR 1 status: %r" % status)
            length = c.read_multi_stream(h.update, timeout=600)
            self.assertTrue(c.cmd("QUIT").startswith(b"+OK"), "QUIT")
        finally:
            elapsed = time.monotonic() - t
            sampler.stop_event.set()
            sampler.join(timeout=5)
            sampler.sample()
            peak_kb = max(sampler.max_rss, sampler.max_hwm)
            print("\nmemory test: %d of %d bytes received in %.1f s (%.1f MB/s); popgate RSS "
                  "idle %d kB, peak sampled VmRSS %d kB, VmHWM %d kB (%d samples); "
                  "limit %d kB" % (c.received, self.size, elapsed,
                                   c.received / MB / max(elapsed, 0.001), idle_rss,
                                   sampler.max_rss, sampler.max_hwm, sampler.samples,
                                   LIMIT_MB * 1024), file=sys.stderr)

        self.assertEqual(length, self.imap_len, "octets received vs IMAP BODY[] length")
        self.assertEqual(h.hexdigest(), self.imap_sha, "sha256 received vs IMAP BODY[]")
        self.assertEqual(int(m.group(1)), self.size, "'+OK <size> octets'")
        self.assertLess(peak_kb, LIMIT_MB * 1024,
                        "popgate's resident memory peaked at %d kB" % peak_kb)


if __name__ == "__main__":
    unittest.main()
