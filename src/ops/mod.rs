//! Running brokerd as a service: readiness and status for a supervisor (`sd_notify`), and live
//! reload of the configuration on SIGHUP (`reload`). L5, next to `run`: reads `Config` (L0) and
//! swaps the values the connections share (`session::ConnContext`, the TLS acceptor).
//! Invariant: a reload builds every new value first and swaps only when all of them are good;
//! nothing is ever half-applied.

pub(crate) mod reload;
pub mod sd_notify;
