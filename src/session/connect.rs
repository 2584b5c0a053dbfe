//! The CONNECT phase of a connection: the first packet under a timeout, its validation, the
//! CONNACK, and attaching the session. L3: codec, broker. Invariant: a refused client gets its
//! CONNACK return code (or nothing, for a malformed CONNECT) and nothing else is processed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Span};

use super::authorize::Refusal;
use super::io::{Io, ReadError};
use super::{ConnContext, Connection};
use crate::admin::metrics::Refused;
use crate::error::ProtocolError;
use crate::limits::log_fold::{folded, Kind};
use crate::protocol::codec::{self, Connect, Packet};
use crate::store::AckPolicy;
use crate::topic::{has_forbidden_char, ClientId};
use crate::transport::{Ending, PeerIdentity, Transport};

/// CONNACK return codes ([MQTT-3.2.2]).
mod connack {
    pub(super) const ACCEPTED: u8 = 0x00;
    pub(super) const BAD_PROTOCOL_LEVEL: u8 = 0x01;
    pub(super) const IDENTIFIER_REJECTED: u8 = 0x02;
    pub(super) const SERVER_UNAVAILABLE: u8 = 0x03;
    pub(super) const BAD_USERNAME_OR_PASSWORD: u8 = 0x04;
    pub(super) const NOT_AUTHORIZED: u8 = 0x05;
}

/// Reads CONNECT (by `deadline`: `limits.connect_timeout_ms` after the accept), validates it,
/// answers CONNACK and attaches the session. `None` when the connection ends here. `peer` is
/// the client's address; `identity` is what the transport vouches for (a TLS client
/// certificate's CN).
pub(super) async fn handshake<T: Transport>(
    transport: T,
    peer: SocketAddr,
    identity: Option<PeerIdentity>,
    deadline: Instant,
    ctx: Arc<ConnContext>,
    shutdown: CancellationToken,
) -> Option<Connection<T>> {
    let (ctx, shutdown) = (&ctx, &shutdown);
    let mut io = Io::new(transport, ctx.limits.bounds.max_packet_size());
    let first = tokio::select! {
        _ = shutdown.cancelled() => {
            refused(&mut io, Ending::GoingAway).await;
            return None;
        }
        r = timeout_at(deadline, io.read_packet()) => r,
    };
    // Above limits.max_conn_log_lines_per_s, these lines are folded into a summary.
    let log = &ctx.limits.log;
    let connect = match first {
        Err(_) => {
            folded!(
                log,
                Kind::Disconnected,
                info,
                "closed: no CONNECT within limits.connect_timeout_ms"
            );
            refused(&mut io, Ending::PolicyViolation).await;
            return None;
        }
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(Some(_))) => {
            folded!(
                log,
                Kind::ProtocolError,
                warn,
                "[MQTT-3.1.0-1] first packet is not CONNECT: closing"
            );
            refused(&mut io, Ending::ProtocolError).await;
            return None;
        }
        Ok(Ok(None)) => {
            debug!("closed before CONNECT");
            return None;
        }
        Ok(Err(ReadError::Protocol(ProtocolError::UnsupportedProtocolLevel(level)))) => {
            // [MQTT-3.1.2-2] unsupported level: CONNACK 0x01, then close.
            folded!(
                log,
                Kind::ProtocolError,
                warn,
                level,
                "[MQTT-3.1.2-2] unsupported protocol level: refused"
            );
            ctx.metrics.refused(Refused::ProtocolVersion);
            codec::encode_connack(&mut io.wbuf, false, connack::BAD_PROTOCOL_LEVEL);
            refused(&mut io, Ending::ProtocolError).await;
            return None;
        }
        Ok(Err(ReadError::Protocol(e))) => {
            folded!(log, Kind::ProtocolError, warn, error = %e, "protocol violation before CONNECT: closing");
            refused(&mut io, Ending::ProtocolError).await;
            return None;
        }
        Ok(Err(ReadError::Io(e))) => {
            debug!(error = %e, "socket error before CONNECT");
            return None;
        }
    };
    accept_connect(io, connect, peer, identity, ctx, shutdown).await
}

