//! VM-wide state (one per Envoy worker) and the loop that drives a request's evaluation.
//!
//! Requests pause for keys or callouts and resume from whichever context receives the event
//! (their own on a callout they dispatched, the root on a tick or a JWKS arrival). Their state
//! therefore lives here, keyed by HTTP context id, not in the context objects.
//!
//! Host calls that can re-enter the VM (a local reply runs the rest of the stream, and may
//! delete the context) are made only after the VM state is released.

use crate::clock::Clock;
use crate::envoy_host::{EnvoyHost, NativeVerify, now_ms};
use crate::headers;
use crate::keys::{FetchOutcome, KeyStore};
use crate::metrics::Metrics;
use log::{debug, info, warn};
use portcullis_core::authn::{CacheStats, Caches};
use portcullis_core::callout::{Callout, CalloutResponse};
use portcullis_core::config::Engine;
use portcullis_core::error_handler::Response;
use portcullis_core::pipeline::{Evaluation, Step};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, MapType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Verified tokens and introspection answers kept per worker.
const CACHE_CAPACITY: usize = 10_000;
/// How long a request whose rule reads the body waits for its first byte. With the plugin's
/// `allow_on_headers_stop_iteration` unset Envoy never hands the body over, so this bounds the
/// wait rather than leaving the request to Envoy's stream timeout.
const BODY_START_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug)]
enum Waiting {
    Keys {
        deadline_ms: u64,
    },
    Callout,
    /// The rule's authorizer reads the body, which is still arriving; `deadline_ms` until its
    /// first byte arrives.
    Body {
        deadline_ms: Option<u64>,
    },
}

struct Pending {
    engine: Rc<Engine>,
    eval: Evaluation,
    waiting: Waiting,
}

/// Who a dispatched call belongs to.
#[derive(Debug, Clone)]
pub enum CalloutOwner {
    Request(u32),
    Jwks(String),
}

pub struct VmState {
    clock: Clock,
    pub keys: KeyStore,
    caches: Caches,
    pending: HashMap<u32, Pending>,
    callouts: HashMap<u32, CalloutOwner>,
    native: NativeVerify,
    pub metrics: Metrics,
    reported: CacheStats,
    /// Whether this worker already logged that a body never arrived.
    warned_no_body: bool,
}

thread_local! {
    static VM: RefCell<VmState> = RefCell::new(VmState {
        clock: Clock::default(),
        keys: KeyStore::default(),
        caches: Caches::new(CACHE_CAPACITY),
        pending: HashMap::new(),
        callouts: HashMap::new(),
        native: NativeVerify::Unknown,
        metrics: Metrics::default(),
        reported: CacheStats::default(),
        warned_no_body: false,
    });
}

/// Runs `f` on the VM state, unless it is already borrowed further up the stack (a host call
/// re-entered the VM), in which case the work is skipped rather than panicking.
pub fn with_vm<R>(f: impl FnOnce(&mut VmState) -> R) -> Option<R> {
    VM.with(|vm| vm.try_borrow_mut().ok().map(|mut vm| f(&mut vm)))
}

/// What to do with the stream once the VM state is released.
enum Effect {
    Continue,
    Respond(Response),
    Pause,
}

/// Starts or resumes the evaluation of the request of context `ctx`. `own` is true when called
/// from that context's own callback (then `Continue` is returned to Envoy instead of resuming).
pub fn drive(ctx: u32, engine: Rc<Engine>, mut eval: Evaluation, own: bool) -> Action {
    if !own && hostcalls::set_effective_context(ctx).is_err() {
        // The stream is gone.
        return Action::Pause;
    }
    let effect = with_vm(|vm| step(vm, ctx, engine, &mut eval)).unwrap_or_else(|| {
        warn!("portcullis: VM state busy while driving request {ctx}: denying");
        Effect::Respond(internal_error())
    });
    match effect {
        Effect::Continue if own => Action::Continue,
        Effect::Continue => {
            let _ = hostcalls::resume_http_request();
            Action::Continue
        }
        Effect::Respond(r) => {
            respond(&r);
            Action::Pause
        }
        Effect::Pause => Action::Pause,
    }
}

fn internal_error() -> Response {
    Response {
        status: 500,
        headers: vec![("content-type".into(), "application/json".into())],
        body: r#"{"error":{"code":500,"status":"Internal Server Error","message":"An internal server error occurred, please contact the system administrator"}}"#.into(),
    }
}

/// Answers the current stream with `r`. A host call that may re-enter the VM: only with the VM
/// state released.
fn respond(r: &Response) {
    let headers: Vec<(&str, &str)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let _ = hostcalls::send_http_response(u32::from(r.status), headers, Some(r.body.as_bytes()));
}

