//! Record encoding: packing NDJSON lines into Firehose records and records into
//! `PutRecordBatch` requests.
//!
//! Firehose bills every record rounded up to [`BILLING_UNIT_BYTES`], so one record per line
//! (about 1 KB each) would pay for five times the bytes sent. The [`Packer`] concatenates whole
//! lines into records of up to [`MAX_RECORD_BYTES`] and records into requests of up to
//! [`MAX_BATCH_RECORDS`] records and [`MAX_BATCH_BYTES`]. A line never straddles two records: the
//! S3 object Firehose writes is the concatenation of the records, so every line arrives whole and
//! in order within its record.

use bytes::{Bytes, BytesMut};

/// Firehose's hard limit on one record's data (1,000 KiB before base64).
pub const MAX_RECORD_BYTES: usize = 1_000 * 1024;
/// Firehose's hard limit on records per `PutRecordBatch` request.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Firehose's hard limit on the data of one `PutRecordBatch` request (4 MiB).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Firehose rounds each record up to a multiple of this for billing (5 KB).
pub const BILLING_UNIT_BYTES: usize = 5 * 1024;

/// Packing limits; each within the Firehose maxima (checked by the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackLimits {
    /// Largest record, in bytes.
    pub max_record_bytes: usize,
    /// Most records per request.
    pub max_batch_records: usize,
    /// Largest request (sum of record sizes), in bytes.
    pub max_batch_bytes: usize,
}

impl Default for PackLimits {
    fn default() -> Self {
        PackLimits {
            max_record_bytes: MAX_RECORD_BYTES,
            max_batch_records: MAX_BATCH_RECORDS,
            max_batch_bytes: MAX_BATCH_BYTES,
        }
    }
}

/// One `PutRecordBatch` worth of records, ready to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedBatch {
    /// Firehose records, each a run of whole NDJSON lines.
    pub records: Vec<Bytes>,
    /// Sum of the records' sizes.
    pub bytes: u64,
    /// Lines (measurement records) in the batch.
    pub lines: u64,
}

/// A line longer than the largest record: it cannot be sent to Firehose at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a {len}-byte line exceeds the {max}-byte Firehose record limit")]
pub struct OversizeLine {
    /// Line length, newline included.
    pub len: usize,
    /// The record limit in force.
    pub max: usize,
}

/// Packs lines into records and records into batches.
///
/// Calling protocol: [`Packer::push`] each line (newline-terminated); it returns a batch each time
/// one is full. [`Packer::finish`] returns the partial batch (called when the batch age expires or
/// at shutdown). Lines come out in the order they went in.
#[derive(Debug)]
pub struct Packer {
    limits: PackLimits,
    record: BytesMut,
    batch: PackedBatch,
}

impl Packer {
    /// An empty packer.
    pub fn new(limits: PackLimits) -> Self {
        Packer {
            limits,
            record: BytesMut::new(),
            batch: PackedBatch::default(),
        }
    }

    /// Bytes waiting (in the open record and batch).
    pub fn pending_bytes(&self) -> u64 {
        self.batch.bytes + self.record.len() as u64
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.record.is_empty() && self.batch.records.is_empty()
    }

    /// Adds one newline-terminated line. Returns a full batch when adding this line closed one.
    ///
    /// # Errors
    ///
    /// [`OversizeLine`] if the line alone is larger than a record may be; nothing is added.
    pub fn push(&mut self, line: &[u8]) -> Result<Option<PackedBatch>, OversizeLine> {
        let max_record = self
            .limits
            .max_record_bytes
            .min(self.limits.max_batch_bytes);
        if line.len() > max_record {
            return Err(OversizeLine {
                len: line.len(),
                max: max_record,
            });
        }
        let mut out = None;
        if self.record.len() + line.len() > max_record {
            out = self.close_record();
        }
        // The open record plus this line must also fit the batch's byte budget.
        if self.batch.bytes as usize + self.record.len() + line.len() > self.limits.max_batch_bytes
        {
            // Only reachable with an empty open record when the batch is nearly full.
            if let Some(b) = self.close_record() {
                out = Some(b);
            }
            if !self.batch.records.is_empty() {
                debug_assert!(out.is_none());
                out = Some(std::mem::take(&mut self.batch));
            }
        }
        if self.record.is_empty() {
            self.record.reserve(max_record.min(64 * 1024));
        }
        self.record.extend_from_slice(line);
        self.batch.lines += 1;
        Ok(out)
    }

    /// Closes the open record into the batch; returns the batch if that filled it.
    fn close_record(&mut self) -> Option<PackedBatch> {
        if self.record.is_empty() {
            return None;
        }
        let rec = self.record.split().freeze();
        self.batch.bytes += rec.len() as u64;
        self.batch.records.push(rec);
        let full = self.batch.records.len() >= self.limits.max_batch_records
            || self.batch.bytes as usize >= self.limits.max_batch_bytes;
        if full {
            // Lines of the open record (now empty) all belong to this batch.
            Some(std::mem::take(&mut self.batch))
        } else {
            None
        }
    }

