//! An example login + consent + logout app for the Portcullis token service, which is also the
//! demo relying party `make run` points a person at. It speaks Hydra's login/consent protocol,
//! so it works against ORY Hydra too. One demo user; state lives in memory.

mod admin;
mod error;
mod html;
mod id_token;
mod login_consent;
mod relying_party;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use clap::Parser;
use subtle::ConstantTimeEq;

/// The demo user's name; the password comes from `--password`.
pub const DEMO_USER: &str = "alice";
/// Flows started but not finished, and signed-in browsers, kept at most: a bot hitting
/// `/start` in a loop cannot grow the process without bound (the oldest entries go first).
const MAX_ENTRIES: usize = 10_000;

#[derive(Parser, Debug)]
#[command(
    name = "login-app",
    about = "Example login/consent/logout app and relying party"
)]
struct Config {
    /// Address to listen on.
    #[arg(long, env = "LOGIN_APP_ADDR", default_value = "127.0.0.1:5555")]
    listen: String,
    /// This app's URL as the browser sees it (callback and post-logout URLs derive from it).
    #[arg(long, env = "LOGIN_APP_URL", default_value = "http://127.0.0.1:5555")]
    public_url: String,
    /// The token service's issuer (public port).
    #[arg(
        long,
        env = "PORTCULLIS_ISSUER",
        default_value = "http://127.0.0.1:4444"
    )]
    issuer: String,
    /// The token service's admin port.
    #[arg(
        long,
        env = "PORTCULLIS_ADMIN_URL",
        default_value = "http://127.0.0.1:4445"
    )]
    admin_url: String,
    /// Envoy in front of the protected sample upstream.
    #[arg(long, env = "PROXY_URL", default_value = "http://127.0.0.1:8080")]
    proxy_url: String,
    #[arg(long, env = "LOGIN_APP_CLIENT_ID")]
    client_id: String,
    #[arg(long, env = "LOGIN_APP_CLIENT_SECRET", hide_env_values = true)]
    client_secret: String,
    /// The demo user's password.
    #[arg(long, env = "LOGIN_APP_PASSWORD", hide_env_values = true)]
    password: String,
}

/// What the callback needs from the request that started the flow.
pub struct Pending {
    pub verifier: String,
    pub nonce: String,
}

#[derive(Clone)]
pub struct App {
    cfg: Arc<Config>,
    http: reqwest::Client,
    admin: admin::Admin,
    pending: Arc<Mutex<Bounded<Pending>>>,
    /// Signed-in browsers (session cookie) → their ID token, the hint for logout.
    sessions: Arc<Mutex<Bounded<String>>>,
    /// Front-channel logouts the token service's logout page made this app receive.
    front_channel_logouts: Arc<std::sync::atomic::AtomicUsize>,
}

impl App {
    fn callback_url(&self) -> String {
        format!("{}/callback", self.cfg.public_url)
    }

    fn signed_out_url(&self) -> String {
        format!("{}/signed-out", self.cfg.public_url)
    }

    fn password_matches(&self, given: &str) -> bool {
        given.as_bytes().ct_eq(self.cfg.password.as_bytes()).into()
    }

    fn remember_pending(&self, state: String, p: Pending) {
        lock(&self.pending).insert(state, p);
    }

    fn take_pending(&self, state: &str) -> Option<Pending> {
        lock(&self.pending).remove(state)
    }

    fn remember_session(&self, id: String, id_token: String) {
        lock(&self.sessions).insert(id, id_token);
    }

    fn session(&self, id: &str) -> Option<String> {
        lock(&self.sessions).map.get(id).map(|(_, t)| t.clone())
    }

    fn end_session(&self, id: &str) -> Option<String> {
        lock(&self.sessions).remove(id)
    }

    /// Ends every session whose ID token names login session `sid` (front-channel logout).
    fn end_sessions_of(&self, sid: &str) {
        lock(&self.sessions)
            .map
            .retain(|_, (_, token)| id_token::sid(token).as_deref() != Some(sid));
    }
}

/// A map that drops its oldest entry when full.
struct Bounded<T> {
    map: HashMap<String, (u64, T)>,
    next: u64,
}

impl<T> Default for Bounded<T> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            next: 0,
        }
    }
}

impl<T> Bounded<T> {
    fn insert(&mut self, key: String, value: T) {
        if self.map.len() >= MAX_ENTRIES {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (n, _))| *n)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.map.remove(&k);
            }
        }
        self.next += 1;
        self.map.insert(key, (self.next, value));
    }

    fn remove(&mut self, key: &str) -> Option<T> {
        self.map.remove(key).map(|(_, v)| v)
    }
}

/// The maps stay consistent whatever a panicking holder did (each update is one call).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn router(app: App) -> Router {
    use login_consent as lc;
    use relying_party as rp;
    Router::new()
        .route("/", get(rp::home))
        .route("/start", get(rp::start))
        .route("/callback", get(rp::callback))
        .route("/logout", get(rp::logout))
        .route("/signed-out", get(rp::signed_out))
        .route("/frontchannel-logout", get(rp::frontchannel_logout))
        .route("/login", get(lc::login_page).post(lc::login_submit))
        .route("/consent", get(lc::consent_page).post(lc::consent_submit))
        .route(
            "/logout-confirm",
            get(lc::logout_page).post(lc::logout_submit),
        )
        .with_state(app)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cfg = Config::parse();
    for url in [&mut cfg.public_url, &mut cfg.issuer, &mut cfg.proxy_url] {
        *url = url.trim_end_matches('/').to_string();
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let app = App {
        admin: admin::Admin::new(http.clone(), &cfg.admin_url),
        http,
        pending: Arc::default(),
        sessions: Arc::default(),
        front_channel_logouts: Arc::default(),
        cfg: Arc::new(cfg),
    };
    let listener = tokio::net::TcpListener::bind(&app.cfg.listen)
        .await
        .with_context(|| format!("listening on {}", app.cfg.listen))?;
    eprintln!("login-app: listening on {}", app.cfg.public_url);
    axum::serve(listener, router(app))
        .await
        .context("serving")?;
    Ok(())
}
