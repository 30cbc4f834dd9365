#!/usr/bin/env python3
"""Writes the benchmark's Envoy bootstrap: one Envoy, one listener per variant, all answering
with a direct response so only the filter's cost differs. Also writes the Portcullis filter
configuration (issue 2 format) with BENCH_RULES rules (default 100) of the shape people deploy,
one of which matches the benchmark request.

usage: config.py OUT_DIR ADMIN_ADDR_PATH JWKS_PORT NOOP_WASM FILTER_WASM|- PORT_a PORT_b ...
Ports are given in the order of VARIANTS below; FILTER_WASM '-' omits the Portcullis listener.
BENCH_ONLY=<variant> writes a bootstrap with that variant's listener alone (memory table).
BENCH_SCALING=1 writes one Portcullis listener per rule shape and count instead (ports in the
order of scaling_listeners(): kyma-1, kyma-1000, literal-1, ...).
"""
import json
import os
import sys

ISSUER = "https://issuer.portcullis.test/"
AUDIENCE = "https://api.portcullis.test"
BENCH_PATH = "/api/resource"
BENCH_HOST = "bench.shop.svc.cluster.local"

# name -> http filters before the router (see build_filters)
VARIANTS = ["nofilter", "noop", "jwt_nocache", "jwt_cache", "portcullis", "portcullis_idtoken"]


def wasm_filter(name, vm_id, path, configuration):
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": path}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
                "failure_policy": "FAIL_CLOSED",
                # As deployed: the filter may hold headers back while it reads a body.
                "allow_on_headers_stop_iteration": True,
            },
        },
    }


def jwt_authn(jwks_file, cache):
    config = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {
            "bench": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "local_jwks": {"filename": jwks_file},
                "forward": True,
                "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}],
            }
        },
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
    }
    if cache:
        config["providers"]["bench"]["jwt_cache_config"] = {"jwt_cache_size": 1000}
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": config}


def rule(rule_id, url, methods, host_header, authenticators=None):
    """A rule as deployed (Kyma's APIRule output, hand-written Oathkeeper rules alike): a `jwt`
    authenticator with its own issuer, audience and scope, and a templated `header` mutator."""
    return {
        "id": rule_id,
        "match": {"url": url, "methods": methods},
        "authenticators": authenticators or [{"handler": "jwt", "config": {
            "trusted_issuers": [ISSUER],
            "target_audience": [AUDIENCE],
            "required_scope": ["read"],
        }}],
        "authorizer": {"handler": "allow"},
        "mutators": [{"handler": "header", "config": {"headers": {
            "X-User": "{{ print .Subject }}",
            "X-Host": host_header,
        }}}],
    }


# The rule shapes deployed rule sets use (issue 13): URL pattern for (host, path prefix), and
# the matching strategy (str.format templates: `{{` is a literal brace). Kyma's APIRules compile
# to the first.
SHAPES = {
    "kyma": ("<http|https>://{host}{path}/<.*>", "regexp"),
    "literal": ("http://{host}{path}/<.*>", "regexp"),
    "anyhost": ("<http|https>://<[^/]+>{path}/<.*>", "regexp"),
    "glob": ("<{{http,https}}>://{host}{path}/<**>", "glob"),
}


