//! `portcullis test` as a black box: the real binary, rule files on disk, a JWKS served on
//! loopback, exit statuses 0 (allow), 1 (deny) and 2 (unusable input, one line on stderr).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use josekit::jwk::KeyPair as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, UNIX_EPOCH};

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("test")
        .args(args)
        .env_remove("PORTCULLIS_GLOBAL_CONFIG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn rule(name: &str, path: &str, authenticator: &str, authorizer: &str) -> String {
    format!(
        "---\napiVersion: oathkeeper.ory.sh/v1alpha1\nkind: Rule\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  upstream: {{url: 'http://api.default.svc.cluster.local'}}\n  match: {{url: '<http|https>://<[^/]+>{path}', methods: [GET]}}\n  authenticators: [{authenticator}]\n  authorizer: {{handler: {authorizer}}}\n  mutators: [{{handler: header, config: {{headers: {{X-User: '{{{{ print .Subject }}}}'}}}}}}]\n"
    )
}

/// Serves `body` to every GET on a loopback port; returns its origin.
fn serve_forever(body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    origin
}

/// An RSA key: its JWKS and a token signed with it.
fn key_and_token(sub: &str, scope: &str, exp_in: i64) -> (String, String) {
    let pair = josekit::jws::RS256.generate_key_pair(2048).unwrap();
    let mut jwk = pair.to_jwk_public_key();
    jwk.set_key_id("k1");
    jwk.set_algorithm("RS256");
    let jwks = serde_json::json!({"keys": [serde_json::to_value(&jwk).unwrap()]}).to_string();
    let mut header = josekit::jws::JwsHeader::new();
    header.set_key_id("k1");
    let mut payload = josekit::jwt::JwtPayload::new();
    payload.set_subject(sub);
    payload
        .set_claim(
            "scp",
            Some(serde_json::json!(scope.split(' ').collect::<Vec<_>>())),
        )
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    payload.set_expires_at(&(UNIX_EPOCH + Duration::from_secs((now + exp_in) as u64)));
    let signer = josekit::jws::RS256
        .signer_from_der(pair.to_der_private_key())
        .unwrap();
    let token = josekit::jwt::encode_with_signer(&payload, &header, &signer).unwrap();
    (jwks, token)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn allow_deny_and_no_match_set_the_exit_status_and_print_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rule("open", "/open", "{handler: anonymous}", "allow")
        + &rule("closed", "/closed", "{handler: anonymous}", "deny");
    let file = write(dir.path(), "rules.yaml", &rules);

    let allow = portcullis(&["--rules", &file, "--request", "GET http://api.local/open"]);
    assert_eq!(allow.status.code(), Some(0), "{}", stderr(&allow));
    let out = stdout(&allow);
    assert!(out.contains("match       rule open.default"), "{out}");
    assert!(
        out.contains("anonymous") && out.contains("success"),
        "{out}"
    );
    assert!(out.contains("decision    ALLOW"), "{out}");
    assert!(out.contains("set       x-user: anonymous"), "{out}");

    let deny = portcullis(&["--rules", &file, "--request", "GET http://api.local/closed"]);
    assert_eq!(deny.status.code(), Some(1));
    let out = stdout(&deny);
    assert!(out.contains("DENY 403 (authorizer_deny)"), "{out}");
    assert!(out.contains("body      {"), "{out}");

    // A directory of manifests, and JSON output.
    let none = portcullis(&[
        "--rules",
        dir.path().to_str().unwrap(),
        "--request",
        "GET http://api.local/elsewhere",
        "--json",
    ]);
    assert_eq!(none.status.code(), Some(1));
    let trace: serde_json::Value = serde_json::from_slice(&none.stdout).unwrap();
    assert_eq!(trace["matching"]["outcome"], "no_match");
    assert_eq!(trace["decision"]["status"], 404);
}

