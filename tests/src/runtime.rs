//! One tokio runtime per test process for the in-process servers, so tests themselves stay
//! synchronous (`#[test]`, blocking client) and servers outlive no test: each is shut down when
//! its handle drops.

use std::sync::OnceLock;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The shared runtime (2 worker threads: the machine is small and servers are light).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-servers")
            .enable_all()
            .build()
            .expect("building the harness tokio runtime")
    })
}

/// A server running on the shared runtime; stops when dropped.
pub struct ServerHandle {
    pub port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ServerHandle {
    /// Binds `127.0.0.1:port` (0 = any) and serves `router` until the handle drops.
    pub fn serve(router: axum::Router, port: u16) -> std::io::Result<Self> {
        let rt = runtime();
        let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))?;
        let port = listener.local_addr()?.port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self {
            port,
            shutdown: Some(tx),
        })
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
