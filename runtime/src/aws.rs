//! The AWS SDK configuration both binaries build their clients from (the agent's Firehose sink,
//! the controller's S3 state store and Secrets Manager publisher): HTTPS on rustls with ring, the
//! workspace's one crypto provider (the SDK's default client would bring aws-lc-rs), connect and
//! per-attempt timeouts, and the caller's retry policy.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

/// How a client talks to AWS.
#[derive(Clone, Debug)]
pub struct SdkSetup<'a> {
    /// Region; `None`: the SDK's chain (`AWS_REGION`, the profile).
    pub region: Option<&'a str>,
    /// Endpoint URL; `None`: AWS's endpoint for the service.
    pub endpoint: Option<&'a str>,
    /// The SDK's own retries (disabled where the caller retries itself).
    pub retry: RetryConfig,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long one attempt of one call may take.
    pub attempt_timeout: Duration,
}

/// Loads the SDK configuration for `setup` (credentials from the SDK's default chain).
pub async fn sdk_config(setup: SdkSetup<'_>) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(setup.retry)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(setup.connect_timeout)
                .operation_attempt_timeout(setup.attempt_timeout)
                .build(),
        );
    if let Some(r) = setup.region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    if let Some(e) = setup.endpoint {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}
