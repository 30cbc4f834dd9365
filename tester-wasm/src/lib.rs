//! The rule tester for the console page: [`portcullis_core::rule_tester`] behind `wasm-bindgen`,
//! so the page evaluates requests with the very code the filter runs.
//!
//! Values cross the boundary as JSON strings (no serde-wasm-bindgen: a smaller bundle, and the
//! page parses JSON natively). The evaluation pauses for the page's callouts exactly as the
//! filter pauses for Envoy's: [`Run::advance`] says what it needs, the page fetches it through
//! the control plane and hands the answer back.

pub mod session;

use session::{RunSession, TesterSession};
use wasm_bindgen::prelude::*;

/// A compiled configuration.
#[wasm_bindgen]
pub struct Tester(TesterSession);

#[wasm_bindgen]
impl Tester {
    /// Compiles a filter configuration document (JSON); throws every compile error, one line.
    #[wasm_bindgen(constructor)]
    pub fn new(config_json: &str) -> Result<Tester, JsError> {
        TesterSession::new(config_json)
            .map(Tester)
            .map_err(|e| JsError::new(&e))
    }

    #[wasm_bindgen(js_name = ruleCount)]
    pub fn rule_count(&self) -> usize {
        self.0.rule_count()
    }

    /// Starts evaluating a request (`{"method","url","headers":[[k,v]],"token"}`) at `now`
    /// (seconds since the Unix epoch).
    pub fn start(&self, request_json: &str, now: f64) -> Result<Run, JsError> {
        self.0
            .start(request_json, now)
            .map(Run)
            .map_err(|e| JsError::new(&e))
    }
}

/// One request's evaluation.
#[wasm_bindgen]
pub struct Run(RunSession);

#[wasm_bindgen]
impl Run {
    /// What the evaluation needs next, as JSON: `{"need":"keys","urls":[...]}`,
    /// `{"need":"callout","request":{...}}` or `{"need":"done","trace":{...}}`.
    pub fn advance(&mut self) -> String {
        self.0.advance()
    }

    /// A JWKS URL's answer.
    #[wasm_bindgen(js_name = keysFetched)]
    pub fn keys_fetched(&mut self, url: &str, status: u16, body: &str) {
        self.0.keys_fetched(url, Ok((status, body)));
    }

    /// A JWKS URL could not be fetched.
    #[wasm_bindgen(js_name = keysFailed)]
    pub fn keys_failed(&mut self, url: &str, error: &str) {
        self.0.keys_fetched(url, Err(error));
    }

    /// The answer to the pending callout (`headers_json`: `[[name, value], ...]`).
    #[wasm_bindgen(js_name = calloutDone)]
    pub fn callout_done(&mut self, status: u16, headers_json: &str, body: &str) {
        self.0.callout_done(Some((status, headers_json, body)));
    }

    /// The pending callout failed (refused, unreachable, timed out).
    #[wasm_bindgen(js_name = calloutFailed)]
    pub fn callout_failed(&mut self) {
        self.0.callout_done(None);
    }
}
