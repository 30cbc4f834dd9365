#!/usr/bin/env bash
# `make run`: the whole system on loopback. The control plane in manifests mode (embedded
# database in $DATA), the sample httpbin upstream, an Envoy with the access-rule filter in
# front of it, configured by the control plane through an ECDS file, and the example login app
# (examples/login-app: login/consent/logout pages and a relying party to click through).
# Ctrl-C stops everything;
# a second run reuses $DATA (clients, keys and generated credentials are still there).
#
#   scripts/run.sh            run until Ctrl-C
#   scripts/run.sh --smoke    start, run the printed curl commands, check 200/401/403, sign
#                             in through the example app's pages with curl, stop
#
# Ports and the data directory can be moved with environment variables:
#   PORTCULLIS_DATA (./data), PUBLIC_PORT (4444), ADMIN_PORT (4445), PROXY_PORT (8080),
#   UPSTREAM_PORT (8000), ENVOY_ADMIN_PORT (9901), LOGIN_APP_PORT (5555).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1

DATA=${PORTCULLIS_DATA:-$ROOT/data}
PUBLIC_PORT=${PUBLIC_PORT:-4444}
ADMIN_PORT=${ADMIN_PORT:-4445}
PROXY_PORT=${PROXY_PORT:-8080}
UPSTREAM_PORT=${UPSTREAM_PORT:-8000}
ENVOY_ADMIN_PORT=${ENVOY_ADMIN_PORT:-9901}
LOGIN_APP_PORT=${LOGIN_APP_PORT:-5555}
APP=http://127.0.0.1:$LOGIN_APP_PORT
ENVOY=${ENVOY_BIN:-$ROOT/.venv/bin/envoy}
WASM=${PORTCULLIS_WASM:-$ROOT/dist/filter.wasm}
MANIFESTS=$DATA/manifests
LOGS=$DATA/logs
ECDS=$DATA/ecds
# The workload the example rules protect: Service httpbin in namespace default (app=httpbin).
# Its ECDS file is portcullis-httpbin-<hash of the selector>.default.json, found once written.
ECDS_GLOB="$ECDS/portcullis-httpbin-*.default.json"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'make run: %s\n' "$*" >&2; exit 1; }

# --- prerequisites: one readable line each --------------------------------------------------
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs) and retry"
command -v python3 >/dev/null || die "python3 not found: install Python 3 (apt-get install python3 python3-venv) and retry"
command -v curl >/dev/null || die "curl not found: apt-get install curl, then retry"
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$PUBLIC_PORT" "$ADMIN_PORT" "$PROXY_PORT" "$UPSTREAM_PORT" "$ENVOY_ADMIN_PORT" "$LOGIN_APP_PORT"; do
  if port_busy "$p"; then
    die "port $p is already in use (another make run?): stop that process or set PUBLIC_PORT/ADMIN_PORT/PROXY_PORT/UPSTREAM_PORT/ENVOY_ADMIN_PORT/LOGIN_APP_PORT"
  fi
done

# --- build (first time: several minutes; cargo shows progress) ------------------------------
say "building the filter (wasm) and installing Envoy into .venv (first run takes a while)"
make --no-print-directory wasm-filter envoy
say "building the control plane, the sample upstream and the example login app"
cargo build -p portcullis-cli -p portcullis-e2e -p portcullis-example-login-app \
  --bin portcullis --bin httpbin --bin login-app
BIN=$ROOT/target/debug

