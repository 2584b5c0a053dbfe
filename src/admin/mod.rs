//! Operating the broker from outside: the admin HTTP port (`http`) and what it answers (here:
//! `/healthz`, `/readyz`, `/metrics` from `metrics` and `bridges`, `/` from `status`), and the `$SYS`
//! publisher (`sys`). L4: reads the broker's figures, never changes broker state; `$SYS` goes
//! through `Broker::publish` like any client's message. `metrics` alone is L0 (counters every
//! layer bumps). Invariants: the admin port is up before the persisted state loads (so
//! `/healthz` answers during a long load and `/readyz` says 503 until the listeners are
//! bound), and it stops with the broker.

pub(crate) mod bridges;
pub(crate) mod http;
pub(crate) mod metrics;
mod status;
pub(crate) mod sys;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::broker::figures::Figures;
use crate::broker::Broker;
use crate::config::Config;
use http::{HttpStats, Response, Routes};
use metrics::{Metrics, Snapshot};

/// Clients listed on the status page (the deepest queues).
pub(crate) const STATUS_CLIENTS: usize = 20;
/// Topics listed on the status page.
pub(crate) const STATUS_TOPICS: usize = 10;

/// Where the figures come from, once the broker exists.
pub(crate) struct Sources {
    pub(crate) broker: Broker,
    pub(crate) metrics: Arc<Metrics>,
    /// The running bridges (issue #11 item 4), read at each snapshot.
    pub(crate) bridges: Vec<crate::bridge::BridgeHandle>,
}

impl Sources {
    /// Every figure at (nearly) one moment: the counters, then the broker's totals.
    pub(crate) fn snapshot(&self, top_clients: usize) -> (Snapshot, Figures) {
        let mut s = Snapshot::read(&self.metrics);
        let f = self.broker.figures(top_clients);
        s.sessions = f.sessions as u64;
        s.subscriptions = f.subscriptions as u64;
        s.retained = f.retained as u64;
        s.queued_messages = f.queued as u64;
        s.queued_bytes = f.queued_bytes as u64;
        s.inflight = f.inflight as u64;
        s.routed = f.routed;
        s.dropped = f.dropped.clone();
        s.dead_letters = f.dead_letters.clone();
        s.dead_letters_dropped = f.dead_letters_dropped.clone();
        s.share_groups = f.share_groups as u64;
        s.share_members = f.share_members as u64;
        s.shared_handed_over = f.shared_handed_over;
        s.bridges = self.bridges.iter().map(|b| b.figures()).collect();
        (s, f)
    }
}

/// What the admin port answers from.
pub(crate) struct Admin {
    /// Set once the listeners are bound and the store is loaded.
    ready: AtomicBool,
    sources: OnceLock<Sources>,
    /// The previous status page's counters, for its rates: (when, received, sent).
    last_page: Mutex<Option<(Instant, u64, u64)>>,
    pub(crate) http_stats: Arc<HttpStats>,
}

impl Admin {
    pub(crate) fn new() -> Admin {
        Admin {
            ready: AtomicBool::new(false),
            sources: OnceLock::new(),
            last_page: Mutex::new(None),
            http_stats: Arc::new(HttpStats::default()),
        }
    }

    /// The broker accepts connections from now on; its figures come from `sources`.
    pub(crate) fn set_ready(&self, sources: Sources) {
        let _ = self.sources.set(sources);
        self.ready.store(true, Ordering::Release);
    }

    fn metrics_page(&self, src: &Sources) -> Response {
        let (snap, _) = src.snapshot(0);
        let mut body = snap.render(src.broker.store().flush_latency());
        body.push_str(&self.http_metrics());
        Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: body.into_bytes(),
        }
    }

    fn http_metrics(&self) -> String {
        let s = &self.http_stats;
        format!(
            "# HELP brokerd_http_requests_total Admin HTTP requests routed (GET and HEAD).\n# TYPE brokerd_http_requests_total counter\nbrokerd_http_requests_total {}\n# HELP brokerd_http_rejected_total Admin HTTP requests refused before routing (bad request, too large, too slow, too many connections).\n# TYPE brokerd_http_rejected_total counter\nbrokerd_http_rejected_total {}\n",
            s.requests.load(Ordering::Relaxed),
            s.rejected.load(Ordering::Relaxed)
        )
    }

    fn status_page(&self, src: &Sources) -> Response {
        let (snap, figures) = src.snapshot(STATUS_CLIENTS);
        let topics = src.metrics.top_topics.top(STATUS_TOPICS);
        let now = Instant::now();
        let (rin, rout) = (snap.publish_in_total(), snap.publish_out_total());
        let rates = {
            let mut last = self.last_page.lock().unwrap_or_else(|p| p.into_inner());
            let since_start = now.checked_sub(metrics_uptime(&snap)).unwrap_or(now);
            let (t0, in0, out0) = last.unwrap_or((since_start, 0, 0));
            *last = Some((now, rin, rout));
            let dt = now.duration_since(t0).as_secs_f64().max(0.001);
            (
                rin.saturating_sub(in0) as f64 / dt,
                rout.saturating_sub(out0) as f64 / dt,
            )
        };
        Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: status::render(&snap, &figures, &topics, rates).into_bytes(),
        }
    }
}

fn metrics_uptime(s: &Snapshot) -> std::time::Duration {
    std::time::Duration::from_secs_f64(s.uptime_s)
}

impl Routes for Admin {
    fn route(&self, path: &str) -> Response {
        let starting =
            || Response::text(503, "starting: listeners not bound or store not loaded\n");
        match path {
            "/healthz" => Response::text(200, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Acquire) => Response::text(200, "ready\n"),
            "/readyz" => starting(),
            "/metrics" => match self.sources.get() {
                Some(src) => self.metrics_page(src),
                None => starting(),
            },
            "/" | "/index.html" => match self.sources.get() {
                Some(src) => self.status_page(src),
                None => starting(),
            },
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

/// Escapes text for HTML element content and attribute values.
pub(crate) fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue #10 item 3: /readyz is 503 until the broker says it is ready, /healthz always 200;
    /// /metrics and / wait for the broker too.
    #[test]
    fn readyz_turns_200_only_when_ready() {
        let admin = Admin::new();
        assert_eq!(admin.route("/healthz").status, 200);
        assert_eq!(admin.route("/readyz").status, 503);
        assert_eq!(admin.route("/metrics").status, 503);
        let config = Config::default();
        admin.set_ready(Sources {
            broker: Broker::new(&config, crate::store::Store::disabled()),
            metrics: Arc::new(Metrics::new()),
            bridges: Vec::new(),
        });
        assert_eq!(admin.route("/readyz").status, 200);
        assert_eq!(admin.route("/metrics").status, 200);
        assert_eq!(admin.route("/").status, 200);
        assert_eq!(admin.route("/nope").status, 404);
    }

    /// issue #10 item 3: client ids and topics on the status page cannot inject markup.
    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape("<script>\"a\"&'b'\u{7}"),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;\u{FFFD}"
        );
    }
}
