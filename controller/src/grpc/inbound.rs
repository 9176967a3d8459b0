//! An agent session's incoming messages, read from the HTTP/2 request body with no buffer that
//! outlives its message.
//!
//! tonic's `Streaming` keeps one growable buffer per stream that reserves the whole length of
//! each message and never shrinks: after one maximum-size `Summaries` (about 576 KiB, the
//! session limit [`crate::limits::agent_message_limit`]) the session holds that much until it
//! ends, so 1,000 sessions pinned about 560 MiB of buffers alone. [`Inbound`] instead holds the
//! received chunks only until their message is complete, decodes it from a buffer of exactly
//! its length (or straight from the chunk when one holds it all), and drops that buffer at
//! once; bytes left over between messages are copied out, so a few bytes never pin a large
//! HTTP/2 read buffer. An idle session holds nothing here.
//!
//! # Framing (gRPC over HTTP/2)
//!
//! Each message is a 5-byte prefix — a compression flag (0; compressed messages are refused with
//! `UNIMPLEMENTED`: no agent compresses) and a big-endian u32 length — and the protobuf bytes.
//! A length over the session's limit ends the session with `RESOURCE_EXHAUSTED` before any of
//! its bytes are buffered, as tonic does. A body that ends inside a message is `INTERNAL`.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use meshlat_proto::pb;
use prost::Message;
use tonic::Status;
use tonic::codegen::{Body, StdError};

/// The gRPC message prefix: compression flag and length.
const PREFIX: usize = 5;
/// Leftover bytes up to this size are copied out of the chunk they arrived in.
const COMPACT_BELOW: usize = 4096;

