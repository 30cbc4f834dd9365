#!/usr/bin/env bash
# Filter throughput, side by side in ONE Envoy (1 worker, direct response, one listener per
# variant), wrk with 16 connections, alternating rounds, median per variant:
#   a nofilter        no HTTP filter
#   b noop            wasm that reads one header and sets one (the floor for any wasm filter)
#   c jwt_nocache     native jwt_authn, RS256, local JWKS, a fresh token every request
#   d jwt_cache       native jwt_authn with jwt_cache_config, same token every request
#   e pc_hit          Portcullis, 100 rules, same RS256 token every request (cache hit)
#   f pc_miss         Portcullis, a fresh RS256 token every request (cache miss)
#   g pc_session      Portcullis, a cookie_session rule with its opt-in cache warm (same cookie)
#   h pc_idtoken      Portcullis as e, plus an `id_token` mutator (ES256, claims template) on the
#                     matching rule: the signed token is reused per session (cache hit)
# Portcullis runs the configuration people deploy (config.py): rules in Kyma's shape
# `<http|https>://HOST/path<...>` over literal hosts, each with a `jwt` authenticator checking
# issuer, audience and scope and a templated `header` mutator. Every request carries
# Host: BENCH_HOST, whatever the variant.
# Targets (issues 2, 13, 10): e >= 0.9 x b, f >= 0.9 x c, h >= 0.8 x e.
# Then a memory table (issue 13): Envoy's RSS with 2 workers after 200 requests, one Envoy per
# row: no filter, the no-op module, the no-op module carrying the core's configuration compiler
# behind an export no host calls (`make wasm-noop-probe`: what code costs even if it never runs),
# Portcullis with 100 and with 1,000 rules (BENCH_MEMORY_RULES, default "100 1000").
# BENCH_MEMORY=0 skips it; BENCH_MEMORY=only runs nothing else.
# Between them, 1,000 ÷ 1 rules for each rule shape (Kyma's, host-literal, any host, glob; target
# >= 0.9): BENCH_SCALING=0 skips it, BENCH_SCALING=only runs nothing else; SCALING_RULES (1000).
# Knobs: BENCH_DURATION (s, default 5), BENCH_ROUNDS (default 3), BENCH_VARIANTS (e.g. "b e" to
# compare only those; default all), BENCH_BUILD=0 (measure PORTCULLIS_WASM as it is, no `make
# wasm-filter` first), BENCH_TOKENS (default 12000;
# must exceed the filter's verified-token cache capacity, 10,000 per worker, for f to measure
# misses: tokens are replayed in order, so with FIFO eviction every request misses).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
HERE=$ROOT/bench/filter
DURATION=${BENCH_DURATION:-5}
ROUNDS=${BENCH_ROUNDS:-3}
NTOKENS=${BENCH_TOKENS:-12000}
CONNECTIONS=16
ENVOY=${ENVOY_BIN:-$ROOT/.venv/bin/envoy}
NOOP_WASM=${PORTCULLIS_NOOP_WASM:-$ROOT/dist/noop.wasm}
PROBE_WASM=$ROOT/dist/noop-probe.wasm
FILTER_WASM=${PORTCULLIS_WASM:-$ROOT/dist/filter.wasm}
BENCH_HOST=bench.shop.svc.cluster.local
export BENCH_HOST
MEMORY=${BENCH_MEMORY:-1}
WORK=$ROOT/target/bench-filter
mkdir -p "$WORK"

log() { printf '>> %s\n' "$*" >&2; }
status() { curl -s -o /dev/null -w '%{http_code}' -H "Host: $BENCH_HOST" "$@"; }

if ! command -v wrk >/dev/null; then
  log "installing wrk"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update && $SUDO apt-get install -y wrk
fi

[ -x "$ENVOY" ] || make envoy
[ -f "$NOOP_WASM" ] || make wasm-noop

# The Portcullis variants need a real proxy-wasm module (the placeholder crate exports nothing).
HAVE_FILTER=0
if { [ "${BENCH_BUILD:-1}" = 0 ] || make wasm-filter >"$WORK/wasm-filter.log" 2>&1; } &&
  grep -q proxy_on_context_create "$FILTER_WASM"; then
  HAVE_FILTER=1
else
  log "SKIPPING e/f: $FILTER_WASM is missing or not a proxy-wasm module (see $WORK/wasm-filter.log)"
fi

# Tokens valid for a day: reuse them for 12 hours.
TOKDIR=$WORK/tokens-$NTOKENS
if [ -z "$(find "$TOKDIR/tokens.txt" -mmin -720 2>/dev/null)" ] || [ ! -s "$TOKDIR/id-keys.json" ]; then
  log "minting $NTOKENS RS256 tokens"
  cargo build -q --release -p portcullis-e2e --bin mint
  "$ROOT/target/release/mint" "$TOKDIR" "$NTOKENS"
