//! The custom resources Portcullis reconciles: `OAuth2Client` (hydra.ory.sh/v1alpha1) and `Rule`
//! (oathkeeper.ory.sh/v1alpha1), defined so that every manifest ORY's Maesters accept applies
//! unchanged. The schema is deliberately a superset of ORY's: fields ORY validates with enums keep
//! those enums (widened where ORY's versions disagree), free-form handler configs and client
//! metadata preserve unknown fields, and nothing ORY leaves optional is required here.
//!
//! The committed YAML in `istio/crds/` is generated from these types ([`crds_yaml`]); a test fails
//! when it drifts.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The condition type every Portcullis resource reports.
pub const READY: &str = "Ready";

// ---------------------------------------------------------------------------------------------
// OAuth2Client
// ---------------------------------------------------------------------------------------------

/// An OAuth2 client registered in the token service; its credentials live in the Secret
/// `secretName` (keys `client_id`/`client_secret` or `CLIENT_ID`/`CLIENT_SECRET`).
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "hydra.ory.sh",
    version = "v1alpha1",
    kind = "OAuth2Client",
    plural = "oauth2clients",
    singular = "oauth2client",
    namespaced,
    status = "OAuth2ClientStatus",
    derive = "PartialEq",
    doc = "OAuth2Client is an OAuth 2.0 client registered with the Portcullis token service (compatible with ORY Hydra Maester).",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".spec.secretName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2ClientSpec {
    /// Grant types the client may use.
    #[schemars(length(min = 1, max = 5))]
    pub grant_types: Vec<GrantType>,
    /// OAuth 2.0 response types the client may use at the authorization endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_types: Option<Vec<String>>,
    /// Space-separated scopes the client may request (deprecated by ORY in favour of
    /// `scopeArray`; both are merged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Scopes the client may request (merged with `scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_array: Option<Vec<String>>,
    /// Audiences the client may request tokens for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uris: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_logout_redirect_uris: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_cors_origins: Option<Vec<String>>,
    /// How the client authenticates at the token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "token_endpoint_auth_method_schema")]
    pub token_endpoint_auth_method: Option<String>,
    /// JWKS URL for `private_key_jwt` client authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_lifespans: Option<TokenLifespans>,
    /// Arbitrary client metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub metadata: Option<Value>,
    /// Human-readable client name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_consent: Option<bool>,
    /// `delete` (default) removes the client when the resource is deleted; `orphan` keeps it.
    /// ORY's CRD versions spell these `Delete`/`Orphan` or lower case: both are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "deletion_policy_schema")]
    pub deletion_policy: Option<String>,
    /// `jwt` or `opaque` access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "access_token_strategy_schema")]
    pub access_token_strategy: Option<String>,
    /// Hydra admin address override (accepted for compatibility; Portcullis registers clients in
    /// its own token service and ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hydra_admin: Option<HydraAdmin>,
    /// The Secret holding (or receiving) the client's credentials.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    #[serde(
        default,
        rename = "backChannelLogoutURI",
        skip_serializing_if = "Option::is_none"
    )]
    pub back_channel_logout_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_channel_logout_session_required: Option<bool>,
    #[serde(
        default,
        rename = "frontChannelLogoutURI",
        skip_serializing_if = "Option::is_none"
    )]
    pub front_channel_logout_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front_channel_logout_session_required: Option<bool>,
}

/// OAuth 2.0 grant types a client may be registered with.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum GrantType {
    #[serde(rename = "client_credentials")]
    ClientCredentials,
    #[serde(rename = "authorization_code")]
    AuthorizationCode,
    #[serde(rename = "implicit")]
    Implicit,
    #[serde(rename = "refresh_token")]
    RefreshToken,
    #[serde(rename = "urn:ietf:params:oauth:grant-type:jwt-bearer")]
    JwtBearer,
}

