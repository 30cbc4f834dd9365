//! The global handler configuration every workload's filter config starts from: the sections of
//! Oathkeeper's configuration file (`access_rules`, `authenticators`, `authorizers`, `mutators`,
//! `errors`) plus the `clusters` map the filter needs for every URL it calls. Loaded from YAML or
//! JSON; the default enables every handler the filter supports.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use thiserror::Error;

/// One handler's global switch and config (rule configs are merged over it by the filter).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct HandlerToggle {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

impl HandlerToggle {
    fn on() -> Self {
        HandlerToggle {
            enabled: true,
            config: None,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AccessRulesSection {
    /// `regexp` (Oathkeeper's default) or `glob`.
    #[serde(default = "default_strategy")]
    pub matching_strategy: String,
}

fn default_strategy() -> String {
    "regexp".into()
}

impl Default for AccessRulesSection {
    fn default() -> Self {
        AccessRulesSection {
            matching_strategy: default_strategy(),
        }
    }
}

/// Oathkeeper's `errors` section.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ErrorsSection {
    #[serde(default = "default_fallback")]
    pub fallback: Vec<String>,
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerToggle>,
}

fn default_fallback() -> Vec<String> {
    vec!["json".into()]
}

impl Default for ErrorsSection {
    fn default() -> Self {
        ErrorsSection {
            fallback: default_fallback(),
            handlers: ["json", "www_authenticate", "redirect"]
                .into_iter()
                .map(|n| (n.to_string(), HandlerToggle::on()))
                .collect(),
        }
    }
}

/// How origins a rule calls (JWKS, introspection, remote authorizers) map to Envoy clusters when
/// the `clusters` map does not name them.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClusterNaming {
    /// Istio's outbound cluster of the URL's host and port (`outbound|PORT||HOST`), which every
    /// sidecar has for mesh services. Right for WasmPlugin/EnvoyFilter output.
    #[default]
    Istio,
    /// Only the `clusters` map: an origin missing from it makes the rule invalid. Right for a
    /// plain Envoy whose clusters the operator names.
    Explicit,
}

/// The global configuration.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GlobalConfig {
    #[serde(default)]
    pub access_rules: AccessRulesSection,
    #[serde(default)]
    pub authenticators: BTreeMap<String, HandlerToggle>,
    #[serde(default)]
    pub authorizers: BTreeMap<String, HandlerToggle>,
    #[serde(default)]
    pub mutators: BTreeMap<String, HandlerToggle>,
    #[serde(default)]
    pub errors: ErrorsSection,
    /// Origin (`scheme://host:port`) -> Envoy cluster.
    #[serde(default)]
    pub clusters: BTreeMap<String, String>,
    #[serde(default)]
    pub trust_forwarded_headers: bool,
    /// How long JWKS keys keep verifying past their TTL while refreshes fail (Go duration);
    /// absent: the filter's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_max_stale: Option<String>,
    /// Reconciler setting, not passed to the filter.
    #[serde(default)]
    pub cluster_naming: ClusterNaming,
    /// Reconciler setting, not passed to the filter: target namespace -> the namespaces whose
    /// Rules may name its Services in `upstream.url`. Empty (the default): a Rule is enforced only
    /// on workloads of its own namespace. Only the operator (who writes this file) can open it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cross_namespace_targets: BTreeMap<String, Vec<String>>,
}

fn enabled(names: &[&str]) -> BTreeMap<String, HandlerToggle> {
    names
        .iter()
        .map(|n| (n.to_string(), HandlerToggle::on()))
        .collect()
}

/// The `allowed_algorithms` of the default global jwt config: RS256 (the token service's
/// default, and Hydra's) and ES256 (the token service's faster option), so Rules that leave the
/// list to the global config accept Portcullis tokens of either and Hydra tokens still in
/// circulation during a migration. The filter's own default, as Oathkeeper's, is RS256 alone.
pub const DEFAULT_JWT_ALGORITHMS: [&str; 2] = ["ES256", "RS256"];

