use serde_json::json;

use super::*;

fn req(headers: &[(&str, &str)], ip: Option<&str>) -> Request {
    let mut r = Request::new(
        "GET",
        "https",
        "api.example.com",
        "/orders?id=1",
        headers.iter().copied(),
    );
    r.remote_ip = ip.map(str::to_owned);
    r
}

fn unauthorized() -> PolicyError {
    PolicyError::new(
        ErrorKind::Unauthorized,
        "jwt_expired",
        "token expired at 12:00",
    )
}

fn forbidden() -> PolicyError {
    PolicyError::new(ErrorKind::Forbidden, "scope_missing", "scope write missing")
}

const URL: &str = "https://api.example.com/orders?id=1";

fn all_enabled(extra: Value) -> ErrorHandlers {
    let mut g = json!({
        "fallback": ["json"],
        "handlers": {
            "json": {"enabled": true},
            "redirect": {"enabled": true, "config": {"to": "https://login.example.com/"}},
            "www_authenticate": {"enabled": true}
        }
    });
    g = deep_merge(&g, &extra);
    ErrorHandlers::compile(Some(&g)).unwrap()
}

fn rule(h: &ErrorHandlers, errors: Value) -> RuleErrorHandlers {
    let list: Vec<(String, Option<Value>)> = errors
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["handler"].as_str().unwrap().to_owned(),
                e.get("config").cloned(),
            )
        })
        .collect();
    h.compile_rule("r1", &list).unwrap()
}

fn rule_err(h: &ErrorHandlers, errors: &[(&str, Option<Value>)]) -> String {
    let list: Vec<(String, Option<Value>)> = errors
        .iter()
        .map(|(n, c)| (n.to_string(), c.clone()))
        .collect();
    h.compile_rule("r1", &list).unwrap_err().to_string()
}

#[test]
fn kinds_map_status_and_names() {
    for k in ErrorKind::ALL {
        assert_eq!(ErrorKind::from_when_name(k.as_when_name()), Some(k));
    }
    assert_eq!(ErrorKind::Unauthorized.status(), 401);
    assert_eq!(ErrorKind::Forbidden.status(), 403);
    assert_eq!(ErrorKind::NotFound.status(), 404);
    assert_eq!(ErrorKind::InternalServerError.status(), 500);
    assert_eq!(
        ErrorKind::InternalServerError.as_when_name(),
        "internal_server_error"
    );
}

#[test]
fn default_config_is_non_verbose_json() {
    let h = ErrorHandlers::compile(None).unwrap();
    let r = h.compile_rule("r1", &[]).unwrap();
    let resp = r.respond(&unauthorized(), &req(&[], None), URL);
    assert_eq!(resp.status, 401);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(
        resp.body,
        r#"{"error":{"code":401,"status":"Unauthorized","message":"The request could not be authorized"}}"#
    );
    assert!(!resp.body.contains("expired"));
}

#[test]
fn verbose_json_shows_message_and_reason() {
    let h = all_enabled(json!({}));
    let r = rule(
        &h,
        json!([{"handler": "json", "config": {"verbose": true}}]),
    );
    let resp = r.respond(&forbidden(), &req(&[], None), URL);
    assert_eq!(resp.status, 403);
    let body: Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(
        body,
        json!({"error": {"code": 403, "status": "Forbidden", "reason": "scope_missing",
                         "message": "scope write missing"}})
    );
}

#[test]
fn www_authenticate_quotes_realm() {
    let h = all_enabled(json!({}));
    let r = rule(&h, json!([{"handler": "www_authenticate"}]));
    let resp = r.respond(&unauthorized(), &req(&[], None), URL);
    assert_eq!(resp.status, 401);
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Basic realm=\"Please authenticate.\"")
    );
    assert_eq!(resp.body, "Unauthorized\n");
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    let r = rule(
        &h,
        json!([{"handler": "www_authenticate", "config": {"realm": "my \"api\""}}]),
    );
    let resp = r.respond(&forbidden(), &req(&[], None), URL);
    assert_eq!(resp.status, 401);
    assert_eq!(
        resp.header("www-authenticate"),
        Some(r#"Basic realm="my \"api\"""#)
    );
}

#[test]
fn redirect_without_return_to() {
    let h = all_enabled(json!({}));
    let r = rule(
        &h,
        json!([{"handler": "redirect", "config": {"code": 301}}]),
    );
    let resp = r.respond(&unauthorized(), &req(&[], None), URL);
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("https://login.example.com/"));
    assert_eq!(
        resp.body,
        "<a href=\"https://login.example.com/\">Moved Permanently</a>.\n\n"
    );
}

