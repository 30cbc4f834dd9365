#!/usr/bin/env bash
# Load benchmark of the portcullis token service on this machine, load generator included:
# client_credentials tokens/s and introspections/s (JWT and opaque) with p99 latency, next to
# Hydra's published figures (2 cores, hey, 10,000 requests at concurrency 100); then complete
# OpenID Connect authorization-code flows/s and refresh grants/s (oidc-load, in loadgen/).
#
# Usage: bench/token-service/run.sh
#   DURATION=10s CONNS=100 THREADS=2 ALG=RS256 (the default; ES256, EdDSA) PUBLIC_PORT=14444
#   ADMIN_PORT=14445 DISTINCT=500
#   OIDC_CONCURRENCY=$CONNS (browsers / refreshing clients) REFRESH_TOKENS=1000 (distinct grants)
#   PORTCULLIS_BIN=path/to/portcullis (skips the release build)
#   POSTGRES=0 skips the PostgreSQL section (2 replicas on a throwaway local server); PG_BIN
#   names the server binaries' directory [default: newest /usr/lib/postgresql/*/bin]
# Only loopback is targeted; every wrk run is bounded by DURATION.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
DURATION=${DURATION:-10s}
CONNS=${CONNS:-100}
THREADS=${THREADS:-2}
ALG=${ALG:-RS256}
DISTINCT=${DISTINCT:-500}
OIDC_CONCURRENCY=${OIDC_CONCURRENCY:-$CONNS}
REFRESH_TOKENS=${REFRESH_TOKENS:-1000}
PUBLIC_PORT=${PUBLIC_PORT:-14444}
ADMIN_PORT=${ADMIN_PORT:-14445}
public="http://127.0.0.1:$PUBLIC_PORT"
admin="http://127.0.0.1:$ADMIN_PORT"

if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
for tool in curl base64; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done

bin=${PORTCULLIS_BIN:-}
load=${OIDC_LOAD_BIN:-}
if [[ -z "$bin" || -z "$load" ]]; then
    (cd "$root" && cargo build --release -p portcullis-cli --bin portcullis -p portcullis-bench-oidc >&2)
    bin=${bin:-"$root/target/release/portcullis"}
    load=${load:-"$root/target/release/oidc-load"}
fi

data=$(mktemp -d)
log="$data.log"
pid=
pg_pids=()
pg_dir=
cleanup() {
    if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    for p in "${pg_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    if [[ -n "$pg_dir" ]]; then pg_as "$PG_BIN/pg_ctl" -D "$pg_dir/data" stop -m fast >/dev/null 2>&1 || true; rm -rf "$pg_dir"; fi
    rm -rf "$data" "$log" "$data.tokens" "$data.pg"*.log
}
# initdb refuses root: as root the server runs as uid/gid 65534.
pg_as() {
    if [[ $(id -u) -eq 0 ]]; then setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; else "$@"; fi
}
trap cleanup EXIT

