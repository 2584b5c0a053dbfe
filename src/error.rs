//! Typed errors of the protocol layer. L0: std, thiserror, mqttbytes.
//! Invariant: every violation names the rule of the standard it breaks, so the one log line
//! at the connection boundary says which rule the client broke.

use std::io;
use std::path::Path;

use crate::topic::TopicError;

/// What to append to the message of a file-system error on `path`: when the OS refused access
/// (EACCES/EPERM), "; brokerd runs as uid N; make PATH NEED by uid N" (e.g. a root-owned volume
/// mounted into the container, whose user is not root); otherwise nothing.
pub(crate) fn access_hint(error: &io::Error, path: &Path, need: &str) -> String {
    if error.kind() != io::ErrorKind::PermissionDenied {
        return String::new();
    }
    let uid = rustix::process::geteuid().as_raw();
    format!(
        "; brokerd runs as uid {uid}; make {} {need} by uid {uid}",
        path.display()
    )
}

/// A client broke the protocol; the connection is closed ([MQTT-4.8.0-1]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolError {
    #[error(
        "[MQTT-2.2.2-2] invalid fixed-header flags {flags:#06b} for packet type {packet_type}"
    )]
    BadFlags { packet_type: u8, flags: u8 },
    #[error("[MQTT-2.2] reserved packet type {0}")]
    ReservedPacketType(u8),
    #[error("[MQTT-3.1.0-1] packet type {0} only a server may send")]
    ServerOnlyPacket(u8),
    #[error("[MQTT-2.2.3] malformed remaining length")]
    MalformedLength,
    #[error("packet of {size} bytes exceeds max_packet_size {max}")]
    TooLarge { size: usize, max: usize },
    #[error("[MQTT-4.8.0-1] malformed packet: {0}")]
    Malformed(&'static str),
    #[error("[MQTT-1.5.3-1] ill-formed UTF-8 string")]
    InvalidUtf8,
    #[error("[MQTT-1.5.3-2] U+0000 in a string")]
    NullChar,
    #[error("[MQTT-2.3.1-1] packet identifier 0")]
    ZeroPacketId,
    /// The message includes the topic's error; `source()` does not repeat it.
    #[error("invalid topic: {0}")]
    Topic(TopicError),
    /// An invalid filter in SUBSCRIBE or UNSUBSCRIBE closes the connection, as Mosquitto does
    /// ([MQTT-4.8.0-1]); `error` names the rule, `filter` is the filter (cut to 256 bytes).
    #[error("invalid topic filter {filter:?}: {error}")]
    TopicFilter { error: TopicError, filter: String },
    #[error(
        "[MQTT-2.2.3] packet type {packet_type} must have remaining length {expected}, not {len}"
    )]
    WrongRemainingLength {
        packet_type: u8,
        expected: usize,
        len: usize,
    },
    #[error(
        "[MQTT-1.5.3] control character or U+FFFF in the {0} (refused by policy, as mosquitto)"
    )]
    ForbiddenChar(&'static str),
    #[error("[MQTT-3.1.2-1] protocol name is neither \"MQTT\" nor \"MQIsdp\"")]
    BadProtocolName,
    /// Answered with CONNACK 0x01 before closing ([MQTT-3.1.2-2]).
    #[error("[MQTT-3.1.2-2] unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    #[error("[MQTT-3.1.2-3] reserved CONNECT flag set")]
    ConnectReservedFlag,
    #[error("[MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15] will QoS or will retain set without the will flag")]
    WillFieldsWithoutWill,
    #[error("[MQTT-3.1.2-14] will QoS 3")]
    WillQoS3,
    #[error("[MQTT-3.1.2-22] password flag set without the user name flag")]
    PasswordWithoutUsername,
    #[error("[MQTT-3.3.1-4] PUBLISH with QoS 3")]
    PublishQoS3,
    #[error("[MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    #[error("[MQTT-3.8.3-3] SUBSCRIBE without a topic filter")]
    EmptySubscribe,
    #[error("[MQTT-3.8.3-4] requested QoS byte {0:#04x} has reserved bits set or QoS 3")]
    BadSubscribeOptions(u8),
    #[error("[MQTT-3.10.3-2] UNSUBSCRIBE without a topic filter")]
    EmptyUnsubscribe,
}

impl From<TopicError> for ProtocolError {
    fn from(e: TopicError) -> ProtocolError {
        ProtocolError::Topic(e)
    }
}