#[test]
fn redirect_return_to_is_encoded() {
    let h = all_enabled(json!({}));
    let r = rule(
        &h,
        json!([{"handler": "redirect", "config": {"return_to_query_param": "return_to"}}]),
    );
    let resp = r.respond(&unauthorized(), &req(&[], None), "https://a.b/x y?q=1&r=ä");
    assert_eq!(resp.status, 302);
    assert_eq!(
        resp.header("location"),
        Some("https://login.example.com/?return_to=https%3A%2F%2Fa.b%2Fx+y%3Fq%3D1%26r%3D%C3%A4")
    );
    let r = rule(
        &h,
        json!([{"handler": "redirect", "config": {"to": "https://l.example/login?flow=1#top",
                "return_to_query_param": "rt"}}]),
    );
    let resp = r.respond(&unauthorized(), &req(&[], None), URL);
    assert_eq!(
        resp.header("location"),
        Some(
            "https://l.example/login?flow=1&rt=https%3A%2F%2Fapi.example.com%2Forders%3Fid%3D1#top"
        )
    );
}

#[test]
fn when_by_error_kind() {
    let h = all_enabled(json!({}));
    let r = rule(
        &h,
        json!([{"handler": "www_authenticate", "config": {"when": [{"error": ["unauthorized"]}]}}]),
    );
    assert!(
        r.respond(&unauthorized(), &req(&[], None), URL)
            .header("www-authenticate")
            .is_some()
    );
    let resp = r.respond(&forbidden(), &req(&[], None), URL);
    assert_eq!(resp.status, 403);
    assert_eq!(resp.header("content-type"), Some("application/json"));
}

#[test]
fn when_by_accept_header() {
    let h = all_enabled(json!({}));
    let r = rule(
        &h,
        json!([{"handler": "redirect",
                "config": {"when": [{"request": {"header": {"accept": ["text/html"]}}}]}}]),
    );
    let e = unauthorized();
    let redirect = |a: Option<&str>| {
        let hs: Vec<(&str, &str)> = a.map(|v| ("accept", v)).into_iter().collect();
        r.respond(&e, &req(&hs, None), URL).status == 302
    };
    assert!(redirect(Some("application/xhtml+xml;q=0.9, TEXT/HTML")));
    assert!(redirect(Some("text/html;q=0.1")));
    // Request wildcards only match identical listed wildcards (Oathkeeper).
    assert!(!redirect(Some("*/*")));
    assert!(!redirect(Some("text/*")));
    assert!(!redirect(Some("application/json")));
    assert!(!redirect(None));
    let r = rule(
        &h,
        json!([{"handler": "redirect",
                "config": {"when": [{"request": {"header": {"accept": ["application/*"]}}}]}}]),
    );
    let hit = |a: Option<&str>| {
        let hs: Vec<(&str, &str)> = a.map(|v| ("accept", v)).into_iter().collect();
        r.respond(&e, &req(&hs, None), URL).status == 302
    };
    assert!(hit(Some("application/json")));
    assert!(!hit(Some("text/plain")));
    // No Accept header counts as application/octet-stream.
    assert!(hit(None));
}

#[test]
fn when_by_content_type() {
    let h = all_enabled(json!({}));
    let r = rule(
        &h,
        json!([{"handler": "www_authenticate",
                "config": {"when": [{"request": {"header": {"content_type": ["application/x-www-form-urlencoded"]}}}]}}]),
    );
    let e = unauthorized();
    let hit = |ct: Option<&str>| {
        let hs: Vec<(&str, &str)> = ct.map(|v| ("content-type", v)).into_iter().collect();
        r.respond(&e, &req(&hs, None), URL)
            .header("www-authenticate")
            .is_some()
    };
    assert!(hit(Some(
        "application/x-www-form-urlencoded; charset=utf-8"
    )));
    assert!(!hit(Some("application/json")));
    assert!(!hit(None));
    assert!(!hit(Some("garbage")));
}