"$bin" --log-level warn serve --public-addr "127.0.0.1:$PUBLIC_PORT" --admin-addr "127.0.0.1:$ADMIN_PORT" \
    --data-dir "$data" --signing-alg "$ALG" \
    --login-url https://login.bench.invalid/login --consent-url https://login.bench.invalid/consent \
    --secrets-system "benchmark-only-system-secret-0123456789" >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
    if curl -fsS "$public/health/ready" >/dev/null 2>&1 && curl -fsS "$admin/health/ready" >/dev/null 2>&1; then
        break
    fi
    kill -0 "$pid" 2>/dev/null || { echo "portcullis exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.05
done
curl -fsS "$public/health/ready" >/dev/null || { echo "portcullis not ready" >&2; cat "$log" >&2; exit 1; }

register() { # id strategy
    curl -fsS -o /dev/null -X POST "$admin/admin/clients" -H 'Content-Type: application/json' -d \
        "{\"client_id\":\"$1\",\"client_secret\":\"bench-secret-0123456789\",\"grant_types\":[\"client_credentials\"],\"scope\":\"read write\",\"access_token_strategy\":\"$2\"}"
}
token_of() { # id
    curl -fsS -u "$1:bench-secret-0123456789" -d grant_type=client_credentials -d scope=read "$public/oauth2/token" |
        sed -E 's/.*"access_token":"([^"]+)".*/\1/'
    echo # the JSON body has no trailing newline
}
register bench-jwt jwt
register bench-opaque opaque
jwt=$(token_of bench-jwt)
opaque=$(token_of bench-opaque)
[[ "$jwt" == *.*.* ]] || { echo "no JWT issued: $jwt" >&2; exit 1; }
curl -fsS -d "token=$opaque" "$admin/admin/oauth2/introspect" | grep -q '"active":true' ||
    { echo "opaque token does not introspect as active" >&2; exit 1; }

# Distinct JWTs for an introspection run that a per-token cache cannot serve entirely.
for _ in $(seq 1 "$DISTINCT"); do token_of bench-jwt; done >"$data.tokens"
[[ $(grep -c . "$data.tokens") -eq $DISTINCT ]] || { echo "could not issue $DISTINCT tokens" >&2; exit 1; }

# run NAME URL SCRIPT [ENV=VALUE...]: prints "NAME req/s p99 non2xx"
run() {
    local name=$1 url=$2 script=$3
    shift 3
    local out
    # A short warm-up fills the secret and JWT caches, as in steady state.
    env "$@" wrk -t"$THREADS" -c"$CONNS" -d2s -s "$here/$script" "$url" >/dev/null
    out=$(env "$@" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$here/$script" "$url")
    echo "$out" >&2
    local rps p99 errors
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errors=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
    printf '%s\t%s\t%s\t%s\n' "$name" "$rps" "$p99" "${errors:-0}"
}

auth=$(printf 'bench-jwt:bench-secret-0123456789' | base64 -w0)
auth_opaque=$(printf 'bench-opaque:bench-secret-0123456789' | base64 -w0)
results=$(
    run tokens "$public/oauth2/token" token.lua AUTH="$auth"
    run tokens-opaque "$public/oauth2/token" token.lua AUTH="$auth_opaque"
    run introspect-jwt "$admin/admin/oauth2/introspect" introspect.lua TOKEN="$jwt"
    run introspect-jwt-many "$admin/admin/oauth2/introspect" introspect_many.lua TOKENS_FILE="$data.tokens"
    run introspect-opaque "$admin/admin/oauth2/introspect" introspect.lua TOKEN="$opaque"
    # oidc-load warms up itself (2 s) and prints the same columns plus p50.
    oidc() { "$load" --public "$public" --admin "$admin" --concurrency "$OIDC_CONCURRENCY" \
        --duration "${DURATION%s}" --threads "$THREADS" "$@"; }
    oidc --mode flows --scope "openid offline" --name flows
    oidc --mode refresh --scope "openid offline" --tokens "$REFRESH_TOKENS" --name refresh-openid
    oidc --mode refresh --scope offline --tokens "$REFRESH_TOKENS" --name refresh
    # The ceiling every row above shares: round trips/s to a trivial endpoint, same load generator.
    oidc --mode ping --name ping
)

echo
echo "portcullis token service, $ALG, $(nproc) cores, wrk -t$THREADS -c$CONNS -d$DURATION," \
    "oidc-load -c$OIDC_CONCURRENCY (load generators on the same cores)"
printf '%-44s %12s %10s %10s %8s   %s\n' "benchmark" "per second" "p50" "p99" "errors" "Hydra / target"
sqlite_results=$results
while IFS=$'\t' read -r name rps p50 p99 errors; do
    if [[ -z "$errors" ]]; then # wrk's rows have no p50 column
        errors=$p99 p99=$p50 p50=-
    fi
    case $name in
        tokens) label="client_credentials tokens (JWT)"; hydra="513 req/s, p99 586 ms" ;;
        tokens-opaque) label="client_credentials tokens (opaque)"; hydra="513 req/s, p99 586 ms" ;;
        introspect-jwt) label="introspection (JWT, one token)"; hydra="5,109 req/s, p99 80 ms" ;;
        introspect-jwt-many) label="introspection (JWT, $DISTINCT tokens)"; hydra="5,109 req/s, p99 80 ms" ;;
        introspect-opaque) label="introspection (opaque)"; hydra="5,109 req/s, p99 80 ms" ;;
        flows) label="authorization-code flows (9 HTTP steps)"; hydra="Ory: ~1,090 logins/s; target 2,000" ;;
        refresh-openid) label="refresh grants (openid: + ID token)"; hydra="target 10,000" ;;
        refresh) label="refresh grants (offline only)"; hydra="target 10,000" ;;
        ping) label="HTTP round trips (GET /health/alive)"; hydra="ceiling: flows/s <= this / 9" ;;
    esac
    printf '%-44s %12s %10s %10s %8s   %s\n' "$label" "$rps" "$p50" "$p99" "$errors" "$hydra"
done <<<"$results"

# ---- PostgreSQL: 2 replicas on one throwaway local server, beside the SQLite figures above ----
# Each run drives both replicas at once (one wrk per replica, half the connections each); req/s
# is their sum, p99 the larger of the two.
[[ "${POSTGRES:-1}" == 0 ]] && exit 0
kill -TERM "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
pid=

if [[ -z "${PG_BIN:-}" ]]; then
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
fi
[[ -x "$PG_BIN/initdb" ]] || { echo "no PostgreSQL binaries (make postgres, or PG_BIN)" >&2; exit 1; }
pg_dir=$(mktemp -d)
[[ $(id -u) -eq 0 ]] && chown 65534:65534 "$pg_dir"
PG_PORT=${PG_PORT:-15432}
pg_as "$PG_BIN/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
pg_as "$PG_BIN/pg_ctl" -D "$pg_dir/data" -w -l "$pg_dir/log" \
    -o "-p $PG_PORT -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
dsn="postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable"