impl GrantType {
    /// The wire name, as in a Hydra client's `grant_types`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::AuthorizationCode => "authorization_code",
            Self::Implicit => "implicit",
            Self::RefreshToken => "refresh_token",
            Self::JwtBearer => "urn:ietf:params:oauth:grant-type:jwt-bearer",
        }
    }
}

/// Per-grant token lifespans (Go durations such as `1h`, `30m`). ORY spells these keys in
/// snake_case inside the otherwise camelCase spec; so do we.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
pub struct TokenLifespans {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_code_grant_access_token_lifespan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_code_grant_id_token_lifespan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_code_grant_refresh_token_lifespan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_credentials_grant_access_token_lifespan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implicit_grant_access_token_lifespan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implicit_grant_id_token_lifespan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_bearer_grant_access_token_lifespan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_grant_access_token_lifespan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_grant_id_token_lifespan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_grant_refresh_token_lifespan: Option<String>,
}

/// ORY's per-client Hydra admin override.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HydraAdmin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_proto: Option<String>,
}

/// Observed state of an `OAuth2Client`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2ClientStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// ORY's error field, kept so existing tooling still reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciliation_error: Option<ReconciliationError>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// ORY Hydra Maester's reconciliation error.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReconciliationError {
    /// `CLIENT_REGISTRATION_FAILED`, `SECRET_CREATION_FAILED`, `CLIENT_UPDATE_FAILED`,
    /// `INVALID_SECRET`, `INVALID_HYDRA_ADDRESS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Rule
// ---------------------------------------------------------------------------------------------

/// An Oathkeeper access rule, enforced by the Portcullis filter in the sidecars of its target
/// workload.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "oathkeeper.ory.sh",
    version = "v1alpha1",
    kind = "Rule",
    plural = "rules",
    singular = "rule",
    namespaced,
    status = "RuleStatus",
    derive = "PartialEq",
    doc = "Rule is an Oathkeeper access rule enforced by the Portcullis filter (compatible with ORY Oathkeeper Maester).",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.target"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    #[serde(rename = "match")]
    pub r#match: RuleMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    /// Tried in order; default `[unauthorized]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticators: Option<Vec<RuleHandler>>,
    /// Default `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorizer: Option<RuleHandler>,
    /// Run in order; default `[noop]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutators: Option<Vec<RuleHandler>>,
    /// The single mutator of Oathkeeper Maester's first CRD version; used when `mutators` is
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutator: Option<RuleHandler>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<RuleHandler>>,
    /// Oathkeeper Maester's target ConfigMap (accepted and ignored: Portcullis writes per-workload
    /// filter config instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_name: Option<String>,
    /// Portcullis extension: the labels of the workloads that enforce this rule. Without it the
    /// target is the Service named by `upstream.url`'s host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
pub struct RuleMatch {
    /// The URL pattern (`scheme://host/path`, patterns between `<` and `>`).
    pub url: String,
    /// HTTP methods the rule applies to.
    #[serde(default)]
    pub methods: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_host: Option<bool>,
}

/// A handler reference with its free-form, handler-specific config.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
pub struct RuleHandler {
    pub handler: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub config: Option<Value>,
}

/// Workload labels, as in a Kubernetes label selector's `matchLabels`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// Observed state of a `Rule`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// ORY Oathkeeper Maester's validation result, kept so existing tooling still reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    /// The workload that enforces the rule (`namespace/key=value,...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_error: Option<String>,
}

/// A status condition. Only `type` and `status` are required so that status written by ORY's
/// Maesters (which sets only those) still validates.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(schema_with = "condition_status_schema")]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339 time of the last change of `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Schemas that derive cannot express
// ---------------------------------------------------------------------------------------------

fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn string_enum(values: &[&str]) -> Schema {
    json_schema!({
        "type": "string",
        "nullable": true,
        "enum": values,
    })
}

fn token_endpoint_auth_method_schema(_: &mut SchemaGenerator) -> Schema {
    string_enum(&[
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "none",
    ])
}

fn deletion_policy_schema(_: &mut SchemaGenerator) -> Schema {
    string_enum(&["delete", "orphan", "Delete", "Orphan"])
}

