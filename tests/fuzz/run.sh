#!/usr/bin/env bash
# Builds every libFuzzer target with clang (ASan+UBSan) and runs each for FUZZ_SECONDS
# (default 10: the smoke run of ./tests/run.sh). A longer campaign is one command:
#   FUZZ_SECONDS=1800 ./tests/fuzz/run.sh            # 30 minutes per target
#   FUZZ_SECONDS=600 ./tests/fuzz/run.sh imap_parser   # one target
# New inputs go to a corpus folder outside the tree (FUZZ_CORPUS, default
# /tmp/popgate-fuzz-corpus); the seeds in tests/fuzz/seeds/ are read, never written.
# Exits non-zero if a target fails to build or finds a crash, leak or assertion.
set -euo pipefail

cd "$(dirname "$0")/../.."
SECONDS_EACH=${FUZZ_SECONDS:-10}
CORPUS_ROOT=${FUZZ_CORPUS:-/tmp/popgate-fuzz-corpus}
OUT=${FUZZ_BUILD:-build/fuzz}
CFLAGS="-std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"

# target name -> sources (beside tests/fuzz/fuzz_NAME.c) and libraries
declare -A SOURCES=(
    [pop3_parser]="protocols/pop3_parser.c"
    [dotstuff]="protocols/pop3_dotstuff.c"
    [imap_parser]="protocols/imap_parser.c"
    [proxy_protocol]="protocols/proxy_protocol.c"
    [config]="proxy/config.c proxy/tls.c proxy/user_map.c mapping/uidl.c"
    [state]="mapping/sha256.c"
    [uidl_format]="mapping/uidl.c mapping/legacy_import.c mapping/state.c"
)
declare -A LIBS=(
    [config]="$(pkg-config --libs jansson openssl)"
    [state]="$(pkg-config --libs jansson)"
    [uidl_format]="$(pkg-config --libs jansson)"
)
INCLUDES="-Iprotocols -Imapping -Iproxy $(pkg-config --cflags jansson openssl)"

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    for f in tests/fuzz/fuzz_*.c; do
        n=${f#tests/fuzz/fuzz_}
        targets+=("${n%.c}")
    done
fi

mkdir -p "$OUT"
failed=0
for t in "${targets[@]}"; do
    src="tests/fuzz/fuzz_$t.c"
    if [ -z "${SOURCES[$t]+x}" ]; then
        echo "fuzz $t: no build recipe in tests/fuzz/run.sh"
        failed=1
        continue
    fi
    # shellcheck disable=SC2086
    if ! clang $CFLAGS $INCLUDES "$src" ${SOURCES[$t]} ${LIBS[$t]:-} -o "$OUT/fuzz_$t"; then
        echo "fuzz $t: build failed"
        failed=1
        continue
    fi
    corpus="$CORPUS_ROOT/$t"
    mkdir -p "$corpus"
    seeds="tests/fuzz/seeds/$t"
    [ -d "$seeds" ] || seeds=""
    echo "fuzz $t: ${SECONDS_EACH}s"
    # shellcheck disable=SC2086
    if ! (cd "$OUT" && ASAN_OPTIONS=detect_leaks=1 "./fuzz_$t" -max_total_time="$SECONDS_EACH" \
        -print_final_stats=1 -artifact_prefix="$PWD/crash-$t-" "$corpus" ${seeds:+"$OLDPWD/$seeds"} \
        >"fuzz_$t.log" 2>&1); then
        echo "fuzz $t: FAILED; see $OUT/fuzz_$t.log and $OUT/crash-$t-*"
        tail -30 "$OUT/fuzz_$t.log"
        failed=1
        continue
    fi
    grep -E "stat::number_of_executed_units|cov:" "$OUT/fuzz_$t.log" | tail -2 | tr '\n' ' '
    echo
done
exit "$failed"
