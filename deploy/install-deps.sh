#!/bin/sh
# Installs every Debian 12 package popgate needs to build, test and run its demo.
# Idempotent; safe to run as root on a fresh machine without a terminal.
set -eu

PKGS="build-essential cmake pkg-config clang libclang-rt-14-dev clang-format
libev-dev libssl-dev libjansson-dev check
dovecot-core dovecot-imapd
python3 curl fetchmail openssl ca-certificates procps iproute2"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: run as root (apt-get)" >&2
    exit 1
fi

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0

# Installing dovecot would start the system service; tests never use it.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
