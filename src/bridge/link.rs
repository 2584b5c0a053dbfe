//! One bridge's task: connects to the remote (addresses in order, then round robin, with
//! backoff), forwards its journal session's queue in order through an in-flight window, and
//! publishes what the remote sends for `in` rules through `Broker::publish`. L4.
//! Invariants: the packet id on the remote is the journal's in-flight id (one mapping, kept
//! across reconnects and restarts: unacknowledged messages are re-sent with DUP=1 under the
//! same id); a journaled message is removed only on the remote's PUBACK/PUBCOMP; what the
//! remote sent is acknowledged only once its local effects are durable (as for a session).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqttbytes::v4::Packet as Remote;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::wire::{self, ConnectFields};
use super::BridgeStats;
use crate::broker::queue::{AckOutcome, InflightState, Outbound};
use crate::broker::registry::{ConnCtl, Session};
use crate::broker::{Attached, Broker};
use crate::config::{BridgeConfig, TopicRule};
use crate::message::{Message, QoS};
use crate::protocol::codec;
use crate::store::{AckPolicy, Op, StoredState};
use crate::topic::{ClientId, TopicName};
use crate::transport::{Tcp, TlsClient, Transport};

/// Above this many bytes waiting for the remote's socket, stop taking from the journal and
/// stop reading the remote (its acknowledgements would only pile up behind).
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Bytes read from the remote per turn, so one turn stays bounded.
const READ_CHUNK: usize = 64 * 1024;
/// Messages moved from the journal per turn.
const DRAIN_MESSAGES: usize = 256;
/// Packets waiting for the disk before the remote is no longer read.
const MAX_PENDING: usize = 4096;
/// TCP connect and CONNACK must complete within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection to the remote ended.
#[derive(Debug)]
enum End {
    Shutdown,
    Closed,
    Io(std::io::Error),
    KeepAlive,
    Protocol(String),
    /// A local client took the journal session's client id.
    TakenOver,
}

pub(super) struct Link {
    cfg: BridgeConfig,
    rules: Vec<TopicRule>,
    broker: Broker,
    session: Arc<Session>,
    conn_id: u64,
    ctl: Arc<ConnCtl>,
    client_id: ClientId,
    stats: Arc<BridgeStats>,
    persisted: bool,
    state_topic: Option<TopicName>,
    /// `limits.max_packet_size`, also for packets from the remote.
    max_packet_size: usize,
    /// TLS to the remote, when `ca_file` is set.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// The byte stream to the remote: plain TCP or TLS, both driven as the session loop drives
/// its `Transport` (readiness, then reads and writes that never wait).
enum Stream {
    Tcp(Tcp),
    Tls(Box<TlsClient>),
}

impl Stream {
    async fn ready(&self, interest: Interest) -> std::io::Result<tokio::io::Ready> {
        match self {
            Stream::Tcp(t) => t.ready(interest).await,
            Stream::Tls(t) => t.ready(interest).await,
        }
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(t) => t.try_read_buf(buf),
            Stream::Tls(t) => t.try_read_buf(buf),
        }
    }

    /// Writes from the front of `buf` (and flushes TLS records); returns how much was taken.
    fn try_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = match self {
            Stream::Tcp(t) => t.try_write(buf),
            Stream::Tls(t) => t.try_write(buf),
        };
        match n {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    fn try_flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(t) => t.try_flush(),
            Stream::Tls(t) => t.try_flush(),
        }
    }

    fn has_buffered_output(&self) -> bool {
        match self {
            Stream::Tcp(t) => t.has_buffered_output(),
            Stream::Tls(t) => t.has_buffered_output(),
        }
    }

    /// Writes all of `buf`, waiting for the socket (the handshake and the final DISCONNECT).
    async fn write_all(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() || self.has_buffered_output() {
            self.ready(Interest::WRITABLE).await?;
            if buf.is_empty() {
                self.try_flush()?;
            } else {
                let n = self.try_write(buf)?;
                buf = &buf[n..];
            }
        }
        Ok(())
    }
}

/// One connection to the remote.
struct Conn {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    last_in: Instant,
    last_out: Instant,
    /// Encoded packets waiting for their store ticket to be durable, in order.
    pending: VecDeque<(u64, Bytes)>,
    flushed: Option<watch::Receiver<u64>>,
    drain: bool,
}

