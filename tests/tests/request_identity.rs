//! The filter judges exactly the request the workload receives (issue 14): the path, the scheme,
//! the host and the identity headers, each tried with the hostile spellings a client can send,
//! in a real Envoy. Requests are written raw where an HTTP library would tidy them up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use portcullis_e2e::raw::h2c;
use portcullis_e2e::stack::{Reply, Stack, config, rule};
use portcullis_e2e::{BACKEND_HEADER, PathNormalization, Upstream};
use serde_json::{Value, json};

fn anonymous() -> Value {
    json!([{"handler": "anonymous", "config": {"subject": "guest"}}])
}

fn unauthorized() -> Value {
    json!([{"handler": "unauthorized"}])
}

fn allow() -> Value {
    json!({"handler": "allow"})
}

fn noop() -> Value {
    json!([{"handler": "noop"}])
}

fn x_user() -> Value {
    json!([{"handler": "header", "config": {"headers": {"X-User": "{{ print .Subject }}"}}}])
}

/// The setup: a public rule (anonymous, no mutator) and an admin rule (unauthorized, a
/// header mutator), Envoy routing `/admin/` to an admin backend and the rest to the public one.
fn admin_and_public(mode: PathNormalization) -> (Stack, Upstream) {
    let admin = Upstream::start();
    let stack = Stack::start_custom(
        |auth| {
            config(
                auth,
                json!([
                    rule(
                        "public",
                        "http://<[^/]+>/public/<.*>",
                        anonymous(),
                        allow(),
                        noop()
                    ),
                    rule(
                        "admin",
                        "http://<[^/]+>/admin/<.*>",
                        unauthorized(),
                        allow(),
                        x_user()
                    ),
                ]),
            )
        },
        |b| {
            b.path_normalization(mode)
                .backend("admin", "/admin/", admin.port())
        },
    );
    (stack, admin)
}

/// Every spelling of the issue, and their relatives.
const HOSTILE_PATHS: &[&str] = &[
    "/admin/..%2Fpublic/x",
    "/admin/x/..%2f..%2Fpublic/y",
    "/admin/%2e%2e%2Fpublic/x",
    "/admin/../public/x",
    "/admin//../public/x",
    "/public/..;/admin/x",
    "/admin/%2e%2e/public/x",
    "/admin/.%2E/public/x",
    "/admin/./../public/x",
    "/public/..%5Cadmin/x",
    "/public/%2E%2E/admin/x",
    "/public/x/..%2F..%2Fadmin/x",
    "/admin;/x/../../public/x",
];

fn check_hostile_paths(mode: PathNormalization) {
    let (stack, _admin) = admin_and_public(mode);
    // The controls: the rules and routes do what they say.
    let r = stack.raw("GET /public/x HTTP/1.1\r\nhost: svc.test\r\nx-user: root");
    stack.expect(&r, 200, "public");
    assert_eq!(r.echo().header(BACKEND_HEADER), Some("upstream"));
    stack.expect(
        &stack.raw("GET /admin/x HTTP/1.1\r\nhost: svc.test"),
        401,
        "admin",
    );
    stack.expect(
        &stack.raw("GET /%61dmin/x HTTP/1.1\r\nhost: svc.test"),
        401,
        "an unreserved escape is read as the workload reads it",
    );
    // Every spelling is tried before anything is asserted, so a failure lists them all.
    let mut wrong = Vec::new();
    for path in HOSTILE_PATHS {
        let r = stack.raw(&format!(
            "GET {path} HTTP/1.1\r\nhost: svc.test\r\nx-user: root"
        ));
        if let Err(why) = judged_as_forwarded(&r, mode) {
            wrong.push(format!("{path}: {why}: {} {}", r.status, r.body));
        }
    }
    assert!(
        wrong.is_empty(),
        "{mode:?}:\n{}\n--- envoy log ---\n{}",
        wrong.join("\n"),
        stack.envoy.log_tail(20)
    );
}