    /// Returns whatever is waiting as a batch (None when empty).
    pub fn finish(&mut self) -> Option<PackedBatch> {
        let full = self.close_record();
        if full.is_some() {
            return full;
        }
        if self.batch.records.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.batch))
        }
    }
}

/// Bytes Firehose bills for records of these sizes (each rounded up to 5 KB).
pub fn billed_bytes<'a>(record_sizes: impl IntoIterator<Item = &'a Bytes>) -> u64 {
    record_sizes
        .into_iter()
        .map(|r| r.len().div_ceil(BILLING_UNIT_BYTES).max(1) as u64 * BILLING_UNIT_BYTES as u64)
        .sum()
}

/// Number of lines (newlines) in some records.
pub fn count_lines(records: &[Bytes]) -> u64 {
    records
        .iter()
        .map(|r| r.iter().filter(|&&b| b == b'\n').count() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(i: usize, len: usize) -> Vec<u8> {
        let mut v = format!("{{\"i\":{i},\"pad\":\"").into_bytes();
        while v.len() + 3 < len {
            v.push(b'x');
        }
        v.extend_from_slice(b"\"}\n");
        v
    }

    fn check(lines: &[Vec<u8>], limits: PackLimits) -> Result<(), TestCaseError> {
        let mut p = Packer::new(limits);
        let mut batches = Vec::new();
        for l in lines {
            if let Some(b) = p.push(l).map_err(|e| TestCaseError::fail(e.to_string()))? {
                batches.push(b);
            }
        }
        batches.extend(p.finish());
        prop_assert!(p.is_empty());
        let mut joined = Vec::new();
        for b in &batches {
            prop_assert!(!b.records.is_empty());
            prop_assert!(b.records.len() <= limits.max_batch_records);
            let sum: usize = b.records.iter().map(Bytes::len).sum();
            prop_assert_eq!(sum as u64, b.bytes);
            prop_assert!(sum <= limits.max_batch_bytes);
            prop_assert_eq!(b.lines, count_lines(&b.records));
            for r in &b.records {
                prop_assert!(!r.is_empty() && r.len() <= limits.max_record_bytes);
                prop_assert_eq!(r.last(), Some(&b'\n'), "a record ends on a line boundary");
                joined.extend_from_slice(r);
            }
        }
        let want: Vec<u8> = lines.concat();
        prop_assert_eq!(joined, want, "every line exactly once, in order");
        Ok(())
    }

    #[test]
    fn packs_one_kilobyte_lines_into_near_full_records() {
        let lines: Vec<_> = (0..5000).map(|i| line(i, 1000)).collect();
        let mut p = Packer::new(PackLimits::default());
        let mut batches = Vec::new();
        for l in &lines {
            batches.extend(p.push(l).expect("fits"));
        }
        batches.extend(p.finish());
        assert_eq!(batches.len(), 2, "5 MB makes a full 4 MiB batch and a rest");
        let recs: Vec<&Bytes> = batches.iter().flat_map(|b| &b.records).collect();
        assert!(recs[0].len() > MAX_RECORD_BYTES - 1000 && recs[0].len() <= MAX_RECORD_BYTES);
        let sent: u64 = recs.iter().map(|r| r.len() as u64).sum();
        let billed = billed_bytes(recs.iter().copied());
        assert!(sent as f64 / billed as f64 > 0.99, "{sent} / {billed}");
        assert!(batches[0].bytes as usize <= MAX_BATCH_BYTES);
    }

    #[test]
    fn oversize_line_is_refused_and_nothing_is_added() {
        let mut p = Packer::new(PackLimits {
            max_record_bytes: 100,
            ..PackLimits::default()
        });
        assert_eq!(
            p.push(&line(0, 101)),
            Err(OversizeLine { len: 101, max: 100 })
        );
        assert!(p.is_empty());
        assert_eq!(p.push(&line(1, 100)), Ok(None));
        assert_eq!(p.finish().map(|b| b.lines), Some(1));
    }

    #[test]
    fn billing_rounds_each_record_up_to_5_kb() {
        let r = |n| Bytes::from(vec![b'\n'; n]);
        assert_eq!(billed_bytes(&[r(1), r(5120), r(5121)]), 5120 * 4);
    }

    proptest! {
        #[test]
        fn every_line_once_in_order_within_limits(
            lens in proptest::collection::vec(3usize..300, 0..400),
            max_record in 300usize..2000,
            max_batch_records in 1usize..20,
            max_batch_bytes in 300usize..6000,
        ) {
            let lines: Vec<_> = lens.iter().enumerate().map(|(i, &n)| line(i, n.max(12))).collect();
            let limits = PackLimits { max_record_bytes: max_record, max_batch_records, max_batch_bytes: max_batch_bytes.max(max_record) };
            check(&lines, limits)?;
        }
    }
}
