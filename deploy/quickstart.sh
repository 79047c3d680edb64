#!/usr/bin/env bash
# Quick start: installs the Debian packages, builds popgate, starts a throwaway Dovecot on
# 127.0.0.1:10143 with a demo user and a few messages, and runs popgate in front of it on
# 127.0.0.1:1110 in the foreground. Ctrl-C stops both and removes the temporary folder.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-/usr/bin/python3}
[ -x "$PYTHON" ] || PYTHON=python3
IMAP_PORT=${IMAP_PORT:-10143}
POP3_PORT=${POP3_PORT:-1110}

if [ "$(id -u)" -eq 0 ]; then
    ./deploy/install-deps.sh
else
    echo "quickstart: not root, skipping deploy/install-deps.sh (run it as root once)" >&2
fi

cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPOPGATE_TESTS=OFF >/dev/null
cmake --build build/release --target popgate -j "$(nproc 2>/dev/null || echo 2)"

DEMO_DIR=$(mktemp -d /tmp/popgate-demo.XXXXXX)
# Dovecot's mail processes run as an unprivileged user and must reach the Maildir below
chmod 755 "$DEMO_DIR"

cleanup() {
    "$PYTHON" tests/integration/harness.py stop-dovecot "$DEMO_DIR/dovecot" || true
    rm -rf "$DEMO_DIR"
    echo "quickstart: stopped Dovecot and removed $DEMO_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# one Dovecot config generator: the test harness's (it stops Dovecot if this shell dies)
dovecot_pid=$("$PYTHON" tests/integration/harness.py demo-dovecot "$DEMO_DIR/dovecot" \
    "$IMAP_PORT" --parent $$)
echo "quickstart: Dovecot (pid $dovecot_pid) serves IMAP on 127.0.0.1:$IMAP_PORT," \
    "log $DEMO_DIR/dovecot/dovecot.log"

mkdir -p "$DEMO_DIR/state"
cat >"$DEMO_DIR/popgate.json" <<EOF
{
  "listeners": [ { "address": "127.0.0.1:$POP3_PORT" } ],
  "upstreams": { "main": { "host": "127.0.0.1", "port": $IMAP_PORT, "tls": "none" } },
  "routes":    [ { "default": true, "upstream": "main" } ],
  "state":     { "dir": "$DEMO_DIR/state" }
}
EOF

cat <<EOF

popgate listens on 127.0.0.1:$POP3_PORT (POP3) in front of Dovecot on 127.0.0.1:$IMAP_PORT (IMAP).
Demo user: demo / demo-password, with 3 messages. Try, from another terminal:

  curl pop3://127.0.0.1:$POP3_PORT/ -u demo:demo-password
  curl pop3://127.0.0.1:$POP3_PORT/1 -u demo:demo-password
  python3 -c 'import poplib; p = poplib.POP3("127.0.0.1", $POP3_PORT); p.user("demo"); p.pass_("demo-password"); print(p.stat()); print(p.uidl()[1]); print(b"\n".join(p.retr(1)[1]).decode()); p.quit()'

Config: $DEMO_DIR/popgate.json. Press Ctrl-C to stop popgate and Dovecot.

EOF

"$ROOT/build/release/popgate" -c "$DEMO_DIR/popgate.json"
