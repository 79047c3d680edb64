#!/usr/bin/env bash
# The whole test command: installs the Debian packages, builds a sanitized and a release
# tree, runs the unit tests, the format check, the integration tests against a real
# Dovecot (sanitized popgate) and the memory test (release popgate). Exits non-zero on any
# failure; the last line is "N passed, N failed" over the groups below.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-/usr/bin/python3}
[ -x "$PYTHON" ] || PYTHON=python3
JOBS=$(nproc 2>/dev/null || echo 2)

passed=0
failed=0
results=()

# run_group NAME COMMAND...: runs one group and records its outcome.
run_group() {
    local name=$1 start rc
    shift
    echo
    echo "=== $name"
    start=$(date +%s)
    set +e
    "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        results+=("PASS  $name ($(($(date +%s) - start)) s)")
    else
        failed=$((failed + 1))
        results+=("FAIL  $name ($(($(date +%s) - start)) s, status $rc)")
    fi
}

summary() {
    echo
    echo "=== summary"
    local r
    for r in "${results[@]}"; do
        echo "$r"
    done
    echo "$passed passed, $failed failed"
}

install_deps() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "not root: skipping deploy/install-deps.sh (the packages must be installed)"
        return 0
    fi
    ./deploy/install-deps.sh
}

# a failed build must not leave the tests running a stale binary; the popgate binary is
# built first so the integration tests still run when only a unit test fails to compile
asan_ok=0
asan_popgate_ok=0
release_ok=0

build_asan() {
    cmake -S . -B build/asan -DPOPGATE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug &&
        cmake --build build/asan --target popgate -j "$JOBS" &&
        asan_popgate_ok=1 &&
        cmake --build build/asan -j "$JOBS" &&
        asan_ok=1
}

build_release() {
    cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPOPGATE_TESTS=OFF &&
        cmake --build build/release --target popgate -j "$JOBS" &&
        release_ok=1
}

unit_tests() {
    [ "$asan_ok" = 1 ] || { echo "not run: build/asan failed"; return 1; }
    ctest --test-dir build/asan --output-on-failure --no-tests=error
}

format_check() {
    if [ ! -f .clang-format ]; then
        echo ".clang-format is missing from the repository root"
        return 1
    fi
    local f bad=()
    while IFS= read -r f; do
        if ! clang-format --style=file --dry-run --Werror "$f" >/dev/null 2>&1; then
            bad+=("$f")
        fi
    done < <(find protocols mapping proxy tests -type f \( -name '*.c' -o -name '*.h' \) | sort)
    if [ "${#bad[@]}" -gt 0 ]; then
        echo "not formatted with clang-format (${#bad[@]} files; fix: clang-format -i FILE):"
        printf '  %s\n' "${bad[@]}"
        return 1
    fi
    echo "all C sources formatted"
}

integration_tests() {
    [ "$asan_popgate_ok" = 1 ] || { echo "not run: build/asan/popgate failed to build"; return 1; }
    local t rc=0
    # every file runs even when an earlier one fails
    for t in test_core.py test_tls.py test_regressions.py test_state.py test_operator.py \
        test_policies.py test_import.py test_rerun.py test_folders.py test_names.py \
        test_faults.py test_limits.py test_conn_limits.py test_load.py; do
        # the release binary too: some checks (password wipes) need optimised code
        POPGATE_BIN="$ROOT/build/asan/popgate" POPGATE_RELEASE_BIN="$ROOT/build/release/popgate" \
            ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
            UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
            timeout 900 "$PYTHON" "tests/integration/$t" -v || rc=1
    done
    return "$rc"
}

fuzz_smoke() {
    # every libFuzzer target briefly, so none rots; long runs: FUZZ_SECONDS=1800 tests/fuzz/run.sh
    FUZZ_SECONDS=${FUZZ_SECONDS:-10} ./tests/fuzz/run.sh
}

memory_test() {
    [ "$release_ok" = 1 ] || { echo "not run: build/release failed"; return 1; }
    POPGATE_RELEASE_BIN="$ROOT/build/release/popgate" \
        timeout 600 "$PYTHON" tests/integration/test_memory.py -v
}

bench_smoke() {
    [ "$release_ok" = 1 ] || { echo "not run: build/release failed"; return 1; }
    # fails only on a broken benchmark (errors, wrong bytes), never on a missed target;
    # the full run is python3 tests/bench/bench.py (about 16 minutes)
    POPGATE_RELEASE_BIN="$ROOT/build/release/popgate" \
        timeout 300 "$PYTHON" tests/bench/bench.py --smoke
}

run_group "install-deps" install_deps
if [ "$failed" -ne 0 ]; then
    summary
    exit 1
fi
run_group "build (asan+ubsan, Debug)" build_asan
run_group "build (release)" build_release
run_group "unit tests (ctest, asan)" unit_tests
run_group "clang-format" format_check
run_group "integration tests (Dovecot, asan popgate)" integration_tests
run_group "memory test (release popgate, 200 MB message)" memory_test
run_group "benchmark smoke (release popgate against direct IMAP)" bench_smoke
run_group "fuzz smoke (libFuzzer, every target)" fuzz_smoke

summary
[ "$failed" -eq 0 ]
