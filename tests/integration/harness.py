#!/usr/bin/env python3
"""Test harness for popgate's integration tests: a private Dovecot IMAP server, a popgate
process in front of it, and raw POP3 and IMAP clients to drive and inspect them.

Standard library only. Every process started here is stopped by stop(), at interpreter
exit, on SIGTERM/SIGHUP, and by a small watchdog process (which also removes the temporary
folder) if the test process dies without cleaning up, even by SIGKILL. Every socket
operation has a timeout. KEEP_TEST_DIRS=1 keeps the temporary folders for inspection.

Small CLI (used by deploy/quickstart.sh, so there is one Dovecot config generator):
    harness.py demo-dovecot DIR PORT [--parent PID]   start Dovecot with the demo user
    harness.py stop-dovecot DIR                        stop the Dovecot living in DIR
"""

import atexit
import ctypes
import hashlib
import imaplib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TEST_SYSTEM_USER = "popgate-test"
SANITIZER_MARKERS = (
    b"ERROR: AddressSanitizer",
    b"ERROR: LeakSanitizer",
    b"runtime error:",
)

# ---------------------------------------------------------------------------
# process bookkeeping: everything started is stopped at exit or on a signal

_live = []  # objects with a stop() method, stopped in reverse order
_live_lock = threading.RLock()
_handlers_installed = False


def _register(obj):
    global _handlers_installed
    with _live_lock:
        if obj not in _live:
            _live.append(obj)
    if not _handlers_installed:
        _handlers_installed = True
        atexit.register(stop_all)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) in (signal.SIG_DFL, None):
                    signal.signal(sig, _on_signal)


def _unregister(obj):
    with _live_lock:
        if obj in _live:
            _live.remove(obj)


def stop_all():
    """Stops every server this process started that is still running."""
    while True:
        with _live_lock:
            if not _live:
                return
            obj = _live[-1]
        try:
            obj.stop()
            if isinstance(obj, Popgate):
                obj.cleanup()
        except Exception as e:  # keep stopping the others
            print("harness: stopping %r failed: %s" % (obj, e), file=sys.stderr)
        _unregister(obj)


def _on_signal(signum, _frame):
    # unittest catches SystemExit inside tests, so clean up here and die by the signal.
    stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except OSError:
        return False


def kill_and_wait(pid, timeout=10.0, sig=signal.SIGTERM):
    """Sends sig to pid, waits up to timeout for it to go, then SIGKILLs it.
    Returns True if it went away after sig, False if SIGKILL was needed."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    return False


def _set_pdeathsig():
    """preexec_fn: the child gets SIGTERM when the test process dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _start_watchdog(parent_pid, target_pid, remove_dir=None):
    """A detached process that kills target_pid (and removes remove_dir) if parent_pid
    dies first."""
    args = [sys.executable, os.path.abspath(__file__), "watchdog", str(parent_pid),
            str(target_pid)]
    if remove_dir:
        args.append(remove_dir)
    return subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def _watchdog_main(parent_pid, target_pid, remove_dir=None):
    target_gone_at = None
    while True:
        if not pid_alive(parent_pid):
            kill_and_wait(target_pid, timeout=5)
            if remove_dir and not os.environ.get("KEEP_TEST_DIRS"):
                shutil.rmtree(remove_dir, ignore_errors=True)
            return 0
        if not pid_alive(target_pid):
            # stopped by the test (which owns its folder from now on), or killed along
            # with the test process (PR_SET_PDEATHSIG): look at the parent a while longer
            if target_gone_at is None:
                target_gone_at = time.monotonic()
            elif time.monotonic() - target_gone_at > 2:
                return 0
        time.sleep(0.25)


