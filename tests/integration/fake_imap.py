#!/usr/bin/env python3
"""A scripted fake IMAP server for popgate's fault tests: a small, correct IMAP4rev1
server for one mailbox (INBOX) that can play one upstream fault per instance.

Standard library only. It listens on 127.0.0.1 on a free port; every thread is a daemon
thread, every socket has a timeout, and the whole server stops by itself after
`lifetime` seconds (or at stop()), so a test that dies cannot leave it behind.

    fake = FakeImap(messages=[b"From: a\\r\\n\\r\\nbody\\r\\n", ...], fault="bye_mid_literal",
                    fault_uid=2)
    fake.start()
    ... popgate with upstream port fake.port ...
    fake.commands()        # [(connection number, command line), ...] as received
    fake.stop()

Commands served: CAPABILITY, LOGIN, AUTHENTICATE PLAIN (with SASL-IR or after "+"), ID,
SELECT/EXAMINE INBOX (FLAGS, EXISTS, RECENT, UIDVALIDITY, UIDNEXT), UID FETCH with UID,
FLAGS, RFC822.SIZE, BODY[...]/BODY.PEEK[...] sections "" HEADER HEADER.FIELDS (...)
HEADER.FIELDS.NOT (...) TEXT and partials <o.n>, UID STORE (+/-FLAGS[.SILENT], FLAGS),
UID EXPUNGE (when UIDPLUS is offered), EXPUNGE, CLOSE, NOOP, CHECK, LOGOUT. Client
literals {n} and {n+} are accepted in any command.

Faults (`fault=`; `fault_uid` picks the message for the fetch faults; None = every body
fetch):
    refuse              nothing listens on the port (connection refused)
    blackhole           a listener whose accept queue is full: connects hang
    hang_greeting       accept, never send a greeting
    garbage_greeting    a greeting line that is not IMAP
    hang_login          no answer to LOGIN / AUTHENTICATE
    hang_select         no answer to SELECT
    hang_fetch_before   no answer at all to a body fetch of fault_uid
    hang_fetch_mid      "* n FETCH (UID u BODY[] {size}" and half the bytes, then silence
    close_mid_literal   half the literal, then the connection is closed
    bye_mid_literal     half the literal, then "\\r\\n* BYE ...\\r\\n" and close
    bye_after_literal   the whole literal, then "* BYE" and close before the tagged OK
    bye_fetch           "* BYE" instead of the FETCH answer, then close
    garbage_fetch       a garbage line instead of the FETCH answer
    long_line_fetch     1 MB without CRLF (an untagged "* OK xxx...") in answer to the fetch
    no_fetch            "NO" to the body fetch of fault_uid (expunged by another client)
    literal_larger      the literal's bytes, then more message text before ")"
                        (the literal announced fewer bytes than the message has)
    literal_smaller     the literal announces more bytes than follow; after the message
                        comes ")\\r\\n<tag> OK" (swallowed by the literal), then silence
    literal_smaller_close  like literal_smaller, then the connection is closed
    no_uidplus          no UIDPLUS capability (so no UID EXPUNGE)
    size_mismatch       RFC822.SIZE in the size fetch is fault_size_delta off the real size
"""

import base64
import re
import socket
import sys
import threading
import time

FAULTS = {
    None, "refuse", "blackhole", "hang_greeting", "garbage_greeting", "hang_login",
    "hang_select", "hang_fetch_before", "hang_fetch_mid", "close_mid_literal",
    "bye_mid_literal", "bye_after_literal", "garbage_fetch", "long_line_fetch", "no_fetch",
    "literal_larger", "literal_smaller", "literal_smaller_close", "no_uidplus",
    "size_mismatch", "bye_fetch",
}

BODY_FETCH_FAULTS = {
    "hang_fetch_before", "hang_fetch_mid", "close_mid_literal", "bye_mid_literal",
    "bye_after_literal", "garbage_fetch", "long_line_fetch", "no_fetch", "literal_larger",
    "literal_smaller", "literal_smaller_close", "bye_fetch",
}

BASE_CAPS = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "AUTH=PLAIN"]


