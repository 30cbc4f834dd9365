//! Accepting and serving HTTP/1 connections under limits. `axum::serve` has no timeouts and no
//! cap: partial headers or bodies were held for minutes, and 200 slow connections on the public
//! port exhausted file descriptors and took the admin port (introspection, readiness) down too.
//!
//! - Each port has its own accept loop and connection cap ([`Limits::max_connections`]); at the
//!   cap a loop stops accepting (new connections wait in the kernel backlog) instead of failing,
//!   so a flood of the public port never touches the admin port's budget.
//! - The caps fit under the process's file-descriptor limit with headroom for the database,
//!   outbound fetches and the Kubernetes client ([`fit_to_fd_limit`]).
//! - Request headers must arrive within [`Limits::header_timeout`] (hyper closes the
//!   connection), bodies within [`Limits::body_timeout`] (`deadline_body`, answered 408).

use crate::metrics::Metrics;
use crate::oauth2_error::{ErrorCode, OAuth2Error};
use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Frame;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// File descriptors kept free of connections: the SQLite files, outbound `jwks_uri` fetches,
/// the Kubernetes client, the ECDS writer, logs.
pub const FD_HEADROOM: u64 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

/// Raises the soft file-descriptor limit to the hard one and, if the two caps plus
/// [`FD_HEADROOM`] still do not fit, lowers the public cap (the admin port keeps its own).
/// Returns the public cap to use.
pub fn fit_to_fd_limit(public: usize, admin: usize) -> usize {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let mut lim = getrlimit(Resource::Nofile);
        if lim.current < lim.maximum {
            let raised = Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                lim = raised;
            }
        }
        let Some(soft) = lim.current else {
            return public;
        };
        let admin = u64::try_from(admin).unwrap_or(u64::MAX);
        let room = soft.saturating_sub(FD_HEADROOM).saturating_sub(admin);
        let fitted = usize::try_from(room).unwrap_or(usize::MAX).max(1);
        if fitted < public {
            tracing::warn!(
                requested = public,
                fitted,
                fd_limit = soft,
                "--max-connections lowered to fit the file-descriptor limit"
            );
            return fitted;
        }
        public
    }
    #[cfg(not(unix))]
    {
        let _ = admin;
        public
    }
}

/// Serves `app` on `listener` until `stop` turns true, then lets open connections finish
/// (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    server: &'static str,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let app = app.layer(axum::middleware::from_fn_with_state(
        limits.body_timeout,
        deadline_body,
    ));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p.map_err(std::io::Error::other)?,
            () = stopped(&mut stop) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: back off briefly
                    // instead of spinning on the error.
                    tracing::warn!(server, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        let metrics = Arc::clone(&metrics);
        metrics.connections(server, 1);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(server, error = %e, "connection ended with an error");
            }
            metrics.connections(server, -1);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here.
    let _ = stop.wait_for(|s| *s).await;
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimeout;

/// A request body that fails once `deadline` has passed (and says so in `expired`).
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Gives the request body `timeout` from now; a handler whose body read failed because of it
/// answers 408 whatever its own error said.
async fn deadline_body(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    req: Request,
    next: Next,
) -> Response {
    // Requests without a body (GETs, health probes) need no timer.
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let expired = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = Body::new(DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(timeout)),
        expired: Arc::clone(&expired),
    });
    let resp = next.run(Request::from_parts(parts, body)).await;
    if expired.load(Ordering::Relaxed) {
        let mut resp = OAuth2Error::new(
            ErrorCode::RequestTimeout,
            "The request body did not arrive in time.",
        )
        .into_response();
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return resp;
    }
    resp
}
