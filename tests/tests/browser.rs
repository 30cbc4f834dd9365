//! A real browser through the example `make run` prints: headless Chromium, driven over
//! WebDriver (chromedriver, plain HTTP), opens the one URL, signs in as the demo user on the
//! login page, grants consent, and lands on the callback page, which must show the verified ID
//! token's claims (`sub`, `aud` = the example client, nonce checked) and the protected
//! upstream's 200 through Envoy; then signs out through the logout page and must be asked for
//! the password again. `make test` installs Debian's `chromium` and `chromium-driver`
//! (CHROMIUM and CHROMEDRIVER override the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use portcullis_e2e::make_run;
use portcullis_e2e::webdriver::Browser;
use serde_json::Value;

/// `scripts/run.sh` in the foreground mode a person uses; stopped (SIGTERM, which its trap
/// turns into stopping every child) when dropped.
struct MakeRun {
    child: Child,
    url: String,
    password: String,
}

impl MakeRun {
    fn start(data: &Path) -> Self {
        let mut child = make_run::command(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("running scripts/run.sh");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The first run builds the filter, the control plane and the app: minutes on CI.
        let deadline = Instant::now() + Duration::from_secs(1200);
        let mut seen = String::new();
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains("Portcullis is running. Open ") => break l,
                Ok(l) => seen.push_str(&(l + "\n")),
                Err(e) => panic!(
                    "make run never printed its URL ({e}); logs in {}/logs\n{seen}",
                    data.display()
                ),
            }
        };
        // "Portcullis is running. Open <url> and sign in as alice, password <password>"
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |w: &str| {
            let i = words.iter().position(|x| *x == w).unwrap();
            words[i + 1].trim_end_matches(',').to_string()
        };
        Self {
            url: after("Open"),
            password: after("password"),
            child,
        }
    }
}

impl Drop for MakeRun {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The example client's id, from the Secret manifest the control plane generated.
fn example_client_id(data: &Path) -> String {
    let path = data.join("manifests/login-app.default.secret.yaml");
    let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let field = &doc["data"]["client_id"];
    let raw = base64::engine::general_purpose::STANDARD
        .decode(field.as_str().unwrap())
        .unwrap();
    String::from_utf8(raw).unwrap()
}

#[test]
fn a_person_signs_in_sees_the_claims_and_the_upstream_then_signs_out() {
    let data = tempfile::tempdir().unwrap();
    let run = MakeRun::start(data.path());
    let browser = Browser::start();

    browser.goto(&run.url);
    browser.click("#start");

    // The login page: a wrong password is refused first, then the printed one works.
    browser.type_into("#username", "alice");
    browser.type_into("#password", "not-the-password");
    browser.click("#sign-in");
    assert!(
        browser
            .text("#login-error")
            .contains("Wrong username or password")
    );
    browser.type_into("#password", &run.password);
    browser.click("#sign-in");

    // The consent page lists what the example client asks for.
    let scopes = browser.text("#scopes");
    for s in ["openid", "offline_access", "read"] {
        assert!(scopes.contains(s), "consent page lists {scopes:?}");
    }
    browser.click("#allow");

    // The callback page: verified claims and the upstream's answer.
    assert_eq!(browser.text("#claim-sub"), "alice");
    let aud = browser.text("#claim-aud");
    assert!(aud.contains(&example_client_id(data.path())), "aud {aud}");
    assert!(browser.text("#verified").contains("nonce matches"));
    assert_eq!(browser.text("#upstream-status"), "200");
    // The rule's header mutator told the upstream who signed in.
    let echoed = browser.text("#upstream-body");
    assert!(echoed.contains("alice"), "upstream saw {echoed}");
    let shot = std::env::temp_dir().join("portcullis-browser-callback.png");
    browser.screenshot(&shot);
    eprintln!("callback page screenshot: {}", shot.display());

    // Logout through the token service's logout page, back to a signed-out state.
    browser.click("#logout");
    browser.click("#confirm-logout");
    assert!(browser.text("#signed-out").contains("signed out"));
    // On the way, the token service's logout page loaded the app's front-channel logout URI
    // (with iss and sid) and only then went on.
    assert_eq!(
        browser.text("#frontchannel"),
        "Front-channel logouts received: 1"
    );
    // The token service's session is gone too: signing in asks for the password again
    // (the login was remembered, so without the logout this would skip straight through).
    browser.click("#start");
    browser.wait_for("#password");
}