#[test]
fn when_by_remote_ip_v4_and_v6() {
    let h = all_enabled(json!({}));
    let r = rule(
        &h,
        json!([{"handler": "www_authenticate",
                "config": {"when": [{"request": {"remote_ip": {"match": ["10.0.0.0/8", "2001:db8::/32"]}}}]}}]),
    );
    let e = unauthorized();
    let hit = |ip: &str| {
        r.respond(&e, &req(&[], Some(ip)), URL)
            .header("www-authenticate")
            .is_some()
    };
    assert!(hit("10.1.2.3"));
    assert!(hit("::ffff:10.9.9.9"));
    assert!(!hit("11.0.0.1"));
    assert!(hit("2001:db8:abcd::1"));
    assert!(!hit("2001:db9::1"));
    assert!(!hit("not-an-ip"));
}

#[test]
fn remote_ip_forwarded_for_only_when_asked() {
    let h = all_enabled(json!({}));
    let cfg = |respect: bool| {
        rule(
            &h,
            json!([{"handler": "www_authenticate",
                    "config": {"when": [{"request": {"remote_ip": {"match": ["192.168.0.0/16"],
                        "respect_forwarded_for_header": respect}}}]}}]),
        )
    };
    let rq = req(
        &[("x-forwarded-for", "1.1.1.1, 192.168.4.4")],
        Some("8.8.8.8"),
    );
    let e = unauthorized();
    assert!(
        cfg(true)
            .respond(&e, &rq, URL)
            .header("www-authenticate")
            .is_some()
    );
    assert!(
        cfg(false)
            .respond(&e, &rq, URL)
            .header("www-authenticate")
            .is_none()
    );
}