# ---------------------------------------------------------------------------
# sockets


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port, host="127.0.0.1", timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(port, timeout=15.0, host="127.0.0.1", alive=None):
    """Waits until host:port accepts a connection. alive() returning False aborts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_accepts(port, host):
            return True
        if alive is not None and not alive():
            return False
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------
# Dovecot


def ensure_system_user(name=TEST_SYSTEM_USER):
    """Returns (uid, gid) of the unprivileged user that owns the test Maildirs."""
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
        return pw.pw_uid, pw.pw_gid
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             "--user-group", name],
            check=True, timeout=30,
        )
        pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


class Dovecot:
    """A private Dovecot 2.3 IMAP server on 127.0.0.1 with its config, users and Maildirs
    in one temporary folder."""

    def __init__(self, root=None, port=None, keep=False, extra_config=""):
        self.extra_config = extra_config
        self.own_root = root is None
        self.root = os.path.abspath(root or tempfile.mkdtemp(prefix="popgate-dovecot-"))
        self.keep = keep
        self.port = port
        self.fixed_port = port is not None
        self.pid = None
        self.users = {}
        self.conf_path = os.path.join(self.root, "dovecot.conf")
        self.passwd_path = os.path.join(self.root, "users")
        self.base_dir = os.path.join(self.root, "run")
        self.log_path = os.path.join(self.root, "dovecot.log")
        self.instance_name = "popgate-test-%d-%d" % (os.getpid(), id(self) % 100000)
        self._watchdog = None
        self._msg_counter = 0
        if self.own_root:
            _register(self)

    def __repr__(self):
        return "Dovecot(port=%s, pid=%s, root=%s)" % (self.port, self.pid, self.root)

    # -- configuration

    def _config_text(self):
        uid, gid = ensure_system_user()
        mail_user = pwd.getpwuid(uid).pw_name
        lines = [
            "# generated by tests/integration/harness.py",
            "protocols = imap",
            "listen = 127.0.0.1",
            "base_dir = %s" % self.base_dir,
            "state_dir = %s" % os.path.join(self.root, "state"),
            "log_path = %s" % self.log_path,
            "info_log_path = %s" % self.log_path,
            "instance_name = %s" % self.instance_name,
            "ssl = no",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            "auth_failure_delay = 0",
            "auth_verbose = yes",
            "mail_location = maildir:~/Maildir",
            "mail_uid = %d" % uid,
            "mail_gid = %d" % gid,
            "first_valid_uid = 1",
            "first_valid_gid = 1",
            "mail_temp_dir = %s" % os.path.join(self.root, "tmp"),
            "mail_max_userip_connections = 10000",
            "default_process_limit = 1000",
            "default_client_limit = 10000",
            "default_vsz_limit = 0",
            "imap_max_line_length = 1M",
            "mail_privileged_group =",
        ]
        if os.geteuid() != 0:
            lines += [
                "default_internal_user = %s" % mail_user,
                "default_internal_group = %s" % pwd.getpwuid(uid).pw_name,
                "default_login_user = %s" % mail_user,
            ]
        lines += [
            "passdb {",
            "  driver = passwd-file",
            "  args = scheme=PLAIN %s" % self.passwd_path,
            "}",
            "userdb {",
            "  driver = passwd-file",
            "  args = %s" % self.passwd_path,
            "}",
            "service imap-login {",
            "  inet_listener imap {",
            "    address = 127.0.0.1",
            "    port = %d" % self.port,
            "  }",
            "  inet_listener imaps {",
            "    port = 0",
            "  }",
            "  process_min_avail = 1",
            "}",
            "service stats {",
            "  unix_listener stats-writer {",
            "    mode = 0666",
            "  }",
            "}",
            # no auth penalty: tests fail logins on purpose from 127.0.0.1, and anvil's
            # growing delay (up to 15 s) would then slow or time out the next login
            "service anvil {",
            "  unix_listener anvil-auth-penalty {",
            "    mode = 0",
            "  }",
            "}",
            self.extra_config,
            "",
        ]
        return "\n".join(lines)

    def _write_passwd(self):
        uid, gid = ensure_system_user()
        tmp = self.passwd_path + ".tmp"
        with open(tmp, "wb") as f:
            for name, (password, home) in self.users.items():
                f.write(b"%s:{PLAIN}%s::::%s::\n" % (name.encode(), password, home.encode()))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.passwd_path)

    # -- users and messages

    def add_user(self, name, password):
        """Adds (or replaces) a user with an empty INBOX. password: str or bytes, any bytes
        except NUL, CR, LF and ':' (passwd-file separates fields with ':')."""
        if isinstance(password, str):
            password = password.encode("utf-8")
        if any(c in password for c in b"\0\r\n:"):
            raise ValueError("password may not contain NUL, CR, LF or ':'")
        # any printable name but ':' (the passwd-file separator); names that are not
        # plain words (as "../x" or "a/b") get a home folder named after their hash
        if not re.fullmatch(r"[\x21-\x39\x3b-\x7e]+", name):
            raise ValueError("user name %r not usable in a passwd-file" % name)
        plain = re.fullmatch(r"[A-Za-z0-9_@+-][A-Za-z0-9._@+-]{0,99}", name)
        home = os.path.join(self.root, "home", name if plain else
                            "u-" + hashlib.sha256(name.encode()).hexdigest()[:16])
        uid, gid = ensure_system_user()
        for sub in ("", "Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp"):
            d = os.path.join(home, sub)
            os.makedirs(d, exist_ok=True)
            os.chown(d, uid, gid)
            os.chmod(d, 0o700)
        self.users[name] = (password, home)
        self._write_passwd()
        return home

    def maildir(self, user):
        return os.path.join(self.users[user][1], "Maildir")

    def add_message(self, user, data=None, chunks=None, subdir="new", flags=""):
        """Writes one message file straight into the user's Maildir (tmp/, then renamed
        into new/ or cur/). data: bytes; or chunks: an iterable of bytes, written as it
        is produced so huge messages never sit in memory. Returns the file's path."""
        if subdir not in ("new", "cur"):
            raise ValueError("subdir must be 'new' or 'cur'")
        uid, gid = ensure_system_user()
        md = self.maildir(user)
        self._msg_counter += 1
        now = time.time()
        # increasing names: Dovecot assigns UIDs to new files in filename order
        base = "%d.M%06dP%dQ%d.popgate-test" % (int(now), self._msg_counter, os.getpid(),
                                                self._msg_counter)
        tmp_path = os.path.join(md, "tmp", base)
        with open(tmp_path, "wb") as f:
            if data is not None:
                f.write(data)
            if chunks is not None:
                for chunk in chunks:
                    f.write(chunk)
        os.chown(tmp_path, uid, gid)
        os.chmod(tmp_path, 0o600)
        name = base if subdir == "new" else base + ":2," + "".join(sorted(flags))
        final = os.path.join(md, subdir, name)
        os.rename(tmp_path, final)
        return final

    # -- lifecycle

    def start(self, timeout=20.0):
        if self.pid is not None:
            return self
        for d in (self.root, os.path.join(self.root, "state"), os.path.join(self.root, "tmp"),
                  os.path.join(self.root, "home")):
            os.makedirs(d, exist_ok=True)
        # the mail processes run unprivileged and must reach the homes below root
        os.chmod(self.root, 0o755)
        os.chmod(os.path.join(self.root, "home"), 0o755)
        os.chmod(os.path.join(self.root, "tmp"), 0o1777)
        if not os.path.exists(self.passwd_path):
            self._write_passwd()
        attempts = 1 if self.fixed_port else 5
        last_error = ""
        for _ in range(attempts):
            if not self.fixed_port:
                self.port = free_port()
            with open(self.conf_path, "w") as f:
                f.write(self._config_text())
            # the daemonized master keeps its stdio: give it a file, never a pipe
            out_path = os.path.join(self.root, "dovecot-start.out")
            with open(out_path, "wb") as out:
                try:
                    r = subprocess.run(["dovecot", "-c", self.conf_path],
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                       timeout=timeout)
                    rc = r.returncode
                except subprocess.TimeoutExpired:
                    rc = -1
            if rc != 0:
                with open(out_path, "rb") as f:
                    last_error = f.read().decode(errors="replace")
                pid = self._read_master_pid(timeout=0.5)
                if pid is not None:
                    kill_and_wait(pid)
                continue
            pid = self._read_master_pid(timeout=5)
            if pid is None:
                last_error = "no master.pid appeared\n" + self.log_text()[-2000:]
                continue
            self.pid = pid
            _register(self)
            self._watchdog = _start_watchdog(
                os.getpid(), pid, self.root if self.own_root and not self.keep else None)
            if wait_for_port(self.port, timeout=timeout, alive=lambda: pid_alive(pid)):
                return self
            last_error = "port %d never accepted\n%s" % (self.port, self.log_text()[-2000:])
            self.stop()
        raise RuntimeError("Dovecot did not start: %s" % last_error)

    def _read_master_pid(self, timeout):
        path = os.path.join(self.base_dir, "master.pid")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(path) as f:
                    pid = int(f.read().strip())
                if pid_alive(pid):
                    return pid
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return None

    def stop(self, timeout=10.0):
        """Stops the master (and so every Dovecot process of this instance)."""
        if self.pid is not None:
            kill_and_wait(self.pid, timeout=timeout)
            self.pid = None
        if self._watchdog is not None:
            try:
                self._watchdog.kill()
                self._watchdog.wait(timeout=5)
            except Exception:
                pass
            self._watchdog = None
        _unregister(self)
        if os.environ.get("KEEP_TEST_DIRS"):
            self.keep = True
        if self.own_root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def detach(self):
        """Leaves the server running after this process exits (the CLI's demo mode)."""
        _unregister(self)
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait(timeout=5)
            self._watchdog = None
        self.own_root = False

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def imap(self, user, password=None, timeout=60):
        """An Imap client logged in as user, INBOX selected."""
        if password is None:
            password = self.users[user][0]
        return Imap("127.0.0.1", self.port, user, password, timeout=timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------------------
# IMAP inspection (imaplib)


class Imap:
    """What IMAP holds, read with imaplib: UIDVALIDITY, UIDs, sizes, bytes, flags."""

    def __init__(self, host, port, user, password, timeout=60, readonly=True):
        if isinstance(password, str):
            password = password.encode("utf-8")
        self.conn = imaplib.IMAP4(host, port, timeout=timeout)
        try:
            password.decode("ascii")
            self.conn.login(user, password.decode("ascii"))
        except UnicodeDecodeError:
            # imaplib's LOGIN is ASCII only; SASL PLAIN carries any bytes
            blob = b"\0" + user.encode() + b"\0" + password
            self.conn.authenticate("PLAIN", lambda _challenge: blob)
        typ, _ = self.conn.select("INBOX", readonly=readonly)
        if typ != "OK":
            raise RuntimeError("SELECT INBOX failed")
        self.uidvalidity = int(self.conn.response("UIDVALIDITY")[1][0])

    def close(self):
        try:
            self.conn.logout()
        except Exception:
            try:
                self.conn.shutdown()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check(self, typ, data, what):
        if typ != "OK":
            raise RuntimeError("IMAP %s failed: %r" % (what, data))

    def uids(self):
        """Every UID in INBOX, ascending (includes messages flagged \\Deleted)."""
        typ, data = self.conn.uid("SEARCH", None, "ALL")
        self._check(typ, data, "UID SEARCH")
        return sorted(int(x) for x in data[0].split())

    def _fetch_items(self, uidset, items):
        typ, data = self.conn.uid("FETCH", uidset, items)
        self._check(typ, data, "UID FETCH")
        return data

    def sizes(self):
        """{uid: RFC822.SIZE}"""
        if not self.uids():
            return {}
        out = {}
        for item in self._fetch_items("1:*", "(UID RFC822.SIZE)"):
            if isinstance(item, tuple):
                item = item[0]
            if not item:
                continue
            m = re.search(rb"UID (\d+)", item)
            s = re.search(rb"RFC822\.SIZE (\d+)", item)
            if m and s:
                out[int(m.group(1))] = int(s.group(1))
        return out

    def flags(self):
        """{uid: set of flags}"""
        if not self.uids():
            return {}
        out = {}
        for item in self._fetch_items("1:*", "(UID FLAGS)"):
            if isinstance(item, tuple):
                item = item[0]
            if not item:
                continue
            m = re.search(rb"UID (\d+)", item)
            f = re.search(rb"FLAGS \(([^)]*)\)", item)
            if m and f:
                out[int(m.group(1))] = set(f.group(1).decode().split())
        return out

    def _literal(self, uid, section):
        data = self._fetch_items(str(uid), "(%s)" % section)
        for item in data:
            if isinstance(item, tuple):
                return item[1]
        # an empty literal comes back as "{0}" followed by nothing; some imaplib
        # versions render it as a quoted string
        for item in data:
            if isinstance(item, bytes) and re.search(rb'BODY\[[^\]]*\](<\d+>)? ""', item):
                return b""
        raise RuntimeError("no literal in FETCH %s %s: %r" % (uid, section, data[:2]))

    def body(self, uid):
        """BODY.PEEK[] of one message (Dovecot serves the CRLF form)."""
        return self._literal(uid, "BODY.PEEK[]")

    def header(self, uid):
        return self._literal(uid, "BODY.PEEK[HEADER]")

    def body_digest(self, uid, chunk=8 << 20):
        """(length, sha256 hex) of BODY.PEEK[] read in partial fetches, for huge messages."""
        h = hashlib.sha256()
        total = 0
        offset = 0
        while True:
            part = self._literal(uid, "BODY.PEEK[]<%d.%d>" % (offset, chunk))
            h.update(part)
            total += len(part)
            offset += len(part)
            if len(part) < chunk:
                break
        return total, h.hexdigest()

    def uidl(self, uid):
        return "%08x%08x" % (uid, self.uidvalidity)


# ---------------------------------------------------------------------------
# popgate


class Popgate:
    """A popgate process in the foreground, `popgate -c FILE`, stderr in a log file."""

    def __init__(self, upstream_port, upstream_host="127.0.0.1", binary=None, limits=None,
                 extra=None, root=None, port=None, env_var="POPGATE_BIN",
                 default_binary="build/asan/popgate"):
        self.binary = binary or os.environ.get(env_var) or default_binary
        if not os.path.isabs(self.binary):
            self.binary = os.path.join(REPO_ROOT, self.binary)
        self.own_root = root is None
        self.root = os.path.abspath(root or tempfile.mkdtemp(prefix="popgate-proxy-"))
        self.state_dir = os.path.join(self.root, "state")
        self.config_path = os.path.join(self.root, "popgate.json")
        self.log_path = os.path.join(self.root, "popgate.log")
        self.upstream_port = upstream_port
        self.upstream_host = upstream_host
        self.limits = limits
        self.extra = extra or {}
        self.port = port
        self.fixed_port = port is not None
        self.proc = None
        self.pid = None
        self.returncode = None
        self.needed_sigkill = False
        self._log_file = None
        self._watchdog = None
        if self.own_root:
            _register(self)

    def __repr__(self):
        return "Popgate(port=%s, pid=%s)" % (self.port, self.pid)

    def config(self):
        cfg = {
            "listeners": [{"address": "127.0.0.1:%d" % self.port}],
            "upstreams": {"main": {"host": self.upstream_host, "port": self.upstream_port,
                                   "tls": "none"}},
            "routes": [{"default": True, "upstream": "main"}],
            "state": {"dir": self.state_dir},
        }
        # no growing delay after failed logins unless a test asks for one: tests fail
        # logins from 127.0.0.1 on purpose (as Dovecot's auth_failure_delay = 0 above)
        cfg["limits"] = {"auth_failure_delay": 0}
        if self.limits:
            cfg["limits"].update(self.limits)
        cfg.update(self.extra)
        return cfg

    def start(self, timeout=20.0):
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError("popgate binary not found: %s (set POPGATE_BIN)" % self.binary)
        os.makedirs(self.state_dir, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        attempts = 1 if self.fixed_port else 3
        for _ in range(attempts):
            if not self.fixed_port:
                self.port = free_port()
            with open(self.config_path, "w") as f:
                json.dump(self.config(), f, indent=2)
            self._log_file = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [self.binary, "-c", self.config_path],
                stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=self._log_file,
                env=env, cwd=self.root, preexec_fn=_set_pdeathsig,
            )
            self.pid = self.proc.pid
            _register(self)
            self._watchdog = _start_watchdog(os.getpid(), self.pid,
                                             self.root if self.own_root else None)
            if wait_for_port(self.port, timeout=timeout,
                             alive=lambda: self.proc.poll() is None):
                return self
            self.stop()
        raise RuntimeError("popgate did not start listening on port %d; log:\n%s"
                           % (self.port, self.log_text()[-4000:]))

    def is_running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=15.0):
        """SIGTERM, then SIGKILL after timeout. Returns the exit status."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.needed_sigkill = True
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            self.returncode = self.proc.returncode
            self.proc = None
        if self._watchdog is not None:
            try:
                self._watchdog.kill()
                self._watchdog.wait(timeout=5)
            except Exception:
                pass
            self._watchdog = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        _unregister(self)
        return self.returncode

    def log_bytes(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def log_text(self):
        return self.log_bytes().decode("utf-8", "replace")

    def sanitizer_report(self):
        """The sanitizer reports in the log, or '' if there are none."""
        log = self.log_bytes()
        hits = [log.find(m) for m in SANITIZER_MARKERS if m in log]
        if not hits:
            return ""
        start = max(0, log.rfind(b"\n", 0, min(hits)) - 2000)
        return log[start:start + 12000].decode("utf-8", "replace")

    def check_after_exit(self):
        """Raises AssertionError if the sanitizers reported anything. Call after stop()."""
        report = self.sanitizer_report()
        if report:
            raise AssertionError("popgate sanitizer report (log %s):\n%s"
                                 % (self.log_path, report))

    def cleanup(self):
        if os.environ.get("KEEP_TEST_DIRS"):
            print("harness: kept %s" % self.root, file=sys.stderr)
            return
        if self.own_root and self.proc is None:
            shutil.rmtree(self.root, ignore_errors=True)

    def rss_kb(self):
        """(VmRSS, VmHWM) in kB from /proc, or (None, None) if the process is gone."""
        return read_rss_kb(self.pid)

    def pop3(self, timeout=30):
        return Pop3Raw("127.0.0.1", self.port, timeout=timeout)


def child_pids(pid):
    """Live (not zombie) child pids of pid, from /proc's parent links: a popgate
    master's workers."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(rest[1]) == pid and rest[0] not in (b"Z", b"X"):
            out.append(int(name))
    return sorted(out)


