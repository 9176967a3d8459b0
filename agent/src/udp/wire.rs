//! The meshlat UDP wire format, version 2 (TWAMP-light style, authenticated).
//!
//! Every packet — request, reply, and later relay-forward/relay-return — has the same layout and
//! the same size on every hop: the sender pads the request to carry every timestamp slot, so no
//! hop ever needs to make a packet larger, and the reflector answers with exactly the request's
//! length. All integers are big-endian.
//!
//! ```text
//! offset  size  field
//! ------  ----  -----------------------------------------------------------------------------
//!      0     4  magic, ASCII "MLU1" (0x4D 0x4C 0x55 0x31)
//!      4     1  version = 2 (VERSION)
//!      5     1  message type: 1 request, 2 reply, 3 relay-forward, 4 relay-return
//!      6     2  flags, reserved: sent as 0, ignored on receive (covered by the HMAC)
//!      8     4  key id (u32): `Key::id` of the HMAC key, so receivers can pick the key
//!     12     8  session id (u64): random per train; replies from other sessions are ignored
//!     20     4  sequence (u32): 0-based packet number within the train
//!     24     4  sender clock error bound, µs (u32); 0xFFFF_FFFF = unknown
//!     28     4  reflector clock error bound, µs (u32); 0xFFFF_FFFF = unknown
//!     32     8  t1: sender send time, ns (u64, `Clock::now_ns` timebase)
//!     40     8  t2: reflector receive time, ns
//!     48     8  t3: reflector send time, ns
//!     56     8  r1: relay receive time, forward direction (0 unless relayed)
//!     64     8  r2: relay send time, forward direction
//!     72     8  r3: relay receive time, return direction
//!     80     8  r4: relay send time, return direction
//!     88    96  grant: relay authorisation (all zero unless relayed; see `meshlat_proto::grant`)
//!    184     n  padding: zeros from the sender, echoed unchanged by the reflector
//!  184+n    16  HMAC-SHA256 over bytes [0, 184+n), truncated to its first 16 bytes
//! ```
//!
//! Version 2 grew the grant field from 64 to 96 bytes for the Ed25519-signed grant (version 1
//! carried the forgeable HMAC grant); a version-1 packet is refused as
//! [`WireError::UnsupportedVersion`] (counted `malformed` by reflectors), so a v1 and a v2 agent
//! do not measure each other: upgrade every agent of a mesh together with its controllers.
//!
//! The smallest packet is [`MIN_PACKET_BYTES`] (200 bytes: no padding); the largest is
//! [`MAX_PACKET_BYTES`] (1452 bytes, which fits a 1500-byte MTU under IPv6 + UDP headers with
//! room to spare for tunnels). Anything outside that range is rejected before it is parsed.
//!
//! Every hop that changes a slot recomputes the HMAC with the key named by the key id; a receiver
//! verifies it in constant time before trusting any field. Decoding checks lengths before every
//! read and never panics, whatever the input.

use std::sync::Arc;

use ring::hmac;

/// The four magic bytes that start every packet.
pub const MAGIC: [u8; 4] = *b"MLU1";
/// The wire format version this module speaks.
pub const VERSION: u8 = 2;
/// Length of the fixed header (everything before the padding).
pub const HEADER_BYTES: usize = 184;
/// Length of the truncated HMAC-SHA256 tag at the end of every packet.
pub const MAC_BYTES: usize = 16;
/// Length of the relay grant field.
pub const GRANT_BYTES: usize = meshlat_proto::grant::GRANT_BYTES;
/// The smallest valid packet: header plus MAC, no padding.
pub const MIN_PACKET_BYTES: usize = HEADER_BYTES + MAC_BYTES;
/// The largest valid packet.
pub const MAX_PACKET_BYTES: usize = 1452;
/// Clock error bound value meaning "unknown".
pub const ERROR_BOUND_UNKNOWN: u32 = u32::MAX;

