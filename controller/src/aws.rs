//! The AWS SDK setup the controller's two AWS clients share (the S3 state store,
//! [`crate::store::s3`], and the Secrets Manager publisher, [`crate::publish`]): the workspace's
//! client setup ([`meshlat_runtime::aws::sdk_config`]) with the SDK's standard retry with
//! [`MAX_ATTEMPTS`], and the controller's connect and per-attempt timeouts.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use meshlat_runtime::aws::SdkSetup;

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one attempt of one call may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per call (the SDK's standard retry).
pub const MAX_ATTEMPTS: u32 = 3;

/// The SDK configuration for `region` (default: the SDK's chain, AWS_REGION or the profile)
/// and `endpoint` (default: AWS's endpoint for the service).
pub async fn sdk_config(region: Option<&str>, endpoint: Option<&str>) -> aws_config::SdkConfig {
    meshlat_runtime::aws::sdk_config(SdkSetup {
        region,
        endpoint,
        retry: RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS),
        connect_timeout: CONNECT_TIMEOUT,
        attempt_timeout: ATTEMPT_TIMEOUT,
    })
    .await
}