fn step(vm: &mut VmState, ctx: u32, engine: Rc<Engine>, eval: &mut Evaluation) -> Effect {
    loop {
        let mut host = EnvoyHost {
            clock: &mut vm.clock,
            keys: &mut vm.keys,
            native: &mut vm.native,
            metrics: &mut vm.metrics,
        };
        match eval.advance(&engine, &mut host, &mut vm.caches) {
            Step::Allow(allow) => {
                // The request as read says which headers are there: only managed headers the
                // client sent are listed for removal, and a header it did not send is added
                // rather than replaced (Envoy's replace first searches and removes). A name set
                // twice is replaced the second time, so the last value wins as before.
                let req = eval.request();
                for name in &allow.remove_headers {
                    if !allow.set_headers.iter().any(|(k, _)| k == name) {
                        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
                    }
                }
                for (i, (name, value)) in allow.set_headers.iter().enumerate() {
                    let fresh = req.header(name).is_none()
                        && !allow.set_headers[..i].iter().any(|(k, _)| k == name);
                    let _ = if fresh {
                        hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value)
                    } else {
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
                    };
                }
                debug!("portcullis: rule {:?} allowed the request", allow.rule_id);
                vm.metrics.allowed();
                return Effect::Continue;
            }
            Step::Deny(deny) => {
                debug!(
                    "portcullis: rule {:?} denied the request ({}): {}",
                    deny.rule_id, deny.reason, deny.message
                );
                vm.metrics.count("requests_denied", 1);
                vm.metrics.count(&format!("denied_{}", deny.reason), 1);
                return Effect::Respond(deny.response);
            }
            Step::Callout(callout) => match dispatch(&callout) {
                Ok(token) => {
                    vm.callouts.insert(token, CalloutOwner::Request(ctx));
                    vm.pending.insert(
                        ctx,
                        Pending {
                            engine,
                            eval: std::mem::replace(eval, Evaluation::new(Default::default())),
                            waiting: Waiting::Callout,
                        },
                    );
                    return Effect::Pause;
                }
                Err(why) => {
                    warn!(
                        "portcullis: call to {} failed to start: {why}",
                        callout.endpoint.url
                    );
                    vm.metrics.count("callout_failures", 1);
                    eval.callout_done(None);
                }
            },
            Step::WaitForBody { .. } => {
                // The body callbacks check the bound and hand the body over at its end; the
                // tick answers if not a byte of it comes.
                vm.pending.insert(
                    ctx,
                    Pending {
                        engine,
                        eval: std::mem::replace(eval, Evaluation::new(Default::default())),
                        waiting: Waiting::Body {
                            deadline_ms: Some(
                                vm.clock.now_ms().saturating_add(BODY_START_TIMEOUT_MS),
                            ),
                        },
                    },
                );
                return Effect::Pause;
            }
            Step::WaitForKeys { max_wait_ms } => {
                vm.pending.insert(
                    ctx,
                    Pending {
                        engine,
                        eval: std::mem::replace(eval, Evaluation::new(Default::default())),
                        waiting: Waiting::Keys {
                            deadline_ms: vm.clock.now_ms().saturating_add(max_wait_ms),
                        },
                    },
                );
                return Effect::Pause;
            }
        }
    }
}

