//! Job sets as pushed: encoded once, when the registry decides to push them, and then shared
//! (an `Arc`) by the registry, which compares the next plan against them, and the agent's
//! session, which writes them to the stream as they are ([`crate::grpc::agent`]).
//!
//! A 10,000-agent mesh holds one set per agent. As prost structs, with a `String` allocation per
//! field and the job's whole spec in every assignment, that is several times the encoded size,
//! and the session used to clone the struct again on every push.
//!
//! The bytes are a whole `ControllerMessage { job_set }`: its key and length, the set's
//! generation, lease and keys, then its assignments. Protobuf lets fields come in any order, so
//! the assignments can be encoded apart (by a recompute round, off the registry's lock) and
//! compared as bytes. prost encodes a message deterministically (the job set has no maps).

pub mod encode;

use bytes::{Bytes, BytesMut};
use meshlat_proto::pb;
use prost::Message;

/// A set's assignments, encoded by prost (the `JobSet.assignments` fields, one after another;
/// [`encode::AssignmentParts`] writes the same bytes without building the structs).
pub fn encode_assignments(assignments: Vec<pb::Assignment>) -> Bytes {
    let set = pb::JobSet {
        assignments,
        ..Default::default()
    };
    Bytes::from(set.encode_to_vec())
}

/// The jobs of encoded assignments ([`encode_assignments`], [`PushedSet::assignments`]), each
/// with a hash of its assignment's bytes (a changed target, key or version changes it), in
/// order; a job with several assignments has one entry, their hashes combined. Only the job
/// ids are decoded (the specs and targets are skipped); bytes that do not decode give what
/// decoded before them.
pub fn assigned_jobs(assignments: &Bytes) -> Vec<(String, u64)> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    /// `JobSet` with only its assignments, kept encoded.
    #[derive(Clone, PartialEq, prost::Message)]
    struct SetAssignments {
        #[prost(bytes = "bytes", repeated, tag = "3")]
        assignments: Vec<Bytes>,
    }
    /// `Assignment` with only its job.
    #[derive(Clone, PartialEq, prost::Message)]
    struct AssignmentJob {
        #[prost(message, optional, tag = "1")]
        job: Option<JobId>,
    }
    /// `Job` with only its id.
    #[derive(Clone, PartialEq, prost::Message)]
    struct JobId {
        #[prost(string, tag = "1")]
        id: String,
    }
    let set = SetAssignments::decode(assignments.clone()).unwrap_or_default();
    let mut out: Vec<(String, u64)> = Vec::with_capacity(set.assignments.len());
    for a in set.assignments {
        let Ok(AssignmentJob { job: Some(job) }) = AssignmentJob::decode(a.clone()) else {
            continue;
        };
        let mut h = DefaultHasher::new();
        a.hash(&mut h);
        let hash = h.finish();
        match out.iter_mut().find(|(id, _)| *id == job.id) {
            Some((_, prev)) => *prev = prev.rotate_left(1) ^ hash,
            None => out.push((job.id, hash)),
        }
    }
    out
}

/// A job set as pushed to one agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushedSet {
    generation: u64,
    /// The whole `ControllerMessage`; empty for the placeholder before the first push.
    message: Bytes,
    /// Where the assignments start in `message`.
    assignments_at: usize,
}

impl PushedSet {
    /// The set for `generation`, with `assignments` from [`encode_assignments`].
    pub fn new(
        generation: u64,
        lease_ms: u64,
        assignments: &Bytes,
        accept_keys: &[Vec<u8>],
        grant_public_keys: &[Vec<u8>],
    ) -> Self {
        let head = pb::JobSet {
            generation,
            lease_ms,
            assignments: Vec::new(),
            accept_keys: accept_keys.to_vec(),
            grant_public_keys: grant_public_keys.to_vec(),
            ..Default::default()
        };
        let set_len = head.encoded_len() + assignments.len();
        let mut buf = BytesMut::with_capacity(1 + 10 + set_len);
        encode::job_set_message_head(set_len, &mut buf);
        // Encoding into a BytesMut with room reserved cannot fail.
        let _ = head.encode(&mut buf);
        let assignments_at = buf.len();
        buf.extend_from_slice(assignments);
        PushedSet {
            generation,
            message: buf.freeze(),
            assignments_at,
        }
    }