// Field offsets (see the module doc).
const OFF_VERSION: usize = 4;
const OFF_TYPE: usize = 5;
const OFF_FLAGS: usize = 6;
const OFF_KEY_ID: usize = 8;
const OFF_SESSION: usize = 12;
const OFF_SEQ: usize = 20;
const OFF_SENDER_ERR: usize = 24;
const OFF_REFLECTOR_ERR: usize = 28;
const OFF_T1: usize = 32;
const OFF_T2: usize = 40;
const OFF_T3: usize = 48;
const OFF_R1: usize = 56;
const OFF_R2: usize = 64;
const OFF_R3: usize = 72;
const OFF_R4: usize = 80;
const OFF_GRANT: usize = 88;

/// Kind of packet.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum MessageType {
    /// Sender → reflector.
    Request = 1,
    /// Reflector → sender.
    Reply = 2,
    /// Sender → relay (with a grant; the relay forwards it to the grant's destination as a
    /// request, see [`stamp_relay_forward`]).
    RelayForward = 3,
    /// Relay → sender: the destination's reply with the relay's return stamps (see
    /// [`stamp_relay_return`]).
    RelayReturn = 4,
}

impl MessageType {
    /// Parses the type byte.
    ///
    /// # Errors
    ///
    /// [`WireError::UnknownType`] for any other value.
    pub fn from_u8(b: u8) -> Result<Self, WireError> {
        match b {
            1 => Ok(MessageType::Request),
            2 => Ok(MessageType::Reply),
            3 => Ok(MessageType::RelayForward),
            4 => Ok(MessageType::RelayReturn),
            other => Err(WireError::UnknownType(other)),
        }
    }
}

/// Why a buffer is not a valid packet (or cannot hold one).
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum WireError {
    /// Shorter than [`MIN_PACKET_BYTES`].
    #[error("packet of {0} bytes is shorter than the minimum of {MIN_PACKET_BYTES}")]
    TooShort(usize),
    /// Longer than [`MAX_PACKET_BYTES`].
    #[error("packet of {0} bytes is longer than the maximum of {MAX_PACKET_BYTES}")]
    TooLong(usize),
    /// Does not start with [`MAGIC`].
    #[error("bad magic")]
    BadMagic,
    /// A version this build does not speak.
    #[error("unsupported wire version {0} (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// Message type byte not in the table.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// Key id not among the keys this end holds.
    #[error("unknown key id {0:#010x}")]
    UnknownKey(u32),
    /// The HMAC does not match: wrong key or altered packet.
    #[error("HMAC mismatch")]
    BadMac,
}

/// A shared secret for the UDP wire format's HMAC, with the id that names it on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// Key id carried in each packet (derived from the secret, so both ends agree).
    pub id: u32,
    /// The secret bytes.
    pub secret: Arc<[u8]>,
}

/// The secret used when no `--key` is given on either side (documented in README; responders
/// log a warning when serving with it).
pub const DEFAULT_KEY: &str = "meshlat-default-key";

