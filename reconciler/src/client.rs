//! Desired state of the OAuth2Client reconciler, as a pure function of the `OAuth2Client` and the
//! Secret it names: the Hydra-shaped client to register in the token service, the Secret to
//! create when there is none, and the status to report.
//!
//! - Secret present with `client_id`/`client_secret` (or `CLIENT_ID`/`CLIENT_SECRET`): its
//!   credentials are used, whoever created it. A change of its values rotates the client.
//! - Secret present without usable credentials: not registered; `INVALID_SECRET`.
//! - Secret absent: credentials are generated and a Secret is to be *created* (never updated or
//!   applied over: if someone else creates it first — a GitOps race — the create fails with a
//!   conflict, the next reconcile reads theirs and uses it).
//!
//! The client is registered with the generated credentials right away, so the credentials in
//! the Secret the reconciler creates are the ones that work.

use crate::crd::{
    Condition, OAuth2Client, OAuth2ClientStatus, READY, ReconciliationError, set_condition,
};
use crate::manifests::secret_credentials;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use thiserror::Error;

/// Finalizer the reconciler puts on every OAuth2Client so deletion can remove the client.
pub const FINALIZER: &str = "hydra.ory.sh/finalizer";

/// A client in Hydra's admin API shape (what the token service registers).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct HydraClient {
    pub client_id: String,
    pub client_secret: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_name: String,
    pub grant_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_types: Vec<String>,
    /// Space-separated, `scope` and `scopeArray` merged (first occurrence kept).
    pub scope: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redirect_uris: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_logout_redirect_uris: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_cors_origins: Vec<String>,
    pub token_endpoint_auth_method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_consent: Option<bool>,
    /// OIDC Back-Channel Logout: where logout tokens go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannel_logout_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannel_logout_session_required: Option<bool>,
    /// OIDC Front-Channel Logout: the page the browser loads on logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontchannel_logout_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontchannel_logout_session_required: Option<bool>,
    /// `<name>/<namespace>` of the resource, so clients can be traced back to it.
    pub owner: String,
    /// Per-grant lifespans (`client_credentials_grant_access_token_lifespan`: `1h`, ...).
    #[serde(flatten)]
    pub lifespans: BTreeMap<String, String>,
}

/// Why a client is (not) ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientReason {
    /// Registered with the Secret's credentials.
    Registered,
    /// Registered with generated credentials; the Secret is to be created.
    CredentialsGenerated,
    /// The Secret exists but lacks usable credentials.
    InvalidSecret,
}

impl ClientReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "Registered",
            Self::CredentialsGenerated => "CredentialsGenerated",
            Self::InvalidSecret => "InvalidSecret",
        }
    }
}

/// What to do for one OAuth2Client.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientPlan {
    /// Register (or update) this client; `None` when it cannot be registered.
    pub register: Option<HydraClient>,
    /// Create this Secret (create only, never overwrite).
    pub create_secret: Option<Secret>,
    pub reason: ClientReason,
    pub message: String,
    /// ORY's `reconciliationError` when not registered.
    pub error: Option<ReconciliationError>,
}

/// Plans the reconcile of `client` given its Secret (if it exists). `generate` is called only
/// when credentials must be generated and returns `(client_id, client_secret)`.
pub fn plan_client(
    client: &OAuth2Client,
    secret: Option<&Secret>,
    generate: impl FnOnce() -> (String, String),
) -> ClientPlan {
    let name = client.metadata.name.clone().unwrap_or_default();
    let namespace = client
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let secret_name = &client.spec.secret_name;
    if !crate::dns::is_subdomain(secret_name) {
        let message = format!(
            "spec.secretName {secret_name:?} is not a DNS-1123 name (lower-case a-z, 0-9, '-', '.')"
        );
        return ClientPlan {
            register: None,
            create_secret: None,
            reason: ClientReason::InvalidSecret,
            error: Some(ReconciliationError {
                status_code: Some("INVALID_SECRET".into()),
                description: Some(message.clone()),
            }),
            message,
        };
    }
    match secret {
        Some(s) => match secret_credentials(s) {
            Some((id, sec)) if !id.is_empty() && sec.len() >= 6 => ClientPlan {
                register: Some(hydra_client(client, &name, &namespace, id, sec)),
                create_secret: None,
                reason: ClientReason::Registered,
                message: format!(
                    "registered with the credentials of Secret {namespace}/{secret_name}"
                ),
                error: None,
            },
            found => {
                let why = match found {
                    Some((id, _)) if id.is_empty() => "client_id is empty".to_string(),
                    Some(_) => "client_secret is shorter than 6 characters".to_string(),
                    None => "it has no client_id/client_secret (or CLIENT_ID/CLIENT_SECRET) keys"
                        .to_string(),
                };
                let message = format!("Secret {namespace}/{secret_name} cannot be used: {why}");
                ClientPlan {
                    register: None,
                    create_secret: None,
                    reason: ClientReason::InvalidSecret,
                    error: Some(ReconciliationError {
                        status_code: Some("INVALID_SECRET".into()),
                        description: Some(message.clone()),
                    }),
                    message,
                }
            }
        },
        None => {
            let (id, sec) = generate();
            ClientPlan {
                register: Some(hydra_client(
                    client,
                    &name,
                    &namespace,
                    id.clone(),
                    sec.clone(),
                )),
                create_secret: Some(credentials_secret(client, &namespace, &id, &sec)),
                reason: ClientReason::CredentialsGenerated,
                message: format!(
                    "registered with generated credentials, stored in Secret {namespace}/{secret_name}"
                ),
                error: None,
            }
        }
    }
}