fn access_token_strategy_schema(_: &mut SchemaGenerator) -> Schema {
    string_enum(&["jwt", "opaque"])
}

fn condition_status_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "enum": ["True", "False", "Unknown"],
    })
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

/// Both CRDs, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![OAuth2Client::crd(), Rule::crd()]
}

/// Errors rendering the CRDs.
#[derive(Debug, thiserror::Error)]
#[error("cannot render CRD {name} as YAML: {source}")]
pub struct CrdRenderError {
    pub name: String,
    #[source]
    pub source: serde_yaml::Error,
}

/// The CRDs as one multi-document YAML stream (what `portcullis crds` prints and what
/// `istio/crds/portcullis-crds.yaml` holds).
pub fn crds_yaml() -> Result<String, CrdRenderError> {
    let mut out = String::from(
        "# Generated by `portcullis crds` from reconciler/src/crd.rs; do not edit.\n\
         # Regenerate: PORTCULLIS_BLESS=1 cargo test -p portcullis-reconciler --test crds\n",
    );
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = serde_yaml::to_string(&crd).map_err(|source| CrdRenderError { name, source })?;
        out.push_str("---\n");
        out.push_str(&yaml);
    }
    Ok(out)
}

/// The status of `condition_type` in `conditions`, if present.
pub fn condition<'a>(conditions: &'a [Condition], condition_type: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == condition_type)
}

/// Sets `new` in `conditions`, keeping `lastTransitionTime` when the status did not change (so
/// a re-reconcile does not look like a transition).
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    if let Some(old) = conditions.iter_mut().find(|c| c.type_ == new.type_) {
        if old.status == new.status && old.last_transition_time.is_some() {
            new.last_transition_time = old.last_transition_time.clone();
        }
        *old = new;
    } else {
        conditions.push(new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_have_ory_names_scope_and_status_subresource() {
        let crds = crds();
        let names: Vec<_> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            ["oauth2clients.hydra.ory.sh", "rules.oathkeeper.ory.sh"]
        );
        for crd in &crds {
            assert_eq!(crd.spec.scope, "Namespaced");
            let v = &crd.spec.versions[0];
            assert_eq!(v.name, "v1alpha1");
            assert!(
                v.subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some()
            );
            let cols: Vec<_> = v
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| c.name.as_str())
                .collect();
            assert!(cols.contains(&"Ready") && cols.contains(&"Age"), "{cols:?}");
        }
        let rule_cols: Vec<_> = crds[1].spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(rule_cols.contains(&"Target"));
    }

    #[test]
    fn free_form_fields_preserve_unknown_fields() {
        let crd = serde_json::to_value(Rule::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let cfg = &spec["properties"]["authenticators"]["items"]["properties"]["config"];
        assert_eq!(cfg["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(spec["required"], serde_json::json!(["match"]));
        let client = serde_json::to_value(OAuth2Client::crd()).unwrap();
        let cspec =
            &client["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            cspec["properties"]["metadata"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
        let mut req: Vec<String> = serde_json::from_value(cspec["required"].clone()).unwrap();
        req.sort();
        assert_eq!(req, ["grantTypes", "secretName"]);
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_is_unchanged() {
        let mut conds = vec![];
        let c = |status: &str, reason: &str, t: &str| Condition {
            type_: READY.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: None,
            observed_generation: None,
            last_transition_time: Some(t.into()),
        };
        set_condition(&mut conds, c("False", "Invalid", "t1"));
        set_condition(&mut conds, c("False", "NoTarget", "t2"));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time.as_deref(), Some("t1"));
        assert_eq!(conds[0].reason.as_deref(), Some("NoTarget"));
        set_condition(&mut conds, c("True", "Applied", "t3"));
        assert_eq!(conds[0].last_transition_time.as_deref(), Some("t3"));
        assert_eq!(
            condition(&conds, READY).map(|c| c.status.as_str()),
            Some("True")
        );
    }
}
