//! Transport: the [`FirehoseApi`] trait and its AWS SDK implementation, [`AwsFirehose`].
//!
//! This is the only module that imports `aws_sdk_firehose` and `aws_config` (STYLE §5); the
//! client setup itself is the workspace's one, [`meshlat_runtime::aws::sdk_config`]. It turns SDK results into plain values:
//! [`PutBatchOutcome`] for a request Firehose answered (listing the records it failed), and a
//! [`FirehoseError`] whose variant says what kind of failure it was, so the retry logic decides by
//! variant, never by parsing messages.
//!
//! The SDK's own retries are disabled: [`super::retry`] owns retrying, backoff and what to do
//! during an outage.

use std::future::Future;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_sdk_firehose::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_firehose::operation::put_record_batch::PutRecordBatchError;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record as FhRecord;
use bytes::Bytes;

/// How long to wait for a TCP connection to Firehose.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one `PutRecordBatch` attempt may take (a blackholed endpoint ends here).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends batches of records to a Firehose stream.
pub trait FirehoseApi: Clone + Send + Sync + 'static {
    /// One `PutRecordBatch` call. `Ok` means Firehose answered; records it did not accept are
    /// listed in the outcome.
    fn put_record_batch(
        &self,
        stream: &str,
        records: Vec<Bytes>,
    ) -> impl Future<Output = Result<PutBatchOutcome, FirehoseError>> + Send;
}

/// Firehose's answer to a `PutRecordBatch` it processed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutBatchOutcome {
    /// Records Firehose did not accept: (index in the request, error code). Empty: all delivered.
    pub failed: Vec<(usize, String)>,
}

/// A `PutRecordBatch` call that failed as a whole.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FirehoseError {
    /// Firehose is throttling (`ServiceUnavailableException`, `ThrottlingException`, HTTP 429).
    #[error("throttled: {code}: {message}")]
    Throttled {
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
    /// Firehose could not be reached or did not answer in time.
    #[error("unreachable: {message}")]
    Unreachable {
        /// What happened (connect error, timeout...).
        message: String,
    },
    /// A server-side or otherwise transient failure (HTTP 5xx, unexpected answers).
    #[error("server error (HTTP {status:?}): {code}: {message}")]
    Server {
        /// HTTP status, if there was a response.
        status: Option<u16>,
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
    /// Firehose refused the request and would refuse it again (bad argument, unknown stream...).
    #[error("rejected: {code}: {message}")]
    Rejected {
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
}

/// The AWS SDK could not be configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientSetupError {
    /// No region from the flag, the environment or the profile.
    #[error("no AWS region: give --firehose-region or set AWS_REGION (needed for stream {stream})")]
    NoRegion {
        /// Stream name.
        stream: String,
    },
}

/// [`FirehoseApi`] on the AWS SDK.
#[derive(Clone, Debug)]
pub struct AwsFirehose {
    client: aws_sdk_firehose::Client,
}

impl AwsFirehose {
    /// A client with credentials from the standard chain (environment, profile, ECS task role,
    /// instance metadata), an optional region and endpoint override (moto, LocalStack, VPC
    /// endpoints), and no SDK-level retries.
    ///
    /// # Errors
    ///
    /// [`ClientSetupError::NoRegion`] if no region is known.
    pub async fn new(
        stream: &str,
        region: Option<&str>,
        endpoint: Option<&str>,
    ) -> Result<Self, ClientSetupError> {
        let sdk = meshlat_runtime::aws::sdk_config(meshlat_runtime::aws::SdkSetup {
            region,
            endpoint,
            retry: RetryConfig::disabled(),
            connect_timeout: CONNECT_TIMEOUT,
            attempt_timeout: ATTEMPT_TIMEOUT,
        })
        .await;
        if sdk.region().is_none() {
            return Err(ClientSetupError::NoRegion {
                stream: stream.into(),
            });
        }
        Ok(AwsFirehose {
            client: aws_sdk_firehose::Client::new(&sdk),
        })
    }
}

impl FirehoseApi for AwsFirehose {
    async fn put_record_batch(
        &self,
        stream: &str,
        records: Vec<Bytes>,
    ) -> Result<PutBatchOutcome, FirehoseError> {
        let records: Vec<FhRecord> = records
            .into_iter()
            .filter_map(|data| {
                FhRecord::builder()
                    .data(Blob::new(data.to_vec()))
                    .build()
                    .ok()
            })
            .collect();
        let res = self
            .client
            .put_record_batch()
            .delivery_stream_name(stream)
            .set_records(Some(records))
            .send()
            .await;
        match res {
            Ok(out) => Ok(PutBatchOutcome {
                failed: out
                    .request_responses()
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| e.error_code().map(|c| (i, c.to_string())))
                    .collect(),
            }),
            Err(e) => Err(classify_sdk_error(e)),
        }
    }
}

fn classify_sdk_error<R>(e: SdkError<PutRecordBatchError, R>) -> FirehoseError
where
    R: std::fmt::Debug + HttpStatus,
{
    match e {
        SdkError::ServiceError(ctx) => {
            let status = Some(ctx.raw().status_u16());
            let err = ctx.into_err();
            let code = err.code().unwrap_or("Unknown").to_string();
            let message = err.message().unwrap_or_default().to_string();
            match err {
                PutRecordBatchError::ServiceUnavailableException(_) => {
                    FirehoseError::Throttled { code, message }
                }
                PutRecordBatchError::InvalidArgumentException(_)
                | PutRecordBatchError::InvalidKmsResourceException(_)
                | PutRecordBatchError::InvalidSourceException(_)
                | PutRecordBatchError::ResourceNotFoundException(_) => {
                    FirehoseError::Rejected { code, message }
                }
                _ if status == Some(429)
                    || matches!(
                        code.as_str(),
                        "ThrottlingException" | "LimitExceededException"
                    ) =>
                {
                    FirehoseError::Throttled { code, message }
                }
                // Anything else (5xx, expired credentials, unknown codes) may pass: retry it.
                _ => FirehoseError::Server {
                    status,
                    code,
                    message,
                },
            }
        }
        SdkError::TimeoutError(_) => FirehoseError::Unreachable {
            message: "request timed out".into(),
        },
        SdkError::DispatchFailure(d) => FirehoseError::Unreachable {
            message: format!("{d:?}"),
        },
        SdkError::ResponseError(r) => FirehoseError::Unreachable {
            message: format!("unreadable response: {r:?}"),
        },
        other => FirehoseError::Server {
            status: None,
            code: "Local".into(),
            message: aws_sdk_firehose::error::DisplayErrorContext(&other).to_string(),
        },
    }
}

/// The HTTP status of a raw response (a seam so the classifier is generic over the SDK's type).
trait HttpStatus {
    fn status_u16(&self) -> u16;
}

impl HttpStatus for aws_sdk_firehose::config::http::HttpResponse {
    fn status_u16(&self) -> u16 {
        self.status().as_u16()
    }
}