def tree_pids(root):
    """root and every live process below it."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(child_pids(pid))
    return pids


def read_rss_kb(pid):
    rss = hwm = None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


# ---------------------------------------------------------------------------
# raw POP3 client


class TreeRss(threading.Thread):
    """Samples VmRSS summed over a process tree every interval seconds; .peak in kB."""

    def __init__(self, pid, interval=0.05):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.stop_event = threading.Event()

    def sample(self):
        total = 0
        for p in tree_pids(self.pid):
            rss, _ = read_rss_kb(p)
            total += rss or 0
        self.peak = max(self.peak, total)
        return total

    def run(self):
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)


class NoticesFailure:
    """A unittest.TestCase mixin: test_failed() runs after a test of the class failed or
    raised (say, to keep its logs)."""

    def run(self, result=None):
        bad = (lambda: len(result.failures) + len(result.errors)) if result else (lambda: 0)
        before = bad()
        try:
            return super().run(result)
        finally:
            if bad() > before:
                self.test_failed()

    def test_failed(self):
        pass


class TcpRelay:
    """A TCP relay on 127.0.0.1 in front of target_port (Dovecot), one thread per
    direction per connection; stops by itself when the test process ends (daemon
    threads). Subclasses pass the bytes on in _pump(src, dst, to_server)."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.sockets = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                down, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                down.close()
                continue
            self.sockets += [down, up]
            for src, dst, to_server in ((down, up, True), (up, down, False)):
                threading.Thread(target=self._pump, args=(src, dst, to_server),
                                 daemon=True).start()

    def _pump(self, src, dst, to_server):
        raise NotImplementedError

    def close(self):
        self.stopping.set()
        self.thread.join(timeout=5)
        for sock in self.sockets + [self.listener]:
            try:
                sock.close()
            except OSError:
                pass