impl Key {
    /// A key from a secret string; its id is the first 4 bytes of SHA-256(secret).
    pub fn from_secret(secret: &str) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        let b = d.as_ref();
        Key {
            id: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            secret: Arc::from(secret.as_bytes()),
        }
    }

    /// The well-known default key ([`DEFAULT_KEY`]).
    pub fn default_key() -> Self {
        Self::from_secret(DEFAULT_KEY)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key {{ id: {:#010x}, secret: <redacted> }}", self.id)
    }
}

/// An HMAC key ready for the wire: the id carried in packets and the prepared ring key.
#[derive(Clone)]
pub struct WireKey {
    /// [`Key::id`], written into every packet sealed with this key.
    pub id: u32,
    /// The prepared HMAC-SHA256 key (ring pre-hashes the secret once, so per-packet signing
    /// does no key setup and no allocation).
    hmac: hmac::Key,
}

impl WireKey {
    /// Prepares `key` for signing and verifying.
    pub fn new(key: &Key) -> Self {
        WireKey {
            id: key.id,
            hmac: hmac::Key::new(hmac::HMAC_SHA256, &key.secret),
        }
    }
}

impl std::fmt::Debug for WireKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WireKey {{ id: {:#010x} }}", self.id)
    }
}

/// Every field of a packet except padding and MAC.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Header {
    /// Request, reply, ...
    pub msg_type: MessageType,
    /// Reserved flags (0).
    pub flags: u16,
    /// Id of the key the packet is sealed with.
    pub key_id: u32,
    /// Random per train.
    pub session_id: u64,
    /// Packet number within the train.
    pub seq: u32,
    /// Sender's clock error bound in µs ([`ERROR_BOUND_UNKNOWN`] if unknown).
    pub sender_error_us: u32,
    /// Reflector's clock error bound in µs ([`ERROR_BOUND_UNKNOWN`] if unknown).
    pub reflector_error_us: u32,
    /// Sender send time (ns).
    pub t1: u64,
    /// Reflector receive time (ns).
    pub t2: u64,
    /// Reflector send time (ns).
    pub t3: u64,
    /// Relay forward receive (ns; 0 unless relayed).
    pub r1: u64,
    /// Relay forward send (ns).
    pub r2: u64,
    /// Relay return receive (ns).
    pub r3: u64,
    /// Relay return send (ns).
    pub r4: u64,
    /// Opaque relay grant.
    pub grant: [u8; GRANT_BYTES],
}

impl Header {
    /// A request header with every other slot zero / unknown.
    pub fn request(key_id: u32, session_id: u64, seq: u32, t1: u64, sender_error_us: u32) -> Self {
        Header {
            msg_type: MessageType::Request,
            flags: 0,
            key_id,
            session_id,
            seq,
            sender_error_us,
            reflector_error_us: ERROR_BOUND_UNKNOWN,
            t1,
            t2: 0,
            t3: 0,
            r1: 0,
            r2: 0,
            r3: 0,
            r4: 0,
            grant: [0; GRANT_BYTES],
        }
    }

    /// Parses the header of `buf` without checking the MAC (see [`decode`] for the checked
    /// form). Checks the length, magic, version and message type.
    ///
    /// # Errors
    ///
    /// [`WireError::TooShort`], [`WireError::TooLong`], [`WireError::BadMagic`],
    /// [`WireError::UnsupportedVersion`] or [`WireError::UnknownType`].
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_envelope(buf)?;
        let msg_type = MessageType::from_u8(byte(buf, OFF_TYPE))?;
        let mut grant = [0u8; GRANT_BYTES];
        if let Some(g) = buf.get(OFF_GRANT..OFF_GRANT + GRANT_BYTES) {
            grant.copy_from_slice(g);
        }
        Ok(Header {
            msg_type,
            flags: read_u16(buf, OFF_FLAGS),
            key_id: read_u32(buf, OFF_KEY_ID),
            session_id: read_u64(buf, OFF_SESSION),
            seq: read_u32(buf, OFF_SEQ),
            sender_error_us: read_u32(buf, OFF_SENDER_ERR),
            reflector_error_us: read_u32(buf, OFF_REFLECTOR_ERR),
            t1: read_u64(buf, OFF_T1),
            t2: read_u64(buf, OFF_T2),
            t3: read_u64(buf, OFF_T3),
            r1: read_u64(buf, OFF_R1),
            r2: read_u64(buf, OFF_R2),
            r3: read_u64(buf, OFF_R3),
            r4: read_u64(buf, OFF_R4),
            grant,
        })
    }

    /// Writes the header into the first [`HEADER_BYTES`] of `buf`, leaving padding and MAC
    /// untouched (call [`seal`] afterwards). The buffer's length is the packet's length.
    ///
    /// # Errors
    ///
    /// [`WireError::TooShort`] / [`WireError::TooLong`] if `buf` is not a valid packet size.
    pub fn write(&self, buf: &mut [u8]) -> Result<(), WireError> {
        check_len(buf.len())?;
        let Some(h) = buf.get_mut(..HEADER_BYTES) else {
            return Err(WireError::TooShort(buf.len()));
        };
        h[..4].copy_from_slice(&MAGIC);
        h[OFF_VERSION] = VERSION;
        h[OFF_TYPE] = self.msg_type as u8;
        h[OFF_FLAGS..OFF_FLAGS + 2].copy_from_slice(&self.flags.to_be_bytes());
        h[OFF_KEY_ID..OFF_KEY_ID + 4].copy_from_slice(&self.key_id.to_be_bytes());
        h[OFF_SESSION..OFF_SESSION + 8].copy_from_slice(&self.session_id.to_be_bytes());
        h[OFF_SEQ..OFF_SEQ + 4].copy_from_slice(&self.seq.to_be_bytes());
        h[OFF_SENDER_ERR..OFF_SENDER_ERR + 4].copy_from_slice(&self.sender_error_us.to_be_bytes());
        h[OFF_REFLECTOR_ERR..OFF_REFLECTOR_ERR + 4]
            .copy_from_slice(&self.reflector_error_us.to_be_bytes());
        for (off, v) in [
            (OFF_T1, self.t1),
            (OFF_T2, self.t2),
            (OFF_T3, self.t3),
            (OFF_R1, self.r1),
            (OFF_R2, self.r2),
            (OFF_R3, self.r3),
            (OFF_R4, self.r4),
        ] {
            h[off..off + 8].copy_from_slice(&v.to_be_bytes());
        }
        h[OFF_GRANT..OFF_GRANT + GRANT_BYTES].copy_from_slice(&self.grant);
        Ok(())
    }
}

/// Writes a complete packet into `buf` (whose length is the packet size): header, zero padding
/// and MAC. The key id written is `h.key_id`; callers pass the matching `key`.
///
/// # Errors
///
/// [`WireError::TooShort`] / [`WireError::TooLong`] if `buf` is not a valid packet size.
pub fn encode(h: &Header, key: &WireKey, buf: &mut [u8]) -> Result<(), WireError> {
    h.write(buf)?;
    let mac_at = buf.len() - MAC_BYTES; // len >= MIN_PACKET_BYTES checked by write
    if let Some(pad) = buf.get_mut(HEADER_BYTES..mac_at) {
        pad.fill(0);
    }
    seal(buf, key)
}

/// Recomputes the MAC at the end of `buf` over everything before it.
///
/// # Errors
///
/// [`WireError::TooShort`] / [`WireError::TooLong`] if `buf` is not a valid packet size.
pub fn seal(buf: &mut [u8], key: &WireKey) -> Result<(), WireError> {
    check_len(buf.len())?;
    let (body, mac) = buf.split_at_mut(buf.len() - MAC_BYTES);
    let tag = hmac::sign(&key.hmac, body);
    mac.copy_from_slice(&tag.as_ref()[..MAC_BYTES]);
    Ok(())
}

/// Checks the MAC at the end of `buf` in constant time.
///
/// # Errors
///
/// [`WireError::BadMac`] on mismatch; the length errors if `buf` is not a valid packet size.
pub fn verify(buf: &[u8], key: &WireKey) -> Result<(), WireError> {
    check_len(buf.len())?;
    let (body, mac) = buf.split_at(buf.len() - MAC_BYTES);
    let tag = hmac::sign(&key.hmac, body);
    let diff = tag.as_ref()[..MAC_BYTES]
        .iter()
        .zip(mac)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff == 0 {
        Ok(())
    } else {
        Err(WireError::BadMac)
    }
}

/// Validates the envelope (length, magic, version) and returns the key id, without parsing
/// the rest. The cheap first step for a receiver choosing a key.
///
/// # Errors
///
/// The length errors, [`WireError::BadMagic`], [`WireError::UnsupportedVersion`] or
/// [`WireError::UnknownType`].
pub fn peek(buf: &[u8]) -> Result<(MessageType, u32), WireError> {
    check_envelope(buf)?;
    Ok((
        MessageType::from_u8(byte(buf, OFF_TYPE))?,
        read_u32(buf, OFF_KEY_ID),
    ))
}

/// Parses and authenticates a packet, choosing the key by the packet's key id from `keys`.
///
/// # Errors
///
/// Any [`WireError`]: the envelope errors, [`WireError::UnknownKey`] when no key in `keys` has
/// the packet's id, [`WireError::BadMac`] when the MAC does not verify.
pub fn decode(buf: &[u8], keys: &[WireKey]) -> Result<Header, WireError> {
    let (_, key_id) = peek(buf)?;
    let key = keys
        .iter()
        .find(|k| k.id == key_id)
        .ok_or(WireError::UnknownKey(key_id))?;
    verify(buf, key)?;
    Header::parse(buf)
}

/// Stamps a request in place into a reply: type, t2, t3, reflector error bound, new MAC.
/// Padding and every other slot are kept, so the reply has exactly the request's length.
///
/// `t3` is read by calling `now` as late as possible (just before the MAC is computed).
///
/// # Errors
///
/// [`WireError::TooShort`] / [`WireError::TooLong`] if `buf` is not a valid packet size.
pub fn stamp_reply(
    buf: &mut [u8],
    key: &WireKey,
    t2: u64,
    reflector_error_us: u32,
    now: impl FnOnce() -> u64,
) -> Result<(), WireError> {
    check_len(buf.len())?;
    let Some(h) = buf.get_mut(..HEADER_BYTES) else {
        return Err(WireError::TooShort(buf.len()));
    };
    h[OFF_TYPE] = MessageType::Reply as u8;
    h[OFF_REFLECTOR_ERR..OFF_REFLECTOR_ERR + 4].copy_from_slice(&reflector_error_us.to_be_bytes());
    h[OFF_T2..OFF_T2 + 8].copy_from_slice(&t2.to_be_bytes());
    let t3 = now();
    h[OFF_T3..OFF_T3 + 8].copy_from_slice(&t3.to_be_bytes());
    seal(buf, key)
}

/// Relay, forward direction: turns an authenticated `RelayForward` in place into a request to
/// the destination — type `Request`, r1 = `r1`, r2 read by calling `now` just before the MAC is
/// recomputed. Every other byte (grant and padding included) is kept: same length.
///
/// # Errors
///
/// [`WireError::TooShort`] / [`WireError::TooLong`] if `buf` is not a valid packet size.
pub fn stamp_relay_forward(
    buf: &mut [u8],
    key: &WireKey,
    r1: u64,
    now: impl FnOnce() -> u64,
) -> Result<(), WireError> {
    stamp_relay(buf, key, MessageType::Request, (OFF_R1, r1), OFF_R2, now)
}

/// Relay, return direction: turns the destination's authenticated `Reply` in place into a
/// `RelayReturn` for the source — r3 = `r3`, r4 read by calling `now` just before the MAC is
/// recomputed. Same length.
///
/// # Errors
///
/// [`WireError::TooShort`] / [`WireError::TooLong`] if `buf` is not a valid packet size.
pub fn stamp_relay_return(
    buf: &mut [u8],
    key: &WireKey,
    r3: u64,
    now: impl FnOnce() -> u64,
) -> Result<(), WireError> {
    stamp_relay(
        buf,
        key,
        MessageType::RelayReturn,
        (OFF_R3, r3),
        OFF_R4,
        now,
    )
}

fn stamp_relay(
    buf: &mut [u8],
    key: &WireKey,
    ty: MessageType,
    (rx_off, rx): (usize, u64),
    tx_off: usize,
    now: impl FnOnce() -> u64,
) -> Result<(), WireError> {
    check_len(buf.len())?;
    let Some(h) = buf.get_mut(..HEADER_BYTES) else {
        return Err(WireError::TooShort(buf.len()));
    };
    h[OFF_TYPE] = ty as u8;
    h[rx_off..rx_off + 8].copy_from_slice(&rx.to_be_bytes());
    let tx = now();
    h[tx_off..tx_off + 8].copy_from_slice(&tx.to_be_bytes());
    seal(buf, key)
}

/// The grant field of a packet (`None` if `buf` is shorter than the header).
pub fn grant_field(buf: &[u8]) -> Option<&[u8]> {
    buf.get(OFF_GRANT..OFF_GRANT + GRANT_BYTES)
}

/// The session id and sequence of a packet, unchecked (`None` if too short).
pub fn session_seq(buf: &[u8]) -> Option<(u64, u32)> {
    (buf.len() >= HEADER_BYTES).then(|| (read_u64(buf, OFF_SESSION), read_u32(buf, OFF_SEQ)))
}

/// Converts a clock error bound in ms (from [`crate::clock::clock_error_bound_ms`]) to the wire's
/// µs field, saturating below the "unknown" value.
pub fn error_bound_to_wire(ms: Option<f64>) -> u32 {
    match ms {
        Some(ms) if ms.is_finite() && ms >= 0.0 => (ms * 1000.0)
            .round()
            .min(f64::from(ERROR_BOUND_UNKNOWN - 1))
            as u32,
        _ => ERROR_BOUND_UNKNOWN,
    }
}

/// The wire's µs error bound as ms, `None` when unknown.
pub fn error_bound_from_wire(us: u32) -> Option<f64> {
    (us != ERROR_BOUND_UNKNOWN).then(|| f64::from(us) / 1000.0)
}

fn check_len(len: usize) -> Result<(), WireError> {
    if len < MIN_PACKET_BYTES {
        Err(WireError::TooShort(len))
    } else if len > MAX_PACKET_BYTES {
        Err(WireError::TooLong(len))
    } else {
        Ok(())
    }
}

fn check_envelope(buf: &[u8]) -> Result<(), WireError> {
    check_len(buf.len())?;
    if buf.get(..4) != Some(&MAGIC[..]) {
        return Err(WireError::BadMagic);
    }
    match byte(buf, OFF_VERSION) {
        VERSION => Ok(()),
        v => Err(WireError::UnsupportedVersion(v)),
    }
}

// Readers: callers have checked `buf.len() >= MIN_PACKET_BYTES`, so these never miss; they still
// use `get` so that a logic error reads zeros instead of panicking on network input.

fn byte(buf: &[u8], off: usize) -> u8 {
    buf.get(off).copied().unwrap_or(0)
}

fn read_array<const N: usize>(buf: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = buf.get(off..off + N) {
        a.copy_from_slice(s);
    }
    a
}

fn read_u16(buf: &[u8], off: usize) -> u16 {
    u16::from_be_bytes(read_array(buf, off))
}

fn read_u32(buf: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(read_array(buf, off))
}

fn read_u64(buf: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(read_array(buf, off))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(s: &str) -> WireKey {
        WireKey::new(&Key::from_secret(s))
    }

    fn arb_header() -> impl Strategy<Value = Header> {
        (
            (1u8..=4, any::<u16>(), any::<u64>(), any::<u32>()),
            (any::<u32>(), any::<u32>()),
            prop::array::uniform7(any::<u64>()),
            prop::collection::vec(any::<u8>(), GRANT_BYTES),
        )
            .prop_map(|((ty, flags, session_id, seq), (se, re), t, g)| {
                let mut grant = [0u8; GRANT_BYTES];
                grant.copy_from_slice(&g);
                Header {
                    msg_type: MessageType::from_u8(ty).unwrap_or(MessageType::Request),
                    flags,
                    key_id: 0, // set to the key's id by the test
                    session_id,
                    seq,
                    sender_error_us: se,
                    reflector_error_us: re,
                    t1: t[0],
                    t2: t[1],
                    t3: t[2],
                    r1: t[3],
                    r2: t[4],
                    r3: t[5],
                    r4: t[6],
                    grant,
                }
            })
    }

    #[test]
    fn layout_constants_agree() {
        assert_eq!(OFF_GRANT + GRANT_BYTES, HEADER_BYTES);
        assert_eq!(MIN_PACKET_BYTES, 200);
    }

    #[test]
    fn request_encodes_to_documented_bytes() {
        let k = key("k");
        let h = Header::request(k.id, 0x0102_0304_0506_0708, 9, 0x10, 250);
        let mut buf = vec![0xAAu8; MIN_PACKET_BYTES + 4];
        encode(&h, &k, &mut buf).expect("valid size");
        assert_eq!(&buf[..4], b"MLU1");
        assert_eq!(buf[4], 2);
        assert_eq!(buf[5], 1);
        assert_eq!(&buf[8..12], &k.id.to_be_bytes());
        assert_eq!(&buf[12..20], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&buf[20..24], &[0, 0, 0, 9]);
        assert_eq!(&buf[24..28], &250u32.to_be_bytes());
        assert_eq!(&buf[28..32], &[0xFF; 4]);
        assert_eq!(&buf[32..40], &0x10u64.to_be_bytes());
        assert_eq!(
            &buf[HEADER_BYTES..HEADER_BYTES + 4],
            &[0; 4],
            "padding zeroed"
        );
        assert_eq!(decode(&buf, &[k]), Ok(h));
    }

    #[test]
    fn stamp_reply_keeps_size_and_fields() {
        let k = key("k");
        let h = Header::request(k.id, 7, 3, 1000, ERROR_BOUND_UNKNOWN);
        let mut buf = vec![0u8; 300];
        encode(&h, &k, &mut buf).expect("valid size");
        stamp_reply(&mut buf, &k, 2000, 5, || 3000).expect("valid size");
        assert_eq!(buf.len(), 300);
        let r = decode(&buf, std::slice::from_ref(&k)).expect("reply verifies");
        assert_eq!(r.msg_type, MessageType::Reply);
        assert_eq!((r.t1, r.t2, r.t3, r.seq), (1000, 2000, 3000, 3));
        assert_eq!(r.reflector_error_us, 5);
        assert_eq!(r.session_id, 7);
    }

    #[test]
    fn wrong_key_and_bad_sizes_are_rejected() {
        let (a, b) = (key("a"), key("b"));
        let mut buf = vec![0u8; MIN_PACKET_BYTES];
        encode(&Header::request(a.id, 1, 1, 1, 0), &a, &mut buf).expect("valid size");
        assert_eq!(
            decode(&buf, std::slice::from_ref(&b)),
            Err(WireError::UnknownKey(a.id))
        );
        // Same id, different secret: the MAC fails.
        let forged = WireKey { id: a.id, ..b };
        assert_eq!(decode(&buf, &[forged]), Err(WireError::BadMac));
        assert_eq!(
            decode(&buf[..MIN_PACKET_BYTES - 1], std::slice::from_ref(&a)),
            Err(WireError::TooShort(MIN_PACKET_BYTES - 1))
        );
        let big = vec![0u8; MAX_PACKET_BYTES + 1];
        assert_eq!(
            decode(&big, std::slice::from_ref(&a)),
            Err(WireError::TooLong(MAX_PACKET_BYTES + 1))
        );
        let mut v2 = buf.clone();
        v2[4] = 1; // the previous version (64-byte HMAC grants) is refused
        assert_eq!(
            decode(&v2, std::slice::from_ref(&a)),
            Err(WireError::UnsupportedVersion(1))
        );
        v2[0] = b'X';
        assert_eq!(
            decode(&v2, std::slice::from_ref(&a)),
            Err(WireError::BadMagic)
        );
        let mut ty = buf.clone();
        ty[5] = 9;
        assert_eq!(decode(&ty, &[a]), Err(WireError::UnknownType(9)));
    }

    #[test]
    fn relay_stamps_keep_size_and_fields() {
        let k = key("k");
        let mut h = Header::request(k.id, 7, 3, 1000, ERROR_BOUND_UNKNOWN);
        h.msg_type = MessageType::RelayForward;
        h.grant = [9; GRANT_BYTES];
        let mut buf = vec![0u8; 200];
        encode(&h, &k, &mut buf).expect("valid size");
        stamp_relay_forward(&mut buf, &k, 1100, || 1200).expect("valid size");
        let f = decode(&buf, std::slice::from_ref(&k)).expect("verifies");
        assert_eq!(f.msg_type, MessageType::Request);
        assert_eq!((f.r1, f.r2, f.grant), (1100, 1200, [9; GRANT_BYTES]));
        stamp_reply(&mut buf, &k, 1300, 0, || 1400).expect("valid size");
        stamp_relay_return(&mut buf, &k, 1500, || 1600).expect("valid size");
        let r = decode(&buf, std::slice::from_ref(&k)).expect("verifies");
        assert_eq!(r.msg_type, MessageType::RelayReturn);
        assert_eq!(
            (r.t1, r.t2, r.t3, r.r1, r.r2, r.r3, r.r4),
            (1000, 1300, 1400, 1100, 1200, 1500, 1600)
        );
        assert_eq!(buf.len(), 200);
        assert_eq!(session_seq(&buf), Some((7, 3)));
        assert_eq!(grant_field(&buf), Some(&[9u8; GRANT_BYTES][..]));
    }

    #[test]
    fn error_bounds_convert() {
        assert_eq!(error_bound_to_wire(None), ERROR_BOUND_UNKNOWN);
        assert_eq!(error_bound_to_wire(Some(1.5)), 1500);
        assert_eq!(error_bound_to_wire(Some(1e12)), ERROR_BOUND_UNKNOWN - 1);
        assert_eq!(error_bound_to_wire(Some(f64::NAN)), ERROR_BOUND_UNKNOWN);
        assert_eq!(error_bound_from_wire(1500), Some(1.5));
        assert_eq!(error_bound_from_wire(ERROR_BOUND_UNKNOWN), None);
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(
            mut h in arb_header(),
            len in MIN_PACKET_BYTES..=MAX_PACKET_BYTES,
            secret in "[a-z]{1,12}",
        ) {
            let k = key(&secret);
            h.key_id = k.id;
            let mut buf = vec![0x55u8; len];
            encode(&h, &k, &mut buf).expect("valid size");
            prop_assert_eq!(decode(&buf, &[k]), Ok(h));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1600)) {
            let k = key("k");
            let _ = decode(&bytes, std::slice::from_ref(&k));
            let _ = Header::parse(&bytes);
            let _ = peek(&bytes);
            let mut m = bytes.clone();
            let _ = stamp_reply(&mut m, &k, 1, 2, || 3);
        }

        #[test]
        fn arbitrary_bytes_with_valid_envelope_never_panic(
            mut bytes in prop::collection::vec(any::<u8>(), MIN_PACKET_BYTES..=MAX_PACKET_BYTES),
        ) {
            let k = key("k");
            bytes[..4].copy_from_slice(&MAGIC);
            bytes[4] = VERSION;
            bytes[8..12].copy_from_slice(&k.id.to_be_bytes());
            prop_assert!(decode(&bytes, &[k]).is_err(), "random MAC verified");
        }

        #[test]
        fn flipped_bit_fails(
            mut h in arb_header(),
            len in MIN_PACKET_BYTES..=MAX_PACKET_BYTES,
            bit in any::<prop::sample::Index>(),
        ) {
            let k = key("k");
            h.key_id = k.id;
            let mut buf = vec![0u8; len];
            encode(&h, &k, &mut buf).expect("valid size");
            let bit = bit.index(len * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            let r = decode(&buf, std::slice::from_ref(&k));
            prop_assert!(r.is_err());
            // Past the envelope and key id, only the MAC can catch it.
            if bit >= 12 * 8 {
                prop_assert_eq!(r, Err(WireError::BadMac));
            }
        }
    }
}