/// Ends a connection refused before its session loop: what is buffered (a refusing CONNACK)
/// goes out (within 1 s), then the transport's own close says `why` (a WebSocket close frame).
async fn refused<T: Transport>(io: &mut Io<T>, why: Ending) {
    if io.has_output() {
        let _ = timeout(Duration::from_secs(1), io.flush_all()).await;
    }
    io.transport.end(why);
    io.transport.close().await;
}

/// Validates CONNECT, answers CONNACK and attaches the session. `None` if refused.
async fn accept_connect<T: Transport>(
    mut io: Io<T>,
    mut c: Connect,
    peer: SocketAddr,
    identity: Option<PeerIdentity>,
    ctx: &Arc<ConnContext>,
    shutdown: &CancellationToken,
) -> Option<Connection<T>> {
    let refuse = |io: &mut Io<T>, code: u8| {
        if let Some(why) = Refused::from_connack(code) {
            ctx.metrics.refused(why);
        }
        codec::encode_connack(&mut io.wbuf, false, code)
    };
    // Above limits.max_conn_log_lines_per_s, these lines are folded into a summary.
    let log = &ctx.limits.log;
    // [MQTT-3.1.3-6, -8] an empty client id is assigned one only with CleanSession=1, and only
    // in 3.1.1: MQTT 3.1 requires an id, so Mosquitto answers 0x02 there too.
    let client_id: ClientId = if c.client_id.is_empty() {
        if c.protocol_level == 3 {
            folded!(
                log,
                Kind::Refused,
                info,
                "empty client id in MQTT 3.1 (MQIsdp): refused (0x02)"
            );
            refuse(&mut io, connack::IDENTIFIER_REJECTED);
            refused(&mut io, Ending::Normal).await;
            return None;
        }
        if !c.clean_session {
            folded!(
                log,
                Kind::Refused,
                info,
                "[MQTT-3.1.3-8] empty client id with CleanSession=0: refused (0x02)"
            );
            refuse(&mut io, connack::IDENTIFIER_REJECTED);
            refused(&mut io, Ending::Normal).await;
            return None;
        }
        assign_client_id().into()
    } else if c.client_id.starts_with("$bridge/") {
        // Issue #11: the journals of our own bridges; a client taking one over would stop it.
        folded!(
            log,
            Kind::Refused,
            warn,
            "client id in $bridge/ (reserved for bridge journals): refused (0x02)"
        );
        refuse(&mut io, connack::IDENTIFIER_REJECTED);
        refused(&mut io, Ending::PolicyViolation).await;
        return None;
    } else {
        debug_assert!(!has_forbidden_char(&c.client_id));
        c.client_id.as_str().into()
    };
    Span::current().record("client_id", &*client_id);
    // use_identity_as_username (as Mosquitto): the verified certificate is the credential and
    // its CN the username, which the ACL sees; the CONNECT's username and password are not
    // used and no password is checked. Otherwise the login decides the CONNECT's credentials.
    let username = match identity {
        Some(PeerIdentity::CertificateCn(cn)) => Some(cn),
        Some(PeerIdentity::Unusable) => {
            folded!(
                log,
                Kind::Refused,
                warn,
                "client certificate has no CN usable as a username (tls.use_identity_as_username): refused (0x04)"
            );
            refuse(&mut io, connack::BAD_USERNAME_OR_PASSWORD);
            refused(&mut io, Ending::PolicyViolation).await;
            return None;
        }
        None => {
            // [MQTT-3.2.2-4, -5] a refused client gets its code; nothing else is processed, no
            // will.
            let login = ctx.authorizer.login(
                Some(peer.ip()),
                &c,
                ctx.limits.bounds.connect_timeout(),
                shutdown,
                log,
            );
            if let Err(refusal) = login.await {
                if let Some(r) = refusal {
                    refuse(
                        &mut io,
                        match r {
                            Refusal::NotAuthorized => connack::NOT_AUTHORIZED,
                            Refusal::Unavailable => connack::SERVER_UNAVAILABLE,
                        },
                    );
                    refused(&mut io, Ending::PolicyViolation).await;
                }
                return None;
            }
            c.username.take()
        }
    };
    let acl = ctx.authorizer.session_acl(&client_id, username.as_deref());
    let will = c
        .will
        .filter(|w| acl.as_ref().is_none_or(|a| a.may_publish_will(&w.topic)));
    let keep_alive = effective_keep_alive(c.keep_alive, ctx.limits.bounds.max_keepalive_s());
    let store = ctx.broker.store();
    let attached = ctx.broker.attach(&client_id, c.clean_session, keep_alive);
    // Issue #11 item 3: a Mosquitto bridge (level 0x83/0x84) gets no echo, RETAIN as published.
    attached
        .session
        .bridge
        .store(c.bridge, std::sync::atomic::Ordering::Relaxed);
    if let Some(acl) = &acl {
        let dropped = attached
            .session
            .set_read_gate(acl.clone(), ctx.broker.limits(), store);
        if dropped > 0 {
            info!(
                dropped,
                "queued messages this client may not read were dropped"
            );
        }
    }
    // sync = "always": CONNACK reveals the session (created, resumed with what its previous
    // connection changed, or discarded), and resumed in-flight messages are re-sent right
    // after it; all of that is on disk first.
    if store.ack_policy() == AckPolicy::Durable && (attached.stored || !c.clean_session) {
        let after = store.last_ticket();
        let durable = tokio::select! {
            r = timeout(ctx.limits.bounds.connect_timeout(), store.durable(after)) => r.is_ok(),
            _ = shutdown.cancelled() => false,
        };
        if !durable {
            warn!("session state not on disk within limits.connect_timeout_ms (disk full or failing?): closed without CONNACK");
            ctx.broker.detach(&attached.session, attached.conn_id);
            refused(&mut io, Ending::InternalError).await;
            return None;
        }
    }
    // [MQTT-3.2.2-1] Session Present is 0 for a clean session (attach never resumes one).
    codec::encode_connack(&mut io.wbuf, attached.session_present, connack::ACCEPTED);
    folded!(
        log,
        Kind::Connected,
        info,
        username = username.as_deref().map(tracing::field::display),
        clean_session = c.clean_session,
        keep_alive_s = keep_alive.map_or(0, |d| d.as_secs()),
        session_present = attached.session_present,
        protocol_level = c.protocol_level,
        bridge = c.bridge,
        "client connected"
    );
    let mut conn = Connection {
        ctx: ctx.clone(),
        io,
        session: attached.session,
        conn_id: attached.conn_id,
        client_id,
        will: will.map(Box::new),
        acl,
        pending_drain: true,
        batch: Vec::new(),
        ctl: attached.ctl,
        flushed: match store.ack_policy() {
            AckPolicy::Immediate => None,
            AckPolicy::Durable | AckPolicy::Bounded { .. } => store.flushed(),
        },
        pending_acks: VecDeque::new(),
        pending_subacks: 0,
        persisted: !c.clean_session && ctx.broker.store().enabled(),
        limiter: ctx.limits.publish_limiter(),
    };
    ctx.metrics.connected(); // undone in `Connection::finish`
                             // [MQTT-4.4.0-1] re-send unacknowledged messages first, with DUP and their original ids.
    conn.resend_inflight();
    Some(conn)
}

/// [MQTT-3.1.2-24] keep-alive 0 is off; the configured cap applies (an off keep-alive is
/// capped too when a cap is set).
fn effective_keep_alive(requested: u16, max: u16) -> Option<Duration> {
    let secs = match requested {
        0 if max == u16::MAX => return None,
        0 => max,
        s => s.min(max),
    };
    Some(Duration::from_secs(u64::from(secs)))
}

/// A unique id for a client that sent none ([MQTT-3.1.3-6]).
fn assign_client_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("auto-{:x}-{n:x}", t & 0xffff_ffff_ffff)
}
