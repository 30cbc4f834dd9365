//! The tester's functions over JSON strings, without `wasm-bindgen` types, so they are tested
//! natively (`cargo test -p portcullis-tester-wasm`) as well as in the browser.

use portcullis_core::callout::CalloutResponse;
use portcullis_core::rule_tester::{CalloutRequest, Need, RuleTester, TestRequest, TestRun};
use serde_json::json;

pub struct TesterSession(RuleTester);

impl TesterSession {
    pub fn new(config_json: &str) -> Result<Self, String> {
        RuleTester::from_json(config_json.as_bytes())
            .map(Self)
            .map_err(|e| e.to_string())
    }

    pub fn rule_count(&self) -> usize {
        self.0.engine().rule_count()
    }

    pub fn start(&self, request_json: &str, now: f64) -> Result<RunSession, String> {
        let request: TestRequest =
            serde_json::from_str(request_json).map_err(|e| format!("request: {e}"))?;
        // Seconds since the epoch fit an f64 exactly; a negative or NaN clock reads as 0.
        let now = if now.is_finite() && now > 0.0 {
            now as u64
        } else {
            0
        };
        let run = self.0.start(&request, now).map_err(|e| e.to_string())?;
        Ok(RunSession { run, pending: None })
    }
}

pub struct RunSession {
    run: TestRun,
    /// The callout handed out last, recorded in the trace with its answer.
    pending: Option<CalloutRequest>,
}

impl RunSession {
    pub fn advance(&mut self) -> String {
        let need = match self.run.advance() {
            Need::Keys(urls) => json!({"need": "keys", "urls": urls}),
            Need::Callout(request) => {
                let out = json!({"need": "callout", "request": request});
                self.pending = Some(request);
                out
            }
            Need::Done => json!({"need": "done", "trace": self.run.trace()}),
        };
        need.to_string()
    }

    pub fn keys_fetched(&mut self, url: &str, answer: Result<(u16, &str), &str>) {
        self.run.keys_fetched(
            url,
            answer
                .map(|(s, b)| (s, b.as_bytes()))
                .map_err(str::to_string),
        );
    }

    /// `answer`: status, headers as a JSON list of pairs, body; `None` when the call failed.
    pub fn callout_done(&mut self, answer: Option<(u16, &str, &str)>) {
        let Some(request) = self.pending.take() else {
            return;
        };
        let response = answer.map(|(status, headers, body)| CalloutResponse {
            status,
            // Unreadable headers count as none: the handlers then judge the answer by its
            // status and body alone, as they would a reply without those headers.
            headers: serde_json::from_str(headers).unwrap_or_default(),
            body: body.as_bytes().to_vec(),
        });
        self.run.callout_done(&request, response);
    }
}

#[cfg(test)]
mod tests;