def portcullis_config(jwks_port, nrules, shape="kyma", id_token=False):
    """`nrules` rules of `shape` (default Kyma's, `<http|https>://HOST/path<...>`) over 50
    literal hosts; the last one matches the benchmark request (Host BENCH_HOST, path
    BENCH_PATH), so a request runs past every other candidate. With `id_token`, that rule also
    mints an id_token (ES256, private JWKS id-keys.json) per session (variant h)."""
    origin = f"http://127.0.0.1:{jwks_port}"
    url, strategy = SHAPES[shape]
    rules = [
        rule(f"svc-{i:04}", url.format(host=f"svc-{i % 50:02}.shop.svc.cluster.local", path=f"/v{i}"),
             ["GET", "POST"], f"svc-{i % 50:02} {{{{ print .Extra.client_id }}}}")
        for i in range(nrules - 1)
    ]
    rules.append(rule("bench", url.format(host=BENCH_HOST, path="/api"), ["GET"],
                      "bench {{ print .Extra.client_id }}"))
    mutators = {"header": {"enabled": True, "config": {"headers": {"X-User": "{{ print .Subject }}"}}}}
    if id_token:
        rules[-1]["mutators"].append({"handler": "id_token", "config": {
            "claims": '{"aud": ["bench"], "scp": "{{ print .Extra.scp }}"}'}})
        mutators["id_token"] = {"enabled": True, "config": {
            "issuer_url": "https://oathkeeper.portcullis.test/",
            "jwks_url": f"{origin}/id-keys.json",
        }}
    # Variant g: a browser session checked against a session store (a static file here), with
    # the opt-in cache warm: every measured request is a cache hit.
    rules.append(rule("bench-session", f"<http|https>://{BENCH_HOST}/session/<.*>", ["GET"],
                      "bench {{ print .Extra.client_id }}",
                      [{"handler": "cookie_session", "config": {"cache": {"enabled": True, "ttl": "1h"}}}]))
    return {
        "access_rules": {"matching_strategy": strategy},
        "authenticators": {
            "jwt": {
                "enabled": True,
                "config": {
                    "jwks_urls": [f"{origin}/jwks.json"],
                    "trusted_issuers": [ISSUER],
                    "target_audience": [AUDIENCE],
                    "allowed_algorithms": ["RS256"],
                    "scope_strategy": "exact",
                },
            },
            "cookie_session": {
                "enabled": True,
                "config": {
                    "check_session_url": f"{origin}/session.json",
                    "preserve_path": True,
                    "only": ["sid"],
                },
            },
        },
        "authorizers": {"allow": {"enabled": True}},
        "mutators": mutators,
        "errors": {"fallback": ["json"], "handlers": {"json": {"enabled": True}}},
        "rules": rules,
        "clusters": {origin: "jwks"},
    }


def scaling_listeners(jwks_port):
    """(name, Portcullis config) for every shape with 1 and with SCALING_RULES rules: the
    1,000 ÷ 1 rules figures of `make bench-filter`."""
    return [
        (f"{shape}-{n}", portcullis_config(jwks_port, n, shape))
        for shape in SHAPES
        for n in (1, int(os.environ.get("SCALING_RULES", "1000")))
    ]


def listener(name, port, filters):
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}],
                }]},
                "http_filters": filters + [router],
            },
        }]}],
    }


def main():
    out, admin_path, jwks_port, noop_wasm, filter_wasm = sys.argv[1:6]
    ports = [int(p) for p in sys.argv[6:]]
    jwks_file = f"{out}/jwks.json"
    pc = portcullis_config(int(jwks_port), int(os.environ.get("BENCH_RULES", "100")))
    only = os.environ.get("BENCH_ONLY")
    with open(f"{out}/portcullis.json", "w") as f:
        json.dump(pc, f, indent=1)
    filters = {
        "nofilter": [],
        "noop": [wasm_filter("noop", "noop", noop_wasm, "bench")],
        "jwt_nocache": [jwt_authn(jwks_file, cache=False)],
        "jwt_cache": [jwt_authn(jwks_file, cache=True)],
        "portcullis": [wasm_filter("portcullis", "portcullis", filter_wasm, json.dumps(pc))],
        "portcullis_idtoken": [wasm_filter(
            "portcullis_idtoken", "portcullis_idtoken", filter_wasm,
            json.dumps(portcullis_config(int(jwks_port), int(os.environ.get("BENCH_RULES", "100")), id_token=True)))],
    }
    listeners = [
        listener(name, port, filters[name])
        for name, port in zip(VARIANTS, ports)
        if not (name.startswith("portcullis") and filter_wasm == "-") and only in (None, name)
    ]
    if os.environ.get("BENCH_SCALING"):
        # One listener per (shape, rule count), in the order of scaling_listeners(): the ports.
        listeners = [
            listener(name, port, [wasm_filter(name, "portcullis", filter_wasm, json.dumps(config))])
            for (name, config), port in zip(scaling_listeners(int(jwks_port)), ports)
        ]
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": listeners,
            "clusters": [{
                "name": "jwks",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "jwks", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": int(jwks_port)}}}}]}]},
            }],
        },
    }
    with open(f"{out}/envoy.yaml", "w") as f:
        json.dump(bootstrap, f, indent=1)


if __name__ == "__main__":
    main()