class Pop3Error(Exception):
    pass


def multiline_end(block):
    """Where the terminating line (exactly ".\r\n") starts in block, which begins at a
    line start of a multi-line POP3 response; -1 when it holds none."""
    if block.startswith(b".\r\n"):
        return 0
    end = block.find(b"\n.\r\n")
    return end + 1 if end >= 0 else -1


class Pop3Raw:
    """A POP3 client over a raw socket, for exact framing and bad input. Every read has
    a timeout; read_* raise socket.timeout / Pop3Error rather than block forever."""

    def __init__(self, host, port, timeout=30, rcvbuf=None, read_greeting=True):
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = bytearray()
        self.closed_by_peer = False
        self.greeting = self.read_line() if read_greeting else None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Drops the connection without QUIT (RST where possible)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        except OSError:
            pass
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, size=1 << 20):
        chunk = self.sock.recv(size)
        if not chunk:
            self.closed_by_peer = True
            raise Pop3Error("connection closed by popgate; unread: %r" % bytes(self.buf[:200]))
        self.buf += chunk
        return len(chunk)

    def read_line(self, max_len=1 << 20):
        """One line including its CRLF (bytes)."""
        deadline = time.monotonic() + self.timeout
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            start = len(self.buf)
            if len(self.buf) > max_len:
                raise Pop3Error("line longer than %d" % max_len)
            if time.monotonic() > deadline:
                raise socket.timeout("no full line within %ss" % self.timeout)
            self._fill()

    def cmd(self, line):
        """Sends one command line (CRLF added) and returns the status line, CRLF stripped."""
        if isinstance(line, str):
            line = line.encode()
        try:
            self.send(line + b"\r\n")
            return self.status()
        except (OSError, Pop3Error) as e:
            raise Pop3Error("sent %r, no status line: %s" % (line[:80], e)) from e

    def status(self):
        line = self.read_line()
        if not line.endswith(b"\r\n"):
            raise Pop3Error("status line not ended by CRLF: %r" % line)
        return line[:-2]

    def read_multi_stream(self, sink, timeout=None):
        """Reads a multi-line body up to the terminating '.', un-dot-stuffing it exactly,
        and passes the data bytes (CRLF line ends kept) to sink() in pieces. Returns the
        number of data bytes. Raises Pop3Error if the connection ends first."""
        deadline = time.monotonic() + (timeout or max(self.timeout, 600))
        total = 0
        while True:
            # work on whole lines only, so self.buf always begins at a line start
            last_nl = self.buf.rfind(b"\n")
            if last_nl >= 0:
                block = bytes(self.buf[:last_nl + 1])
                end = multiline_end(block)
                if end >= 0:
                    data = block[:end]
                    del self.buf[:end + 3]
                    out = self._unstuff(data)
                    if out:
                        sink(out)
                    return total + len(out)
                data = block
                del self.buf[:last_nl + 1]
                out = self._unstuff(data)
                total += len(out)
                if out:
                    sink(out)
            if time.monotonic() > deadline:
                raise socket.timeout("multi-line response not finished in time")
            self._fill()

    @staticmethod
    def _unstuff(block):
        # block starts at a line start and ends after a line end: drop the first '.' of
        # every line that starts with '.'
        if not block:
            return block
        return (b"\n" + block).replace(b"\n.", b"\n")[1:]

    def read_multi(self, timeout=None):
        """The un-dot-stuffed data of a multi-line response (bytes)."""
        parts = []
        self.read_multi_stream(parts.append, timeout=timeout)
        return b"".join(parts)

    def read_multi_lines(self, timeout=None):
        """The lines of a multi-line response, un-dot-stuffed, without line ends."""
        data = self.read_multi(timeout=timeout)
        if not data:
            return []
        if not data.endswith(b"\r\n"):
            raise Pop3Error("multi-line data not ended by CRLF: %r" % data[-50:])
        return data[:-2].split(b"\r\n")

    def login(self, user, password):
        """USER + PASS; returns the PASS status line. Raises Pop3Error on -ERR at USER."""
        if isinstance(user, str):
            user = user.encode()
        if isinstance(password, str):
            password = password.encode()
        r = self.cmd(b"USER " + user)
        if not r.startswith(b"+OK"):
            raise Pop3Error("USER answered %r" % r)
        return self.cmd(b"PASS " + password)

    def expect_closed(self, timeout=5):
        """True if popgate closes the connection within timeout (data before is dropped)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except socket.timeout:
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(self.timeout)


# ---------------------------------------------------------------------------
# message helpers


def crlf(data):
    """The CRLF form of a message, as Dovecot serves it."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def top_of(message, k):
    """What TOP n k must send for a message (CRLF form): the header, the blank line and
    the first k body lines."""
    i = message.find(b"\r\n\r\n")
    if i < 0:
        return message
    end = i + 4
    for _ in range(k):
        j = message.find(b"\r\n", end)
        if j < 0:
            return message  # fewer than k complete lines: all of it
        end = j + 2
    return message[:end]


