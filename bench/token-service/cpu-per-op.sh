#!/usr/bin/env bash
# CPU time per operation of the token service and of the load generator, under the same load as
# bench/token-service/run.sh: a noisy machine moves the rate from run to run, much less the
# CPU one operation costs, so this is the figure to compare two builds by (alternate them).
#
# Usage: bench/token-service/cpu-per-op.sh refresh|flows [ALG]
#   ALG: ES256 (default), RS256, EdDSA. SCOPE="openid offline" (default) or "offline".
#   DURATION=6 (seconds of load after a 2 s warm-up; the last DURATION-1 are counted)
#   PORTCULLIS_BIN, OIDC_LOAD_BIN (default: the release builds in target/), PUBLIC_PORT=15444,
#   ADMIN_PORT=15445, EXTRA="more serve flags"
# Prints the load generator's summary line, then CPU µs per operation of each process and the
# server's bytes and system calls read/written per operation (/proc/PID/io).
# Only loopback is targeted; the load stops by itself after DURATION.
set -euo pipefail

mode=${1:?usage: cpu-per-op.sh refresh|flows [ALG]}
alg=${2:-ES256}
[[ $mode == refresh || $mode == flows ]] || { echo "mode must be refresh or flows, not $mode" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${PORTCULLIS_BIN:-$root/target/release/portcullis}
load=${OIDC_LOAD_BIN:-$root/target/release/oidc-load}
for b in "$bin" "$load"; do
    [[ -x $b ]] || { echo "$b missing: cargo build --release -p portcullis-cli -p portcullis-bench-oidc" >&2; exit 1; }
done
DURATION=${DURATION:-6}
(( DURATION >= 3 )) || { echo "DURATION must be at least 3 (seconds)" >&2; exit 2; }
PUBLIC_PORT=${PUBLIC_PORT:-15444}
ADMIN_PORT=${ADMIN_PORT:-15445}
public="http://127.0.0.1:$PUBLIC_PORT"

data=$(mktemp -d)
pid=
cleanup() {
    if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$data"
}
trap cleanup EXIT

# shellcheck disable=SC2086 # EXTRA is a list of flags
"$bin" --log-level warn serve --public-addr "127.0.0.1:$PUBLIC_PORT" --admin-addr "127.0.0.1:$ADMIN_PORT" \
    --data-dir "$data/db" --signing-alg "$alg" \
    --login-url https://login.bench.invalid/login --consent-url https://login.bench.invalid/consent \
    --secrets-system benchmark-only-system-secret-0123456789 ${EXTRA:-} >"$data/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
    curl -fsS "$public/health/ready" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "portcullis exited:" >&2; cat "$data/server.log" >&2; exit 1; }
    sleep 0.05
done
curl -fsS "$public/health/ready" >/dev/null || { echo "portcullis not ready" >&2; exit 1; }

extra=()
[[ $mode == refresh ]] && extra=(--tokens 1000)
"$load" --public "$public" --admin "http://127.0.0.1:$ADMIN_PORT" --concurrency 100 \
    --duration "$DURATION" --warmup 2 --threads 2 --mode "$mode" \
    --scope "${SCOPE:-openid offline}" "${extra[@]}" >"$data/load.out" 2>&1 &
load_pid=$!

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
io() { awk '/^(rchar|wchar|syscr|syscw):/ {printf "%s ", $2}' "/proc/$1/io"; }
# oidc-load prints only at the end, so the window is placed by time: past the warm-up (and, for
# refreshes, the flows that mint the tokens), ending a second before the load does.
sleep "${PRE:-2.5}"
s0=$(ticks "$pid"); l0=$(ticks "$load_pid"); read -ra io0 <<<"$(io "$pid")"
sleep $((DURATION - 1))
s1=$(ticks "$pid"); l1=$(ticks "$load_pid"); read -ra io1 <<<"$(io "$pid")"
wait "$load_pid"

head -1 "$data/load.out"
rate=$(awk -F'\t' 'NF >= 2 {print $2}' "$data/load.out" | tail -1)
[[ -n $rate ]] || { echo "no rate in oidc-load's output:" >&2; cat "$data/load.out" >&2; exit 1; }
awk -v s=$((s1 - s0)) -v l=$((l1 - l0)) -v r="$rate" -v w=$((DURATION - 1)) -v hz="$(getconf CLK_TCK)" \
    -v a="${io0[*]}" -v b="${io1[*]}" 'BEGIN {
        n = r * w; split(a, x, " "); split(b, y, " ")
        printf "server %.0f us/op, load generator %.0f us/op (~%d ops in the window)\n", s / hz * 1e6 / n, l / hz * 1e6 / n, n
        printf "server per op: read %.0f B, written %.0f B, %.1f read and %.1f write calls\n",
            (y[1] - x[1]) / n, (y[2] - x[2]) / n, (y[3] - x[3]) / n, (y[4] - x[4]) / n
    }'