pg_public=("http://127.0.0.1:$((PUBLIC_PORT + 10))" "http://127.0.0.1:$((PUBLIC_PORT + 20))")
pg_admin=("http://127.0.0.1:$((ADMIN_PORT + 10))" "http://127.0.0.1:$((ADMIN_PORT + 20))")
# start_replicas [SERVE ARGS...]: both replicas, ready.
start_replicas() {
    pg_pids=()
    for i in 0 1; do
        "$bin" --log-level warn serve --public-addr "${pg_public[$i]#http://}" --admin-addr "${pg_admin[$i]#http://}" \
            --data-dir "$data/pg$i" --signing-alg "$ALG" --issuer "$public" --dsn "$dsn" \
            --secrets-system "benchmark-only-system-secret-0123456789" "$@" >"$data.pg$i.log" 2>&1 &
        pg_pids+=($!)
    done
    for i in 0 1; do
        for _ in $(seq 1 400); do
            curl -fsS "${pg_admin[$i]}/health/ready" >/dev/null 2>&1 && break
            kill -0 "${pg_pids[$i]}" 2>/dev/null || { echo "replica $i exited:" >&2; cat "$data.pg$i.log" >&2; exit 1; }
            sleep 0.05
        done
        curl -fsS "${pg_admin[$i]}/health/ready" >/dev/null || { echo "replica $i not ready" >&2; cat "$data.pg$i.log" >&2; exit 1; }
    done
}
start_replicas
admin=${pg_admin[0]}
public=${pg_public[0]}
register bench-jwt jwt
register bench-opaque opaque
pg_jwt=$(token_of bench-jwt)
pg_opaque=$(token_of bench-opaque)
public=${pg_public[1]}
curl -fsS -d "token=$pg_opaque" "${pg_admin[1]}/admin/oauth2/introspect" | grep -q '"active":true' ||
    { echo "an opaque token issued at replica 0 is not active at replica 1" >&2; exit 1; }

# run_pair NAME PATH SERVER(public|admin) SCRIPT [ENV=VALUE...]: prints "NAME req/s p99 non2xx"
run_pair() {
    local name=$1 path=$2 which=$3 script=$4
    shift 4
    local urls
    if [[ $which == public ]]; then urls=("${pg_public[@]}"); else urls=("${pg_admin[@]}"); fi
    local half=$(( CONNS / 2 )) t=$(( THREADS > 1 ? THREADS / 2 : 1 ))
    for u in "${urls[@]}"; do env "$@" wrk -t"$t" -c"$half" -d2s -s "$here/$script" "$u$path" >/dev/null & done
    wait
    local outs=("$data.pgrun0" "$data.pgrun1") i=0
    for u in "${urls[@]}"; do
        env "$@" wrk -t"$t" -c"$half" -d"$DURATION" --latency -s "$here/$script" "$u$path" >"${outs[$i]}" &
        i=$((i + 1))
    done
    wait
    cat "${outs[@]}" >&2
    local rps p99 errors
    rps=$(awk '/^Requests\/sec:/ {s += $2} END {printf "%.2f", s}' "${outs[@]}")
    p99=$(awk '$1 == "99%" {v = $2; ms = v + 0; if (v ~ /us$/) ms /= 1000; else if (v ~ /ms$/) ms += 0; else if (v ~ /s$/) ms *= 1000;
        if (ms > max) {max = ms; out = v}} END {print out}' "${outs[@]}")
    errors=$(awk '/Non-2xx or 3xx responses:/ {s += $NF} END {print s + 0}' "${outs[@]}")
    rm -f "${outs[@]}"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rps" "$p99" "$errors"
}

pg_results=$(
    run_pair tokens /oauth2/token public token.lua AUTH="$auth"
    run_pair tokens-opaque /oauth2/token public token.lua AUTH="$auth_opaque"
    run_pair introspect-jwt /admin/oauth2/introspect admin introspect.lua TOKEN="$pg_jwt"
    run_pair introspect-opaque /admin/oauth2/introspect admin introspect.lua TOKEN="$pg_opaque"
)
# The database path of opaque introspection: the same replicas without their token cache.
for p in "${pg_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
start_replicas --opaque-token-cache 0
pg_results+=$'\n'$(run_pair introspect-opaque-uncached /admin/oauth2/introspect admin introspect.lua TOKEN="$pg_opaque")

echo
echo "PostgreSQL store, 2 replicas on one local PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), $ALG, same machine and load as above"
printf '%-34s %12s %10s %8s   %s\n' "benchmark" "req/s" "p99" "non-2xx" "SQLite, 1 replica (above)"
while IFS=$'\t' read -r name rps p99 errors; do
    sqlite=$(awk -F'\t' -v n="$name" '$1 == n {printf "%s req/s, p99 %s", $2, $3}' <<<"$sqlite_results")
    case $name in
        tokens) label="client_credentials tokens (JWT)" ;;
        tokens-opaque) label="client_credentials tokens (opaque)" ;;
        introspect-jwt) label="introspection (JWT, one token)" ;;
        introspect-opaque) label="introspection (opaque)" ;;
        introspect-opaque-uncached) label="introspection (opaque, no cache)" ;;
    esac
    printf '%-34s %12s %10s %8s   %s\n' "$label" "$rps" "$p99" "$errors" "$sqlite"
done <<<"$pg_results"