fn hydra_client(
    c: &OAuth2Client,
    name: &str,
    namespace: &str,
    id: String,
    secret: String,
) -> HydraClient {
    let s = &c.spec;
    let mut scopes: Vec<String> = Vec::new();
    let all = s
        .scope
        .iter()
        .flat_map(|sc| sc.split_whitespace().map(String::from))
        .chain(s.scope_array.iter().flatten().cloned());
    for sc in all {
        if !scopes.contains(&sc) {
            scopes.push(sc);
        }
    }
    let lifespans = s
        .token_lifespans
        .as_ref()
        .and_then(|l| serde_json::to_value(l).ok())
        .and_then(|v| serde_json::from_value::<BTreeMap<String, String>>(v).ok())
        .unwrap_or_default();
    HydraClient {
        client_id: id,
        client_secret: secret,
        client_name: s.client_name.clone().unwrap_or_default(),
        grant_types: s
            .grant_types
            .iter()
            .map(|g| g.as_str().to_string())
            .collect(),
        response_types: s.response_types.clone().unwrap_or_default(),
        scope: scopes.join(" "),
        audience: s.audience.clone().unwrap_or_default(),
        redirect_uris: s.redirect_uris.clone().unwrap_or_default(),
        post_logout_redirect_uris: s.post_logout_redirect_uris.clone().unwrap_or_default(),
        allowed_cors_origins: s.allowed_cors_origins.clone().unwrap_or_default(),
        token_endpoint_auth_method: s
            .token_endpoint_auth_method
            .clone()
            .unwrap_or_else(|| "client_secret_basic".into()),
        jwks_uri: s.jwks_uri.clone().filter(|u| !u.is_empty()),
        metadata: s.metadata.clone(),
        access_token_strategy: s.access_token_strategy.clone(),
        skip_consent: s.skip_consent,
        backchannel_logout_uri: s.back_channel_logout_uri.clone().filter(|u| !u.is_empty()),
        backchannel_logout_session_required: s.back_channel_logout_session_required,
        frontchannel_logout_uri: s.front_channel_logout_uri.clone().filter(|u| !u.is_empty()),
        frontchannel_logout_session_required: s.front_channel_logout_session_required,
        owner: format!("{name}/{namespace}"),
        lifespans,
    }
}