fi
TOKEN=$(cat "$TOKDIR/token.txt")

read -r -a PORTS <<<"$(python3 -c '
import socket
socks = [socket.socket() for _ in range(7)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
JWKS_PORT=${PORTS[6]}

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

python3 -m http.server --bind 127.0.0.1 --directory "$TOKDIR" "$JWKS_PORT" >"$WORK/jwks-server.log" 2>&1 &
PIDS+=($!)

cp "$TOKDIR/jwks.json" "$WORK/jwks.json"
echo '{"subject": "bench", "extra": {"client_id": "bench"}}' >"$TOKDIR/session.json"
FW=-; [ "$HAVE_FILTER" = 1 ] && FW=$FILTER_WASM

free_ports() { # n -> n free loopback ports
  python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# One row of the memory table: Envoy with 2 workers and only variant $1's listener ($2 rules for
# Portcullis), 200 requests on fresh connections (so both workers' VMs take part), then VmRSS.
memory_row() { # variant rules [dir-suffix] -> MB
  local v=$1 n=$2 dir=$WORK/memory-$1-$2${3:+-$3} pid port code rss
  local -A index=([nofilter]=0 [noop]=1 [portcullis]=4)
  mkdir -p "$dir"
  cp "$TOKDIR/jwks.json" "$dir/jwks.json"
  read -r -a mp <<<"$(free_ports 5)"
  BENCH_ONLY=$v BENCH_RULES=$n python3 "$HERE/config.py" "$dir" - "$JWKS_PORT" "$NOOP_WASM" "$FW" "${mp[@]}"
  rm -f "$dir/admin-address"
  "$ENVOY" -c "$dir/envoy.yaml" --concurrency 2 -l warning --use-dynamic-base-id \
    --admin-address-path "$dir/admin-address" >"$dir/envoy.log" 2>&1 &
  pid=$!
  port=${mp[${index[$v]}]}
  for _ in $(seq 300); do # ready, and the first request has fetched the JWKS
    code=$(status -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/api/resource" || true)
    [ "$code" = 200 ] && break
    sleep 0.1
  done
  if [ "$code" != 200 ]; then
    log "memory $v/$n: got $code, not 200"; tail -5 "$dir/envoy.log" >&2; kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "-"; return
  fi
  for _ in $(seq 199); do
    status -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/api/resource" >/dev/null
  done
  rss=$(awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$rss"
}

memory_table() {
  local none noop probe n rss
  local -A target=([100]=15 [1000]=30)
  log "memory: one Envoy per row, 2 workers, 200 requests each"
  none=$(memory_row nofilter 100)
  noop=$(memory_row noop 100)
  [ -f "$PROBE_WASM" ] || make wasm-noop-probe >"$WORK/wasm-noop-probe.log" 2>&1 || true
  probe=-
  [ -f "$PROBE_WASM" ] && probe=$(NOOP_WASM=$PROBE_WASM memory_row noop 100 probe)
  echo
  echo "Envoy RSS (VmRSS), 2 workers, after 200 requests; module $(wc -c <"$FILTER_WASM") bytes"
  printf '  %-32s %6s MB\n' "no filter" "$none" "noop wasm module" "$noop"
  if [ "$probe" != - ]; then
    local extra=$(($(wc -c <"$PROBE_WASM") - $(wc -c <"$NOOP_WASM")))
    printf '  %-32s %6s MB   (%+d over noop for %s more module bytes, never run: %s MB per MB)\n' \
      "noop + core, never called" "$probe" "$((probe - noop))" "$extra" \
      "$(awk -v d=$((probe - noop)) -v b="$extra" 'BEGIN { printf "%.0f", d / (b / 1e6) }')"
  fi
  [ "$HAVE_FILTER" = 1 ] || { echo "  (Portcullis rows skipped: no filter module)"; return 0; }
  for n in ${BENCH_MEMORY_RULES:-100 1000}; do
    rss=$(memory_row portcullis "$n")
    printf '  %-32s %6s MB   (%+d over noop%s)\n' "portcullis, $n rules" "$rss" "$((rss - noop))" \
      "${target[$n]:+; target <= +${target[$n]}}"
  done
}

# 1,000 ÷ 1 rules for each rule shape (issue 13), side by side in one Envoy with 1 worker: one
# listener per (shape, rule count), the matching rule last, wrk alternating, median of ROUNDS.
scaling_table() {
  local dir=$WORK/scaling n=${SCALING_RULES:-1000} pid code shape k r rps
  local -a shapes=(kyma literal anyhost glob) names=() sp
  local -A port=() res=()
  [ "$HAVE_FILTER" = 1 ] || { echo "(rule-shape scaling skipped: no filter module)"; return 0; }
  mkdir -p "$dir"
  read -r -a sp <<<"$(free_ports $((2 * ${#shapes[@]})))"
  for shape in "${shapes[@]}"; do names+=("$shape-1" "$shape-$n"); done
  for k in "${!names[@]}"; do port[${names[$k]}]=${sp[$k]}; done
  BENCH_SCALING=1 SCALING_RULES=$n python3 "$HERE/config.py" "$dir" - "$JWKS_PORT" "$NOOP_WASM" "$FW" "${sp[@]}"
  rm -f "$dir/admin-address"
  "$ENVOY" -c "$dir/envoy.yaml" --concurrency 1 -l warning --use-dynamic-base-id \
    --admin-address-path "$dir/admin-address" >"$dir/envoy.log" 2>&1 &
  pid=$!
  for k in "${names[@]}"; do # ready, and each configuration has fetched the JWKS
    for _ in $(seq 300); do
      code=$(status -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${port[$k]}/api/resource" || true)
      [ "$code" = 200 ] && break
      sleep 0.1
    done
    [ "$code" = 200 ] || { log "scaling $k: got $code, not 200"; tail -5 "$dir/envoy.log" >&2; kill "$pid"; return 0; }
  done
  wrk_rps() { # listener seconds -> req/s (0 on any non-2xx)
    local out
    out=$(wrk -t1 -c$CONNECTIONS -d"$2s" -H "Host: $BENCH_HOST" -H "Authorization: Bearer $TOKEN" \
      "http://127.0.0.1:${port[$1]}/api/resource")
    if grep -q 'Non-2xx' <<<"$out"; then log "$1: $(grep 'Non-2xx' <<<"$out")"; echo 0; return; fi
    awk '/Requests\/sec/ {printf "%d", $2}' <<<"$out"
  }
  for k in "${names[@]}"; do wrk_rps "$k" 1 >/dev/null; done
  for r in $(seq "$ROUNDS"); do
    for k in "${names[@]}"; do
      rps=$(wrk_rps "$k" "$DURATION")
      res[$k]+="$rps "
      log "scaling round $r/$ROUNDS $k rules: $rps req/s"
    done
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo
  echo "Rules 1 vs $n by shape (cache hit, 1 worker, the matching rule last), median req/s"
  for shape in "${shapes[@]}"; do
    local one many
    one=$(median <<<"${res[$shape-1]}"); many=$(median <<<"${res[$shape-$n]}")
    awk -v s="$shape" -v a="$one" -v b="$many" -v n="$n" 'BEGIN {
      r = (a > 0 ? b / a : 0)
      printf "  %-10s 1 rule %8d   %d rules %8d   ratio %.2f   (target >= 0.9: %s)\n", s, a, n, b, r, (r >= 0.9 ? "met" : "MISSED") }'
  done
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%d\n", (a[NR/2]+a[NR/2+1])/2}'; }

if [ "$MEMORY" = only ]; then
  memory_table
  exit 0
fi
if [ "${BENCH_SCALING:-1}" = only ]; then
  scaling_table
  exit 0
fi
python3 "$HERE/config.py" "$WORK" "$WORK/admin-address" "$JWKS_PORT" "$NOOP_WASM" "$FW" "${PORTS[@]:0:6}"
rm -f "$WORK/admin-address"
"$ENVOY" -c "$WORK/envoy.yaml" --concurrency 1 -l warning --use-dynamic-base-id \
  --admin-address-path "$WORK/admin-address" >"$WORK/envoy.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do
  [ -s "$WORK/admin-address" ] && curl -sf "http://$(cat "$WORK/admin-address")/ready" >/dev/null && break
  sleep 0.1
done
curl -sf "http://$(cat "$WORK/admin-address")/ready" >/dev/null || { tail -30 "$WORK/envoy.log"; exit 1; }

declare -A PORT=([a]=${PORTS[0]} [b]=${PORTS[1]} [c]=${PORTS[2]} [d]=${PORTS[3]} [e]=${PORTS[4]} [f]=${PORTS[4]} [g]=${PORTS[4]} [h]=${PORTS[5]})
declare -A NAME=([a]="no filter" [b]="noop wasm" [c]="jwt_authn, no cache, fresh token" [d]="jwt_authn + jwt_cache_config"
  [e]="portcullis, 100 rules, same token" [f]="portcullis, fresh token"
  [g]="portcullis, cookie_session cached" [h]="portcullis + id_token, same token")
# The credential each variant sends (default: the bearer token).
declare -A CRED=([g]="Cookie: sid=bench")
declare -A FRESH=([c]=1 [f]=1)
VARIANTS=(a b c d)
[ "$HAVE_FILTER" = 1 ] && VARIANTS+=(e f g h)
if [ -n "${BENCH_VARIANTS:-}" ]; then
  read -r -a VARIANTS <<<"$BENCH_VARIANTS"
fi

# Each variant must answer 200 with the token, and the authenticating ones 401 without it:
# otherwise wrk would be timing error responses.
url() { if [ "$1" = g ]; then echo "http://127.0.0.1:${PORT[$1]}/session/resource"; else echo "http://127.0.0.1:${PORT[$1]}/api/resource"; fi; }
cred() { echo "${CRED[$1]:-Authorization: Bearer $TOKEN}"; }
OK_VARIANTS=()
for v in "${VARIANTS[@]}"; do
  code=000
  for _ in $(seq 50); do # the first Portcullis request may wait for the JWKS
    code=$(status -H "$(cred "$v")" "$(url "$v")") && [ "$code" = 200 ] && break
    sleep 0.1
  done
  if [ "$code" != 200 ]; then log "SKIPPING $v (${NAME[$v]}): valid token got $code"; continue; fi
  if [[ $v =~ [cdefgh] ]]; then
    code=$(status "$(url "$v")")
    if [ "$code" != 401 ]; then log "SKIPPING $v (${NAME[$v]}): no token got $code, expected 401"; continue; fi
  fi
  OK_VARIANTS+=("$v")
done

run_wrk() { # variant seconds -> requests/s (0 if any non-2xx answer)
  local v=$1 secs=$2 out
  if [ -n "${FRESH[$v]:-}" ]; then
    out=$(TOKENS_FILE=$TOKDIR/tokens.txt wrk -t1 -c$CONNECTIONS -d"${secs}s" -s "$HERE/tokens.lua" "$(url "$v")")
  else
    out=$(wrk -t1 -c$CONNECTIONS -d"${secs}s" -H "Host: $BENCH_HOST" -H "$(cred "$v")" "$(url "$v")")
  fi
  if grep -q 'Non-2xx' <<<"$out"; then
    log "$v: $(grep 'Non-2xx' <<<"$out")"
    echo 0
  else
    awk '/Requests\/sec/ {printf "%d", $2}' <<<"$out"
  fi
}

log "warm-up (1 s per variant, discarded)"
for v in "${OK_VARIANTS[@]}"; do run_wrk "$v" 1 >/dev/null; done

declare -A RESULTS
for r in $(seq "$ROUNDS"); do
  for v in "${OK_VARIANTS[@]}"; do
    rps=$(run_wrk "$v" "$DURATION")
    RESULTS[$v]+="$rps "
    log "round $r/$ROUNDS $v (${NAME[$v]}): $rps req/s"
  done
done

declare -A MED
echo
echo "Envoy $("$ENVOY" --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*' | head -1), 1 worker, wrk -t1 -c$CONNECTIONS, ${DURATION}s x $ROUNDS rounds, median req/s"
for v in "${OK_VARIANTS[@]}"; do
  MED[$v]=$(median <<<"${RESULTS[$v]}")
  printf '  %s  %-36s %8s   (rounds: %s)\n' "$v" "${NAME[$v]}" "${MED[$v]}" "${RESULTS[$v]% }"
done
ratio() { # label num den [target]
  [ -n "${MED[$2]:-}" ] && [ -n "${MED[$3]:-}" ] && [ "${MED[$3]}" != 0 ] || return 0
  awk -v n="${MED[$2]}" -v d="${MED[$3]}" -v l="$1" -v t="${4:-}" \
    'BEGIN {r = n / d; printf "  %-40s %.2f%s\n", l, r, (t == "" ? "" : (r >= t ? "   (target >= " t ": met)" : "   (target >= " t ": MISSED)"))}'
}
echo "Ratios:"
ratio "b/a noop wasm vs no filter" b a
ratio "d/c jwt_authn cache vs no cache" d c
ratio "e/b portcullis hit vs noop wasm" e b 0.9
ratio "f/c portcullis miss vs jwt_authn" f c 0.9
ratio "g/e cookie_session cached vs jwt cached" g e
ratio "g/b cookie_session cached vs noop wasm" g b
ratio "h/e portcullis id_token vs jwt hit" h e 0.8
[ "$HAVE_FILTER" = 1 ] || echo "  (e, f, g, h skipped: no Portcullis filter module yet)"
[ "${BENCH_SCALING:-1}" = 0 ] || scaling_table
[ "$MEMORY" = 0 ] || memory_table
