//! The status page (`GET /`): server-rendered HTML with inline CSS, no script and no external
//! asset (gateways are often offline), refreshing itself every `REFRESH_S` seconds. L4, pure:
//! figures in, a string out. Invariants: everything a client controls (client ids, topics) is
//! escaped; every figure sits in an element with a `data-metric` attribute (named after its
//! Prometheus metric where there is one) so that tests and scrapers can find it; the page's
//! size is bounded (`STATUS_CLIENTS` clients, `STATUS_TOPICS` topics).

use std::fmt::Write as _;
use std::sync::Arc;

use super::metrics::{Snapshot, TOPIC_SAMPLE};
use super::{html_escape, STATUS_CLIENTS, STATUS_TOPICS};
use crate::broker::figures::Figures;

/// Seconds between two reloads of the page.
pub(crate) const REFRESH_S: u32 = 5;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
.sub{color:#666}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:.6em}\
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em .8em}\
.card b{display:block;font-size:1.5em;font-variant-numeric:tabular-nums}\
.card span{color:#666;font-size:.9em}table{border-collapse:collapse;background:#fff;min-width:50%}\
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}\
th{background:#f0f0f0}.off{color:#999}";

/// The whole page.
pub(crate) fn render(
    s: &Snapshot,
    f: &Figures,
    topics: &[(Arc<str>, u64)],
    (rate_in, rate_out): (f64, f64),
) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>brokerd status</title><style>{STYLE}</style></head><body>\
<h1>brokerd <span data-metric=\"version\">{}</span></h1>\
<div class=\"sub\">up <span data-metric=\"brokerd_uptime_seconds\">{}</span> s \
({}) · refreshes every {REFRESH_S} s · read-only</div>",
        env!("CARGO_PKG_VERSION"),
        s.uptime_s as u64,
        human_duration(s.uptime_s as u64),
    );
    o.push_str("<h2>Now</h2><div class=\"grid\">");
    let mut card = |metric: &str, value: String, label: &str| {
        let _ = write!(
            o,
            "<div class=\"card\"><b data-metric=\"{metric}\">{value}</b><span>{label}</span></div>"
        );
    };
    card(
        "brokerd_connections",
        s.connected.to_string(),
        "clients connected",
    );
    card(
        "brokerd_connections_max",
        s.connected_max.to_string(),
        "most connected at once",
    );
    card("brokerd_sessions", s.sessions.to_string(), "sessions");
    card(
        "brokerd_subscriptions",
        s.subscriptions.to_string(),
        "subscriptions",
    );
    card(
        "brokerd_retained_messages",
        s.retained.to_string(),
        "retained messages",
    );
    card(
        "brokerd_queued_messages",
        s.queued_messages.to_string(),
        "messages queued",
    );
    card(
        "brokerd_inflight_messages",
        s.inflight.to_string(),
        "messages in flight",
    );
    card(
        "rate_received_per_second",
        format!("{rate_in:.1}"),
        "PUBLISH received / s (since the last view)",
    );
    card(
        "rate_sent_per_second",
        format!("{rate_out:.1}"),
        "PUBLISH sent / s (since the last view)",
    );
    o.push_str("</div><h2>Since start</h2><div class=\"grid\">");
    let mut card = |metric: &str, value: String, label: &str| {
        let _ = write!(
            o,
            "<div class=\"card\"><b data-metric=\"{metric}\">{value}</b><span>{label}</span></div>"
        );
    };
    card(
        "brokerd_publish_received_total",
        s.publish_in_total().to_string(),
        "PUBLISH received",
    );
    card(
        "brokerd_publish_sent_total",
        s.publish_out_total().to_string(),
        "PUBLISH sent",
    );
    card(
        "brokerd_received_bytes_total",
        s.bytes_in.to_string(),
        "bytes received",
    );
    card(
        "brokerd_sent_bytes_total",
        s.bytes_out.to_string(),
        "bytes sent",
    );
    card(
        "brokerd_messages_dropped_total",
        s.dropped.iter().map(|(_, n)| n).sum::<u64>().to_string(),
        "messages dropped",
    );
    card(
        "brokerd_connections_accepted_total",
        s.connects.to_string(),
        "connects accepted",
    );
    card(
        "brokerd_auth_failures_total",
        s.auth_failures.to_string(),
        "authentication failures",
    );
    card(
        "brokerd_resident_memory_bytes",
        s.resident_bytes.to_string(),
        "resident memory (bytes)",
    );
    let _ = write!(
        o,
        "</div><h2>Clients by queue depth</h2><p class=\"sub\">The {} sessions with the most \
queued messages, of <span data-metric=\"brokerd_sessions\">{}</span>.</p>\
<table data-table=\"clients\"><tr><th>client id</th><th>state</th><th>queued</th>\
<th>queued bytes</th><th>in flight</th></tr>",
        STATUS_CLIENTS, s.sessions
    );
    for c in &f.top_clients {
        let _ = write!(
            o,
            "<tr data-client=\"{id}\"><td>{id}</td><td{off}>{state}</td>\
<td class=\"n\" data-metric=\"queued\">{}</td><td class=\"n\" data-metric=\"queued_bytes\">{}</td>\
<td class=\"n\" data-metric=\"inflight\">{}</td></tr>",
            c.queued,
            c.queued_bytes,
            c.inflight,
            id = html_escape(&c.client_id),
            off = if c.connected { "" } else { " class=\"off\"" },
            state = if c.connected { "connected" } else { "offline" },
        );
    }
    let _ = write!(
        o,
        "</table><h2>Top topics</h2><p class=\"sub\">The {STATUS_TOPICS} busiest topics by \
PUBLISH received, estimated: one publish in {TOPIC_SAMPLE} is sampled into a bounded \
sketch, so counts are approximate (and over-estimated for the last rows).</p>\
<table data-table=\"topics\"><tr><th>topic</th><th>≈ publishes</th></tr>"
    );
    for (t, n) in topics {
        let _ = write!(
            o,
            "<tr data-topic=\"{t}\"><td>{t}</td><td class=\"n\" data-metric=\"topic_publishes\">{n}</td></tr>",
            t = html_escape(t)
        );
    }
    o.push_str("</table><p class=\"sub\">Machine-readable: <a href=\"/metrics\">/metrics</a> · <a href=\"/healthz\">/healthz</a> · <a href=\"/readyz\">/readyz</a></p></body></html>\n");
    o
}

/// "3d 4h 5m 6s" style.
fn human_duration(mut s: u64) -> String {
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s >= len {
            let _ = write!(out, "{}{unit} ", s / len);
            s %= len;
        }
    }
    let _ = write!(out, "{s}s");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::figures::ClientFigures;

    /// issue #10 item 3: the page escapes what clients control and bounds nothing it should
    /// not: a hostile client id and topic come out as text.
    #[test]
    fn page_escapes_client_ids_and_topics() {
        let f = Figures {
            top_clients: vec![ClientFigures {
                client_id: "<b>x</b>".into(),
                connected: true,
                queued: 3,
                queued_bytes: 30,
                inflight: 1,
            }],
            ..Figures::default()
        };
        let topics = vec![(Arc::from("a/<script>"), 16)];
        let page = render(&Snapshot::default(), &f, &topics, (0.0, 0.0));
        assert!(!page.contains("<b>x</b>") && !page.contains("<script>"));
        assert!(page.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(page.contains("http-equiv=\"refresh\""));
        assert!(!page.contains("http://") && !page.contains("https://"));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(90_061), "1d 1h 1m 1s");
    }
}
