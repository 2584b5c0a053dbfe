//! One client connection: CONNECT under a timeout, the session loop, and the end of it.
//! L3: uses the codec (L1) and the broker (L2). Invariants: the task never awaits anything that
//! belongs to another client; socket writes happen in loop bodies, never as a `select!` branch
//! future; the loop never waits for readiness while a whole packet is buffered, unless the
//! connection is backed up; the end of a connection is logged once, with its `DisconnectReason`.

mod authorize;
mod connect;
mod io;
mod start;
mod will;

pub(crate) use authorize::Authorizer;
pub(crate) use start::{run_connection, run_tls_connection, run_upgraded};

use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;
use tokio::io::Interest;

use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use crate::admin::metrics::Hot;
use crate::broker::queue::{AckOutcome, InflightState, Outbound, Outgoing};
use crate::broker::registry::{ConnCtl, Kick, Session};
use crate::broker::Broker;
use crate::error::ProtocolError;
use crate::limits::log_fold::{folded, Kind};
use crate::limits::publish::PublishLimiter;
use crate::message::{Message, QoS};
use crate::protocol::codec::{self, Packet, Publish, Subscribe, Unsubscribe};
use crate::store::{AckPolicy, Op, StoredState};
use crate::topic::ClientId;
use crate::transport::{Ending, Transport};
use io::{Fill, Io, WRITE_HIGH_WATER};

/// What every connection task shares.
pub(crate) struct ConnContext {
    pub(crate) broker: Broker,
    /// Credentials, the refusal delay and each client's ACL.
    pub(crate) authorizer: Authorizer,
    /// Limits under attack shared by the connections (issue #9 item 5), and the bounds a
    /// connection reads while it starts (`limits.bounds`, reloadable).
    pub(crate) limits: crate::limits::ConnLimits,
    /// Cancelled first at shutdown: every connection publishes its will while all of them are
    /// still connected, so live subscribers receive the wills before the connections close.
    pub(crate) closing: CancellationToken,
    /// Counters for `/metrics` and `$SYS` (striped relaxed atomics; see `admin::metrics`).
    pub(crate) metrics: Arc<crate::admin::metrics::Metrics>,
}

