//! The last will of a connection and when it is published.
//! L3: L0 types only. Invariant: the will is published for every end of a connection except
//! a DISCONNECT packet ([MQTT-3.1.2-8], [MQTT-3.1.2-10]) and a refused CONNECT.

use std::sync::Arc;

use crate::message::{Message, SharedMessage};
use crate::protocol::codec::Will;

use super::DisconnectReason;

/// Whether a connection that ended for `reason` publishes its will. `clean` is the ending
/// connection's CleanSession flag.
pub(crate) fn should_publish(reason: &DisconnectReason, clean: bool) -> bool {
    match reason {
        // [MQTT-3.1.2-10] DISCONNECT discards the will.
        DisconnectReason::ClientDisconnect => false,
        // Our reading of a silent standard (Mosquitto's): a takeover between two persistent
        // sessions keeps the will unpublished; if either side is clean it is published.
        DisconnectReason::TakenOver { new_clean } => clean || *new_clean,
        // Every other end, including server shutdown, is "not a DISCONNECT" [MQTT-3.1.2-8].
        _ => true,
    }
}

/// The will as a message to route, with its QoS and retain flag ([MQTT-3.1.2-16, -17]).
pub(crate) fn into_message(will: Will) -> SharedMessage {
    Arc::new(Message {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        from: None,
        origin: 0,
    })
}
