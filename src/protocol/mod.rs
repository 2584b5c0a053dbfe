//! The MQTT 3.1.1 wire protocol (placeholder while the layers land).

pub(crate) mod codec;