impl Default for GlobalConfig {
    /// Every handler the filter supports, enabled, except `id_token` (it needs the URL of a
    /// private key set: `serve --manifests` enables it with the control plane's); only jwt has
    /// global config (its algorithms, see [`DEFAULT_JWT_ALGORITHMS`]); rules bring the rest.
    fn default() -> Self {
        let mut authenticators = enabled(&[
            "noop",
            "anonymous",
            "unauthorized",
            "jwt",
            "oauth2_introspection",
            "oauth2_client_credentials",
            "cookie_session",
            "bearer_token",
        ]);
        if let Some(jwt) = authenticators.get_mut("jwt") {
            jwt.config = Some(json!({"allowed_algorithms": DEFAULT_JWT_ALGORITHMS}));
        }
        GlobalConfig {
            access_rules: AccessRulesSection::default(),
            authenticators,
            authorizers: enabled(&["allow", "deny", "remote_json", "remote"]),
            mutators: enabled(&["noop", "header", "cookie", "hydrator"]),
            errors: ErrorsSection::default(),
            clusters: BTreeMap::new(),
            trust_forwarded_headers: false,
            jwks_max_stale: None,
            cluster_naming: ClusterNaming::default(),
            cross_namespace_targets: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Error)]
pub enum GlobalConfigError {
    #[error("global config: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error(
        "global config: access_rules.matching_strategy: {0:?} is neither \"regexp\" nor \"glob\""
    )]
    Strategy(String),
}

impl GlobalConfig {
    /// Parses YAML (and so JSON, a subset of it). Sections left out keep their defaults only
    /// where the section itself is omitted: a given `authenticators` map replaces the default.
    pub fn from_yaml(text: &str) -> Result<GlobalConfig, GlobalConfigError> {
        #[derive(Deserialize)]
        struct Partial {
            access_rules: Option<AccessRulesSection>,
            authenticators: Option<BTreeMap<String, HandlerToggle>>,
            authorizers: Option<BTreeMap<String, HandlerToggle>>,
            mutators: Option<BTreeMap<String, HandlerToggle>>,
            errors: Option<ErrorsSection>,
            #[serde(default)]
            clusters: BTreeMap<String, String>,
            #[serde(default)]
            trust_forwarded_headers: bool,
            #[serde(default)]
            jwks_max_stale: Option<String>,
            #[serde(default)]
            cluster_naming: ClusterNaming,
            #[serde(default)]
            cross_namespace_targets: BTreeMap<String, Vec<String>>,
        }
        let p: Partial = serde_yaml::from_str(text)?;
        if let Some(a) = &p.access_rules
            && !matches!(a.matching_strategy.as_str(), "regexp" | "glob")
        {
            return Err(GlobalConfigError::Strategy(a.matching_strategy.clone()));
        }
        let d = GlobalConfig::default();
        Ok(GlobalConfig {
            access_rules: p.access_rules.unwrap_or(d.access_rules),
            authenticators: p.authenticators.unwrap_or(d.authenticators),
            authorizers: p.authorizers.unwrap_or(d.authorizers),
            mutators: p.mutators.unwrap_or(d.mutators),
            errors: p.errors.unwrap_or(d.errors),
            clusters: p.clusters,
            trust_forwarded_headers: p.trust_forwarded_headers,
            jwks_max_stale: p.jwks_max_stale,
            cluster_naming: p.cluster_naming,
            cross_namespace_targets: p.cross_namespace_targets,
        })
    }

    /// Whether a Rule in `source` may be enforced on a workload in `target` (always within one
    /// namespace; across only as [`Self::cross_namespace_targets`] allows). Exact names: no
    /// wildcard, so a new namespace never gains rights by being created.
    pub fn allows_target(&self, source: &str, target: &str) -> bool {
        source == target
            || self
                .cross_namespace_targets
                .get(target)
                .is_some_and(|sources| sources.iter().any(|s| s == source))
    }

