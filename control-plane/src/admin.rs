//! Admin HTTP handlers (Hydra v2 shapes): clients CRUD with pagination, and JSON Web Key sets.
//! They are thin: the work is in [`crate::client::ClientService`] and [`crate::keys`].

use crate::client::{Client, ClientError};
use crate::clock;
use crate::keys::{Alg, KeyError};
use crate::oauth2_error::{ErrorCode, OAuth2Error};
use crate::request::{Json, Path};
use crate::server::Service;
use crate::store::ClientFilter;
use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 500;

impl From<ClientError> for OAuth2Error {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Invalid { .. } => {
                OAuth2Error::new(ErrorCode::InvalidClientMetadata, e.to_string())
            }
            ClientError::BadRequest(msg) => OAuth2Error::invalid_request(msg),
            ClientError::NotFound(_) => OAuth2Error::not_found(e.to_string()),
            ClientError::Conflict(_) => OAuth2Error::new(ErrorCode::Conflict, e.to_string()),
            ClientError::Store(s) => OAuth2Error::from(s),
            ClientError::Internal(msg) => OAuth2Error::server_error(msg),
        }
    }
}

impl From<KeyError> for OAuth2Error {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::UnsupportedAlg(_) => OAuth2Error::invalid_request(format!("field alg: {e}")),
            // A conflict is 409, a store that cannot write 503, like every other write.
            KeyError::Store(s) => OAuth2Error::from(s),
            other => OAuth2Error::server_error(other),
        }
    }
}

fn json_with_status(status: StatusCode, value: &impl serde::Serialize) -> Response {
    (status, axum::Json(value)).into_response()
}

/// What `GET /admin/clients` was asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub page_size: usize,
    pub page_token: Option<String>,
    pub filter: ClientFilter,
}

/// `page_size` (default 100, at most 500), `page_token`, `client_name` and `owner`.
pub fn list_query(query: Option<&str>) -> Result<ListQuery, OAuth2Error> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| OAuth2Error::invalid_request(format!("malformed query string: {e}")))?;
    let mut q = ListQuery {
        page_size: DEFAULT_PAGE_SIZE,
        ..Default::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "page_size" => {
                let size = v.parse::<usize>().map_err(|_| {
                    OAuth2Error::invalid_request(format!(
                        "page_size {v:?} is not a positive integer"
                    ))
                })?;
                if size == 0 {
                    return Err(OAuth2Error::invalid_request("page_size must be at least 1"));
                }
                q.page_size = size.min(MAX_PAGE_SIZE);
            }
            "page_token" if !v.is_empty() => q.page_token = Some(v),
            "client_name" if !v.is_empty() => q.filter.client_name = Some(v),
            "owner" if !v.is_empty() => q.filter.owner = Some(v),
            _ => {}
        }
    }
    Ok(q)
}

/// RFC 8288 `Link` header value with `rel="first"` and, when there is one, `rel="next"`;
/// filters are carried over.
pub fn link_header(path: &str, q: &ListQuery, next: Option<&str>) -> String {
    let mut carried = Vec::new();
    if let Some(n) = &q.filter.client_name {
        carried.push(("client_name", n.as_str()));
    }
    if let Some(o) = &q.filter.owner {
        carried.push(("owner", o.as_str()));
    }
    page_links(path, q.page_size, &carried, next)
}