#[test]
fn cidr_edges() {
    let c = Cidr::parse("0.0.0.0/0").unwrap();
    assert!(c.contains("255.1.2.3".parse().unwrap()));
    assert!(!c.contains("::1".parse().unwrap()));
    let c = Cidr::parse("192.168.1.7/32").unwrap();
    assert!(c.contains("192.168.1.7".parse().unwrap()));
    assert!(!c.contains("192.168.1.8".parse().unwrap()));
    let c = Cidr::parse("::/0").unwrap();
    assert!(c.contains("fe80::1".parse().unwrap()));
    let c = Cidr::parse("fe80::1/128").unwrap();
    assert!(!c.contains("fe80::2".parse().unwrap()));
    for bad in [
        "10.0.0.0",
        "10.0.0.0/33",
        "::/129",
        "10.0.0/8",
        "x/8",
        "10.0.0.0/-1",
        "10.0.0.0/",
    ] {
        assert!(Cidr::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn or_across_conditions_and_within() {
    let h = all_enabled(json!({}));
    let r = rule(
        &h,
        json!([{"handler": "www_authenticate", "config": {"when": [
            {"error": ["forbidden"], "request": {"remote_ip": {"match": ["10.0.0.0/8"]}}},
            {"error": ["not_found"]}
        ]}}]),
    );
    let hit = |e: &PolicyError, ip: &str| {
        r.respond(e, &req(&[], Some(ip)), URL)
            .header("www-authenticate")
            .is_some()
    };
    assert!(hit(&forbidden(), "10.0.0.1"));
    assert!(!hit(&forbidden(), "11.0.0.1"));
    assert!(!hit(&unauthorized(), "10.0.0.1"));
    let nf = PolicyError::new(ErrorKind::NotFound, "no_rule", "no rule");
    assert!(hit(&nf, "11.0.0.1"));
}

#[test]
fn rule_handlers_before_fallback_and_last_resort() {
    let h = all_enabled(json!({"fallback": ["www_authenticate", "json"],
        "handlers": {"www_authenticate": {"config": {"when": [{"error": ["unauthorized"]}]}}}}));
    let r = rule(
        &h,
        json!([{"handler": "redirect", "config": {"when": [{"error": ["forbidden"]}]}}]),
    );
    assert_eq!(r.respond(&forbidden(), &req(&[], None), URL).status, 302);
    let resp = r.respond(&unauthorized(), &req(&[], None), URL);
    assert!(resp.header("www-authenticate").is_some());
    let nf = PolicyError::new(ErrorKind::NotFound, "no_rule", "no rule");
    assert_eq!(
        h.respond_without_rule(&nf, &req(&[], None), URL).status,
        404
    );

    // None matches: the first fallback handler answers regardless of its `when`.
    let h = all_enabled(json!({"fallback": ["www_authenticate"],
        "handlers": {"www_authenticate": {"config": {"when": [{"error": ["unauthorized"]}]}}}}));
    let resp = h.respond_without_rule(&nf, &req(&[], None), URL);
    assert_eq!(resp.status, 401);
    assert!(resp.header("www-authenticate").is_some());

    // Empty fallback: built-in non-verbose JSON.
    let h = all_enabled(json!({"fallback": []}));
    let resp = h.respond_without_rule(&nf, &req(&[], None), URL);
    assert_eq!(resp.status, 404);
    assert!(
        resp.body
            .contains("The requested resource could not be found")
    );
}

#[test]
fn rule_config_deep_merges_over_global() {
    let h = all_enabled(json!({"handlers": {"redirect": {"config": {
        "to": "https://login.example.com/", "code": 301, "return_to_query_param": "rt"}}}}));
    let r = rule(
        &h,
        json!([{"handler": "redirect", "config": {"code": 302}}]),
    );
    let resp = r.respond(&unauthorized(), &req(&[], None), "https://x/");
    assert_eq!(resp.status, 302);
    assert_eq!(
        resp.header("location"),
        Some("https://login.example.com/?rt=https%3A%2F%2Fx%2F")
    );
    assert_eq!(
        deep_merge(
            &json!({"a": {"b": 1, "c": 2}, "d": [1]}),
            &json!({"a": {"c": 3}, "d": [2]})
        ),
        json!({"a": {"b": 1, "c": 3}, "d": [2]})
    );
}

#[test]
fn config_errors_name_rule_and_field() {
    let h = all_enabled(json!({}));
    let m = rule_err(&h, &[("teapot", None)]);
    assert!(m.contains("rule \"r1\"") && m.contains("\"teapot\""), "{m}");

    let only_json = ErrorHandlers::compile(None).unwrap();
    let m = rule_err(
        &only_json,
        &[("redirect", Some(json!({"to": "https://x/"})))],
    );
    assert!(
        m.contains("rule \"r1\"") && m.contains("not enabled"),
        "{m}"
    );

    let no_to = ErrorHandlers::compile(Some(&json!({"handlers": {"redirect": {"enabled": true}}})))
        .unwrap();
    let m = rule_err(&no_to, &[("redirect", None)]);
    assert!(
        m.contains("rule \"r1\"") && m.contains("`to`") && m.contains("required"),
        "{m}"
    );

    let m = rule_err(
        &h,
        &[
            ("json", None),
            (
                "www_authenticate",
                Some(json!({"when": [{"request": {"remote_ip": {"match": ["10.0.0.0/40"]}}}]})),
            ),
        ],
    );
    assert!(
        m.contains("rule \"r1\"") && m.contains("when[0].request.remote_ip.match[0]"),
        "{m}"
    );

    let m = rule_err(
        &h,
        &[("json", Some(json!({"when": [{"error": ["teapot"]}]})))],
    );
    assert!(
        m.contains("when[0].error[0]") && m.contains("teapot"),
        "{m}"
    );

    let m = rule_err(&h, &[("redirect", Some(json!({"code": 307})))]);
    assert!(m.contains("`code`"), "{m}");

    let m = rule_err(&h, &[("redirect", Some(json!({"to": "not a url"})))]);
    assert!(m.contains("`to`"), "{m}");
}

#[test]
fn global_config_errors() {
    let m = ErrorHandlers::compile(Some(&json!({"fallback": ["redirect"]})))
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("global errors config") && m.contains("not enabled"),
        "{m}"
    );
    let m = ErrorHandlers::compile(Some(&json!({"handlers": {"nope": {}}})))
        .unwrap_err()
        .to_string();
    assert!(m.contains("\"nope\""), "{m}");
    let m = ErrorHandlers::compile(Some(&json!({"handlers": {"json": {"enabled": "yes"}}})))
        .unwrap_err()
        .to_string();
    assert!(m.contains("errors.handlers.json.enabled"), "{m}");
    let m = ErrorHandlers::compile(Some(
        &json!({"fallback": ["json"], "handlers": {"json": {"enabled": false}}}),
    ))
    .unwrap_err()
    .to_string();
    assert!(m.contains("\"json\"") && m.contains("not enabled"), "{m}");
}

#[test]
fn redirect_head_and_post_bodies() {
    let h = all_enabled(json!({}));
    let r = rule(&h, json!([{"handler": "redirect"}]));
    let rq = Request::new("POST", "https", "api.example.com", "/orders?id=1", []);
    let resp = r.respond(&unauthorized(), &rq, URL);
    assert_eq!(resp.body, "");
    assert_eq!(resp.header("content-type"), None);
    let rq = Request::new("HEAD", "https", "api.example.com", "/orders?id=1", []);
    let resp = r.respond(&unauthorized(), &rq, URL);
    assert_eq!(resp.body, "");
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
}