    /// The filter configuration document for `rules` (already in the filter's JSON shape),
    /// with `clusters` completed for every origin the rules call.
    pub fn filter_config(&self, rules: &[Value]) -> Value {
        let mut clusters = self.clusters.clone();
        if self.cluster_naming == ClusterNaming::Istio {
            for rule in rules {
                for url in called_urls(self, rule) {
                    if let Some((origin, cluster)) = istio_cluster(&url) {
                        clusters.entry(origin).or_insert(cluster);
                    }
                }
            }
        }
        let mut config = json!({
            "access_rules": self.access_rules,
            "authenticators": self.authenticators,
            "authorizers": self.authorizers,
            "mutators": self.mutators,
            "errors": self.errors,
            "rules": rules,
            "clusters": clusters,
            "trust_forwarded_headers": self.trust_forwarded_headers,
        });
        if let Some(stale) = &self.jwks_max_stale {
            config["jwks_max_stale"] = json!(stale);
        }
        config
    }
}

/// Handler config keys whose values are URLs the filter calls.
const URL_KEYS: &[&str] = &[
    "jwks_urls",
    "introspection_url",
    "token_url",
    "check_session_url",
    "remote",
    "jwks_url",
    // The hydrator's `api.url`.
    "url",
];

/// Every URL the rule's handlers (merged over the global handler configs) call.
fn called_urls(global: &GlobalConfig, rule: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let sections = [
        ("authenticators", &global.authenticators),
        ("mutators", &global.mutators),
    ];
    for (key, section) in sections {
        for h in rule[key].as_array().into_iter().flatten() {
            collect_urls(&h["config"], &mut out);
            if let Some(g) = h["handler"].as_str().and_then(|n| section.get(n)) {
                collect_urls(g.config.as_ref().unwrap_or(&Value::Null), &mut out);
            }
        }
    }
    collect_urls(&rule["authorizer"]["config"], &mut out);
    if let Some(g) = rule["authorizer"]["handler"]
        .as_str()
        .and_then(|n| global.authorizers.get(n))
    {
        collect_urls(g.config.as_ref().unwrap_or(&Value::Null), &mut out);
    }
    out
}

/// Every URL a filter configuration document names for its handlers to call: in the global
/// handler sections and in each rule's handler configs. The console's callout proxy calls no
/// other.
pub fn urls_named_by(filter_config: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for section in ["authenticators", "authorizers", "mutators"] {
        for handler in filter_config[section]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            collect_urls(&handler["config"], &mut out);
        }
    }
    for rule in filter_config["rules"].as_array().into_iter().flatten() {
        for key in ["authenticators", "mutators"] {
            for h in rule[key].as_array().into_iter().flatten() {
                collect_urls(&h["config"], &mut out);
            }
        }
        collect_urls(&rule["authorizer"]["config"], &mut out);
    }
    out.sort();
    out.dedup();
    out
}

fn collect_urls(config: &Value, out: &mut Vec<String>) {
    let Value::Object(map) = config else { return };
    for (k, v) in map {
        if URL_KEYS.contains(&k.as_str()) {
            match v {
                Value::String(s) => out.push(s.clone()),
                Value::Array(list) => {
                    out.extend(list.iter().filter_map(|u| u.as_str().map(String::from)))
                }
                _ => {}
            }
        } else if v.is_object() {
            // Nested sections such as `pre_authorization.token_url`.
            collect_urls(v, out);
        }
    }
}