fn dispatch(c: &Callout) -> Result<u32, String> {
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(c.headers.len() + 3);
    headers.push((":method", c.method));
    headers.push((":path", &c.endpoint.path));
    headers.push((":authority", &c.endpoint.authority));
    headers.extend(c.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let body = (!c.body.is_empty()).then_some(c.body.as_slice());
    hostcalls::dispatch_http_call(
        &c.endpoint.cluster,
        headers,
        body,
        vec![],
        Duration::from_millis(c.timeout_ms),
    )
    .map_err(|s| format!("{s:?} (is there a cluster named {:?}?)", c.endpoint.cluster))
}

/// What a body callback does with the chunk.
enum BodyEffect {
    /// The request was decided (or never paused): stream the body on.
    Pass,
    /// The decision is pending: Envoy keeps the body until it is made.
    Hold,
    TooLarge(usize),
    /// Envoy would not hand over the body it holds: refuse rather than authorize another one.
    Unreadable,
    /// The body was what the evaluation waited for.
    Resume(Box<Pending>),
}

/// A chunk of the request body arrived (`body_size` is all Envoy holds so far; `None` when the
/// trailers end the body and its size is whatever Envoy holds). While a request's decision is
/// pending its body is held, so the request cannot slip upstream before it is decided (a
/// `Continue` here would resume the paused headers); once decided it streams. Only a rule
/// whose authorizer reads the body gets it copied into the VM, up to that authorizer's bound.
pub fn on_request_body(ctx: u32, body_size: Option<usize>, end_of_stream: bool) -> Action {
    let effect = with_vm(|vm| {
        if vm.pending.is_empty() {
            return BodyEffect::Pass;
        }
        let Some(p) = vm.pending.get_mut(&ctx) else {
            return BodyEffect::Pass;
        };
        let Some(limit) = p.eval.wants_body(&p.engine) else {
            return BodyEffect::Hold;
        };
        if body_size.is_some_and(|n| n > limit) {
            vm.pending.remove(&ctx);
            return BodyEffect::TooLarge(limit);
        }
        if let Waiting::Body { deadline_ms } = &mut p.waiting {
            *deadline_ms = None;
        }
        if !end_of_stream {
            return BodyEffect::Hold;
        }
        let read = body_size.unwrap_or(limit.saturating_add(1));
        let body = match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, read) {
            Ok(body) => body.unwrap_or_default(),
            Err(_) => {
                vm.pending.remove(&ctx);
                return BodyEffect::Unreadable;
            }
        };
        // The authorizer must judge the very body the upstream gets, not a part of it.
        if body_size.is_some_and(|n| body.len() != n) {
            vm.pending.remove(&ctx);
            return BodyEffect::Unreadable;
        }
        if body.len() > limit {
            vm.pending.remove(&ctx);
            return BodyEffect::TooLarge(limit);
        }
        p.eval.body_received(body);
        if matches!(p.waiting, Waiting::Body { .. }) {
            return vm
                .pending
                .remove(&ctx)
                .map_or(BodyEffect::Hold, |p| BodyEffect::Resume(Box::new(p)));
        }
        BodyEffect::Hold
    })
    // Busy means re-entered mid-evaluation: holding is the safe answer.
    .unwrap_or(BodyEffect::Hold);
    match effect {
        BodyEffect::Pass => Action::Continue,
        BodyEffect::Hold => Action::Pause,
        BodyEffect::TooLarge(limit) => {
            with_vm(|vm| {
                vm.metrics.count("requests_denied", 1);
                vm.metrics.count("denied_request_body_too_large", 1);
            });
            respond(&portcullis_core::authz::body_too_large(limit));
            Action::Pause
        }
        BodyEffect::Unreadable => {
            warn!("portcullis: request {ctx}: the request body could not be read");
            with_vm(|vm| {
                vm.metrics.count("requests_denied", 1);
                vm.metrics.count("denied_request_body_unreadable", 1);
            });
            respond(&internal_error());
            Action::Pause
        }
        BodyEffect::Resume(p) => {
            let Pending { engine, eval, .. } = *p;
            drive(ctx, engine, eval, true)
        }
    }
}

/// Forgets a request whose stream ended.
pub fn forget(ctx: u32) {
    with_vm(|vm| {
        // Nearly always empty: skip hashing the id.
        if !vm.pending.is_empty() {
            vm.pending.remove(&ctx);
        }
    });
}

/// A dispatched call answered. Must run inside the callback, where the response is readable.
pub fn on_callout_response(token: u32, body_size: usize) {
    let owner = with_vm(|vm| vm.callouts.remove(&token)).flatten();
    let Some(owner) = owner else {
        return;
    };
    // Envoy reports transport failures as a response without `:status`.
    let raw = headers::read(MapType::HttpCallResponseHeaders).unwrap_or_default();
    let headers: Vec<(String, String)> = headers::entries(&raw)
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    let status = headers
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| v.parse::<u16>().ok());
    let body = if body_size > 0 {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    match owner {
        CalloutOwner::Request(ctx) => {
            let Some(pending) = with_vm(|vm| vm.pending.remove(&ctx)).flatten() else {
                return;
            };
            let Pending {
                engine, mut eval, ..
            } = pending;
            eval.callout_done(status.map(|status| CalloutResponse {
                status,
                headers,
                body,
            }));
            drive(ctx, engine, eval, false);
        }
        CalloutOwner::Jwks(url) => {
            let now = now_ms();
            let outcome = with_vm(|vm| {
                let outcome = vm.keys.fetched(&url, status.map(|s| (s, body)), now);
                match &outcome {
                    FetchOutcome::Updated => vm.metrics.count("jwks_fetches", 1),
                    FetchOutcome::Failed(_) => vm.metrics.count("jwks_fetch_failures", 1),
                    FetchOutcome::Unknown => {}
                }
                outcome
            });
            match outcome {
                Some(FetchOutcome::Failed(why)) => warn!(
                    "portcullis: fetching JWKS {url} failed: {why}; keeping the keys already known for at most jwks_max_stale"
                ),
                Some(FetchOutcome::Updated) => info!("portcullis: JWKS {url} refreshed"),
                _ => {}
            }
            wake_key_waiters(now, true);
        }
    }
}