/// Why a connection ended. Logged once, at the task boundary; also decides the will.
#[derive(Debug)]
pub(crate) enum DisconnectReason {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The client closed the socket between packets.
    PeerClosed,
    /// [MQTT-3.1.2-24] nothing received for 1.5 x keep-alive.
    KeepAliveTimeout,
    /// The client broke a rule of the standard.
    Protocol(ProtocolError),
    /// A rule checked at the session level (state, not syntax).
    Violation(&'static str),
    /// [MQTT-3.1.4-2] another connection took over the client id.
    TakenOver { new_clean: bool },
    /// The broker is shutting down.
    ServerShutdown,
    /// A socket error, including EOF inside a packet.
    Io(std::io::Error),
}

impl DisconnectReason {
    /// What the transport's own close says (a WebSocket's close status). A keep-alive timeout
    /// is a normal end (1000), like a takeover: the client broke no rule of the protocol's
    /// syntax, its connection just went quiet.
    fn ending(&self) -> Ending {
        match self {
            DisconnectReason::ClientDisconnect
            | DisconnectReason::PeerClosed
            | DisconnectReason::KeepAliveTimeout
            | DisconnectReason::TakenOver { .. } => Ending::Normal,
            DisconnectReason::Protocol(_) | DisconnectReason::Violation(_) => Ending::ProtocolError,
            DisconnectReason::ServerShutdown => Ending::GoingAway,
            // Refused WebSocket frames already queued their own close; other socket errors
            // leave nothing to send a close frame on.
            DisconnectReason::Io(_) => Ending::Abort,
        }
    }
}

/// Resolves when the durable ticket changes; never, without a store or once it is closed.
/// Only polled while acknowledgements wait for the disk; the inner future is boxed so it costs
/// an idle connection nothing.
async fn flushed_changed(rx: &mut Option<watch::Receiver<u64>>, waiting: bool) {
    if let (true, Some(rx)) = (waiting, rx) {
        if Box::pin(rx.changed()).await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// The live state of an accepted connection, over any transport (one session loop for all).
struct Connection<T> {
    ctx: Arc<ConnContext>,
    io: Io<T>,
    session: Arc<Session>,
    conn_id: u64,
    client_id: ClientId,
    /// Boxed: most connections have none, and an idle connection should stay small.
    will: Option<Box<codec::Will>>,
    /// The client's ACL; `None` without an `acl_file` (then nothing is checked).
    acl: Option<Arc<authorize::SessionAcl>>,
    /// The session queue may have something for us.
    pending_drain: bool,
    /// Reused between drains so moving messages out of the queue does not allocate; each
    /// with the ticket its PUBLISH must wait for (0: none).
    batch: Vec<(Outgoing, u64)>,
    /// Wakes this connection and says why (queue, takeover, keep-alive).
    ctl: Arc<ConnCtl>,
    /// The store's durable ticket, when packets may wait for the disk (sync = "always" or
    /// "periodic"; see `AckPolicy`).
    flushed: Option<watch::Receiver<u64>>,
    /// Packets waiting for their ticket to be durable, in order ([MQTT-4.6.0-2]): once one
    /// waits, every packet after it waits too.
    pending_acks: VecDeque<(u64, Deferred)>,
    /// SUBACKs among `pending_acks`: retained messages must not overtake their SUBACK.
    pending_subacks: usize,
    /// Whether this session's state goes to the store.
    persisted: bool,
    /// `limits.max_publish_rate` / `max_publish_bytes_rate`; None (no cost) when both are off.
    limiter: Option<Box<PublishLimiter>>,
}

/// A packet that reveals stored state, so it may have to wait until that state is durable.
enum Deferred {
    PubAck(u16),
    PubRec(u16),
    /// Outbound QoS 2: PUBREC recorded (message released).
    PubRel(u16),
    /// Inbound QoS 2: packet id forgotten.
    PubComp(u16),
    SubAck(u16, Vec<u8>),
    UnsubAck(u16),
    /// A QoS 2 delivery whose packet id is recorded as sent.
    Publish(Outgoing),
}

/// Above this many packets waiting for the disk, stop reading the client's input.
const MAX_PENDING_ACKS: usize = 4096;

/// What woke the session loop.
enum Event {
    Readable(std::io::Result<()>),
    Writable(std::io::Result<()>),
    Wake,
    Flushed,
    /// Work that needs no wait: a drain cut short by its bound, or packets already buffered.
    Again,
}

/// Outgoing payload bytes moved from the queue per drain, so one drain stays bounded.
const DRAIN_BYTES: usize = 64 * 1024;
const DRAIN_MESSAGES: usize = 256;

impl<T: Transport> Connection<T> {
    /// The session loop: read packets, deliver queued messages. Everything the broker has to
    /// tell this connection (a queue that filled, takeover, keep-alive expiry, shutdown) arrives
    /// through the one `ctl.wake` it always waits on and is checked at the top of each turn.
    async fn serve(&mut self, shutdown: &CancellationToken) -> DisconnectReason {
        loop {
            if shutdown.is_cancelled() {
                return DisconnectReason::ServerShutdown;
            }
            match self.ctl.kicked() {
                Some(Kick::TakenOver { new_clean }) => {
                    return DisconnectReason::TakenOver { new_clean }
                }
                Some(Kick::KeepAlive) => return DisconnectReason::KeepAliveTimeout,
                None => {}
            }
            if self.will.is_some() && self.ctx.closing.is_cancelled() {
                // [MQTT-3.1.2-8] the server is closing the connection: publish the will now,
                // while subscribers are still connected to receive it.
                if let Some(w) = self.will.take() {
                    self.ctx.broker.publish(will::into_message(*w));
                }
            }
            if self.pending_drain
                && self.pending_subacks == 0
                && self.io.pending_output() < WRITE_HIGH_WATER
                && self.pending_acks.len() < MAX_PENDING_ACKS
            {
                self.drain();
            }
            let unsent = self.io.pending_output();
            if let Err(e) = self.io.try_flush() {
                return DisconnectReason::Io(e);
            }
            let sent = unsent - self.io.pending_output();
            if sent > 0 {
                self.ctx.metrics.add(Hot::BytesOut, sent as u64);
            }
            // Backpressure: while our output to this client is backed up, stop reading its
            // input (TCP then slows a fast publisher) and stop taking from its queue.
            let backed_up = self.backed_up();
            // Over its publish rate, the client's input waits too (its output does not).
            let paused = self.read_paused();
            let waiting_acks = !self.pending_acks.is_empty();
            let has_output = self.io.has_output();
            // A drain stopped by its per-turn bound leaves more to send, and nothing else may
            // wake us (the queue was never empty, so no notify): come straight back for it.
            let drain_more = self.pending_drain && self.pending_subacks == 0 && !backed_up;
            // Packets already buffered (read with CONNECT, or left when input stopped for
            // backpressure) get no readiness event: handle them before waiting for one.
            let input_ready = !backed_up && !paused && self.io.has_complete_packet();
            // One readiness future for both directions (each costs ~150 bytes of task state).
            let interest = match (has_output, backed_up || paused) {
                (true, true) => Some(Interest::WRITABLE),
                (true, false) => Some(Interest::WRITABLE | Interest::READABLE),
                (false, false) => Some(Interest::READABLE),
                (false, true) => None,
            };
            let event = tokio::select! {
                biased;
                _ = self.ctl.wake.notified() => Event::Wake,
                r = self.io.transport.ready(interest.unwrap_or(Interest::READABLE)), if interest.is_some() => {
                    match r {
                        Ok(ready) if ready.is_readable() || ready.is_read_closed() || ready.is_error() => Event::Readable(Ok(())),
                        Ok(_) => Event::Writable(Ok(())),
                        Err(e) => Event::Readable(Err(e)),
                    }
                }
                _ = flushed_changed(&mut self.flushed, waiting_acks), if waiting_acks => Event::Flushed,
                _ = std::future::ready(()), if drain_more || input_ready => Event::Again,
            };
            match event {
                Event::Writable(Err(e)) | Event::Readable(Err(e)) => {
                    return DisconnectReason::Io(e)
                }
                Event::Writable(Ok(())) => {}
                Event::Wake => self.pending_drain = true,
                Event::Flushed => self.release_acks(),
                // A pending drain runs at the top of the loop.
                Event::Again => {
                    if input_ready {
                        if let Err(reason) = self.process_input(false) {
                            return reason;
                        }
                    }
                }
                Event::Readable(Ok(())) => {
                    let buffered = self.io.buffered();
                    let fill = match self.io.try_fill() {
                        Ok(fill) => fill,
                        Err(e) => return DisconnectReason::Io(e),
                    };
                    let read = self.io.buffered().saturating_sub(buffered);
                    if read > 0 {
                        self.ctx.metrics.add(Hot::BytesIn, read as u64);
                    }
                    // At EOF nothing more is coming to wait for: handle every whole packet
                    // (a final DISCONNECT decides the will), backed up or not.
                    if let Err(reason) = self.process_input(fill == Fill::Eof) {
                        return reason;
                    }
                    match fill {
                        Fill::Eof => {
                            return if self.io.has_partial_input() {
                                DisconnectReason::Io(std::io::ErrorKind::UnexpectedEof.into())
                            } else {
                                DisconnectReason::PeerClosed
                            };
                        }
                        // A client that always has more to send would otherwise keep this
                        // worker thread forever (readiness does not count against tokio's
                        // cooperative budget): let the other connections run.
                        Fill::Budget => tokio::task::yield_now().await,
                        Fill::Drained => {}
                    }
                }
            }
        }
    }

    /// Whether output to this client, or acknowledgements waiting for the disk, are backed up:
    /// then the loop neither reads input nor takes from the queue.
    fn backed_up(&self) -> bool {
        self.io.pending_output() >= WRITE_HIGH_WATER || self.pending_acks.len() >= MAX_PENDING_ACKS
    }

    /// Whether reads are paused because the client is over its publish rate.
    fn read_paused(&mut self) -> bool {
        self.limiter.as_mut().is_some_and(|l| l.is_paused())
    }

    /// Handles the complete packets buffered, stopping early (the rest stays buffered) once
    /// the connection is backed up or paused, unless `all`. Keep-alive counts a turn that
    /// completed at least one packet (one clock read per turn, not per packet).
    fn process_input(&mut self, all: bool) -> Result<(), DisconnectReason> {
        let mut any = false;
        let result = loop {
            if !all && (self.backed_up() || self.read_paused()) {
                break Ok(());
            }
            match self.io.next_buffered() {
                Ok(Some(p)) => {
                    any = true;
                    if let Err(reason) = self.handle(p) {
                        break Err(reason);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(DisconnectReason::Protocol(e)),
            }
        };
        if any {
            let mut seen = self.ctx.broker.clock_ms();
            if let Some(l) = &mut self.limiter {
                if l.is_paused() {
                    // Paused for its publish rate, the client is alive meanwhile (its packets
                    // wait in our socket): keep-alive counts from the end of the pause.
                    seen += l.pause_ms();
                }
            }
            self.ctl.touch(seen);
        }
        result
    }

    fn handle(&mut self, p: Packet) -> Result<(), DisconnectReason> {
        match p {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(id) => self.on_ack(id, Outbound::on_puback),
            Packet::PubRec(id) => self.on_ack(id, Outbound::on_pubrec),
            Packet::PubComp(id) => self.on_ack(id, Outbound::on_pubcomp),
            Packet::PubRel(id) => {
                // [MQTT-4.3.3-2] forget the id (known or not) and complete with PUBCOMP, once
                // the id is gone from disk: a PUBCOMP before that, then a crash, and the id
                // would come back to swallow the publisher's next message that reuses it.
                let mut st = self.session.lock();
                let ticket = if st.inbound_qos2.remove(&id) && self.persisted {
                    self.ctx.broker.store().submit(Op::Qos2Del {
                        client: self.client_id.clone(),
                        pkid: id,
                    })
                } else {
                    0
                };
                drop(st);
                self.send_ack(Deferred::PubComp(id), self.wait_for(ticket));
                Ok(())
            }
            Packet::Subscribe(s) => {
                self.on_subscribe(s);
                Ok(())
            }
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u);
                Ok(())
            }
            Packet::PingReq => {
                // [MQTT-3.12.4-1]
                codec::encode_pingresp(&mut self.io.wbuf);
                Ok(())
            }
            Packet::Disconnect => Err(DisconnectReason::ClientDisconnect),
            Packet::Connect(_) => Err(DisconnectReason::Violation("[MQTT-3.1.0-2] second CONNECT")),
        }
    }

    fn on_publish(&mut self, p: Publish) -> Result<(), DisconnectReason> {
        if let Some(pause) = self
            .limiter
            .as_mut()
            .and_then(|l| l.charge(p.payload.len()))
        {
            // Over its publish rate: reads stop (see `read_paused`) until a timer wakes the
            // loop. A task per pause, not a timer in every connection's state: an idle
            // connection stays as small as it was.
            let ctl = self.ctl.clone();
            tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                ctl.wake.notify_one();
            });
        }
        // Clients may not publish into $SYS or $DLQ (dead letters come only from the broker), nor where the ACL denies it: dropped (3.1.1
        // cannot say so), the QoS handshake still completes, as Mosquitto does.
        let denied = p.topic.as_str().starts_with("$SYS")
            || p.topic
                .as_str()
                .starts_with(crate::broker::dead_letter::DLQ_PREFIX)
            || self.acl.as_ref().is_some_and(|a| !a.may_publish(&p.topic));
        self.ctx
            .metrics
            .publish_received(p.qos as u8, p.topic.as_arc(), p.payload.len());
        let msg = Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            from: Some(self.client_id.clone()),
            // Issue #11 item 3: what a bridge publishes is never routed back to it.
            origin: if self
                .session
                .bridge
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                self.session.uid
            } else {
                0
            },
        };
        let route = |broker: &Broker, msg: Message| {
            if denied {
                debug!("publish denied");
                broker.note_denied();
            } else {
                broker.publish(Arc::new(msg));
            }
        };
        let before = self.ticket();
        match p.qos {
            QoS::AtMostOnce => route(&self.ctx.broker, msg),
            QoS::AtLeastOnce => {
                // [MQTT-4.3.2-2] ownership passes with the PUBACK: route first (and with
                // sync = "always", the PUBACK waits until what routing stored is flushed).
                route(&self.ctx.broker, msg);
                let ticket = self.ticket_since(before);
                self.send_ack(Deferred::PubAck(p.pkid), ticket);
            }
            QoS::ExactlyOnce => {
                // [MQTT-4.3.3-2] method A: deliver on the first PUBLISH; a re-sent one with an
                // id awaiting PUBREL is acknowledged again but not delivered again. The id and
                // the copies routed for it reach the disk in one atomic batch (a group): a
                // crash between them would either lose the message (id kept, copies not) or
                // deliver it twice (copies kept, id not, the re-sent PUBLISH routed again).
                let ctx = self.ctx.clone();
                let group = self.persisted.then(|| ctx.broker.store().group());
                let mut st = self.session.lock();
                let first = st.inbound_qos2.insert(p.pkid);
                if first && self.persisted {
                    ctx.broker.store().submit(Op::Qos2Put {
                        client: self.client_id.clone(),
                        pkid: p.pkid,
                    });
                }
                drop(st);
                if first {
                    route(&ctx.broker, msg);
                }
                drop(group);
                let ticket = self.ticket_since(before);
                self.send_ack(Deferred::PubRec(p.pkid), ticket);
            }
        }
        Ok(())
    }

    /// The store's last ticket, when packets may wait for the disk.
    fn ticket(&self) -> u64 {
        if self.flushed.is_some() {
            self.ctx.broker.store().last_ticket()
        } else {
            0
        }
    }

    /// The ticket an acknowledgement must wait for: 0 if nothing was stored since `before`.
    fn ticket_since(&self, before: u64) -> u64 {
        let now = self.ticket();
        if now > before {
            now
        } else {
            0
        }
    }

    /// A ticket returned by `submit`, if packets wait for the disk here (0 = no wait).
    fn wait_for(&self, ticket: u64) -> u64 {
        if self.flushed.is_some() {
            ticket
        } else {
            0
        }
    }

    /// Whether a packet waiting for `ticket` may go out now, per the store's `AckPolicy`.
    fn ready(&self, ticket: u64, durable: u64) -> bool {
        if ticket <= durable {
            return true;
        }
        match self.ctx.broker.store().ack_policy() {
            AckPolicy::Immediate => true,
            AckPolicy::Durable => false,
            // Keeps periodic mode's promise: nothing acknowledged waits on the disk longer
            // than the gate without its acknowledgement waiting too.
            AckPolicy::Bounded { gate_ms } => self.ctx.broker.store().backlog_age_ms() < gate_ms,
        }
    }

    /// Sends a packet now, or queues it until its ticket is durable. Once one waits, the ones
    /// after it wait too, so packets keep their order.
    fn send_ack(&mut self, ack: Deferred, ticket: u64) {
        let durable = self.flushed.as_ref().map_or(u64::MAX, |rx| *rx.borrow());
        if self.pending_acks.is_empty() && self.ready(ticket, durable) {
            self.write_ack(ack);
            return;
        }
        let ticket = ticket.max(self.pending_acks.back().map_or(0, |(t, _)| *t));
        if matches!(ack, Deferred::SubAck(..)) {
            self.pending_subacks += 1;
        }
        self.pending_acks.push_back((ticket, ack));
    }

    /// Writes the acknowledgements whose tickets are now durable.
    fn release_acks(&mut self) {
        let durable = self
            .flushed
            .as_mut()
            .map_or(u64::MAX, |rx| *rx.borrow_and_update());
        while self
            .pending_acks
            .front()
            .is_some_and(|(t, _)| self.ready(*t, durable))
        {
            if let Some((_, ack)) = self.pending_acks.pop_front() {
                if matches!(ack, Deferred::SubAck(..)) {
                    self.pending_subacks -= 1;
                    self.pending_drain = true;
                }
                self.write_ack(ack);
            }
        }
    }

    fn write_ack(&mut self, ack: Deferred) {
        match ack {
            Deferred::PubAck(id) => codec::encode_puback(&mut self.io.wbuf, id),
            Deferred::PubRec(id) => codec::encode_pubrec(&mut self.io.wbuf, id),
            Deferred::PubRel(id) => codec::encode_pubrel(&mut self.io.wbuf, id),
            Deferred::PubComp(id) => codec::encode_pubcomp(&mut self.io.wbuf, id),
            Deferred::SubAck(id, codes) => codec::encode_suback(&mut self.io.wbuf, id, &codes),
            Deferred::UnsubAck(id) => codec::encode_unsuback(&mut self.io.wbuf, id),
            Deferred::Publish(o) => self.encode_delivery(&o),
        }
    }

    fn on_ack(
        &mut self,
        pkid: u16,
        apply: fn(&mut Outbound, u16) -> AckOutcome,
    ) -> Result<(), DisconnectReason> {
        let (outcome, ticket) = {
            let mut st = self.session.lock();
            if st.conn.as_ref().map(|c| c.id) != Some(self.conn_id) {
                // Taken over: the new connection owns the window now; our kick is coming.
                return Ok(());
            }
            let outcome = apply(&mut st.out, pkid);
            let client = || self.client_id.clone();
            let op = match outcome {
                AckOutcome::Completed { seq } if seq != 0 => Some(Op::MsgDel {
                    client: client(),
                    seq,
                }),
                AckOutcome::SendPubrel { seq } if seq != 0 => Some(Op::MsgState {
                    client: client(),
                    seq,
                    state: StoredState::Released(pkid),
                }),
                _ => None,
            };
            let ticket = op.map_or(0, |op| self.ctx.broker.store().submit(op));
            (outcome, ticket)
        };
        match outcome {
            AckOutcome::Completed { .. } => self.pending_drain = true,
            // [MQTT-4.3.3-1] PUBREL only once "released" is on disk: after a crash that state
            // is re-sent as PUBREL, never as PUBLISH DUP=1 after a PUBREL.
            AckOutcome::SendPubrel { .. } => {
                self.send_ack(Deferred::PubRel(pkid), self.wait_for(ticket))
            }
            AckOutcome::Unknown => debug!(pkid, "acknowledgement for an unknown packet id"),
            AckOutcome::WrongAck => {
                return Err(DisconnectReason::Violation(
                    "[MQTT-4.3] acknowledgement does not fit the message's QoS or state",
                ))
            }
        }
        Ok(())
    }

    fn on_subscribe(&mut self, s: Subscribe) {
        let before = self.ticket();
        let broker = &self.ctx.broker;
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut granted = Vec::with_capacity(s.filters.len());
        // Every filter is valid (the codec refuses a packet with an invalid one, [MQTT-4.8.0-1]):
        // 0x80 is for a valid filter the broker refuses (the ACL, or a takeover that raced
        // this SUBSCRIBE).
        for (f, qos) in s.filters {
            if self.acl.as_ref().is_some_and(|a| !a.may_subscribe(&f)) {
                codes.push(0x80);
            } else if broker.subscribe(&self.session, &f, qos) {
                codes.push(qos as u8);
                granted.push((f, qos));
            } else {
                codes.push(0x80);
            }
        }
        // [MQTT-3.3.1-6] retained messages go after the SUBACK, for every filter, every time
        // (queued now; the drain waits while a SUBACK waits for the disk).
        for (f, qos) in &granted {
            broker.send_retained(&self.session, f, *qos);
        }
        // [MQTT-3.8.4-5] one return code per filter, in order.
        let ticket = self.ticket_since(before);
        self.send_ack(Deferred::SubAck(s.pkid, codes), ticket);
        self.pending_drain = true;
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let before = self.ticket();
        for f in &u.filters {
            self.ctx.broker.unsubscribe(&self.session, f);
        }
        // [MQTT-3.10.4-5] UNSUBACK even when nothing matched; once a persistent session's
        // removal is durable.
        let ticket = self.ticket_since(before);
        self.send_ack(Deferred::UnsubAck(u.pkid), ticket);
    }

    /// Moves what the window allows from the session queue into the write buffer. The queue
    /// lock is held only to move entries; encoding happens outside it.
    fn drain(&mut self) {
        let limits = self.session.limits(self.ctx.broker.limits());
        let more = {
            let mut st = self.session.lock();
            if st.conn.as_ref().map(|c| c.id) != Some(self.conn_id) {
                self.pending_drain = false;
                return;
            }
            let mut bytes = 0;
            while bytes < DRAIN_BYTES && self.batch.len() < DRAIN_MESSAGES {
                let Some(o) = st.out.next(limits) else { break };
                bytes += o.delivery.msg.payload.len() + o.delivery.msg.topic.as_str().len();
                let mut ticket = 0;
                // Under the session lock: the store sees this after the MsgPut.
                if let Some(op) = o.sent_op(&self.client_id) {
                    let t = self.ctx.broker.store().submit(op);
                    // [MQTT-4.3.3] a QoS 2 PUBLISH goes out only once the message and its
                    // packet id are on disk: after a crash it is re-sent with that id and
                    // DUP=1, never delivered again under a new id (a duplicate), and no new
                    // message gets an id the client still holds.
                    if o.delivery.qos == QoS::ExactlyOnce {
                        ticket = t;
                    }
                }
                self.batch.push((o, ticket));
            }
            st.out.ready(limits)
        };
        let mut batch = std::mem::take(&mut self.batch);
        for (o, ticket) in batch.drain(..) {
            if ticket == 0 && self.pending_acks.is_empty() {
                self.encode_delivery(&o);
            } else {
                let ticket = self.wait_for(ticket);
                self.send_ack(Deferred::Publish(o), ticket);
            }
        }
        self.batch = batch;
        self.pending_drain = more;
    }

    /// Appends a first delivery of a queued message to the write buffer.
    fn encode_delivery(&mut self, o: &Outgoing) {
        let d = &o.delivery;
        self.ctx
            .metrics
            .publish_sent(d.qos as u8, d.msg.payload.len());
        if let Err(e) = codec::encode_publish(
            &mut self.io.wbuf,
            d.msg.topic.as_str(),
            &d.msg.payload,
            d.qos,
            d.retain,
            false,
            o.pkid,
        ) {
            // Cannot happen for messages that came in through the codec; never panic.
            error!(error = %e, "cannot encode a delivery; skipped");
        }
    }

    /// [MQTT-4.4.0-1] re-sends unacknowledged PUBLISHes with DUP=1 and PUBRELs, in order.
    fn resend_inflight(&mut self) {
        let st = self.session.lock();
        for e in st.out.inflight() {
            match e.state {
                InflightState::Sent => {
                    let d = &e.delivery;
                    self.ctx
                        .metrics
                        .publish_sent(d.qos as u8, d.msg.payload.len());
                    if let Err(err) = codec::encode_publish(
                        &mut self.io.wbuf,
                        d.msg.topic.as_str(),
                        &d.msg.payload,
                        d.qos,
                        d.retain,
                        true,
                        e.pkid,
                    ) {
                        error!(error = %err, "cannot re-encode an in-flight message");
                    }
                }
                InflightState::Released => codec::encode_pubrel(&mut self.io.wbuf, e.pkid),
            }
        }
    }

    /// Ends the connection: final flush (bounded), detach, will, one log line.
    async fn finish(mut self, reason: DisconnectReason) {
        if matches!(
            reason,
            DisconnectReason::ServerShutdown | DisconnectReason::ClientDisconnect
        ) && self.io.has_output()
        {
            let _ = timeout(Duration::from_millis(500), self.io.flush_all()).await;
        }
        self.ctx.broker.detach(&self.session, self.conn_id);
        self.ctx.metrics.disconnected();
        let publish_will = will::should_publish(&reason, self.session.clean);
        if let Some(w) = self.will.take() {
            if publish_will {
                self.ctx.broker.publish(will::into_message(*w));
            }
        }
        // Above limits.max_conn_log_lines_per_s these lines are folded into a summary.
        let log = &self.ctx.limits.log;
        match &reason {
            DisconnectReason::Protocol(e) => {
                folded!(log, Kind::ProtocolError, warn, error = %e, "disconnected: protocol violation")
            }
            DisconnectReason::Violation(rule) => {
                folded!(
                    log,
                    Kind::ProtocolError,
                    warn,
                    rule,
                    "disconnected: protocol violation"
                )
            }
            // Refused WebSocket frames break a rule (RFC 6455), like a malformed packet.
            DisconnectReason::Io(e)
                if e.get_ref()
                    .is_some_and(|e| e.is::<crate::transport::ws::Refused>()) =>
            {
                folded!(log, Kind::ProtocolError, warn, error = %e, "disconnected: protocol violation")
            }
            DisconnectReason::Io(e) => {
                folded!(log, Kind::Disconnected, info, error = %e, "disconnected: socket error")
            }
            other => folded!(log, Kind::Disconnected, info, reason = ?other, "disconnected"),
        }
        self.io.transport.end(reason.ending());
        self.io.transport.close().await;
    }
}
