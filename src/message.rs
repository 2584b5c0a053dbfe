//! An application message as it travels from a publisher to its subscribers.
//! L0: depends on `topic`. Invariant: one `Message` is allocated per PUBLISH and shared (`Arc`)
//! by every subscriber queue, so fan-out never copies the payload.

use std::sync::Arc;

use bytes::Bytes;
pub(crate) use mqttbytes::QoS;

use crate::topic::{ClientId, TopicName};

/// One published application message. Built once per inbound PUBLISH (or will).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) topic: TopicName,
    /// Owns its bytes (never a slice of a connection's read buffer, which it would pin).
    pub(crate) payload: Bytes,
    /// The QoS it was published with; each delivery is capped by the subscription's QoS.
    pub(crate) qos: QoS,
    /// The RETAIN flag it was published with.
    pub(crate) retain: bool,
    /// The publisher's client id, for share groups that hash on it (`hash_client`); `None`
    /// for messages without a publishing client (loaded from disk, dead letters).
    pub(crate) from: Option<ClientId>,
    /// The `Session::uid` of the bridge it came in through, 0 for any other publisher: it is
    /// never delivered back to that session (bridge loop prevention, issue #11 item 3).
    pub(crate) origin: u64,
}

/// The form every queue holds: one allocation shared by all subscribers.
pub(crate) type SharedMessage = Arc<Message>;

/// The smaller of two QoS levels ([MQTT-3.8.4-6]: delivered QoS = min(published, granted)).
pub(crate) fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

/// QoS from its wire value, if valid.
pub(crate) fn qos_from_u8(v: u8) -> Option<QoS> {
    match v {
        0 => Some(QoS::AtMostOnce),
        1 => Some(QoS::AtLeastOnce),
        2 => Some(QoS::ExactlyOnce),
        _ => None,
    }
}
