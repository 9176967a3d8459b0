//! The UDP protocol shared by the prober ([`crate::probe::udp`]) and the reflector and relay
//! ([`crate::respond::udp`]), as quinn keeps `quinn-proto` and `quinn-udp` apart from the
//! endpoints that use them.
//!
//! - [`wire`]: the versioned, HMAC-authenticated packet format (documented byte by byte).
//! - [`grant`]: the 96-byte Ed25519-signed relay grant (documented byte by byte).
//! - `sys`: the one unsafe corner — `recvmsg`/`recvmmsg`/`sendmmsg` with kernel receive
//!   timestamps and destination addresses (pktinfo).
//! - `StampMapper`: kernel receive stamps mapped into the process timebase.

pub use meshlat_proto::grant;
mod stamp;
#[doc(hidden)]
pub mod sys;
pub mod wire;

pub(crate) use self::stamp::StampMapper;
pub use self::wire::{DEFAULT_KEY, Key, MAX_PACKET_BYTES, MIN_PACKET_BYTES};