/// The Secret holding generated credentials, owned by the client (garbage-collected with it).
pub fn credentials_secret(
    client: &OAuth2Client,
    namespace: &str,
    id: &str,
    secret: &str,
) -> Secret {
    let owner = client.metadata.uid.as_ref().map(|uid| OwnerReference {
        api_version: "hydra.ory.sh/v1alpha1".into(),
        kind: "OAuth2Client".into(),
        name: client.metadata.name.clone().unwrap_or_default(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    });
    Secret {
        metadata: ObjectMeta {
            name: Some(client.spec.secret_name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                crate::rule_set::MANAGED_BY_LABEL.to_string(),
                crate::rule_set::MANAGED_BY.to_string(),
            )])),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            ("client_id".to_string(), ByteString(id.as_bytes().to_vec())),
            (
                "client_secret".to_string(),
                ByteString(secret.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

impl ClientPlan {
    pub fn ready(&self) -> bool {
        self.register.is_some()
    }

    /// The status to write once the plan was carried out. `failure` is an error carrying it out
    /// (ORY code such as `CLIENT_REGISTRATION_FAILED`, and a description): it wins over the plan,
    /// so an error is never masked by `Ready=True`.
    pub fn status(
        &self,
        generation: Option<i64>,
        previous: Option<&OAuth2ClientStatus>,
        failure: Option<(&str, &str)>,
        now: &str,
    ) -> OAuth2ClientStatus {
        let (ready, reason, message, error) = match failure {
            Some((code, description)) => (
                false,
                code.to_string(),
                description.to_string(),
                Some(ReconciliationError {
                    status_code: Some(code.to_string()),
                    description: Some(description.to_string()),
                }),
            ),
            None => (
                self.ready(),
                self.reason.as_str().to_string(),
                self.message.clone(),
                self.error.clone(),
            ),
        };
        let mut conditions = previous.map(|p| p.conditions.clone()).unwrap_or_default();
        set_condition(
            &mut conditions,
            Condition {
                type_: READY.into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: Some(reason),
                message: Some(message),
                observed_generation: generation,
                last_transition_time: Some(now.into()),
            },
        );
        OAuth2ClientStatus {
            observed_generation: generation,
            reconciliation_error: error,
            conditions,
        }
    }
}

/// ORY-style code (status reason and `reconciliationError.statusCode`) of a refused
/// registration: the `client_id` belongs to someone else.
pub const CLIENT_ID_CONFLICT: &str = "CLIENT_ID_CONFLICT";

/// A client already registered under the `client_id` an OAuth2Client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExistingClient<'a> {
    /// `<name>/<namespace>` of the resource it was registered for.
    pub owner: &'a str,
    /// Registered by this reconciler (not through the admin API or by another mode).
    pub managed: bool,
}

/// Why a client could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegistrationError {
    /// The `client_id` is registered for another OAuth2Client (another namespace, or another
    /// name): registering would hand that client's identity to this resource's Secret. The
    /// message does not name the owner: it goes to the status of a resource another tenant may
    /// have written (the owner is logged).
    #[error(
        "client_id {client_id:?} is registered for another OAuth2Client; it is not taken over (choose another client_id)"
    )]
    OwnedByAnother { client_id: String, owner: String },
    /// The `client_id` exists but was not registered by this reconciler (admin API).
    #[error(
        "client_id {client_id:?} already exists and was not registered from an OAuth2Client; it is not taken over"
    )]
    NotManaged { client_id: String },
    /// Several OAuth2Clients ask for a `client_id` nobody holds yet (manifests mode, where they
    /// arrive together): none gets it until only one asks.
    #[error(
        "client_id {client_id:?} is asked for by several OAuth2Clients ({owners}); none is registered until only one remains"
    )]
    Contested { client_id: String, owners: String },
    /// The token service failed.
    #[error("{0}")]
    Failed(String),
}

impl RegistrationError {
    /// The ORY-style code for the status.
    pub fn code(&self) -> &'static str {
        match self {
            Self::OwnedByAnother { .. } | Self::NotManaged { .. } | Self::Contested { .. } => {
                CLIENT_ID_CONFLICT
            }
            Self::Failed(_) => "CLIENT_REGISTRATION_FAILED",
        }
    }

    /// Whether retrying cannot help until another resource changes.
    pub fn is_conflict(&self) -> bool {
        self.code() == CLIENT_ID_CONFLICT
    }
}

/// Whether `wanted` (registering for `owner`) may write over what is registered under its
/// `client_id`: only a client this reconciler registered for the same resource. Owners are
/// compared whole, so a same-named resource in another namespace is another owner.
pub fn check_ownership(
    wanted: &HydraClient,
    existing: Option<ExistingClient<'_>>,
) -> Result<(), RegistrationError> {
    match existing {
        None => Ok(()),
        Some(e) if !e.managed => Err(RegistrationError::NotManaged {
            client_id: wanted.client_id.clone(),
        }),
        Some(e) if e.owner != wanted.owner => Err(RegistrationError::OwnedByAnother {
            client_id: wanted.client_id.clone(),
            owner: e.owner.to_string(),
        }),
        Some(_) => Ok(()),
    }
}

/// Whether deleting the resource should delete the registered client.
pub fn deletes_client(client: &OAuth2Client) -> bool {
    !client
        .spec
        .deletion_policy
        .as_deref()
        .is_some_and(|p| p.eq_ignore_ascii_case("orphan"))
}