/// Whether a hostile spelling was answered as the path the workload would get.
fn judged_as_forwarded(r: &Reply, mode: PathNormalization) -> Result<(), &'static str> {
    if mode == PathNormalization::EnvoyDefaults {
        // Nothing in front of the filter: it refuses the spelling itself, with its JSON.
        let json: Value = serde_json::from_str(&r.body).map_err(|_| "not the filter's JSON")?;
        if r.status != 400 || json["error"]["reason"] != "invalid_path" {
            return Err("not refused as invalid_path");
        }
        return Ok(());
    }
    match r.status {
        // Envoy normalised it into a path that is not the admin one: then it must have been
        // judged as that path, and served by the public backend without the forged header.
        200 => {
            let echo = r.echo();
            if echo.header(BACKEND_HEADER) != Some("upstream") {
                Err("reached the admin backend")
            } else if !echo.path.starts_with("/public/") {
                Err("allowed on a path that is not public")
            } else if echo.header("x-user").is_some() {
                Err("the forged X-User reached the workload")
            } else {
                Ok(())
            }
        }
        400 | 401 => Ok(()),
        _ => Err("unexpected status"),
    }
}

#[test]
fn hostile_paths_never_reach_the_admin_backend_with_envoy_defaults() {
    check_hostile_paths(PathNormalization::EnvoyDefaults);
}

#[test]
fn hostile_paths_never_reach_the_admin_backend_with_normalize_path() {
    check_hostile_paths(PathNormalization::NormalizeOnly);
}

#[test]
fn hostile_paths_never_reach_the_admin_backend_with_the_shipped_settings() {
    check_hostile_paths(PathNormalization::Hardened);
}

/// `https://` rules open `/tls/`, `http://` rules close it: on a plain listener the client must
/// not be able to pick the open one.
fn scheme_rules(auth: &portcullis_e2e::AuthServer) -> Value {
    config(
        auth,
        json!([
            rule(
                "tls",
                "https://<[^/]+>/tls/<.*>",
                anonymous(),
                allow(),
                noop()
            ),
            rule(
                "plain",
                "http://<[^/]+>/tls/<.*>",
                unauthorized(),
                allow(),
                noop()
            ),
        ]),
    )
}

#[test]
fn the_scheme_comes_from_the_connection_not_the_client() {
    let stack = Stack::start_with(scheme_rules);
    let port = stack.envoy.port();
    let h2 = |scheme: &str| {
        let r = h2c(
            port,
            &[
                (":method", "GET"),
                (":scheme", scheme),
                (":authority", "svc.test"),
                (":path", "/tls/x"),
            ],
        );
        // The status when the encoder sent it plainly, else what the body says: the filter's
        // error JSON carries its code, the echo its path; anything else reads as 0.
        let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        r.status.map(u64::from).unwrap_or_else(|| {
            match (body["error"]["code"].as_u64(), body["path"].is_string()) {
                (Some(code), _) => code,
                (None, true) => 200,
                (None, false) => 0,
            }
        })
    };
    // Every spelling is tried before anything is asserted, so a failure lists them all.
    let answers = [
        (
            "plain request",
            u64::from(stack.raw("GET /tls/x HTTP/1.1\r\nhost: svc.test").status),
        ),
        (
            "X-Forwarded-Proto: https",
            u64::from(
                stack
                    .raw("GET /tls/x HTTP/1.1\r\nhost: svc.test\r\nx-forwarded-proto: https")
                    .status,
            ),
        ),
        (
            "absolute-form https target",
            u64::from(
                stack
                    .raw(&format!(
                        "GET https://127.0.0.1:{port}/tls/x HTTP/1.1\r\nhost: 127.0.0.1:{port}"
                    ))
                    .status,
            ),
        ),
        ("h2c with :scheme https", h2("https")),
        ("h2c with :scheme http", h2("http")),
    ];
    let wrong: Vec<_> = answers.iter().filter(|(_, s)| *s != 401).collect();
    assert!(
        wrong.is_empty(),
        "https rule matched on a plain connection: {wrong:?}\n{}",
        stack.envoy.log_tail(20)
    );
}

/// A self-signed certificate for `localhost`, by the `openssl` command.
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl (needed to make a test certificate)");
    assert!(status.status.success(), "openssl: {status:?}");
    (cert, key)
}