/// A session's incoming `AgentMessage`s (see the module docs).
pub struct Inbound {
    body: UnsyncBoxBody<Bytes, Status>,
    /// Received bytes not yet consumed, in order.
    chunks: VecDeque<Bytes>,
    /// Their total length.
    buffered: usize,
    /// Largest message accepted.
    limit: usize,
    /// The body has ended.
    ended: bool,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("buffered", &self.buffered)
            .field("limit", &self.limit)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// Reads `body` (a request body of `AgentService.Connect`), accepting messages up to
    /// `limit` bytes.
    pub fn new<B>(body: B, limit: usize) -> Self
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        let body = body
            .map_frame(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))
            .map_err(|e| Status::from_error(e.into()))
            .boxed_unsync();
        Inbound {
            body,
            chunks: VecDeque::new(),
            buffered: 0,
            limit,
            ended: false,
        }
    }

    /// Bytes received and not yet consumed (at most one message and its successor's start).
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The next message; `None` when the agent closed its side.
    ///
    /// # Errors
    ///
    /// `RESOURCE_EXHAUSTED` for a message over the limit, `UNIMPLEMENTED` for a compressed one,
    /// `INVALID_ARGUMENT` for one that does not decode, `INTERNAL` for a body ending inside a
    /// message, or the stream's own error.
    pub async fn message(&mut self) -> Result<Option<pb::AgentMessage>, Status> {
        loop {
            if let Some(len) = self.complete()? {
                return self.take(len).map(Some);
            }
            if self.ended {
                return if self.buffered == 0 {
                    Ok(None)
                } else {
                    Err(Status::internal(format!(
                        "the stream ended inside a message ({} bytes of it received)",
                        self.buffered
                    )))
                };
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        self.buffered += data.len();
                        self.chunks.push_back(data);
                    }
                }
                Some(Err(status)) => return Err(status),
                None => self.ended = true,
            }
        }
    }

    /// The length of the next message if all of it has arrived (checking its prefix first).
    fn complete(&self) -> Result<Option<usize>, Status> {
        if self.buffered < PREFIX {
            return Ok(None);
        }
        let mut prefix = [0u8; PREFIX];
        self.peek(&mut prefix);
        match prefix[0] {
            0 => {}
            1 => {
                return Err(Status::unimplemented(
                    "compressed messages are not accepted on AgentService.Connect",
                ));
            }
            f => {
                return Err(Status::internal(format!(
                    "invalid gRPC compression flag {f} (0 or 1)"
                )));
            }
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.limit {
            return Err(Status::resource_exhausted(format!(
                "message of {len} bytes is over the session's limit of {} bytes",
                self.limit
            )));
        }
        Ok((self.buffered >= PREFIX + len).then_some(len))
    }

    /// Copies the first `out.len()` buffered bytes into `out` (they must be there).
    fn peek(&self, out: &mut [u8]) {
        let mut n = 0;
        for c in &self.chunks {
            let k = (out.len() - n).min(c.len());
            out[n..n + k].copy_from_slice(&c[..k]);
            n += k;
            if n == out.len() {
                return;
            }
        }
    }

    /// Removes the next `n` bytes as one contiguous buffer (no copy when one chunk holds them).
    fn split(&mut self, n: usize) -> Bytes {
        self.buffered -= n;
        if let Some(front) = self.chunks.front_mut()
            && front.len() >= n
        {
            let out = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return out;
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let Some(mut c) = self.chunks.pop_front() else {
                break;
            };
            let k = (n - out.len()).min(c.len());
            out.extend_from_slice(&c.split_to(k));
            if !c.is_empty() {
                self.chunks.push_front(c);
            }
        }
        out.freeze()
    }

    /// Consumes the prefix and the `len` bytes of the next message and decodes them.
    fn take(&mut self, len: usize) -> Result<pb::AgentMessage, Status> {
        self.split(PREFIX);
        let bytes = self.split(len);
        let msg = pb::AgentMessage::decode(bytes)
            .map_err(|e| Status::invalid_argument(format!("AgentMessage does not decode: {e}")));
        // A few leftover bytes (the next message's start) must not keep a large chunk alive.
        if self.buffered > 0 && self.buffered < COMPACT_BELOW {
            let rest = self.split(self.buffered);
            self.buffered = rest.len();
            self.chunks.push_back(Bytes::copy_from_slice(&rest));
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use http_body_util::combinators::UnsyncBoxBody;

    fn frame(m: &pb::AgentMessage) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut v = vec![0];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(&body);
        v
    }

    fn hb(ms: i64) -> pb::AgentMessage {
        pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
                unix_ms: ms,
                generation: 7,
            })),
        }
    }

    /// A body delivering `bytes` in chunks of `sizes` (cycled).
    fn body(bytes: Vec<u8>, sizes: &[usize]) -> UnsyncBoxBody<Bytes, std::io::Error> {
        let mut chunks = Vec::new();
        let mut rest = &bytes[..];
        let mut i = 0;
        while !rest.is_empty() {
            let k = sizes[i % sizes.len()].min(rest.len());
            chunks.push(Ok::<_, std::io::Error>(hyper::body::Frame::data(
                Bytes::copy_from_slice(&rest[..k]),
            )));
            rest = &rest[k..];
            i += 1;
        }
        StreamBody::new(tokio_stream::iter(chunks)).boxed_unsync()
    }

    #[tokio::test]
    async fn messages_split_anyhow_across_chunks_decode_in_order() {
        let msgs: Vec<pb::AgentMessage> = (0..50).map(hb).collect();
        let bytes: Vec<u8> = msgs.iter().flat_map(frame).collect();
        for sizes in [&[1usize][..], &[3, 7], &[4096], &[2, 100, 5]] {
            let mut inbound = Inbound::new(body(bytes.clone(), sizes), 1 << 20);
            for m in &msgs {
                assert_eq!(inbound.message().await.expect("ok").as_ref(), Some(m));
            }
            assert_eq!(inbound.message().await.expect("end"), None);
            assert_eq!(inbound.buffered(), 0);
        }
    }

    #[tokio::test]
    async fn bad_frames_are_refused_naming_what_is_wrong() {
        let big = [0u8, 0, 0x10, 0, 1]; // 1 MiB + 1
        let e = Inbound::new(body(big.to_vec(), &[5]), 1 << 20)
            .message()
            .await
            .expect_err("over");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("limit of 1048576 bytes"), "{e}");
        let e = Inbound::new(body(vec![1, 0, 0, 0, 1, 0], &[6]), 100)
            .message()
            .await
            .expect_err("compressed");
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{e}");
        let mut cut = frame(&hb(1));
        cut.pop();
        let e = Inbound::new(body(cut, &[4]), 100)
            .message()
            .await
            .expect_err("cut");
        assert_eq!(e.code(), tonic::Code::Internal, "{e}");
        let e = Inbound::new(body(vec![0, 0, 0, 0, 2, 0xff, 0xff], &[7]), 100)
            .message()
            .await
            .expect_err("garbage");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    }

    #[tokio::test]
    async fn leftovers_are_copied_out_of_their_chunk() {
        // One chunk: a message and the first 3 bytes of the next.
        let mut bytes = frame(&hb(1));
        let second = frame(&hb(2));
        bytes.extend_from_slice(&second[..3]);
        let mut all = bytes.clone();
        all.extend_from_slice(&second[3..]);
        let first_len = bytes.len();
        let mut inbound = Inbound::new(body(all, &[first_len, 100]), 100);
        assert_eq!(inbound.message().await.expect("1"), Some(hb(1)));
        assert_eq!(inbound.buffered(), 3);
        assert_eq!(inbound.chunks.front().map(Bytes::len), Some(3));
        assert_eq!(inbound.message().await.expect("2"), Some(hb(2)));
    }
}