#[test]
fn jwt_keys_are_fetched_from_the_url_the_rule_names() {
    let (jwks, token) = key_and_token("alice", "read", 300);
    let origin = serve_forever(jwks);
    let dir = tempfile::tempdir().unwrap();
    let jwt = format!(
        "{{handler: jwt, config: {{jwks_urls: ['{origin}/jwks.json'], required_scope: [read], scope_strategy: exact}}}}"
    );
    let file = write(
        dir.path(),
        "rules.yaml",
        &rule("api", "/api", &jwt, "allow"),
    );
    let req = [
        "--rules",
        file.as_str(),
        "--request",
        "GET https://api.local/api",
    ];

    let ok = portcullis(&[&req[..], &["--token", &token]].concat());
    assert_eq!(ok.status.code(), Some(0), "{}{}", stdout(&ok), stderr(&ok));
    let out = stdout(&ok);
    assert!(
        out.contains(&format!("keys        {origin}/jwks.json -> 1 keys")),
        "{out}"
    );
    assert!(out.contains("subject=alice"), "{out}");

    // The same token through a header flag, with a scope the rule does not accept.
    let (_, wrong_key) = key_and_token("mallory", "read", 300);
    let forged = portcullis(
        &[
            &req[..],
            &["--header", &format!("Authorization: Bearer {wrong_key}")],
        ]
        .concat(),
    );
    assert_eq!(forged.status.code(), Some(1));
    let out = stdout(&forged);
    assert!(out.contains("DENY 401"), "{out}");
    assert!(out.contains("failed"), "{out}");

    let (_, expired) = key_and_token("alice", "read", -3600);
    let out = portcullis(&[&req[..], &["--token", &expired]].concat());
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("reason=jwt_"), "{}", stdout(&out));
}

#[test]
fn unreachable_keys_deny_with_the_cause_in_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    // Port 9 (discard) on loopback: nothing listens.
    let jwt = "{handler: jwt, config: {jwks_urls: ['http://127.0.0.1:9/jwks.json']}}";
    let file = write(dir.path(), "rules.yaml", &rule("api", "/api", jwt, "allow"));
    let (_, token) = key_and_token("alice", "read", 300);
    let out = portcullis(&[
        "--rules",
        &file,
        "--request",
        "GET http://api.local/api",
        "--token",
        &token,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("keys        http://127.0.0.1:9/jwks.json -> failed"),
        "{text}"
    );
    assert!(text.contains("DENY 401"), "{text}");
}

#[test]
fn oathkeeper_rule_files_are_accepted_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "rules.json",
        r#"[{"id": "ok", "match": {"url": "http://api.local/<.*>", "methods": ["GET"]},
             "authenticators": [{"handler": "anonymous"}], "authorizer": {"handler": "allow"},
             "mutators": [{"handler": "noop"}]}]"#,
    );
    let out = portcullis(&["--rules", &file, "--request", "GET http://api.local/x"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("rule ok"));
}

#[test]
fn unusable_input_exits_2_with_one_readable_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.yaml",
        &rule("open", "/open", "{handler: anonymous}", "allow"),
    );
    let bad_rule = write(
        dir.path(),
        "bad.yaml",
        &rule("bad", "/bad", "{handler: no_such_handler}", "allow"),
    );
    let global = write(dir.path(), "global.yaml", "authenticators: [not, a, map]\n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--rules", &good, "--request", "GET"], "METHOD URL"),
        (
            vec!["--rules", &good, "--request", "GET ftp://api.local/open"],
            "ftp://api.local/open",
        ),
        (
            vec!["--rules", &good, "--request", "G:T http://api.local/open"],
            "method",
        ),
        (
            vec![
                "--rules",
                &good,
                "--request",
                "GET http://api.local/open",
                "--header",
                "no colon",
            ],
            "header",
        ),
        (
            vec![
                "--rules",
                "/nonexistent/rules",
                "--request",
                "GET http://a/",
            ],
            "/nonexistent/rules",
        ),
        (
            vec![
                "--rules",
                &bad_rule,
                "--request",
                "GET http://api.local/bad",
            ],
            "no_such_handler",
        ),
        (
            vec![
                "--rules",
                &good,
                "--config",
                &global,
                "--request",
                "GET http://api.local/open",
            ],
            "global.yaml",
        ),
    ];
    for (args, needle) in cases {
        let out = portcullis(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(stdout(&out).is_empty());
    }
}
