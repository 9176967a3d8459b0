//! Retry classification and backoff (Vector's `RetryLogic`).
//!
//! [`FirehoseRetryLogic`] maps every failure to an [`ErrorClass`] by its variant, and every answer
//! to a [`RetryAction`]: done, or resend only the failed records. [`BATCH`] and [`SINK`] are the
//! jittered exponential delays ([`meshlat_proto::backoff`]). The dispatcher ([`super`]) applies them: throttling and outages pause the
//! whole sink (so it slows down instead of dropping), a partial failure delays only that batch.

use std::time::Duration;

use meshlat_proto::backoff::Backoff;

use super::client::{FirehoseError, PutBatchOutcome};

/// What kind of failure an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient; retry this batch after a backoff.
    Retriable,
    /// The service asks us to slow down: pause the whole sink, then retry.
    Throttled,
    /// The service is unreachable: spool, pause the whole sink, then probe with one request.
    Outage,
    /// Will fail again: dead-letter the batch.
    Permanent,
}

/// What to do after Firehose answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryAction {
    /// Every record was accepted.
    Delivered,
    /// Resend only these records (indices into the request), after a backoff.
    RetryPartial(Vec<usize>),
}

/// Classifies errors and answers (Vector's `RetryLogic` shape).
pub trait RetryLogic {
    /// The error type of the transport.
    type Error;
    /// The answer type of the transport.
    type Response;
    /// Whether (and how) to retry after `error`.
    fn classify(&self, error: &Self::Error) -> ErrorClass;
    /// Whether `error` may succeed if retried.
    fn is_retriable(&self, error: &Self::Error) -> bool {
        self.classify(error) != ErrorClass::Permanent
    }
    /// What to do with an answer.
    fn on_response(&self, response: &Self::Response) -> RetryAction;
}

/// The Firehose retry logic.
#[derive(Clone, Copy, Debug, Default)]
pub struct FirehoseRetryLogic;

impl RetryLogic for FirehoseRetryLogic {
    type Error = FirehoseError;
    type Response = PutBatchOutcome;

    fn classify(&self, error: &FirehoseError) -> ErrorClass {
        match error {
            FirehoseError::Throttled { .. } => ErrorClass::Throttled,
            FirehoseError::Unreachable { .. } => ErrorClass::Outage,
            FirehoseError::Server { .. } => ErrorClass::Retriable,
            FirehoseError::Rejected { .. } => ErrorClass::Permanent,
        }
    }

    fn on_response(&self, response: &PutBatchOutcome) -> RetryAction {
        // Per-record codes are ServiceUnavailableException or InternalFailure: both transient.
        if response.failed.is_empty() {
            RetryAction::Delivered
        } else {
            let mut idx: Vec<usize> = response.failed.iter().map(|(i, _)| *i).collect();
            idx.sort_unstable();
            idx.dedup();
            RetryAction::RetryPartial(idx)
        }
    }
}

/// Backoff for retrying one batch (partial failures, 5xx).
pub const BATCH: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(20));
/// Backoff for pausing the whole sink (throttling, outages).
pub const SINK: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_is_by_variant() {
        let l = FirehoseRetryLogic;
        let c = |e| l.classify(&e);
        assert_eq!(
            c(FirehoseError::Throttled {
                code: "ServiceUnavailableException".into(),
                message: String::new()
            }),
            ErrorClass::Throttled
        );
        assert_eq!(
            c(FirehoseError::Unreachable {
                message: "refused".into()
            }),
            ErrorClass::Outage
        );
        assert_eq!(
            c(FirehoseError::Server {
                status: Some(500),
                code: "InternalFailure".into(),
                message: String::new()
            }),
            ErrorClass::Retriable
        );
        let rejected = FirehoseError::Rejected {
            code: "InvalidArgumentException".into(),
            message: String::new(),
        };
        assert_eq!(l.classify(&rejected), ErrorClass::Permanent);
        assert!(!l.is_retriable(&rejected));
    }

    #[test]
    fn partial_failures_retry_only_failed_indices() {
        let l = FirehoseRetryLogic;
        assert_eq!(
            l.on_response(&PutBatchOutcome::default()),
            RetryAction::Delivered
        );
        let out = PutBatchOutcome {
            failed: vec![
                (4, "ServiceUnavailableException".into()),
                (1, "InternalFailure".into()),
            ],
        };
        assert_eq!(l.on_response(&out), RetryAction::RetryPartial(vec![1, 4]));
    }

    #[test]
    fn batch_and_sink_backoffs_grow_are_capped_and_jittered_within_bounds() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert_eq!(BATCH.ceiling(0), Duration::from_millis(200));
        assert_eq!(BATCH.ceiling(3), Duration::from_millis(1600));
        assert_eq!(BATCH.ceiling(40), Duration::from_secs(20));
        assert_eq!(SINK.ceiling(0), Duration::from_millis(500));
        assert_eq!(SINK.ceiling(40), Duration::from_secs(30));
        let mut seen = std::collections::HashSet::new();
        for n in 0..10 {
            for _ in 0..50 {
                let d = BATCH.delay(n, rng.random::<f64>());
                assert!(
                    d >= BATCH.ceiling(n) / 2 && d <= BATCH.ceiling(n),
                    "{n}: {d:?}"
                );
                seen.insert(d);
            }
        }
        assert!(seen.len() > 100, "delays are jittered");
    }
}