# --- data directory ---------------------------------------------------------------------------
mkdir -p "$MANIFESTS" "$LOGS" "$ECDS"
if ! ls "$MANIFESTS"/*.yaml >/dev/null 2>&1; then
  say "first run: copying examples/ into $MANIFESTS (generated credentials are written there)"
  cp "$ROOT"/examples/*.yaml "$MANIFESTS"/
fi
# Rules target a workload through its Service (no guessed label): data directories from before
# the Service manifest existed get it too.
[ -e "$MANIFESTS/httpbin-service.yaml" ] || cp "$ROOT/examples/httpbin-service.yaml" "$MANIFESTS"/
# Likewise the example login app's client, for data directories from before it existed.
[ -e "$MANIFESTS/login-app-client.yaml" ] || cp "$ROOT/examples/login-app-client.yaml" "$MANIFESTS"/
# The example rules name the control plane's JWKS and introspection URLs, and the login app's
# client its redirect URIs; point them at the ports of this run (files are rewritten only when
# a port actually changed).
python3 - "$PUBLIC_PORT" "$ADMIN_PORT" "$LOGIN_APP_PORT" "$MANIFESTS"/*.yaml <<'PY'
import re, sys
public, admin, app, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
for path in files:
    text = open(path).read()
    new = re.sub(r"127\.0\.0\.1:\d+/\.well-known/jwks\.json", f"127.0.0.1:{public}/.well-known/jwks.json", text)
    new = re.sub(r"127\.0\.0\.1:\d+/admin/oauth2/introspect", f"127.0.0.1:{admin}/admin/oauth2/introspect", new)
    new = re.sub(r"127\.0\.0\.1:\d+/(callback|signed-out|frontchannel-logout)\b", f"127.0.0.1:{app}/\\1", new)
    if new != text:
        open(path, "w").write(new)
PY

PIDS=()
cleanup() {
  trap - EXIT INT TERM
  if [ ${#PIDS[@]} -gt 0 ]; then
    say "stopping"
    kill "${PIDS[@]}" 2>/dev/null || true
    wait "${PIDS[@]}" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 0' INT TERM

wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$what did not come up within ${secs}s; see the logs in $LOGS"
}

# --- start ---------------------------------------------------------------------------------
say "starting the sample upstream on 127.0.0.1:$UPSTREAM_PORT"
# Children run in their own session: Ctrl-C reaches only this script, whose trap stops them.
setsid "$BIN/httpbin" "127.0.0.1:$UPSTREAM_PORT" >"$LOGS/httpbin.log" 2>&1 &
PIDS+=($!)

say "starting the control plane (public 127.0.0.1:$PUBLIC_PORT, admin 127.0.0.1:$ADMIN_PORT)"
setsid "$BIN/portcullis" serve \
  --public-addr "127.0.0.1:$PUBLIC_PORT" --admin-addr "127.0.0.1:$ADMIN_PORT" \
  --data-dir "$DATA" --manifests "$MANIFESTS" --ecds-dir "$ECDS" --wasm "$WASM" \
  --login-url "$APP/login" --consent-url "$APP/consent" --logout-url "$APP/logout-confirm" \
  >"$LOGS/portcullis.log" 2>&1 &
PIDS+=($!)
wait_for "the control plane" 60 curl -fsS "http://127.0.0.1:$ADMIN_PORT/health/ready"
ecds_written() { for f in $ECDS_GLOB; do [ -s "$f" ] && return 0; done; return 1; }
wait_for "the filter configuration ($ECDS_GLOB)" 30 ecds_written
ECDS_FILE=$(ls $ECDS_GLOB | head -n 1)
SECRET_FILE=$MANIFESTS/demo-client.default.secret.yaml
wait_for "the generated client credentials ($SECRET_FILE)" 30 test -s "$SECRET_FILE"

say "starting Envoy with the filter on 127.0.0.1:$PROXY_PORT"
cat >"$DATA/envoy.yaml" <<EOF
# ECDS needs a node identity.
node: {id: portcullis-run, cluster: portcullis-run}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $ENVOY_ADMIN_PORT}}
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: $PROXY_PORT}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          # Paths as the filter requires them (docs/security.md, "Request identity"): dot
          # segments resolved and slashes merged before filters and routing, and an encoded
          # '/' or backslash refused with 400 (the filter refuses those too; Envoy says it first).
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
          route_config:
            virtual_hosts:
            - name: httpbin
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: httpbin}}]
          http_filters:
          - name: portcullis
            config_discovery:
              config_source:
                path_config_source:
                  path: $ECDS_FILE
                  watched_directory: {path: $ECDS}
              type_urls: ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"]
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - {name: httpbin, connect_timeout: 1s, type: STATIC, load_assignment: {cluster_name: httpbin, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $UPSTREAM_PORT}}}}]}]}}
  - {name: portcullis_public, connect_timeout: 1s, type: STATIC, load_assignment: {cluster_name: portcullis_public, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $PUBLIC_PORT}}}}]}]}}
  - {name: portcullis_admin, connect_timeout: 1s, type: STATIC, load_assignment: {cluster_name: portcullis_admin, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $ADMIN_PORT}}}}]}]}}
EOF
setsid "$ENVOY" -c "$DATA/envoy.yaml" --concurrency 1 -l warning --use-dynamic-base-id >"$LOGS/envoy.log" 2>&1 &
PIDS+=($!)
wait_for "Envoy" 30 curl -fsS "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready"

# --- what to try -----------------------------------------------------------------------------
field() { # key of a generated Secret manifest (data is base64); $2 picks the file
  python3 - "${2:-$SECRET_FILE}" "$1" <<'PY'
import base64, sys
path, key = sys.argv[1], sys.argv[2]
section = None
for line in open(path):
    if not line.startswith(" ") and line.rstrip().endswith(":"):
        section = line.strip()[:-1]
        continue
    k, _, v = line.strip().partition(":")
    if k == key and v.strip():
        v = v.strip().strip("'\"")
        print(base64.b64decode(v).decode() if section == "data" else v)
        break
PY
}
CLIENT_ID=$(field client_id)
CLIENT_SECRET=$(field client_secret)
[ -n "$CLIENT_ID" ] && [ -n "$CLIENT_SECRET" ] || die "no credentials in $SECRET_FILE"
PROXY=http://127.0.0.1:$PROXY_PORT

# --- the example login app -------------------------------------------------------------------
APP_SECRET_FILE=$MANIFESTS/login-app.default.secret.yaml
wait_for "the login app's generated client credentials ($APP_SECRET_FILE)" 30 test -s "$APP_SECRET_FILE"
APP_CLIENT_ID=$(field client_id "$APP_SECRET_FILE")
APP_CLIENT_SECRET=$(field client_secret "$APP_SECRET_FILE")
[ -n "$APP_CLIENT_ID" ] && [ -n "$APP_CLIENT_SECRET" ] || die "no credentials in $APP_SECRET_FILE"
# The demo user's password: made up on the first run, kept in the data directory.
PASSWORD_FILE=$DATA/demo-password
if [ ! -s "$PASSWORD_FILE" ]; then
  (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(6))' >"$PASSWORD_FILE")
fi
DEMO_PASSWORD=$(cat "$PASSWORD_FILE")
say "starting the example login app on $APP"
# Secrets reach the app through its environment, not its command line (visible in ps).
LOGIN_APP_ADDR="127.0.0.1:$LOGIN_APP_PORT" LOGIN_APP_URL="$APP" \
  PORTCULLIS_ISSUER="http://127.0.0.1:$PUBLIC_PORT" PORTCULLIS_ADMIN_URL="http://127.0.0.1:$ADMIN_PORT" \
  PROXY_URL="$PROXY" LOGIN_APP_CLIENT_ID="$APP_CLIENT_ID" LOGIN_APP_CLIENT_SECRET="$APP_CLIENT_SECRET" \
  LOGIN_APP_PASSWORD="$DEMO_PASSWORD" setsid "$BIN/login-app" >"$LOGS/login-app.log" 2>&1 &
PIDS+=($!)
wait_for "the login app" 30 curl -fsS "$APP/"

TOKEN_CMD="curl -s -u '$CLIENT_ID:$CLIENT_SECRET' -d grant_type=client_credentials -d scope='read write' http://127.0.0.1:$PUBLIC_PORT/oauth2/token"

cat <<EOF

Portcullis is running. Open $APP/ and sign in as alice, password $DEMO_PASSWORD

  client        $CLIENT_ID (credentials in $SECRET_FILE)
  rules         $MANIFESTS/rules.yaml (edit it: Envoy picks changes up within seconds)
  logs          $LOGS/{portcullis,envoy,httpbin,login-app}.log
  admin API     http://127.0.0.1:$ADMIN_PORT/admin/clients, /admin/metrics/prometheus
  Envoy admin   http://127.0.0.1:$ENVOY_ADMIN_PORT/stats?filter=portcullis

Try:
  # a token for the client (scopes read and write)
  TOKEN=\$($TOKEN_CMD | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  # 200: GET /headers needs scope read (jwt rule); the upstream sees X-User
  curl -i -H "Authorization: Bearer \$TOKEN" $PROXY/headers
  # 401: no token
  curl -i $PROXY/headers
  # 403: POST /post needs scope write (introspection rule); a read-only token is refused
  READ=\$(curl -s -u '$CLIENT_ID:$CLIENT_SECRET' -d grant_type=client_credentials -d scope=read http://127.0.0.1:$PUBLIC_PORT/oauth2/token | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -i -X POST -H "Authorization: Bearer \$READ" -d '{"hello":"world"}' $PROXY/post

EOF

if [ "$SMOKE" = 1 ]; then
  token() {
    curl -fsS -u "$CLIENT_ID:$CLIENT_SECRET" -d grant_type=client_credentials -d "scope=$1" \
      "http://127.0.0.1:$PUBLIC_PORT/oauth2/token" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
  }
  check() { # expected status, description, curl args...
    local want=$1 what=$2; shift 2
    local got
    got=$(curl -s -o /dev/null -w '%{http_code}' "$@")
    if [ "$got" != "$want" ]; then
      echo "smoke: FAIL $what: got $got, want $want" >&2
      tail -n 30 "$LOGS/portcullis.log" "$LOGS/envoy.log" >&2
      exit 1
    fi
    echo "smoke: ok   $what ($got)"
  }
  TOKEN=$(token "read write")
  READ=$(token read)
  check 200 "GET /headers with a token" -H "Authorization: Bearer $TOKEN" "$PROXY/headers"
  check 401 "GET /headers without a token" "$PROXY/headers"
  check 200 "POST /post with scope write" -X POST -H "Authorization: Bearer $TOKEN" -d '{}' "$PROXY/post"
  check 403 "POST /post with scope read only" -X POST -H "Authorization: Bearer $READ" -d '{}' "$PROXY/post"

  # The example app's sign-in, as a browser would click through it (curl follows the 303s and
  # keeps the cookies): start -> login page -> consent page -> callback -> logout -> signed out.
  JAR=$DATA/smoke-cookies.txt PAGE=$DATA/smoke-page.html
  rm -f "$JAR"
  visit() { # curl args...; prints the URL the redirects ended at, the page goes to $PAGE
    curl -sS -L -b "$JAR" -c "$JAR" -o "$PAGE" -w '%{url_effective}' "$@"
  }
  param() { python3 -c 'import sys, urllib.parse as u; print(u.parse_qs(u.urlsplit(sys.argv[1]).query)[sys.argv[2]][0])' "$1" "$2"; }
  expect() { # description, what the page/URL must contain, the URL
    if ! grep -qF -- "$2" "$PAGE"; then
      echo "smoke: FAIL $1: ${3%%\?*} lacks $2" >&2
      cat "$PAGE" >&2
      tail -n 30 "$LOGS/portcullis.log" "$LOGS/login-app.log" >&2
      exit 1
    fi
    echo "smoke: ok   $1"
  }
  at=$(visit "$APP/start")
  expect "the start page leads to the login page" 'id="password"' "$at"
  at=$(visit -d "challenge=$(param "$at" login_challenge)" -d username=alice \
    --data-urlencode "password=$DEMO_PASSWORD" "$APP/login")
  expect "signing in leads to the consent page" 'id="allow"' "$at"
  at=$(visit -d "challenge=$(param "$at" consent_challenge)" -d decision=allow "$APP/consent")
  expect "the callback verified the ID token" 'id="nonce-check"' "$at"
  expect "the callback shows sub" '<code id="claim-sub">alice</code>' "$at"
  expect "the upstream answered the access token" 'id="upstream-status">200<' "$at"
  at=$(visit "$APP/logout")
  expect "signing out asks for confirmation" 'id="confirm-logout"' "$at"
  at=$(visit -d "challenge=$(param "$at" logout_challenge)" -d decision=yes "$APP/logout-confirm")
  expect "signing out frames the app's front-channel logout URI" '/frontchannel-logout?iss=' "$at"
  # The page's script goes on once the frames loaded; curl runs no script: follow its link.
  next=$(python3 -c 'import html, re, sys; print(html.unescape(re.search(r"id=\"next\" href=\"([^\"]*)\"", open(sys.argv[1]).read()).group(1)))' "$PAGE")
  at=$(visit "$next")
  expect "signing out ends at the signed-out page" 'id="signed-out"' "$at"
  at=$(visit "$APP/start")
  expect "after logout, signing in asks for the password again" 'id="password"' "$at"
  rm -f "$JAR" "$PAGE"
  echo "smoke: 13 passed, 0 failed"
  exit 0
fi

say "running; Ctrl-C stops everything"
wait -n "${PIDS[@]}" || true
die "a process stopped unexpectedly; see the logs in $LOGS"
