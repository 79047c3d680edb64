#!/usr/bin/env python3
"""Test certificates for popgate's TLS integration tests, made with the `openssl` CLI.

One call, TestPki(), writes into a temporary folder:
  ca            the test CA ("popgate test CA")
  server        localhost + IP:127.0.0.1, signed by ca (Dovecot's and popgate's certificate)
  other_ca      a second, unrelated CA (for "wrong CA" tests)
  other_server  localhost + IP:127.0.0.1, signed by other_ca
  wrong_name    wrong.example only (no localhost, no IP), signed by ca
  legacy        localhost + IP:127.0.0.1, RSA 2048 / sha256, signed by ca: usable with
                TLS 1.0 cipher suites (ECDHE-RSA-*, AES*-SHA)
Each is an object with .cert and .key (PEM paths); .chain is cert followed by its CA.

Every key is RSA 2048 (what TLS 1.0 clients and old devices handle everywhere). Everything
is generated once per process (shared_pki()) and removed at exit.
"""

import atexit
import os
import re
import shutil
import subprocess
import tempfile

OPENSSL = os.environ.get("OPENSSL", "openssl")
DAYS = "30"

# A private openssl config, so no system openssl.cnf default sneaks extensions in.
_REQ_CONFIG = """\
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_LEAF_EXT = """\
[ leaf ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = {san}
"""


class CertFiles:
    def __init__(self, name, cert, key, ca=None):
        self.name = name
        self.cert = cert
        self.key = key
        self.ca = ca  # the CertFiles of the issuer, None for a CA
        self.chain = cert

    def __repr__(self):
        return "CertFiles(%s: %s)" % (self.name, self.cert)


def _run(args, cwd):
    r = subprocess.run([OPENSSL] + args, cwd=cwd, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed (%d): %s"
                           % (" ".join(args), r.returncode, r.stderr.decode(errors="replace")))
    return r.stdout


class TestPki:
    """The certificates listed in the module doc, in root (a new temporary folder by
    default)."""

    __test__ = False  # not a unittest case despite the name

    def __init__(self, root=None):
        self.own_root = root is None
        self.root = os.path.abspath(root or tempfile.mkdtemp(prefix="popgate-pki-"))
        os.makedirs(self.root, exist_ok=True)
        os.chmod(self.root, 0o755)
        self._serial = 1000
        self._req_cnf = self._write("req.cnf", _REQ_CONFIG)
        self.ca = self._make_ca("ca", "popgate test CA")
        self.other_ca = self._make_ca("other_ca", "popgate unrelated CA")
        local = "DNS:localhost, IP:127.0.0.1"
        self.server = self._make_leaf("server", "localhost", local, self.ca)
        self.other_server = self._make_leaf("other_server", "localhost", local, self.other_ca)
        self.wrong_name = self._make_leaf("wrong_name", "wrong.example", "DNS:wrong.example",
                                          self.ca)
        self.legacy = self._make_leaf("legacy", "localhost", local, self.ca)

    def _write(self, name, text, mode=0o644):
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def _newkey(self, name):
        key = os.path.join(self.root, name + ".key")
        _run(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
              "-out", key], self.root)
        # Dovecot reads keys as root at config time; popgate runs as the test user
        os.chmod(key, 0o600)
        return key

    def _make_ca(self, name, cn):
        key = self._newkey(name)
        cert = os.path.join(self.root, name + ".pem")
        _run(["req", "-x509", "-new", "-config", self._req_cnf, "-extensions", "v3_ca",
              "-key", key, "-sha256", "-days", DAYS, "-subj", "/CN=%s" % cn,
              "-set_serial", str(self._next_serial()), "-out", cert], self.root)
        return CertFiles(name, cert, key)

    def _next_serial(self):
        self._serial += 1
        return self._serial

    def _make_leaf(self, name, cn, san, ca):
        key = self._newkey(name)
        csr = os.path.join(self.root, name + ".csr")
        cert = os.path.join(self.root, name + ".pem")
        ext = self._write(name + ".ext", _LEAF_EXT.format(san=san))
        _run(["req", "-new", "-config", self._req_cnf, "-key", key, "-subj", "/CN=%s" % cn,
              "-out", csr], self.root)
        _run(["x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key,
              "-set_serial", str(self._next_serial()), "-days", DAYS, "-sha256",
              "-extfile", ext, "-extensions", "leaf", "-out", cert], self.root)
        os.unlink(csr)
        leaf = CertFiles(name, cert, key, ca)
        chain = os.path.join(self.root, name + ".chain.pem")
        with open(chain, "wb") as out:
            for part in (cert, ca.cert):
                with open(part, "rb") as f:
                    out.write(f.read())
        leaf.chain = chain
        return leaf

    def cleanup(self):
        if os.environ.get("KEEP_TEST_DIRS"):
            return
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)


_shared = None


def shared_pki():
    """One TestPki per process, removed at exit."""
    global _shared
    if _shared is None:
        _shared = TestPki()
        atexit.register(_shared.cleanup)
    return _shared


def openssl_can_tls1(pki, timeout=20):
    """(True, '') if this machine's openssl completes a TLS 1.0 handshake with itself at
    @SECLEVEL=0, else (False, why): s_server -tls1 on a free port, s_client -tls1 to it."""
    import select
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [OPENSSL, "s_server", "-accept", "127.0.0.1:%d" % port, "-naccept", "1",
         "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0", "-cert", pki.legacy.cert,
         "-key", pki.legacy.key],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # s_server prints ACCEPT once it listens
        seen = b""
        deadline = time.monotonic() + 10
        while b"ACCEPT" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or server.poll() is not None:
                return False, "openssl s_server -tls1 did not start: %r" % seen[-500:]
            ready, _, _ = select.select([server.stdout], [], [], left)
            if ready:
                chunk = os.read(server.stdout.fileno(), 4096)
                if not chunk:
                    return False, "openssl s_server -tls1 exited: %r" % seen[-500:]
                seen += chunk
        r = subprocess.run(
            [OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port, "-tls1",
             "-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile", pki.ca.cert],
            input=b"", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        out = r.stdout.decode(errors="replace")
        if re.search(r"Protocol\s*:\s*TLSv1\s*$", out, re.M):
            return True, ""
        return False, "openssl s_client -tls1 against s_server -tls1 failed:\n" + out[-1500:]
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=5)
        server.stdin.close()
        server.stdout.close()


if __name__ == "__main__":
    p = TestPki(root=os.environ.get("PKI_DIR"))
    for c in (p.ca, p.other_ca, p.server, p.other_server, p.wrong_name, p.legacy):
        print(c.name, c.cert, c.key)
    print("tls1:", openssl_can_tls1(p))
    p.cleanup()