def pop3_equal(received, imap_bytes):
    """POP3 data equals IMAP bytes, allowing the CRLF that framing adds to a message
    lacking a final line end."""
    if received == imap_bytes:
        return True
    return (not imap_bytes.endswith(b"\r\n")) and received == imap_bytes + b"\r\n"


# ---------------------------------------------------------------------------
# CLI


DEMO_MESSAGES = [
    b"From: Alice <alice@example.org>\nTo: demo@example.org\nSubject: Welcome to popgate\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\nMessage-ID: <demo-1@example.org>\n\n"
    b"Hello! This message lives on the IMAP server; popgate serves it over POP3.\n",
    b"From: Bob <bob@example.org>\nTo: demo@example.org\nSubject: Dots and lines\n"
    b"Date: Mon, 01 Jan 2024 11:00:00 +0000\nMessage-ID: <demo-2@example.org>\n\n"
    b"A line that starts with a dot follows:\n.like this one\n.\nPOP3 dot-stuffs them.\n",
    b"From: Carol <carol@example.org>\nTo: demo@example.org\nSubject: Third message\n"
    b"Date: Mon, 01 Jan 2024 12:00:00 +0000\nMessage-ID: <demo-3@example.org>\n\n"
    b"Try TOP 3 0, UIDL, DELE 3 and QUIT, then look again over IMAP.\n",
]


def _cli(argv):
    if len(argv) >= 1 and argv[0] == "watchdog":
        return _watchdog_main(int(argv[1]), int(argv[2]), argv[3] if len(argv) > 3 else None)
    if len(argv) >= 3 and argv[0] == "demo-dovecot":
        root, port = argv[1], int(argv[2])
        parent = None
        if len(argv) >= 5 and argv[3] == "--parent":
            parent = int(argv[4])
        d = Dovecot(root=root, port=port)
        d.add_user("demo", "demo-password")
        for m in DEMO_MESSAGES:
            d.add_message("demo", m)
        try:
            d.start()
        except RuntimeError as e:
            print("harness: %s" % e, file=sys.stderr)
            return 1
        d.detach()
        if parent is not None:
            _start_watchdog(parent, d.pid)
        print(d.pid)
        return 0
    if len(argv) == 2 and argv[0] == "stop-dovecot":
        path = os.path.join(os.path.abspath(argv[1]), "run", "master.pid")
        try:
            with open(path) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return 0
        kill_and_wait(pid, timeout=10)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