class _Closed(Exception):
    pass


class Message:
    def __init__(self, uid, data, flags=()):
        self.uid = uid
        self.data = data
        self.flags = set(flags)
        self.expunged = False

    def header(self):
        i = self.data.find(b"\r\n\r\n")
        if i < 0:
            return self.data
        return self.data[:i + 4]

    def text(self):
        i = self.data.find(b"\r\n\r\n")
        if i < 0:
            return b""
        return self.data[i + 4:]


def _header_fields(header, names, negate=False):
    """The header's fields named in names (or all others, if negate), then a blank line."""
    wanted = {n.lower() for n in names}
    out = []
    keep = False
    for line in header.split(b"\r\n"):
        if line == b"":
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().decode("latin-1").lower()
        keep = (name in wanted) != negate
        if keep:
            out.append(line)
    return b"".join(l + b"\r\n" for l in out) + b"\r\n"


def _tokenize(s):
    """A FETCH/STORE argument string into tokens: atoms (with [...] kept whole), '(' ')'
    and quoted strings."""
    toks = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == " ":
            i += 1
        elif c in "()":
            toks.append(c)
            i += 1
        elif c == '"':
            j = i + 1
            val = []
            while j < len(s) and s[j] != '"':
                if s[j] == "\\" and j + 1 < len(s):
                    j += 1
                val.append(s[j])
                j += 1
            toks.append('"' + "".join(val))
            i = j + 1
        else:
            j = i
            depth = 0
            while j < len(s):
                if s[j] == "[":
                    depth += 1
                elif s[j] == "]":
                    depth -= 1
                elif depth == 0 and s[j] in " ()":
                    break
                j += 1
            toks.append(s[i:j])
            i = j
    return toks


def _parse_astrings(s, n):
    """The first n astrings (atoms or quoted strings) of s (a str of latin-1 characters);
    the reader has already turned literals into quoted strings. Returns bytes values."""
    out = []
    i = 0
    while len(out) < n and i < len(s):
        if s[i] == " ":
            i += 1
            continue
        if s[i] == '"':
            j = i + 1
            val = []
            while j < len(s) and s[j] != '"':
                if s[j] == "\\" and j + 1 < len(s):
                    j += 1
                val.append(s[j])
                j += 1
            out.append("".join(val).encode("latin-1"))
            i = j + 1
        else:
            j = s.find(" ", i)
            if j < 0:
                j = len(s)
            out.append(s[i:j].encode("latin-1"))
            i = j
    return out