    /// The generation (0: nothing pushed yet).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The encoded assignments, to compare a new plan against.
    pub fn assignments(&self) -> &[u8] {
        &self.message[self.assignments_at.min(self.message.len())..]
    }

    /// The encoded `ControllerMessage` carrying this set.
    pub fn message(&self) -> &Bytes {
        &self.message
    }

    /// The set decoded (tests and diagnostics; sessions send [`PushedSet::message`]).
    pub fn decode(&self) -> pb::JobSet {
        if self.message.is_empty() {
            return pb::JobSet::default();
        }
        match pb::ControllerMessage::decode(self.message.clone()) {
            Ok(pb::ControllerMessage {
                msg: Some(pb::controller_message::Msg::JobSet(s)),
            }) => s,
            _ => pb::JobSet::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(job: &str, target: &str) -> pb::Assignment {
        pb::Assignment {
            job: Some(pb::Job {
                id: job.into(),
                version: 3,
                ..Default::default()
            }),
            targets: vec![pb::AssignedTarget {
                target: target.into(),
                dst_agent: "b".into(),
                ..Default::default()
            }],
            key: vec![7; 32],
            load_share_agents: 0,
        }
    }

    #[test]
    fn assigned_jobs_names_each_job_once_and_its_hash_follows_its_bytes() {
        let set = |t: &str| {
            encode_assignments(vec![
                assignment("j1", "udp://10.0.0.1:7710"),
                assignment("j2", t),
                assignment("j1", "tcp://10.0.0.1:7711"),
            ])
        };
        let a = assigned_jobs(&set("x"));
        let ids: Vec<&str> = a.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["j1", "j2"]);
        let b = assigned_jobs(&set("y"));
        assert_eq!(a[0], b[0], "j1 unchanged");
        assert_ne!(a[1].1, b[1].1, "j2's target changed");
        assert!(assigned_jobs(&Bytes::new()).is_empty());
        assert!(assigned_jobs(&Bytes::from_static(&[0xff, 0xff])).is_empty());
    }

    #[test]
    fn the_bytes_are_the_controller_message_prost_would_encode() {
        let assignments = vec![
            assignment("j1", "udp://10.0.0.1:7710"),
            assignment("j2", "x"),
        ];
        let want = pb::JobSet {
            generation: 42,
            lease_ms: 60_000,
            assignments: assignments.clone(),
            accept_keys: vec![vec![1; 32]],
            grant_public_keys: vec![vec![2; 32], vec![3; 32]],
            ..Default::default()
        };
        let pushed = PushedSet::new(
            42,
            60_000,
            &encode_assignments(assignments.clone()),
            &want.accept_keys,
            &want.grant_public_keys,
        );
        // A client's prost decodes it to the same set, field for field.
        let msg = pb::ControllerMessage::decode(pushed.message().clone()).expect("decodes");
        assert_eq!(
            msg,
            pb::ControllerMessage {
                msg: Some(pb::controller_message::Msg::JobSet(want.clone()))
            }
        );
        assert_eq!(pushed.decode(), want);
        assert_eq!(pushed.generation(), 42);
        // Same assignments, same bytes; a change shows.
        assert_eq!(
            pushed.assignments(),
            &encode_assignments(assignments.clone())[..]
        );
        let mut other = assignments;
        other[1].targets[0].target = "y".into();
        assert_ne!(pushed.assignments(), &encode_assignments(other)[..]);
        assert!(PushedSet::default().decode().assignments.is_empty());
    }
}
