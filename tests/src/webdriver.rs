//! A Chromium session driven over WebDriver (chromedriver, plain HTTP) for the browser tests:
//! headless, with a fresh profile, and with the flags the issue of the console names.
//! `make browser` installs Debian's `chromium` and `chromium-driver` (CHROMIUM and CHROMEDRIVER
//! override the binaries).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports;
use base64::Engine;
use serde_json::{Value, json};

/// W3C WebDriver's key for an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Page changes in a loaded CI machine: generous, and only ever waited for, never slept.
pub const PAGE_DEADLINE: Duration = Duration::from_secs(60);

/// chromedriver and one Chromium session with a fresh profile.
pub struct Browser {
    driver: Child,
    http: reqwest::blocking::Client,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Self {
        let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = ports::free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {driver_bin} ({e}): `make test` installs chromium-driver")
            });
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        wait_until("chromedriver to be ready", Duration::from_secs(60), || {
            http.get(format!("{base}/status"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true)
        });
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--window-size=1000,1100",
                    // Containers often have a 64 MB /dev/shm, too small for Chromium.
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let reply: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {reply}"))
            .to_string();
        Self {
            driver,
            http,
            session: format!("{base}/session/{session}"),
            _profile: profile,
        }
    }

    pub fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let reply: Value = req.send().unwrap().json().unwrap();
        reply["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        let v = self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
        assert!(v.is_null(), "navigating to {url}: {v}");
    }

    pub fn find(&self, css: &str) -> Option<String> {
        let v = self.call(
            reqwest::Method::POST,
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().map(str::to_string)
    }

    /// Waits until `css` matches on the current page (a page load or redirect chain may still
    /// be under way) and returns the element.
    pub fn wait_for(&self, css: &str) -> String {
        let end = Instant::now() + PAGE_DEADLINE;
        loop {
            if let Some(el) = self.find(css) {
                return el;
            }
            if Instant::now() > end {
                let url = self.call(reqwest::Method::GET, "/url", None);
                panic!(
                    "no {css} at {url} within {PAGE_DEADLINE:?}; page:\n{}",
                    self.source()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn text(&self, css: &str) -> String {
        let el = self.wait_for(css);
        let v = self.call(reqwest::Method::GET, &format!("/element/{el}/text"), None);
        v.as_str().unwrap_or_default().to_string()
    }

    pub fn click(&self, css: &str) {
        let el = self.wait_for(css);
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/click"),
            Some(json!({})),
        );
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let el = self.wait_for(css);
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/clear"),
            Some(json!({})),
        );
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Runs `script` as an async function body in the page (`arguments[0]` is the callback
    /// that ends it) and returns what it passed to the callback.
    pub fn execute_async(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
    }

    pub fn source(&self) -> String {
        let v = self.call(reqwest::Method::GET, "/source", None);
        v.as_str().unwrap_or_default().to_string()
    }

    pub fn screenshot(&self, to: &Path) {
        let v = self.call(reqwest::Method::GET, "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::write(to, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.session).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

pub fn wait_until(what: &str, deadline: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