/// `scheme://host[:port]` of `url` and Istio's outbound cluster for it.
pub fn istio_cluster(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    if authority.is_empty() {
        return None;
    }
    // The port is after the last ':' that is not inside an IPv6 literal's brackets.
    let port_sep = authority
        .rfind(':')
        .filter(|&i| authority.rfind(']').is_none_or(|b| i > b));
    let (host, port) = match port_sep {
        Some(i) => (&authority[..i], authority[i + 1..].parse::<u16>().ok()?),
        None => (
            authority,
            match scheme.as_str() {
                "https" => 443,
                "http" => 80,
                _ => return None,
            },
        ),
    };
    let origin = format!("{scheme}://{authority}");
    Some((origin, format!("outbound|{port}||{host}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_enables_every_supported_handler() {
        let g = GlobalConfig::default();
        for n in [
            "noop",
            "anonymous",
            "unauthorized",
            "jwt",
            "oauth2_introspection",
            "oauth2_client_credentials",
            "cookie_session",
            "bearer_token",
        ] {
            assert!(g.authenticators[n].enabled, "{n}");
        }
        for n in ["allow", "deny", "remote_json", "remote"] {
            assert!(g.authorizers[n].enabled, "{n}");
        }
        for n in ["noop", "header", "cookie", "hydrator"] {
            assert!(g.mutators[n].enabled, "{n}");
        }
        assert_eq!(g.errors.fallback, ["json"]);
        assert_eq!(g.access_rules.matching_strategy, "regexp");
    }

    #[test]
    fn yaml_replaces_given_sections_and_keeps_the_others() {
        let g = GlobalConfig::from_yaml(
            "access_rules: {matching_strategy: glob}\n\
             authenticators:\n  jwt:\n    enabled: true\n    config: {jwks_urls: ['http://keys:8080/jwks']}\n\
             clusters: {'http://keys:8080': keys}\n\
             cluster_naming: explicit\n",
        )
        .unwrap();
        assert_eq!(g.access_rules.matching_strategy, "glob");
        assert_eq!(g.authenticators.len(), 1);
        assert!(g.authorizers["allow"].enabled);
        assert_eq!(g.cluster_naming, ClusterNaming::Explicit);
        let cfg = g.filter_config(&[]);
        assert_eq!(cfg["clusters"]["http://keys:8080"], "keys");
        assert!(cfg.get("cluster_naming").is_none());
        assert!(GlobalConfig::from_yaml("authenticators: [1]").is_err());
        let e = GlobalConfig::from_yaml("access_rules: {matching_strategy: Glob}").unwrap_err();
        assert!(e.to_string().contains("matching_strategy"), "{e}");
    }

    #[test]
    fn jwks_max_stale_reaches_the_filter_only_when_set() {
        let g = GlobalConfig::default();
        assert!(g.filter_config(&[]).get("jwks_max_stale").is_none());
        let g = GlobalConfig::from_yaml("jwks_max_stale: 2m\n").unwrap();
        let cfg = g.filter_config(&[]);
        assert_eq!(cfg["jwks_max_stale"], "2m");
        crate::core_seam::compile_config(&cfg).unwrap();
        let bad = GlobalConfig::from_yaml("jwks_max_stale: soon\n").unwrap();
        let e = crate::core_seam::compile_config(&bad.filter_config(&[])).unwrap_err();
        assert!(e.contains("jwks_max_stale"), "{e}");
    }

    #[test]
    fn istio_clusters_are_derived_for_called_urls() {
        let g = GlobalConfig::default();
        let rule = json!({
            "authenticators": [
                {"handler": "jwt", "config": {"jwks_urls": ["http://portcullis.kyma-system.svc.cluster.local:4444/.well-known/jwks.json"]}},
                {"handler": "oauth2_introspection", "config": {"introspection_url": "https://auth.example.com/introspect",
                    "pre_authorization": {"token_url": "http://tok:9000/token"}}}
            ],
            "authorizer": {"handler": "remote_json", "config": {"remote": "http://keto.ory:4466/check"}},
            "mutators": [{"handler": "noop"}]
        });
        let cfg = g.filter_config(&[rule]);
        let c = &cfg["clusters"];
        assert_eq!(
            c["http://portcullis.kyma-system.svc.cluster.local:4444"],
            "outbound|4444||portcullis.kyma-system.svc.cluster.local"
        );
        assert_eq!(
            c["https://auth.example.com"],
            "outbound|443||auth.example.com"
        );
        assert_eq!(c["http://tok:9000"], "outbound|9000||tok");
        assert_eq!(c["http://keto.ory:4466"], "outbound|4466||keto.ory");
    }

    #[test]
    fn session_check_remote_and_hydrator_urls_get_clusters_and_are_validated() {
        let g = GlobalConfig::default();
        let rule = json!({
            "id": "r",
            "match": {"url": "http://x/<.*>", "methods": ["GET"]},
            "authenticators": [
                {"handler": "cookie_session", "config": {"check_session_url": "http://kratos.ory:4433/sessions/whoami"}},
                {"handler": "bearer_token", "config": {"check_session_url": "http://tokens.ory/check"}}
            ],
            "authorizer": {"handler": "remote", "config": {"remote": "http://opa.ory:8181/allow"}},
            "mutators": [{"handler": "hydrator", "config": {"api": {"url": "http://director.compass:3000/tenant-mapping"}}}]
        });
        let cfg = g.filter_config(std::slice::from_ref(&rule));
        let c = &cfg["clusters"];
        assert_eq!(c["http://kratos.ory:4433"], "outbound|4433||kratos.ory");
        assert_eq!(c["http://tokens.ory"], "outbound|80||tokens.ory");
        assert_eq!(c["http://opa.ory:8181"], "outbound|8181||opa.ory");
        assert_eq!(
            c["http://director.compass:3000"],
            "outbound|3000||director.compass"
        );
        crate::core_seam::compile_config(&cfg).unwrap();
        // The control plane refuses what the filter would, naming rule and field.
        let mut bad = rule.clone();
        bad["authenticators"][0]["config"]["subject_from"] = json!("identity.#(id>1)");
        bad["mutators"][0]["config"]["api"]["url"] = json!("");
        let e = crate::core_seam::validate_rule(&cfg, &bad).unwrap_err();
        assert!(
            e.contains("rule \"r\": authenticators[0].config.subject_from"),
            "{e}"
        );
        assert!(e.contains("mutators[0].config.api.url: is required"), "{e}");
    }

    #[test]
    fn explicit_naming_adds_no_clusters_and_configured_ones_win() {
        let mut g = GlobalConfig::default();
        g.clusters.insert("http://k:1".into(), "mine".into());
        let rule = json!({"authenticators": [{"handler": "jwt", "config": {"jwks_urls": ["http://k:1/j", "http://other:2/j"]}}]});
        let cfg = g.filter_config(std::slice::from_ref(&rule));
        assert_eq!(cfg["clusters"]["http://k:1"], "mine");
        assert_eq!(cfg["clusters"]["http://other:2"], "outbound|2||other");
        g.cluster_naming = ClusterNaming::Explicit;
        let cfg = g.filter_config(&[rule]);
        assert_eq!(cfg["clusters"].as_object().unwrap().len(), 1);
    }

    #[test]
    fn istio_cluster_parses_authorities() {
        assert_eq!(
            istio_cluster("http://a.b:81/x?y"),
            Some(("http://a.b:81".into(), "outbound|81||a.b".into()))
        );
        assert_eq!(
            istio_cluster("HTTPS://u:p@h/x"),
            Some(("https://h".into(), "outbound|443||h".into()))
        );
        assert_eq!(
            istio_cluster("http://[::1]:8080/"),
            Some(("http://[::1]:8080".into(), "outbound|8080||[::1]".into()))
        );
        assert_eq!(istio_cluster("ftp://h/x"), None);
        assert_eq!(istio_cluster("not a url"), None);
        assert_eq!(istio_cluster("http://h:notaport/"), None);
    }
}
