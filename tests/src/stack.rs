//! The Portcullis filter in a real Envoy, in front of the echo upstream, wired to the mock auth
//! server: the setup every filter end-to-end test starts from.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{AuthServer, Echo, Envoy, EnvoyBuilder, Upstream, client, keys};

/// Cluster name the filter reaches the auth server through.
pub const AUTH_CLUSTER: &str = "auth";

pub struct Stack {
    pub upstream: Upstream,
    pub auth: AuthServer,
    pub envoy: Envoy,
}

/// Global handler sections with every supported handler enabled and pointed at `auth`,
/// plus `rules`.
pub fn config(auth: &AuthServer, rules: Value) -> Value {
    json!({
        "authenticators": {
            "noop": {"enabled": true},
            "anonymous": {"enabled": true},
            "unauthorized": {"enabled": true},
            "jwt": {"enabled": true, "config": {
                "jwks_urls": [auth.url("/jwks")],
                "trusted_issuers": [keys::ISSUER],
                "target_audience": [keys::AUDIENCE],
                "scope_strategy": "exact"
            }},
            "oauth2_introspection": {"enabled": true, "config": {
                "introspection_url": auth.url("/introspect"),
                "scope_strategy": "exact"
            }}
        },
        "authorizers": {
            "allow": {"enabled": true},
            "deny": {"enabled": true},
            "remote_json": {"enabled": true, "config": {"remote": auth.url("/authz"), "payload": "{}"}}
        },
        "mutators": {"noop": {"enabled": true}, "header": {"enabled": true}},
        "errors": {
            "fallback": ["json"],
            "handlers": {
                "json": {"enabled": true},
                "www_authenticate": {"enabled": true},
                "redirect": {"enabled": true, "config": {"to": "https://login.example.com/"}}
            }
        },
        "clusters": {auth.origin(): AUTH_CLUSTER},
        "rules": rules
    })
}

/// A rule on `url` (methods GET and POST) with the given handlers.
pub fn rule(
    id: &str,
    url: &str,
    authenticators: Value,
    authorizer: Value,
    mutators: Value,
) -> Value {
    json!({
        "id": id,
        "match": {"url": url, "methods": ["GET", "POST"]},
        "authenticators": authenticators,
        "authorizer": authorizer,
        "mutators": mutators
    })
}

/// The `header` mutator forwarding subject and a claim.
pub fn subject_headers() -> Value {
    json!([{"handler": "header", "config": {"headers": {
        "X-User": "{{ print .Subject }}",
        "X-Client": "{{ print .Extra.client_id }}"
    }}}])
}

/// A reply from Envoy: status, headers, body.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    /// The echo upstream's view of the request (only for requests that got through).
    pub fn echo(&self) -> Echo {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {} {}", self.status, self.body))
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Stack {
    /// Upstream, auth server serving the test JWKS, Envoy with the filter and `rules`.
    pub fn start(rules: Value) -> Self {
        Self::start_with(|auth| config(auth, rules))
    }

    pub fn start_with(make_config: impl FnOnce(&AuthServer) -> Value) -> Self {
        Self::start_custom(make_config, |b| b)
    }

    /// [`Self::start_with`], with Envoy's builder adjusted by `customize` before it starts.
    pub fn start_custom(
        make_config: impl FnOnce(&AuthServer) -> Value,
        customize: impl FnOnce(EnvoyBuilder) -> EnvoyBuilder,
    ) -> Self {
        let upstream = Upstream::start();
        let auth = AuthServer::start();
        auth.set_jwks(keys::keys().jwks());
        let builder = Envoy::builder(upstream.port())
            .cluster(AUTH_CLUSTER, auth.port())
            .portcullis(&make_config(&auth));
        let envoy = customize(builder).start();
        Self {
            upstream,
            auth,
            envoy,
        }
    }

    /// Sends a request to Envoy with `headers`.
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = client().request(method, self.envoy.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().unwrap_or_else(|e| {
            panic!("request to Envoy failed: {e}\n{}", self.envoy.log_tail(30))
        });
        Reply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().unwrap_or_default(),
        }
    }

    /// Sends a request exactly as written (request line and headers; see [`crate::raw::http1`]).
    pub fn raw(&self, head: &str) -> Reply {
        crate::raw::http1(self.envoy.port(), head)
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", path, headers)
    }

    /// GET with `Authorization: Bearer <token>`.
    pub fn get_with_token(&self, path: &str, token: &str) -> Reply {
        let bearer = format!("Bearer {token}");
        self.get(path, &[("authorization", &bearer)])
    }

    /// Asserts the status, showing the body and Envoy's log on failure.
    pub fn expect(&self, reply: &Reply, status: u16, what: &str) {
        assert_eq!(
            reply.status,
            status,
            "{what}: got {} {}\n--- envoy log ---\n{}",
            reply.status,
            reply.body,
            self.envoy.log_tail(30)
        );
    }

    /// A counter the filter publishes (`wasmcustom.portcullis_<name>`), 0 when not yet defined.
    pub fn metric(&self, name: &str) -> u64 {
        self.envoy
            .stat(&format!("wasmcustom.portcullis_{name}"))
            .unwrap_or(0)
    }

    /// Polls until `f` returns true or `timeout` passes.
    pub fn wait_until(&self, timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + timeout;
        while !f() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.envoy.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