class FakeImap:
    """See the module docstring. messages: list of bytes (served as they are: give CRLF
    line ends); flags: optional list of flag sets, one per message."""

    def __init__(self, messages=(), flags=None, users=None, fault=None, fault_uid=None,
                 fault_size_delta=100, uidvalidity=1700000000, first_uid=1,
                 lifetime=300.0, caps=None, hang_seconds=None):
        if fault not in FAULTS:
            raise ValueError("unknown fault %r (known: %s)"
                             % (fault, ", ".join(sorted(f for f in FAULTS if f))))
        self.users = dict(users or {"user": "pass"})
        self.fault = fault
        self.fault_uid = fault_uid
        self.fault_size_delta = fault_size_delta
        self.uidvalidity = uidvalidity
        self.lifetime = lifetime
        self.hang_seconds = hang_seconds if hang_seconds is not None else lifetime
        self.lock = threading.RLock()
        self.mailbox = []
        for i, data in enumerate(messages):
            f = flags[i] if flags and i < len(flags) else ()
            self.mailbox.append(Message(first_uid + i, data, f))
        self.uidnext = first_uid + len(self.mailbox)
        caps = list(caps) if caps is not None else list(BASE_CAPS)
        if fault != "no_uidplus" and "UIDPLUS" not in caps:
            caps.append("UIDPLUS")
        if fault == "no_uidplus":
            caps = [c for c in caps if c != "UIDPLUS"]
        self.caps = caps
        self.port = None
        self.listener = None
        self._fillers = []
        self._conns = []
        self._log = []  # (connection number, command line as str)
        self._events = []  # (connection number, what happened)
        self._nconn = 0
        self._stopping = threading.Event()
        self._started_at = None
        self.fault_fired = threading.Event()

    # -- lifecycle

    def start(self):
        self._started_at = time.monotonic()
        if self.fault == "refuse":
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
            s.close()  # nothing listens there now
            return self
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        if self.fault == "blackhole":
            self.listener.listen(0)
            for _ in range(3):
                f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                f.setblocking(False)
                try:
                    f.connect(("127.0.0.1", self.port))
                except BlockingIOError:
                    pass
                self._fillers.append(f)
            time.sleep(0.2)
        else:
            self.listener.listen(64)
            self.listener.settimeout(0.2)
            threading.Thread(target=self._accept_loop, daemon=True,
                             name="fake-imap-accept").start()
        threading.Thread(target=self._reaper, daemon=True, name="fake-imap-reaper").start()
        return self

    def blackhole_swallows(self, wait=1.0):
        """Premise check for fault='blackhole': a connect really hangs."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(wait)
            try:
                s.connect(("127.0.0.1", self.port))
            except socket.timeout:
                return True
            except OSError:
                return False
            return False

    def _reaper(self):
        self._stopping.wait(self.lifetime)
        self.stop()

    def stop(self):
        self._stopping.set()
        for s in [self.listener] + self._fillers + list(self._conns):
            if s is None:
                continue
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- what happened

    def commands(self):
        with self.lock:
            return list(self._log)

    def command_lines(self):
        """Every command line received, without the tag."""
        return [line.split(" ", 1)[1] if " " in line else line
                for _, line in self.commands()]

    def events(self):
        with self.lock:
            return list(self._events)

    def connection_count(self):
        with self.lock:
            return self._nconn

    def uids(self):
        """UIDs still in the mailbox (flagged \\Deleted ones included)."""
        with self.lock:
            return [m.uid for m in self.mailbox if not m.expunged]

    def flags(self):
        with self.lock:
            return {m.uid: set(m.flags) for m in self.mailbox if not m.expunged}

    def expunge_uid(self, uid):
        """Expunges a message as another IMAP client would."""
        with self.lock:
            for m in self.mailbox:
                if m.uid == uid:
                    m.expunged = True

    def _event(self, cid, what):
        with self.lock:
            self._events.append((cid, what))

    # -- connections

    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self._nconn += 1
                cid = self._nconn
                self._conns.append(sock)
            threading.Thread(target=self._serve, args=(sock, cid), daemon=True,
                             name="fake-imap-%d" % cid).start()

    def _hang(self, sock, cid, what):
        """Keeps the connection open and silent (reads and drops input) until the hang
        time is over or the peer closes."""
        self._event(cid, "hang:" + what)
        self.fault_fired.set()
        deadline = time.monotonic() + self.hang_seconds
        sock.settimeout(0.5)
        while not self._stopping.is_set() and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                self._event(cid, "peer_closed_during_hang:" + what)
                break
            with self.lock:
                self._log.append((cid, "<during hang> " + data.decode("latin-1")[:200]))
        raise _Closed()

    def _serve(self, sock, cid):
        conn = _Conn(self, sock, cid)
        try:
            conn.run()
        except (_Closed, OSError, socket.timeout):
            pass
        except Exception as e:  # a bug in the fake: say so, do not hang the test
            print("fake_imap: connection %d: %r" % (cid, e), file=sys.stderr)
            self._event(cid, "fake_error:%r" % e)
        finally:
            try:
                sock.close()
            except OSError:
                pass
            self._event(cid, "closed")


class _Conn:
    """One client connection of a FakeImap."""

    def __init__(self, server, sock, cid):
        self.srv = server
        self.sock = sock
        self.cid = cid
        self.buf = bytearray()
        self.authed = False
        self.selected = False
        sock.settimeout(1.0)

    # -- I/O

    def send(self, data):
        self.sock.sendall(data)

    def send_and_close(self, data):
        """The fault's last bytes, then the connection ends (after a moment, so they
        arrive before the close)."""
        self.send(data)
        self.srv.fault_fired.set()
        time.sleep(0.2)
        raise _Closed()

    def _recv_more(self):
        while True:
            if self.srv._stopping.is_set():
                raise _Closed()
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise _Closed()
            self.buf += chunk
            return

    def read_raw_line(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > 1 << 20:
                raise _Closed()
            self._recv_more()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._recv_more()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_command(self):
        """One command, with its literals folded in as quoted strings (for parsing) and
        the raw text kept for the log."""
        parts = []
        while True:
            line = self.read_raw_line()
            body = line.rstrip(b"\r\n")
            m = re.search(rb"\{(\d+)(\+?)\}$", body)
            if not m:
                parts.append(body)
                break
            n = int(m.group(1))
            parts.append(body[:m.start()])
            if not m.group(2):
                self.send(b"+ OK\r\n")
            lit = self.read_exact(n)
            q = lit.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            parts.append(b'"' + q + b'"')
        return b"".join(parts).decode("latin-1")

    # -- mailbox helpers

    def live(self):
        return [m for m in self.srv.mailbox if not m.expunged]

    def seq_of(self, msg):
        return self.live().index(msg) + 1

    def uid_set(self, spec):
        live = self.live()
        maxuid = live[-1].uid if live else 0
        out = set()
        for part in spec.split(","):
            if ":" in part:
                a, b = part.split(":", 1)
                a = maxuid if a == "*" else int(a)
                b = maxuid if b == "*" else int(b)
                lo, hi = min(a, b), max(a, b)
                out.update(m.uid for m in live if lo <= m.uid <= hi)
            else:
                u = maxuid if part == "*" else int(part)
                out.update(m.uid for m in live if m.uid == u)
        return [m for m in live if m.uid in out]

    # -- the session

    def run(self):
        srv = self.srv
        if srv.fault == "hang_greeting":
            srv._hang(self.sock, self.cid, "greeting")
        if srv.fault == "garbage_greeting":
            srv._event(self.cid, "fault:garbage_greeting")
            srv.fault_fired.set()
            self.send(b"\x00\xffHELLO THIS IS NOT IMAP )))(((\r\n")
        else:
            self.send(b"* OK [CAPABILITY %s] fake IMAP ready\r\n"
                      % " ".join(srv.caps).encode())
        while True:
            line = self.read_command()
            with srv.lock:
                srv._log.append((self.cid, line))
            m = re.match(r"(\S+) (\S+)(?: (.*))?$", line)
            if not m:
                self.send(b"* BAD malformed command\r\n")
                continue
            tag, cmd, args = m.group(1), m.group(2).upper(), m.group(3) or ""
            tagb = tag.encode("latin-1")
            if cmd == "UID":
                sub = args.split(" ", 1)
                cmd = "UID " + sub[0].upper()
                args = sub[1] if len(sub) > 1 else ""
            handler = getattr(self, "cmd_" + cmd.replace(" ", "_").lower(), None)
            if handler is None:
                self.send(tagb + b" BAD unknown command\r\n")
                continue
            handler(tagb, args)

    def ok(self, tag, text="completed"):
        self.send(tag + b" OK " + text.encode() + b"\r\n")

    def cmd_capability(self, tag, args):
        self.send(b"* CAPABILITY %s\r\n" % " ".join(self.srv.caps).encode())
        self.ok(tag)

    def cmd_noop(self, tag, args):
        self.ok(tag)

    def cmd_check(self, tag, args):
        self.ok(tag)

    def cmd_id(self, tag, args):
        self.send(b'* ID ("name" "fake_imap")\r\n')
        self.ok(tag)

    def cmd_enable(self, tag, args):
        self.send(b"* ENABLED\r\n")
        self.ok(tag)

    def _login_ok(self, tag, user, password):
        if self.srv.fault == "hang_login":
            self.srv._hang(self.sock, self.cid, "login")
        if self.srv.users.get(user.decode("latin-1")) == password.decode("latin-1"):
            self.authed = True
            self.send(tag + b" OK [CAPABILITY %s] Logged in\r\n"
                      % " ".join(self.srv.caps).encode())
        else:
            self.send(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")

    def cmd_login(self, tag, args):
        vals = _parse_astrings(args, 2)
        if len(vals) != 2:
            self.send(tag + b" BAD LOGIN needs two arguments\r\n")
            return
        self._login_ok(tag, vals[0], vals[1])

    def cmd_authenticate(self, tag, args):
        parts = args.split(" ")
        if parts[0].upper() != "PLAIN":
            self.send(tag + b" NO Unsupported mechanism\r\n")
            return
        if len(parts) > 1:
            ir = parts[1]
        else:
            self.send(b"+ \r\n")
            ir = self.read_raw_line().rstrip(b"\r\n").decode("latin-1")
            with self.srv.lock:
                self.srv._log.append((self.cid, "<sasl response>"))
        if ir == "*":
            self.send(tag + b" BAD Authentication aborted\r\n")
            return
        try:
            raw = base64.b64decode(ir if ir != "=" else "", validate=True)
            _authz, user, password = raw.split(b"\0", 2)
        except Exception:
            self.send(tag + b" BAD Invalid base64\r\n")
            return
        self._login_ok(tag, user, password)

    def cmd_select(self, tag, args, readonly=False):
        if not self.authed:
            self.send(tag + b" BAD not logged in\r\n")
            return
        if self.srv.fault == "hang_select":
            self.srv._hang(self.sock, self.cid, "select")
        with self.srv.lock:
            n = len(self.live())
            uidnext = self.srv.uidnext
        self.send(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
                  b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
                  b"Flags permitted.\r\n"
                  b"* %d EXISTS\r\n* 0 RECENT\r\n"
                  b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
                  b"* OK [UIDNEXT %d] Predicted next UID\r\n" % (n, self.srv.uidvalidity,
                                                                 uidnext))
        self.selected = True
        self.send(tag + (b" OK [READ-ONLY] Examine completed\r\n" if readonly else
                         b" OK [READ-WRITE] Select completed\r\n"))

    def cmd_examine(self, tag, args):
        self.cmd_select(tag, args, readonly=True)

    def cmd_logout(self, tag, args):
        self.send(b"* BYE Logging out\r\n")
        self.ok(tag)
        raise _Closed()

    def cmd_close(self, tag, args):
        with self.srv.lock:
            for m in self.live():
                if "\\Deleted" in m.flags:
                    m.expunged = True
        self.selected = False
        self.ok(tag)

    def _expunge(self, tag, msgs):
        out = []
        with self.srv.lock:
            for m in list(msgs):
                if "\\Deleted" in m.flags and not m.expunged:
                    out.append(b"* %d EXPUNGE\r\n" % self.seq_of(m))
                    m.expunged = True
        self.send(b"".join(out))
        self.ok(tag)

    def cmd_expunge(self, tag, args):
        self._expunge(tag, self.live())

    def cmd_uid_expunge(self, tag, args):
        if "UIDPLUS" not in self.srv.caps:
            self.send(tag + b" BAD Unknown command UID EXPUNGE\r\n")
            return
        with self.srv.lock:
            msgs = self.uid_set(args.strip())
        self._expunge(tag, msgs)

    def cmd_uid_store(self, tag, args):
        m = re.match(r"(\S+) ([+-]?)FLAGS(\.SILENT)? \(?([^)]*)\)?$", args, re.I)
        if not m:
            self.send(tag + b" BAD bad STORE\r\n")
            return
        spec, op, silent, flaglist = m.groups()
        flags = set(flaglist.split())
        out = []
        with self.srv.lock:
            for msg in self.uid_set(spec):
                if op == "+":
                    msg.flags |= flags
                elif op == "-":
                    msg.flags -= flags
                else:
                    msg.flags = set(flags)
                if not silent:
                    out.append(b"* %d FETCH (UID %d FLAGS (%s))\r\n"
                               % (self.seq_of(msg), msg.uid,
                                  " ".join(sorted(msg.flags)).encode()))
        self.send(b"".join(out))
        self.ok(tag)

    # -- FETCH

    def _parse_items(self, text):
        toks = _tokenize(text)
        if toks and toks[0] == "(":
            toks = toks[1:-1] if toks[-1] == ")" else toks[1:]
        items = []
        i = 0
        while i < len(toks):
            t = toks[i]
            items.append(t)
            i += 1
        return items

    def _section(self, msg, item):
        """(name as answered, bytes) of a BODY[...] / BODY.PEEK[...] item."""
        m = re.match(r"(BODY|BODY\.PEEK|BINARY\.PEEK|BINARY|RFC822)(?:\[([^\]]*)\])?"
                     r"(?:<(\d+)\.(\d+)>)?$", item, re.I)
        if not m:
            return None
        kind, sect, off, cnt = m.groups()
        kind = kind.upper()
        sect = sect or ""
        su = sect.upper()
        if kind == "RFC822":
            name, data = "RFC822", msg.data
        else:
            if su == "":
                data = msg.data
            elif su == "HEADER":
                data = msg.header()
            elif su == "TEXT":
                data = msg.text()
            elif su.startswith("HEADER.FIELDS.NOT"):
                names = re.findall(r"[^\s()]+", sect[len("HEADER.FIELDS.NOT"):])
                data = _header_fields(msg.header(), names, negate=True)
            elif su.startswith("HEADER.FIELDS"):
                names = re.findall(r"[^\s()]+", sect[len("HEADER.FIELDS"):])
                data = _header_fields(msg.header(), names)
            else:
                data = msg.data
            base = "BINARY" if kind.startswith("BINARY") else "BODY"
            name = "%s[%s]" % (base, sect)
            if kind in ("BODY", "BINARY"):
                msg.flags.add("\\Seen")
        if off is not None:
            off, cnt = int(off), int(cnt)
            data = data[off:off + cnt]
            name += "<%d>" % off
        return name, data

    def cmd_uid_fetch(self, tag, args):
        if not self.selected:
            self.send(tag + b" BAD no mailbox selected\r\n")
            return
        spec, _, rest = args.partition(" ")
        items = self._parse_items(rest)
        srv = self.srv
        with srv.lock:
            msgs = self.uid_set(spec)
        body_items = [it for it in items if re.match(r"(BODY|BINARY|RFC822)(\.PEEK)?\[|RFC822$",
                                                     it, re.I)]
        is_full_body = any(re.match(r"BODY(\.PEEK)?\[\]$", it, re.I) for it in body_items)
        is_body_fetch = any(not re.match(r"BODY(\.PEEK)?\[HEADER\.FIELDS", it, re.I)
                            for it in body_items)
        faulted = (srv.fault in BODY_FETCH_FAULTS and is_body_fetch and
                   (srv.fault_uid is None or any(m.uid == srv.fault_uid for m in msgs)))
        if faulted and srv.fault == "no_fetch":
            srv._event(self.cid, "fault:no_fetch")
            srv.fault_fired.set()
            self.send(tag + b" NO [EXPUNGEISSUED] Some messages could not be FETCHed "
                      b"(expunged by another client)\r\n")
            return
        if faulted and srv.fault == "bye_fetch":
            srv._event(self.cid, "fault:bye_fetch")
            self.send_and_close(b"* BYE Server shutting down for maintenance.\r\n")
        if faulted and srv.fault == "hang_fetch_before":
            srv._hang(self.sock, self.cid, "fetch_before")
        if faulted and srv.fault == "garbage_fetch":
            srv._event(self.cid, "fault:garbage_fetch")
            srv.fault_fired.set()
            self.send(b"\x01\x02 garbage \xff\xfe not imap at all )))\r\n")
            # and nothing more: a correct client gives up on us here
            srv._hang(self.sock, self.cid, "after_garbage")
        if faulted and srv.fault == "long_line_fetch":
            srv._event(self.cid, "fault:long_line_fetch")
            srv.fault_fired.set()
            try:
                self.send(b"* OK " + b"x" * (1 << 20))
            except OSError:
                raise _Closed()
            srv._hang(self.sock, self.cid, "after_long_line")
        out = []
        for msg in msgs:
            with srv.lock:
                seq = self.seq_of(msg)
            fields = []
            literal_tail = None
            for it in items:
                iu = it.upper()
                if iu == "UID":
                    continue
                if iu == "RFC822.SIZE":
                    size = len(msg.data)
                    if srv.fault == "size_mismatch" and (srv.fault_uid in (None, msg.uid)):
                        size += srv.fault_size_delta
                    fields.append(b"RFC822.SIZE %d" % size)
                elif iu == "FLAGS":
                    fields.append(b"FLAGS (%s)" % " ".join(sorted(msg.flags)).encode())
                elif iu == "INTERNALDATE":
                    fields.append(b'INTERNALDATE "01-Jan-2024 00:00:00 +0000"')
                else:
                    sec = self._section(msg, it)
                    if sec is None:
                        self.send(tag + b" BAD unknown fetch item\r\n")
                        return
                    name, data = sec
                    fields.append(("%s {%d}\r\n" % (name, len(data))).encode() + data)
            line = b"* %d FETCH (UID %d" % (seq, msg.uid)
            for f in fields:
                line += b" " + f
            line += b")\r\n"
            if faulted and (srv.fault_uid is None or msg.uid == srv.fault_uid) and \
                    is_body_fetch:
                self.send(b"".join(out))
                out = []
                self._faulty_fetch(tag, seq, msg, items, is_full_body)
                return
            out.append(line)
        out.append(tag + b" OK Fetch completed.\r\n")
        self.send(b"".join(out))

    def _faulty_fetch(self, tag, seq, msg, items, is_full_body):
        srv = self.srv
        fault = srv.fault
        srv._event(self.cid, "fault:" + fault)
        body_item = next(it for it in items
                         if re.match(r"(BODY|BINARY|RFC822)", it, re.I) and it.upper() != "UID"
                         and it.upper() != "RFC822.SIZE")
        name, data = self._section(msg, body_item)
        head = b"* %d FETCH (UID %d %s " % (seq, msg.uid, name.encode())
        half = data[:len(data) // 2]
        if fault == "hang_fetch_mid":
            self.send(head + b"{%d}\r\n" % len(data) + half)
            srv._hang(self.sock, self.cid, "fetch_mid")
        if fault == "close_mid_literal":
            self.send_and_close(head + b"{%d}\r\n" % len(data) + half)
        if fault == "bye_mid_literal":
            self.send_and_close(head + b"{%d}\r\n" % len(data) + half +
                                b"\r\n* BYE Server shutting down.\r\n")
        if fault == "bye_after_literal":
            self.send_and_close(head + b"{%d}\r\n" % len(data) + data +
                                b")\r\n* BYE Server shutting down.\r\n")
        if fault == "literal_larger":
            # the literal stops at half the message; the rest follows as if it were part
            # of the FETCH response
            self.send(head + b"{%d}\r\n" % len(half) + half + data[len(half):] + b")\r\n" +
                      tag + b" OK Fetch completed.\r\n")
            srv.fault_fired.set()
            # then behave (answer later commands) so popgate's reaction is what counts
            return
        if fault in ("literal_smaller", "literal_smaller_close"):
            self.send(head + b"{%d}\r\n" % (len(data) + 4096) + data + b")\r\n" + tag +
                      b" OK Fetch completed.\r\n")
            srv.fault_fired.set()
            if fault == "literal_smaller_close":
                time.sleep(0.2)
                raise _Closed()
            srv._hang(self.sock, self.cid, "literal_smaller")
        raise AssertionError("fault %r has no fetch script" % fault)


if __name__ == "__main__":
    # A manual check: python3 fake_imap.py [fault] serves two messages for 60 s.
    fault = sys.argv[1] if len(sys.argv) > 1 else None
    f = FakeImap(messages=[b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n"],
                 fault=fault, lifetime=60).start()
    print("fake IMAP on 127.0.0.1:%d (fault %s), user/pass" % (f.port, fault))
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        pass
    f.stop()
