//! Operating the broker from outside: the admin HTTP port (`http`), what it answers (here),
//! and its state. L4: reads the broker's figures, never changes broker state. Invariants: the
//! admin port is up before the persisted state loads (so `/healthz` answers during a long load
//! and `/readyz` says 503 until the listeners are bound), and it stops with the broker.

pub(crate) mod http;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::Config;
use http::{HttpStats, Response, Routes};

/// What the admin port answers from.
pub(crate) struct Admin {
    /// Set once the listeners are bound and the store is loaded.
    ready: AtomicBool,
    pub(crate) http_stats: Arc<HttpStats>,
}

impl Admin {
    pub(crate) fn new() -> Admin {
        Admin {
            ready: AtomicBool::new(false),
            http_stats: Arc::new(HttpStats::default()),
        }
    }

    /// The broker accepts connections from now on.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

impl Routes for Admin {
    fn route(&self, path: &str) -> Response {
        match path {
            "/healthz" => Response::text(200, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Acquire) => Response::text(200, "ready\n"),
            "/readyz" => Response::text(503, "starting: listeners not bound or store not loaded\n"),
            _ => Response::text(404, "not found (try /, /metrics, /healthz, /readyz)\n"),
        }
    }
}

/// The running admin port.
pub(crate) struct AdminServer {
    pub(crate) admin: Arc<Admin>,
    pub(crate) addr: SocketAddr,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl AdminServer {
    /// Binds `[http] bind` and serves it (None when `[http] enabled = false`).
    pub(crate) async fn start(config: &Config) -> Result<Option<AdminServer>, crate::Error> {
        if !config.http.enabled {
            return Ok(None);
        }
        let addr = config.http_bind_addr();
        let bind_error = |error| crate::Error::Bind { addr, error };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let admin = Arc::new(Admin::new());
        let (token, tracker) = (CancellationToken::new(), TaskTracker::new());
        tracker.spawn(http::serve(
            listener,
            admin.clone(),
            admin.http_stats.clone(),
            token.clone(),
            tracker.clone(),
        ));
        info!(%addr, "listening (http admin)");
        Ok(Some(AdminServer {
            admin,
            addr,
            token,
            tracker,
        }))
    }

    /// Stops accepting and ends every admin connection.
    pub(crate) async fn stop(self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue #10 item 3: /readyz is 503 until the broker says it is ready, /healthz always 200.
    #[test]
    fn readyz_turns_200_only_when_ready() {
        let admin = Admin::new();
        assert_eq!(admin.route("/healthz").status, 200);
        assert_eq!(admin.route("/readyz").status, 503);
        admin.set_ready();
        assert_eq!(admin.route("/readyz").status, 200);
        assert_eq!(admin.route("/nope").status, 404);
    }
}