/// The Secret as a YAML manifest (manifests mode writes generated credentials back with 0600).
pub fn secret_manifest(secret: &Secret) -> Result<String, serde_yaml::Error> {
    let mut v =
        serde_json::to_value(secret).map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
    v["apiVersion"] = "v1".into();
    v["kind"] = "Secret".into();
    serde_yaml::to_string(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(extra: &str) -> OAuth2Client {
        serde_yaml::from_str(&format!(
            "apiVersion: hydra.ory.sh/v1alpha1\nkind: OAuth2Client\nmetadata: {{name: c, namespace: kyma-system, uid: u-1, generation: 4}}\nspec:\n  grantTypes: [client_credentials]\n  secretName: c-secret\n{extra}"
        ))
        .unwrap()
    }

    fn secret(yaml: &str) -> Secret {
        serde_yaml::from_str(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: c-secret}}\n{yaml}"
        ))
        .unwrap()
    }

    fn no_generate() -> (String, String) {
        panic!("must not generate credentials")
    }

    #[test]
    fn an_existing_secret_provides_the_credentials() {
        let c = client(
            "  scope: \"read write\"\n  scopeArray: [write, admin]\n  audience: [a]\n  tokenLifespans: {client_credentials_grant_access_token_lifespan: 5m}\n  metadata: {team: x}\n",
        );
        for s in [
            secret("data: {client_id: aWQtMQ==, client_secret: c2VjcmV0LTE=}"),
            secret("stringData: {CLIENT_ID: id-1, CLIENT_SECRET: secret-1}"),
        ] {
            let plan = plan_client(&c, Some(&s), no_generate);
            assert_eq!(plan.reason, ClientReason::Registered);
            assert!(plan.create_secret.is_none());
            let reg = plan.register.unwrap();
            assert_eq!(
                (reg.client_id.as_str(), reg.client_secret.as_str()),
                ("id-1", "secret-1")
            );
            assert_eq!(reg.scope, "read write admin");
            assert_eq!(reg.grant_types, ["client_credentials"]);
            assert_eq!(reg.token_endpoint_auth_method, "client_secret_basic");
            assert_eq!(reg.owner, "c/kyma-system");
            let json = serde_json::to_value(&reg).unwrap();
            assert_eq!(json["client_credentials_grant_access_token_lifespan"], "5m");
            assert_eq!(json["metadata"]["team"], "x");
            assert_eq!(json["audience"], serde_json::json!(["a"]));
        }
    }

    #[test]
    fn a_secret_without_credentials_is_an_error_not_a_reason_to_generate() {
        let c = client("");
        let plan = plan_client(&c, Some(&secret("stringData: {user: x}")), no_generate);
        assert!(plan.register.is_none() && plan.create_secret.is_none());
        assert_eq!(plan.reason, ClientReason::InvalidSecret);
        let status = plan.status(Some(4), None, None, "t");
        assert_eq!(status.conditions[0].status, "False");
        let err = status.reconciliation_error.unwrap();
        assert_eq!(err.status_code.as_deref(), Some("INVALID_SECRET"));
        assert!(err.description.unwrap().contains("kyma-system/c-secret"));
        let short = plan_client(
            &c,
            Some(&secret("stringData: {client_id: a, client_secret: abc}")),
            no_generate,
        );
        assert!(short.message.contains("shorter than 6"));
    }

    #[test]
    fn a_missing_secret_is_generated_with_an_owner_reference() {
        let c = client("");
        let plan = plan_client(&c, None, || ("gen-id".into(), "gen-secret".into()));
        assert_eq!(plan.reason, ClientReason::CredentialsGenerated);
        assert_eq!(plan.register.as_ref().unwrap().client_id, "gen-id");
        let s = plan.create_secret.unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("c-secret"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("kyma-system"));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("OAuth2Client", "u-1", Some(true))
        );
        assert_eq!(
            secret_credentials(&s),
            Some(("gen-id".into(), "gen-secret".into()))
        );
        let yaml = secret_manifest(&s).unwrap();
        assert!(
            yaml.contains("kind: Secret") && yaml.contains("client_id: Z2VuLWlk"),
            "{yaml}"
        );
    }

    #[test]
    fn a_failure_is_never_masked_by_ready() {
        let c = client("");
        let plan = plan_client(
            &c,
            Some(&secret(
                "stringData: {client_id: id, client_secret: secret-1}",
            )),
            no_generate,
        );
        let ok = plan.status(Some(4), None, None, "t1");
        assert_eq!(ok.conditions[0].status, "True");
        assert!(ok.reconciliation_error.is_none());
        let failed = plan.status(
            Some(4),
            Some(&ok),
            Some(("CLIENT_REGISTRATION_FAILED", "store unavailable")),
            "t2",
        );
        assert_eq!(failed.conditions[0].status, "False");
        assert_eq!(
            failed.conditions[0].reason.as_deref(),
            Some("CLIENT_REGISTRATION_FAILED")
        );
        assert_eq!(
            failed.conditions[0].last_transition_time.as_deref(),
            Some("t2")
        );
        assert_eq!(
            failed.reconciliation_error.unwrap().status_code.as_deref(),
            Some("CLIENT_REGISTRATION_FAILED")
        );
    }

    #[test]
    fn deletion_policy_orphan_keeps_the_client_in_either_spelling() {
        assert!(deletes_client(&client("")));
        assert!(deletes_client(&client("  deletionPolicy: Delete\n")));
        assert!(!deletes_client(&client("  deletionPolicy: orphan\n")));
        assert!(!deletes_client(&client("  deletionPolicy: Orphan\n")));
    }
}