/// The `Link` header of any paged list: `first` and `next` pages of `path` with the filters
/// in `carried`.
pub fn page_links(
    path: &str,
    page_size: usize,
    carried: &[(&str, &str)],
    next: Option<&str>,
) -> String {
    let enc = |v: &str| {
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let mut base = format!("{path}?page_size={page_size}");
    for (k, v) in carried {
        base.push_str(&format!("&{k}={}", enc(v)));
    }
    let mut link = format!("<{base}>; rel=\"first\"");
    if let Some(next) = next {
        link.push_str(&format!(
            ", <{base}&page_token={}>; rel=\"next\"",
            enc(next)
        ));
    }
    link
}

pub async fn list_clients(
    State(svc): State<Arc<Service>>,
    OriginalUri(uri): OriginalUri,
    RawQuery(query): RawQuery,
) -> Result<Response, OAuth2Error> {
    let q = list_query(query.as_deref())?;
    let page = svc
        .clients
        .list_filtered(q.page_size, q.page_token.as_deref(), q.filter.clone())
        .await?;
    let link = link_header(uri.path(), &q, page.next_page_token.as_deref());
    let mut resp = axum::Json(&page.clients).into_response();
    if let Ok(v) = HeaderValue::from_str(&link) {
        resp.headers_mut().insert(header::LINK, v);
    }
    Ok(resp)
}

pub async fn create_client(
    State(svc): State<Arc<Service>>,
    Json(client): Json<Client>,
) -> Result<Response, OAuth2Error> {
    let created = svc.clients.create(client).await?;
    tracing::info!(client_id = %created.client_id, "client created");
    Ok(json_with_status(StatusCode::CREATED, &created))
}

pub async fn get_client(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Response, OAuth2Error> {
    let client = svc.clients.get(&id).ok_or(ClientError::NotFound(id))?;
    Ok(axum::Json(client).into_response())
}

pub async fn put_client(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    Json(client): Json<Client>,
) -> Result<Response, OAuth2Error> {
    let updated = svc.clients.update(&id, client).await?;
    tracing::info!(client_id = %id, "client replaced");
    Ok(axum::Json(updated).into_response())
}

pub async fn patch_client(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    Json(patch): Json<json_patch::Patch>,
) -> Result<Response, OAuth2Error> {
    let updated = svc.clients.patch(&id, &patch).await?;
    tracing::info!(client_id = %id, "client patched");
    Ok(axum::Json(updated).into_response())
}

pub async fn delete_client(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<StatusCode, OAuth2Error> {
    svc.clients.delete(&id).await?;
    tracing::info!(client_id = %id, "client deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct CreateKey {
    alg: String,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

pub async fn get_key_set(
    State(svc): State<Arc<Service>>,
    Path(set): Path<String>,
) -> Result<Response, OAuth2Error> {
    let ring = svc.keys.ring();
    let now = clock::now();
    if !ring.has_set(&set, now) {
        return Err(OAuth2Error::not_found(format!("key set {set:?} not found")));
    }
    Ok(axum::Json(ring.jwks(&set, now)).into_response())
}

pub async fn get_key(
    State(svc): State<Arc<Service>>,
    Path((set, kid)): Path<(String, String)>,
) -> Result<Response, OAuth2Error> {
    let ring = svc.keys.ring();
    let key = ring
        .find(&set, &kid)
        .ok_or_else(|| OAuth2Error::not_found(format!("key {kid:?} not found in set {set:?}")))?;
    Ok(axum::Json(serde_json::json!({"keys": [key.public_jwk()]})).into_response())
}

/// Adds a key to `set` and makes it the set's current key (rotation for the access-token set).
pub async fn create_key(
    State(svc): State<Arc<Service>>,
    Path(set): Path<String>,
    Json(req): Json<CreateKey>,
) -> Result<Response, OAuth2Error> {
    let alg: Alg = req.alg.parse()?;
    if req.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err(OAuth2Error::invalid_request(
            "field use: only \"sig\" keys are supported",
        ));
    }
    if set == crate::id_token_keys::ID_TOKEN_SET {
        crate::id_token_keys::check_alg(alg)?;
    }
    let s = Arc::clone(&svc);
    let key = tokio::task::spawn_blocking(move || s.rotate_key(&set, alg, req.kid))
        .await
        .map_err(OAuth2Error::server_error)??;
    tracing::info!(set = %key.set, kid = %key.kid, alg = %key.alg, "key created via admin API");
    Ok(json_with_status(
        StatusCode::CREATED,
        &serde_json::json!({"keys": [key.public_jwk()]}),
    ))
}

pub async fn delete_key_set(
    State(svc): State<Arc<Service>>,
    Path(set): Path<String>,
) -> Result<StatusCode, OAuth2Error> {
    delete_keys(svc, set, None).await
}

pub async fn delete_key(
    State(svc): State<Arc<Service>>,
    Path((set, kid)): Path<(String, String)>,
) -> Result<StatusCode, OAuth2Error> {
    delete_keys(svc, set, Some(kid)).await
}

async fn delete_keys(
    svc: Arc<Service>,
    set: String,
    kid: Option<String>,
) -> Result<StatusCode, OAuth2Error> {
    let s = Arc::clone(&svc);
    let set2 = set.clone();
    let deleted = tokio::task::spawn_blocking(move || s.delete_keys(&set2, kid.as_deref()))
        .await
        .map_err(OAuth2Error::server_error)??;
    if !deleted {
        return Err(OAuth2Error::not_found(format!(
            "no such key in set {set:?}"
        )));
    }
    svc.verified_jwts.clear();
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_defaults_limits_and_filters() {
        let q = list_query(None).unwrap();
        assert_eq!((q.page_size, q.page_token), (100, None));
        assert_eq!(list_query(Some("page_size=1000")).unwrap().page_size, 500);
        let q = list_query(Some("page_size=5&page_token=abc&owner=team+a")).unwrap();
        assert_eq!(q.page_size, 5);
        assert_eq!(q.page_token.as_deref(), Some("abc"));
        assert_eq!(q.filter.owner.as_deref(), Some("team a"));
        assert!(list_query(Some("page_size=0")).is_err());
        assert!(list_query(Some("page_size=x")).is_err());
    }

    #[test]
    fn link_header_has_first_and_next() {
        let q = ListQuery {
            page_size: 2,
            ..Default::default()
        };
        assert_eq!(
            link_header("/admin/clients", &q, Some("YQ")),
            "</admin/clients?page_size=2>; rel=\"first\", </admin/clients?page_size=2&page_token=YQ>; rel=\"next\""
        );
        assert_eq!(
            link_header("/clients", &q, None),
            "</clients?page_size=2>; rel=\"first\""
        );
        let q = ListQuery {
            page_size: 2,
            filter: ClientFilter {
                client_name: None,
                owner: Some("a b".into()),
            },
            ..Default::default()
        };
        assert_eq!(
            link_header("/clients", &q, None),
            "</clients?page_size=2&owner=a%20b>; rel=\"first\""
        );
    }
}