/// The root context's tick: refresh keys, start due fetches, resume or time out waiting requests,
/// publish cache metrics.
pub fn tick() {
    // Also the refresh that keeps the requests' clock bounds fresh on an idle worker.
    let now = with_vm(|vm| vm.clock.now_ms()).unwrap_or_else(now_ms);
    let (changed, due) = with_vm(|vm| {
        let mut changed = vm.keys.sync_shared(now);
        for url in vm.keys.expire_stale(now) {
            warn!(
                "portcullis: JWKS {url} could not be refreshed for longer than jwks_max_stale; its keys are no longer trusted"
            );
            vm.metrics.count("jwks_expired", 1);
            changed = true;
        }
        (changed, vm.keys.due(now))
    })
    .unwrap_or((false, Vec::new()));
    for endpoint in due {
        let callout = Callout {
            endpoint: endpoint.clone(),
            method: "GET",
            headers: vec![("accept".into(), "application/json".into())],
            body: Vec::new(),
            timeout_ms: KeyStore::fetch_timeout_ms(),
        };
        match dispatch(&callout) {
            Ok(token) => {
                with_vm(|vm| {
                    vm.callouts
                        .insert(token, CalloutOwner::Jwks(endpoint.url.clone()))
                });
            }
            Err(why) => {
                warn!(
                    "portcullis: fetching JWKS {} failed to start: {why}",
                    endpoint.url
                );
                with_vm(|vm| {
                    vm.keys.dispatch_failed(&endpoint.url, now);
                    vm.metrics.count("jwks_fetch_failures", 1);
                });
            }
        }
    }
    wake_key_waiters(now, changed);
    expire_body_waiters(now);
    with_vm(|vm| {
        let s = vm.caches.stats();
        let r = vm.reported;
        for (name, now, before) in [
            ("jwt_cache_hits", s.jwt_hits, r.jwt_hits),
            ("jwt_cache_misses", s.jwt_misses, r.jwt_misses),
            (
                "introspection_cache_hits",
                s.introspection_hits,
                r.introspection_hits,
            ),
            (
                "introspection_cache_misses",
                s.introspection_misses,
                r.introspection_misses,
            ),
            ("id_token_cache_hits", s.id_token_hits, r.id_token_hits),
            (
                "id_token_cache_misses",
                s.id_token_misses,
                r.id_token_misses,
            ),
            (
                "client_credentials_cache_hits",
                s.client_credentials_hits,
                r.client_credentials_hits,
            ),
            (
                "client_credentials_cache_misses",
                s.client_credentials_misses,
                r.client_credentials_misses,
            ),
        ] {
            vm.metrics.count(name, now.saturating_sub(before));
        }
        vm.reported = s;
        vm.metrics.flush();
    });
}

/// Resumes requests waiting for keys: all of them when keys changed (or a fetch ended), and
/// those past their deadline in any case (they then fail per the rule's error handlers).
fn wake_key_waiters(now: u64, keys_changed: bool) {
    let ready: Vec<(u32, Pending)> = with_vm(|vm| {
        let ids: Vec<u32> = vm
            .pending
            .iter()
            .filter(|(_, p)| match p.waiting {
                Waiting::Keys { deadline_ms } => keys_changed || now >= deadline_ms,
                Waiting::Callout | Waiting::Body { .. } => false,
            })
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| vm.pending.remove(&id).map(|p| (id, p)))
            .collect()
    })
    .unwrap_or_default();
    for (ctx, p) in ready {
        let Pending {
            engine,
            mut eval,
            waiting,
        } = p;
        if let Waiting::Keys { deadline_ms } = waiting
            && now >= deadline_ms
        {
            eval.keys_timed_out();
        }
        drive(ctx, engine, eval, false);
    }
}

/// Answers the requests whose body did not start within [`BODY_START_TIMEOUT_MS`]: they must
/// neither reach the upstream undecided nor be authorized without their body.
fn expire_body_waiters(now: u64) {
    let expired: Vec<u32> = with_vm(|vm| {
        if vm.pending.is_empty() {
            return Vec::new();
        }
        let ids: Vec<u32> = vm
            .pending
            .iter()
            .filter(|(_, p)| {
                matches!(p.waiting, Waiting::Body { deadline_ms: Some(d) } if now >= d)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            vm.pending.remove(id);
            vm.metrics.count("requests_denied", 1);
            vm.metrics.count("denied_request_body_not_received", 1);
        }
        if !ids.is_empty() && !vm.warned_no_body {
            vm.warned_no_body = true;
            warn!(
                "portcullis: a request on a rule whose remote authorizer reads the body got no body within {BODY_START_TIMEOUT_MS} ms: a stalled client, or the Wasm plugin config lacks allow_on_headers_stop_iteration: true (then Envoy never passes the body to the filter)"
            );
        }
        ids
    })
    .unwrap_or_default();
    for ctx in expired {
        if hostcalls::set_effective_context(ctx).is_ok() {
            respond(&portcullis_core::authz::body_not_received(
                BODY_START_TIMEOUT_MS,
            ));
        }
    }
}