#[test]
fn over_tls_the_scheme_is_https_whatever_the_client_says() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let stack = Stack::start_custom(scheme_rules, |b| b.tls(&cert, &key));
    let url = format!("https://127.0.0.1:{}/tls/x", stack.envoy.port());
    let curl = |extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
            .args(extra)
            .arg(&url)
            .output()
            .expect("running curl (needed to speak TLS to Envoy)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.trim().to_string(), body.to_string())
    };
    let (code, body) = curl(&[]);
    assert_eq!(code, "200", "https rule over TLS: {body}");
    let (code, body) = curl(&["-H", "x-forwarded-proto: http"]);
    assert_eq!(code, "200", "X-Forwarded-Proto: http over TLS: {body}");
}

#[test]
fn underscore_spellings_and_other_rules_managed_headers_are_stripped() {
    let stack = Stack::start(json!([
        rule("me", "http://<[^/]+>/me", anonymous(), allow(), x_user()),
        rule(
            "public",
            "http://<[^/]+>/public",
            anonymous(),
            allow(),
            noop()
        ),
    ]));
    let r = stack.raw(
        "GET /me HTTP/1.1\r\nhost: svc.test\r\nx_user: admin\r\nx-user: guest2\r\nX_User: root",
    );
    stack.expect(&r, 200, "me");
    let echo = r.echo();
    assert_eq!(echo.header("x-user"), Some("guest"));
    assert_eq!(echo.header("x_user"), None, "{echo:?}");

    // The public rule sets no header, yet X-User is the workload's identity header elsewhere.
    let r = stack.raw(
        "GET /public HTTP/1.1\r\nhost: svc.test\r\nx-user: root\r\nx_user: root\r\nx-other: kept",
    );
    stack.expect(&r, 200, "public");
    let echo = r.echo();
    assert_eq!(echo.header("x-user"), None, "{echo:?}");
    assert_eq!(echo.header("x_user"), None, "{echo:?}");
    assert_eq!(echo.header("x-other"), Some("kept"));
}

#[test]
fn host_case_and_trailing_dot_do_not_escape_a_host_rule() {
    let stack = Stack::start(json!([
        // Written in upper case on purpose: rules' literal hosts are lower-cased too.
        rule(
            "admin",
            "http://Admin.TEST/<.*>",
            unauthorized(),
            allow(),
            noop()
        ),
        rule(
            "others",
            "http://<(?!admin\\.test)[^/]+>/<.*>",
            anonymous(),
            allow(),
            noop()
        ),
    ]));
    for host in [
        "admin.test",
        "ADMIN.test",
        "admin.test.",
        "Admin.Test.",
        "admin.TEST:80",
        "admin.test.:80",
    ] {
        stack.expect(
            &stack.raw(&format!("GET /x HTTP/1.1\r\nhost: {host}")),
            401,
            host,
        );
    }
    stack.expect(
        &stack.raw("GET /x HTTP/1.1\r\nhost: other.test"),
        200,
        "another host",
    );
}

#[test]
fn trusted_forwarded_host_is_the_last_element_and_is_checked() {
    let stack = Stack::start_with(|auth| {
        let mut c = config(
            auth,
            json!([
                rule(
                    "public",
                    "http://public.test/<.*>",
                    anonymous(),
                    allow(),
                    noop()
                ),
                rule(
                    "admin",
                    "http://admin.test/<.*>",
                    unauthorized(),
                    allow(),
                    noop()
                ),
                rule(
                    "www",
                    "http://www.example.com/public/<.*>",
                    anonymous(),
                    allow(),
                    noop()
                ),
            ]),
        );
        c["trust_forwarded_headers"] = json!(true);
        c
    });
    let get = |xfh: &str, path: &str| {
        stack.raw(&format!(
            "GET {path} HTTP/1.1\r\nhost: svc.test\r\nx-forwarded-host: {xfh}"
        ))
    };
    stack.expect(&get("public.test", "/x"), 200, "trusted host");
    stack.expect(&get("admin.test", "/x"), 401, "trusted admin host");
    stack.expect(
        &get("public.test, admin.test", "/x"),
        401,
        "the element the proxy appended decides",
    );
    let r: Reply = get("www.example.com/public", "/admin/x");
    stack.expect(&r, 400, "a '/' in X-Forwarded-Host");
    assert_eq!(r.json()["error"]["reason"], "invalid_host");
    stack.expect(&get("admin.test@public.test", "/x"), 400, "'@'");
}
