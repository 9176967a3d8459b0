//! The AWS SDK setup the controller's two AWS clients share (the S3 state store,
//! [`crate::store::s3`], and the Secrets Manager publisher, [`crate::publish`]): rustls with
//! ring, the SDK's standard retry with [`MAX_ATTEMPTS`], and connect and per-attempt timeouts.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one attempt of one call may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per call (the SDK's standard retry).
pub const MAX_ATTEMPTS: u32 = 3;

/// The SDK configuration for `region` (default: the SDK's chain, AWS_REGION or the profile)
/// and `endpoint` (default: AWS's endpoint for the service).
pub async fn sdk_config(region: Option<&str>, endpoint: Option<&str>) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        );
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}
