//! The token service's admin API as a login/consent/logout app uses it (Hydra v2 shapes).
//! Called server-side: the admin API refuses browsers (cross-site requests, foreign `Host`).

use serde_json::Value;

use crate::error::AppError;

/// Which of the three challenge kinds a call is about.
#[derive(Clone, Copy)]
pub enum Flow {
    Login,
    Consent,
    Logout,
}

impl Flow {
    fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Consent => "consent",
            Self::Logout => "logout",
        }
    }
}

#[derive(Clone)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    fn url(&self, flow: Flow, action: &str, challenge: &str) -> String {
        let name = flow.name();
        format!(
            "{}/admin/oauth2/auth/requests/{name}{action}?{name}_challenge={}",
            self.base,
            portcullis_core::form::escape(challenge)
        )
    }

    /// The pending request behind `challenge`.
    pub async fn request(&self, flow: Flow, challenge: &str) -> Result<Value, AppError> {
        self.send(self.http.get(self.url(flow, "", challenge)))
            .await
    }

    /// Accepts (or, with `accept == false`, rejects) the request; returns where the browser
    /// goes next.
    pub async fn decide(
        &self,
        flow: Flow,
        challenge: &str,
        accept: bool,
        body: &Value,
    ) -> Result<String, AppError> {
        let action = if accept { "/accept" } else { "/reject" };
        let reply = self
            .send(self.http.put(self.url(flow, action, challenge)).json(body))
            .await?;
        match reply.get("redirect_to").and_then(Value::as_str) {
            Some(to) => Ok(to.to_string()),
            None => Err(AppError::Upstream(format!(
                "the admin API's {} answer has no redirect_to",
                flow.name()
            ))),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, AppError> {
        let reply = req
            .send()
            .await
            .map_err(|e| AppError::upstream("the admin API is unreachable", e))?;
        let status = reply.status();
        let body: Value = reply
            .json()
            .await
            .map_err(|e| AppError::upstream("the admin API answered no JSON", e))?;
        if status.is_success() {
            return Ok(body);
        }
        // 410: the challenge was already used (a reload, or the back button).
        let what = body
            .get("error_description")
            .or_else(|| body.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("no description");
        if status.is_client_error() {
            Err(AppError::BadRequest(format!(
                "the token service refused this request ({status}): {what}"
            )))
        } else {
            Err(AppError::Upstream(format!(
                "the admin API answered {status}: {what}"
            )))
        }
    }
}
