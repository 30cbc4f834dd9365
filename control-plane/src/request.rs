//! Request decoding shared by the endpoints: OAuth2 form parameters (urlencoded or multipart),
//! HTTP Basic client credentials (form-urldecoded per RFC 6749 2.3.1), and JSON bodies. Every
//! rejection is an [`OAuth2Error`].

use crate::oauth2_error::{ErrorCode, OAuth2Error};
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::DeserializeOwned;

/// Form parameters in order, repeated names kept.
#[derive(Debug, Default, Clone)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn parse_urlencoded(body: &[u8]) -> Result<Self, OAuth2Error> {
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
            .map(Self)
            .map_err(|e| {
                OAuth2Error::invalid_request(format!("The request body is not a valid form: {e}"))
            })
    }

    /// The single value of `name`; RFC 6749 3.2 forbids repeating a parameter.
    pub fn get(&self, name: &str) -> Result<Option<&str>, OAuth2Error> {
        let mut found = None;
        for (k, v) in &self.0 {
            if k == name {
                if found.is_some() {
                    return Err(OAuth2Error::invalid_request(format!(
                        "The request parameter {name:?} must not be included more than once."
                    )));
                }
                found = Some(v.as_str());
            }
        }
        Ok(found.filter(|v| !v.is_empty()))
    }

    /// Every value of `name` (for parameters such as `audience` that may repeat), each split on
    /// spaces.
    pub fn all_split(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split_whitespace().map(str::to_string))
            .collect()
    }
}

/// Extractor for `application/x-www-form-urlencoded` and `multipart/form-data` bodies.
pub struct Form(pub Params);

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = OAuth2Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("multipart/form-data") {
            let mut mp = Multipart::from_request(req, state).await.map_err(|e| {
                OAuth2Error::invalid_request(format!("Malformed multipart body: {e}"))
            })?;
            let mut params = Vec::new();
            while let Some(field) = mp.next_field().await.map_err(|e| {
                OAuth2Error::invalid_request(format!("Malformed multipart body: {e}"))
            })? {
                let name = field.name().unwrap_or_default().to_string();
                let value = field.text().await.map_err(|e| {
                    OAuth2Error::invalid_request(format!("Malformed multipart field {name:?}: {e}"))
                })?;
                params.push((name, value));
            }
            return Ok(Self(Params(params)));
        }
        if !(content_type.is_empty()
            || content_type.starts_with("application/x-www-form-urlencoded"))
        {
            return Err(OAuth2Error::invalid_request(
                "The request body must be application/x-www-form-urlencoded or multipart/form-data.",
            ));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| OAuth2Error::invalid_request(format!("Unreadable request body: {e}")))?;
        Params::parse_urlencoded(&body).map(Self)
    }
}

/// `application/json` or a `+json` type (`application/json-patch+json`), parameters allowed.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json"
        || media
            .strip_prefix("application/")
            .is_some_and(|sub| sub.len() > 5 && sub.ends_with("+json"))
}

/// Extractor for JSON bodies whose errors are RFC 6749-style `invalid_request`.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = OAuth2Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // A browser sends `text/plain` cross-site without a CORS preflight; requiring JSON
        // means a web page can only reach these handlers with a preflight we never grant.
        if !is_json(req.headers()) {
            return Err(OAuth2Error::new(
                ErrorCode::UnsupportedMediaType,
                "The request body must be JSON (Content-Type: application/json).",
            ));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| OAuth2Error::invalid_request(format!("Unreadable request body: {e}")))?;
        // The path of the offending field goes into the message (`field audience: invalid
        // type ...`), so a client sees which of its fields to fix.
        let de = &mut serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(de).map(Self).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path.is_empty() || path == "." {
                OAuth2Error::invalid_request(format!(
                    "The request body is not valid JSON for this endpoint: {inner}"
                ))
            } else {
                OAuth2Error::invalid_request(format!(
                    "The request body is not valid JSON for this endpoint: field {path}: {inner}"
                ))
            }
        })
    }
}

/// Strict like Go's `url.QueryUnescape`: a `%` must start a two-digit hex escape.
/// Path parameters whose rejections (bad percent-encoding) are `invalid_request` too.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for Path<T> {
    type Rejection = OAuth2Error;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Self(v))
            .map_err(|e| OAuth2Error::invalid_request(format!("Invalid path parameter: {e}")))
    }
}

fn form_urldecode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return None;
        }
    }
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// `Authorization: Basic` credentials, each half form-urldecoded (RFC 6749 2.3.1). `Ok(None)`
/// when the header is absent or uses another scheme.
pub fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuth2Error> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        OAuth2Error::invalid_client("The Authorization header carries malformed Basic credentials.")
            .with_basic_challenge(true)
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let id = form_urldecode(id).ok_or_else(malformed)?;
    let secret = form_urldecode(secret).ok_or_else(malformed)?;
    if id.is_empty() {
        return Err(malformed());
    }
    Ok(Some((id, secret)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn basic(raw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(raw))).unwrap(),
        );
        h
    }

    #[test]
    fn basic_credentials_are_form_urldecoded() {
        let h = basic("my%3Aclient:p%40ss+word%2B");
        assert_eq!(
            basic_credentials(&h).unwrap(),
            Some(("my:client".into(), "p@ss word+".into()))
        );
        // The secret may contain ':' unencoded after the first separator.
        let h = basic("id:a:b");
        assert_eq!(basic_credentials(&h).unwrap().unwrap().1, "a:b");
    }

    #[test]
    fn basic_errors_and_other_schemes() {
        assert_eq!(basic_credentials(&HeaderMap::new()).unwrap(), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(basic_credentials(&h).unwrap(), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        let e = basic_credentials(&h).unwrap_err();
        assert!(e.basic_challenge);
        assert!(basic_credentials(&basic("nocolon")).is_err());
        assert!(basic_credentials(&basic(":secret")).is_err());
        assert!(basic_credentials(&basic("id:%zz")).is_err());
    }

    #[test]
    fn params_single_and_repeated() {
        let p = Params::parse_urlencoded(b"a=1&audience=x+y&audience=z&b=&a2=%20").unwrap();
        assert_eq!(p.get("a").unwrap(), Some("1"));
        assert_eq!(p.get("b").unwrap(), None);
        assert_eq!(p.all_split("audience"), ["x", "y", "z"]);
        assert!(p.get("audience").is_err());
    }
}
