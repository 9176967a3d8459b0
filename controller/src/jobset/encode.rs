//! Protobuf written by hand where prost would copy: the only module that knows the field numbers
//! of the pushed messages (`proto/meshlat.proto`: `ControllerMessage.job_set`,
//! `JobSet.assignments`, `Assignment.job`, `.targets` and `.key`).
//!
//! A plan for 10,000 agents repeats each job and each agent's probe target thousands of times.
//! prost encodes only whole structs, so building them would clone the job's spec and five
//! strings per target for every assignment and encode them all again; instead the shared parts
//! are encoded once ([`AssignmentParts`], targets by prost on their own) and copied. Protobuf
//! lets fields come in any order and prost encodes deterministically, so the bytes are exactly
//! what prost would encode for the same structs (tested here and in [`crate::pinglist`]).

use bytes::BytesMut;
use meshlat_proto::pb;
use prost::encoding::{self, WireType};

/// `ControllerMessage.job_set`.
const CONTROLLER_MESSAGE_JOB_SET: u32 = 2;
/// `JobSet.assignments`.
const JOB_SET_ASSIGNMENTS: u32 = 3;
/// `Assignment.job`.
const ASSIGNMENT_JOB: u32 = 1;
/// `Assignment.targets`.
const ASSIGNMENT_TARGETS: u32 = 2;
/// `Assignment.key`.
const ASSIGNMENT_KEY: u32 = 3;
/// `Assignment.load_share_agents`.
const ASSIGNMENT_LOAD_SHARE_AGENTS: u32 = 4;

/// Writes the key and length of `ControllerMessage.job_set` for a `JobSet` of `set_len` bytes;
/// the set's fields follow.
pub fn job_set_message_head(set_len: usize, buf: &mut BytesMut) {
    encoding::encode_key(CONTROLLER_MESSAGE_JOB_SET, WireType::LengthDelimited, buf);
    encoding::encode_varint(set_len as u64, buf);
}

/// What every assignment of one job shares, encoded once: its `job` and `key` fields.
#[derive(Clone, Debug, Default)]
pub struct AssignmentParts {
    /// `Assignment.job`.
    head: Vec<u8>,
    /// `Assignment.key` (absent for an empty key, as prost leaves it), then
    /// `Assignment.load_share_agents` (absent when 0).
    tail: Vec<u8>,
}

impl AssignmentParts {
    /// The parts of `job`'s assignments, signed with `wire_key`; a load job with
    /// `rate_per_job` says how many agents share its rate (`load_share_agents`, 0 for others).
    pub fn new(job: &pb::Job, wire_key: &[u8], load_share_agents: u32) -> Self {
        let mut head = Vec::new();
        encoding::message::encode(ASSIGNMENT_JOB, job, &mut head);
        let mut tail = Vec::new();
        if !wire_key.is_empty() {
            encoding::bytes::encode(ASSIGNMENT_KEY, &wire_key.to_vec(), &mut tail);
        }
        if load_share_agents != 0 {
            encoding::uint32::encode(ASSIGNMENT_LOAD_SHARE_AGENTS, &load_share_agents, &mut tail);
        }
        AssignmentParts { head, tail }
    }

    /// Appends one `JobSet.assignments` field to `buf`: the job, `targets` (each an encoded
    /// `AssignedTarget`, in order) and the key.
    pub fn append<'t>(&self, targets: impl Iterator<Item = &'t [u8]> + Clone, buf: &mut Vec<u8>) {
        let field = |len: usize| 1 + encoding::encoded_len_varint(len as u64) + len;
        let len = self.head.len()
            + targets.clone().map(|b| field(b.len())).sum::<usize>()
            + self.tail.len();
        buf.reserve(field(len));
        encoding::encode_key(JOB_SET_ASSIGNMENTS, WireType::LengthDelimited, buf);
        encoding::encode_varint(len as u64, buf);
        buf.extend_from_slice(&self.head);
        for b in targets {
            encoding::encode_key(ASSIGNMENT_TARGETS, WireType::LengthDelimited, buf);
            encoding::encode_varint(b.len() as u64, buf);
            buf.extend_from_slice(b);
        }
        buf.extend_from_slice(&self.tail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn assignments_are_what_prost_encodes() {
        let job = pb::Job {
            id: "j1".into(),
            version: 3,
            ..Default::default()
        };
        let targets: Vec<pb::AssignedTarget> = ["udp://10.0.0.1:7710", "tcp://x:1"]
            .into_iter()
            .map(|t| pb::AssignedTarget {
                target: t.into(),
                dst_agent: "b".into(),
                ..Default::default()
            })
            .collect();
        let encoded: Vec<Vec<u8>> = targets.iter().map(|t| t.encode_to_vec()).collect();
        for key in [vec![7; 32], Vec::new()] {
            let parts = AssignmentParts::new(&job, &key, 0);
            let mut buf = Vec::new();
            parts.append(encoded.iter().map(|b| &b[..]), &mut buf);
            parts.append(std::iter::empty(), &mut buf);
            let want = pb::JobSet {
                assignments: vec![
                    pb::Assignment {
                        job: Some(job.clone()),
                        targets: targets.clone(),
                        key: key.clone(),
                        load_share_agents: 0,
                    },
                    pb::Assignment {
                        job: Some(job.clone()),
                        targets: Vec::new(),
                        key: key.clone(),
                        load_share_agents: 0,
                    },
                ],
                ..Default::default()
            };
            assert_eq!(buf, want.encode_to_vec());
        }
    }

    #[test]
    fn a_load_share_is_what_prost_encodes() {
        let job = pb::Job {
            id: "load".into(),
            version: 2,
            ..Default::default()
        };
        for (key, share) in [(vec![7; 32], 3), (Vec::new(), 1), (vec![1], 0)] {
            let mut buf = Vec::new();
            AssignmentParts::new(&job, &key, share).append(std::iter::empty(), &mut buf);
            let want = pb::JobSet {
                assignments: vec![pb::Assignment {
                    job: Some(job.clone()),
                    targets: Vec::new(),
                    key: key.clone(),
                    load_share_agents: share,
                }],
                ..Default::default()
            };
            assert_eq!(buf, want.encode_to_vec(), "share {share}");
        }
    }
}