impl Link {
    pub(super) fn new(
        cfg: BridgeConfig,
        broker: Broker,
        attached: Attached,
        client_id: ClientId,
        stats: Arc<BridgeStats>,
        max_packet_size: usize,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Link {
        let persisted = broker.store().enabled();
        let rules = cfg.rules();
        let state_topic =
            TopicName::parse(&format!("$SYS/broker/connection/{}/state", cfg.name)).ok();
        Link {
            cfg,
            rules,
            broker,
            session: attached.session,
            conn_id: attached.conn_id,
            ctl: attached.ctl,
            client_id,
            stats,
            persisted,
            state_topic,
            max_packet_size,
            tls,
        }
    }

    /// `$SYS/broker/connection/NAME/state`: "1" or "0", retained, as Mosquitto publishes it.
    fn publish_state(&self, up: bool) {
        self.stats.connected.store(up, Ordering::Relaxed);
        if let Some(topic) = &self.state_topic {
            self.broker.publish(Arc::new(Message {
                topic: topic.clone(),
                payload: Bytes::from_static(if up { b"1" } else { b"0" }),
                qos: QoS::AtLeastOnce,
                retain: true,
                origin: 0,
                from: None,
            }));
        }
    }

    pub(super) async fn run(self, shutdown: CancellationToken) {
        let name = self.cfg.name.clone();
        let n = self.cfg.addresses.len().max(1);
        let min_delay = Duration::from_millis(self.cfg.reconnect_delay_ms);
        let max_delay = Duration::from_millis(self.cfg.reconnect_max_delay_ms);
        let mut delay = min_delay;
        let mut idx = 0usize;
        let mut failed_in_cycle = 0usize;
        let mut connected_before = false;
        self.publish_state(false);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let Some(addr) = self.cfg.addresses.get(idx % n).cloned() else {
                break;
            };
            let wait = match self.connect(&addr).await {
                Ok(mut conn) => {
                    if connected_before {
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    connected_before = true;
                    info!(bridge = %name, %addr, "bridge connected");
                    self.publish_state(true);
                    delay = min_delay;
                    failed_in_cycle = 0;
                    let end = self.serve(&mut conn, &shutdown).await;
                    self.publish_state(false);
                    match &end {
                        End::Shutdown => {
                            wire::encode_disconnect(&mut conn.wbuf);
                            let _ = timeout(
                                Duration::from_millis(500),
                                conn.stream.write_all(&conn.wbuf),
                            )
                            .await;
                            info!(bridge = %name, %addr, "bridge disconnected: shutdown");
                            break;
                        }
                        End::Protocol(why) => {
                            warn!(bridge = %name, %addr, why, "bridge disconnected: protocol error from the remote")
                        }
                        End::TakenOver => {
                            error!(bridge = %name, client_id = %self.client_id, "a client took the bridge's journal session; the bridge stops");
                            return;
                        }
                        End::Io(e) => {
                            info!(bridge = %name, %addr, error = %e, "bridge disconnected: socket error")
                        }
                        other => {
                            info!(bridge = %name, %addr, reason = ?other, "bridge disconnected")
                        }
                    }
                    // The same address first, after the shortest delay.
                    min_delay
                }
                Err(why) => {
                    warn!(bridge = %name, %addr, error = %why, "bridge connect failed");
                    idx = (idx + 1) % n;
                    failed_in_cycle += 1;
                    if failed_in_cycle >= n {
                        // Every address failed once: back off, doubling up to the max.
                        failed_in_cycle = 0;
                        let d = delay;
                        delay = (delay * 2).min(max_delay);
                        d
                    } else {
                        Duration::ZERO
                    }
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        self.broker.detach(&self.session, self.conn_id);
    }

    /// TCP connect, CONNECT, CONNACK, SUBSCRIBE to the `in` filters; re-sends the window.
    async fn connect(&self, addr: &str) -> Result<Conn, String> {
        let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Err(_) => return Err("connect timed out".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let stream = match &self.tls {
            None => Stream::Tcp(Tcp(stream)),
            Some(config) => {
                // The name the server's certificate must carry: the address's host.
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                match timeout(
                    CONNECT_TIMEOUT,
                    TlsClient::connect(stream, config.clone(), host),
                )
                .await
                {
                    Err(_) => return Err("TLS handshake timed out".into()),
                    Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
                    Ok(Ok(t)) => Stream::Tls(Box::new(t)),
                }
            }
        };
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(4096),
            last_in: Instant::now(),
            last_out: Instant::now(),
            pending: VecDeque::new(),
            flushed: match self.broker.store().ack_policy() {
                AckPolicy::Immediate => None,
                _ => self.broker.store().flushed(),
            },
            drain: true,
        };
        let client_id = self.cfg.remote_client_id();
        wire::encode_connect(
            &mut conn.wbuf,
            &ConnectFields {
                client_id: &client_id,
                clean_session: self.cfg.clean_session,
                keep_alive_s: self.cfg.keepalive_s,
                username: self.cfg.username.as_deref(),
                password: self.cfg.password.as_deref(),
            },
        )?;
        let handshake = async {
            conn.stream
                .write_all(&conn.wbuf)
                .await
                .map_err(|e| e.to_string())?;
            conn.wbuf.clear();
            loop {
                match mqttbytes::v4::read(&mut conn.rbuf, self.max_packet_size()) {
                    Ok(Remote::ConnAck(a)) => {
                        return match a.code {
                            mqttbytes::v4::ConnectReturnCode::Success => Ok(()),
                            code => Err(format!("refused by the remote: {code:?}")),
                        }
                    }
                    Ok(p) => return Err(format!("expected CONNACK, got {p:?}")),
                    Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => return Err(format!("malformed CONNACK: {e:?}")),
                }
                conn.stream
                    .ready(Interest::READABLE)
                    .await
                    .map_err(|e| e.to_string())?;
                conn.rbuf.reserve(4096);
                match conn.stream.try_read_buf(&mut conn.rbuf) {
                    Ok(0) => return Err("closed before CONNACK".into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        match timeout(CONNECT_TIMEOUT, handshake).await {
            Err(_) => return Err("no CONNACK in time".into()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
        }
        let filters: Vec<(&str, u8)> = self
            .rules
            .iter()
            .filter(|r| r.direction.into_local())
            .map(|r| (r.remote_filter.as_str(), r.qos))
            .collect();
        if !filters.is_empty() {
            wire::encode_subscribe(&mut conn.wbuf, self.subscribe_pkid(), &filters);
        }
        self.resend_inflight(&mut conn);
        Ok(conn)
    }

    fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// A packet id for SUBSCRIBE that no in-flight PUBLISH uses ([MQTT-2.3.1-2]).
    fn subscribe_pkid(&self) -> u16 {
        let st = self.session.lock();
        (1..=u16::MAX)
            .rev()
            .find(|id| !st.out.inflight().any(|e| e.pkid == *id))
            .unwrap_or(u16::MAX)
    }

    /// The remote topic of a journaled message: the first `out` rule that matches remaps it.
    fn remote_topic<'a>(&self, local: &'a TopicName) -> std::borrow::Cow<'a, str> {
        for r in &self.rules {
            if r.direction.out() && r.local_filter.matches(local) {
                if let Some(t) = r.to_remote(local.as_str()) {
                    return t.into();
                }
            }
        }
        local.as_str().into()
    }

    /// [MQTT-4.4.0-1] the window of a previous connection (or of before a restart) goes out
    /// again first, with DUP=1 and the same ids; released QoS 2 ones as PUBREL.
    fn resend_inflight(&self, conn: &mut Conn) {
        let st = self.session.lock();
        for e in st.out.inflight() {
            match e.state {
                InflightState::Sent => {
                    let d = &e.delivery;
                    let topic = self.remote_topic(&d.msg.topic);
                    if let Err(err) = codec::encode_publish(
                        &mut conn.wbuf,
                        &topic,
                        &d.msg.payload,
                        d.qos,
                        d.retain,
                        true,
                        e.pkid,
                    ) {
                        error!(error = %err, "bridge: cannot encode a journaled message");
                    }
                }
                InflightState::Released => codec::encode_pubrel(&mut conn.wbuf, e.pkid),
            }
        }
    }

    async fn serve(&self, conn: &mut Conn, shutdown: &CancellationToken) -> End {
        let keep_alive = Duration::from_secs(u64::from(self.cfg.keepalive_s));
        let mut ping_sent = false;
        loop {
            if shutdown.is_cancelled() {
                return End::Shutdown;
            }
            if self.ctl.kicked().is_some() {
                return End::TakenOver;
            }
            if conn.drain && conn.wbuf.len() < WRITE_HIGH_WATER && conn.pending.len() < MAX_PENDING
            {
                self.drain(conn);
            }
            if !keep_alive.is_zero() {
                if conn.last_in.elapsed() >= keep_alive * 3 / 2 {
                    return End::KeepAlive;
                }
                if !ping_sent && conn.last_out.elapsed() >= keep_alive {
                    wire::encode_pingreq(&mut conn.wbuf);
                    ping_sent = true;
                }
            }
            let backed_up =
                conn.wbuf.len() >= WRITE_HIGH_WATER || conn.pending.len() >= MAX_PENDING;
            let has_output = !conn.wbuf.is_empty() || conn.stream.has_buffered_output();
            let interest = match (!has_output, backed_up) {
                (false, false) => Interest::READABLE | Interest::WRITABLE,
                (false, true) => Interest::WRITABLE,
                (true, _) => Interest::READABLE,
            };
            let more = conn.drain && !backed_up;
            let waiting = !conn.pending.is_empty();
            let next_tick = if keep_alive.is_zero() {
                Instant::now() + Duration::from_secs(3600)
            } else if ping_sent {
                // Waiting for the PINGRESP (or anything): only the silence deadline is left.
                conn.last_in + keep_alive * 3 / 2
            } else {
                (conn.last_out + keep_alive).min(conn.last_in + keep_alive * 3 / 2)
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Shutdown,
                _ = self.ctl.wake.notified() => conn.drain = true,
                r = conn.stream.ready(interest) => {
                    let ready = match r {
                        Ok(r) => r,
                        Err(e) => return End::Io(e),
                    };
                    if ready.is_writable() && has_output {
                        let written = if conn.wbuf.is_empty() {
                            conn.stream.try_flush().map(|()| 0)
                        } else {
                            conn.stream.try_write(&conn.wbuf)
                        };
                        match written {
                            Ok(n) => {
                                let _ = conn.wbuf.split_to(n);
                                conn.last_out = Instant::now();
                            }
                            Err(e) => return End::Io(e),
                        }
                    }
                    if (ready.is_readable() || ready.is_read_closed()) && !backed_up {
                        conn.rbuf.reserve(READ_CHUNK.min(16 * 1024));
                        match conn.stream.try_read_buf(&mut conn.rbuf) {
                            Ok(0) => return End::Closed,
                            Ok(_) => {
                                conn.last_in = Instant::now();
                                ping_sent = false;
                                if let Err(end) = self.process_input(conn) {
                                    return end;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) => return End::Io(e),
                        }
                    }
                }
                _ = flushed_changed(&mut conn.flushed, waiting), if waiting => self.release(conn),
                _ = tokio::time::sleep_until(next_tick) => {}
                _ = std::future::ready(()), if more => {}
            }
        }
    }

    /// Handles every whole packet buffered from the remote.
    fn process_input(&self, conn: &mut Conn) -> Result<(), End> {
        loop {
            let p = match mqttbytes::v4::read(&mut conn.rbuf, self.max_packet_size()) {
                Ok(p) => p,
                Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(()),
                Err(e) => return Err(End::Protocol(format!("{e:?}"))),
            };
            match p {
                Remote::PubAck(a) => self.on_ack(conn, a.pkid, Outbound::on_puback)?,
                Remote::PubRec(a) => self.on_ack(conn, a.pkid, Outbound::on_pubrec)?,
                Remote::PubComp(a) => self.on_ack(conn, a.pkid, Outbound::on_pubcomp)?,
                Remote::Publish(p) => self.on_publish(conn, p)?,
                Remote::PubRel(r) => {
                    let ticket = {
                        let mut st = self.session.lock();
                        if st.inbound_qos2.remove(&r.pkid) && self.persisted {
                            self.broker.store().submit(Op::Qos2Del {
                                client: self.client_id.clone(),
                                pkid: r.pkid,
                            })
                        } else {
                            0
                        }
                    };
                    let mut b = BytesMut::with_capacity(4);
                    codec::encode_pubcomp(&mut b, r.pkid);
                    self.send(conn, ticket, b.freeze());
                }
                Remote::SubAck(s) => {
                    let refused = s
                        .return_codes
                        .iter()
                        .filter(|c| matches!(c, mqttbytes::v4::SubscribeReasonCode::Failure))
                        .count();
                    if refused > 0 {
                        warn!(bridge = %self.cfg.name, refused, "the remote refused some `in` subscriptions");
                    }
                }
                Remote::PingResp => {}
                other => {
                    return Err(End::Protocol(format!(
                        "unexpected packet from the remote: {other:?}"
                    )))
                }
            }
        }
    }

    /// An acknowledgement from the remote frees the journal entry (or moves QoS 2 on).
    fn on_ack(
        &self,
        conn: &mut Conn,
        pkid: u16,
        apply: fn(&mut Outbound, u16) -> AckOutcome,
    ) -> Result<(), End> {
        let (outcome, ticket) = {
            let mut st = self.session.lock();
            if st.conn.as_ref().map(|c| c.id) != Some(self.conn_id) {
                return Err(End::TakenOver);
            }
            let outcome = apply(&mut st.out, pkid);
            let op = match outcome {
                AckOutcome::Completed { seq } if seq != 0 => Some(Op::MsgDel {
                    client: self.client_id.clone(),
                    seq,
                }),
                AckOutcome::SendPubrel { seq } if seq != 0 => Some(Op::MsgState {
                    client: self.client_id.clone(),
                    seq,
                    state: StoredState::Released(pkid),
                }),
                _ => None,
            };
            (outcome, op.map_or(0, |op| self.broker.store().submit(op)))
        };
        match outcome {
            AckOutcome::Completed { .. } => {
                self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                conn.drain = true;
            }
            AckOutcome::SendPubrel { .. } => {
                let mut b = BytesMut::with_capacity(4);
                codec::encode_pubrel(&mut b, pkid);
                self.send(conn, ticket, b.freeze());
            }
            AckOutcome::Unknown => debug!(pkid, "bridge: acknowledgement for an unknown id"),
            AckOutcome::WrongAck => {
                return Err(End::Protocol(format!(
                    "acknowledgement for id {pkid} does not fit its QoS or state"
                )))
            }
        }
        Ok(())
    }

    /// A message from the remote (an `in` rule): remapped and published locally, marked as
    /// coming from this bridge so no `out` rule sends it back; acknowledged once durable.
    fn on_publish(&self, conn: &mut Conn, p: mqttbytes::v4::Publish) -> Result<(), End> {
        let remote = TopicName::parse(&p.topic)
            .map_err(|e| End::Protocol(format!("invalid topic from the remote: {e}")))?;
        let local = self
            .rules
            .iter()
            .filter(|r| r.direction.into_local())
            .find_map(|r| r.to_local(&remote));
        let before = self.broker.store().last_ticket();
        let route = |topic: TopicName| {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            self.broker.publish(Arc::new(Message {
                topic,
                payload: p.payload.clone(),
                qos: p.qos,
                retain: p.retain,
                origin: self.session.uid,
                from: None,
            }));
        };
        if local.is_none() {
            debug!(topic = %p.topic, "bridge: message from the remote matches no `in` rule");
        }
        match p.qos {
            QoS::AtMostOnce => {
                if let Some(t) = local {
                    route(t);
                }
            }
            QoS::AtLeastOnce => {
                if let Some(t) = local {
                    route(t);
                }
                let mut b = BytesMut::with_capacity(4);
                codec::encode_puback(&mut b, p.pkid);
                self.send(conn, self.ticket_since(before), b.freeze());
            }
            QoS::ExactlyOnce => {
                let group = self.persisted.then(|| self.broker.store().group());
                let first = {
                    let mut st = self.session.lock();
                    let first = st.inbound_qos2.insert(p.pkid);
                    if first && self.persisted {
                        self.broker.store().submit(Op::Qos2Put {
                            client: self.client_id.clone(),
                            pkid: p.pkid,
                        });
                    }
                    first
                };
                if let (true, Some(t)) = (first, local) {
                    route(t);
                }
                drop(group);
                let mut b = BytesMut::with_capacity(4);
                codec::encode_pubrec(&mut b, p.pkid);
                self.send(conn, self.ticket_since(before), b.freeze());
            }
        }
        Ok(())
    }

    fn ticket_since(&self, before: u64) -> u64 {
        let now = self.broker.store().last_ticket();
        if now > before {
            now
        } else {
            0
        }
    }

    /// Whether a packet waiting for `ticket` may go out, per the store's `AckPolicy`.
    fn ready(&self, ticket: u64, durable: u64) -> bool {
        if ticket <= durable {
            return true;
        }
        match self.broker.store().ack_policy() {
            AckPolicy::Immediate => true,
            AckPolicy::Durable => false,
            AckPolicy::Bounded { gate_ms } => self.broker.store().backlog_age_ms() < gate_ms,
        }
    }

    /// Writes `packet` now, or once `ticket` is durable; order is kept.
    fn send(&self, conn: &mut Conn, ticket: u64, packet: Bytes) {
        let durable = conn.flushed.as_ref().map_or(u64::MAX, |rx| *rx.borrow());
        if conn.pending.is_empty() && self.ready(ticket, durable) {
            conn.wbuf.extend_from_slice(&packet);
            return;
        }
        let ticket = ticket.max(conn.pending.back().map_or(0, |(t, _)| *t));
        conn.pending.push_back((ticket, packet));
    }

    fn release(&self, conn: &mut Conn) {
        let durable = conn
            .flushed
            .as_mut()
            .map_or(u64::MAX, |rx| *rx.borrow_and_update());
        while conn
            .pending
            .front()
            .is_some_and(|(t, _)| self.ready(*t, durable))
        {
            if let Some((_, p)) = conn.pending.pop_front() {
                conn.wbuf.extend_from_slice(&p);
            }
        }
    }

    /// Moves what the window allows from the journal to the remote, in order.
    fn drain(&self, conn: &mut Conn) {
        let limits = self.session.limits(self.broker.limits());
        let mut st = self.session.lock();
        if st.conn.as_ref().map(|c| c.id) != Some(self.conn_id) {
            conn.drain = false;
            return;
        }
        let mut n = 0;
        while n < DRAIN_MESSAGES && conn.wbuf.len() < WRITE_HIGH_WATER {
            let Some(o) = st.out.next(limits) else { break };
            n += 1;
            let mut ticket = 0;
            if let Some(op) = o.sent_op(&self.client_id) {
                let t = self.broker.store().submit(op);
                // [MQTT-4.3.3] a QoS 2 PUBLISH goes out once its id is on disk (as a session).
                if o.delivery.qos == QoS::ExactlyOnce {
                    ticket = t;
                }
            }
            if o.pkid == 0 {
                self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
            }
            let d = &o.delivery;
            let topic = self.remote_topic(&d.msg.topic);
            if ticket == 0 && conn.pending.is_empty() {
                if let Err(e) = codec::encode_publish(
                    &mut conn.wbuf,
                    &topic,
                    &d.msg.payload,
                    d.qos,
                    d.retain,
                    false,
                    o.pkid,
                ) {
                    error!(error = %e, "bridge: cannot encode a journaled message; skipped");
                }
            } else {
                let mut b = BytesMut::new();
                match codec::encode_publish(
                    &mut b,
                    &topic,
                    &d.msg.payload,
                    d.qos,
                    d.retain,
                    false,
                    o.pkid,
                ) {
                    Ok(()) => {
                        let ticket = if conn.flushed.is_some() { ticket } else { 0 };
                        let t = ticket.max(conn.pending.back().map_or(0, |(t, _)| *t));
                        conn.pending.push_back((t, b.freeze()));
                    }
                    Err(e) => {
                        error!(error = %e, "bridge: cannot encode a journaled message; skipped")
                    }
                }
            }
        }
        conn.drain = st.out.ready(limits);
    }
}

/// Resolves when the durable ticket changes; never without a store.
async fn flushed_changed(rx: &mut Option<watch::Receiver<u64>>, waiting: bool) {
    if let (true, Some(rx)) = (waiting, rx) {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}
