//! Publishing the join token and the CA certificate to AWS Secrets Manager
//! (`--join-token-secret-arn`, `--ca-cert-secret-arn`), so that a deployment needs no manual
//! step between the controller's first start and its agents (infra/cloudformation/services.yaml).
//!
//! At start, after the CA exists (and, with a state bucket, is in the bucket), each configured
//! secret is read and written only if it does not hold the value yet: a restarted controller
//! with the same CA and join secret changes nothing, a rotated join secret (a new
//! `--join-secret`) writes the new token. Values are never logged.
//!
//! This is the only module that imports `aws_sdk_secretsmanager` (STYLE §5). The SDK setup
//! (rustls with ring, retries, timeouts) is [`crate::aws`], shared with [`crate::store::s3`].
//! Calls go to the secret's own region (from its ARN).

use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::config::{PublishConfig, SecretArn};

/// A secret could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {arn}: {op}: {message}")]
pub struct PublishError {
    /// The flag naming the secret.
    pub flag: &'static str,
    /// The secret.
    pub arn: String,
    /// `GetSecretValue` or `PutSecretValue`.
    pub op: &'static str,
    /// The service's error (code and message), never the value.
    pub message: String,
}

/// What publishing one secret did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// It already held the value.
    Unchanged,
    /// A new version with the value was written.
    Written,
}

/// Writes the join token and the CA certificate where `cfg` says, each only if it differs.
///
/// # Errors
///
/// [`PublishError`] naming the flag and the secret.
pub async fn publish(
    cfg: &PublishConfig,
    token: impl Fn(&str) -> String,
    ca_pem: &str,
) -> Result<(), PublishError> {
    let mut items: Vec<(&'static str, &SecretArn, String)> = Vec::new();
    if let Some((arn, secret)) = &cfg.join_token {
        items.push(("--join-token-secret-arn", arn, token(secret)));
    }
    if let Some(arn) = &cfg.ca_cert {
        items.push(("--ca-cert-secret-arn", arn, ca_pem.to_string()));
    }
    for (flag, arn, value) in items {
        let client = client(&arn.region, cfg.endpoint.as_deref()).await;
        let what = put_if_changed(&client, flag, &arn.arn, &value).await?;
        tracing::info!(message = "Secret published.", flag, secret = %arn.arn, outcome = ?what);
    }
    Ok(())
}

async fn client(region: &str, endpoint: Option<&str>) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&crate::aws::sdk_config(Some(region), endpoint).await)
}

fn message<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    match e.code() {
        Some(code) => format!("{code}: {}", e.message().unwrap_or_default()),
        None => DisplayErrorContext(e).to_string(),
    }
}

/// Reads the secret's current value and writes `value` as a new version if it differs.
async fn put_if_changed(
    client: &aws_sdk_secretsmanager::Client,
    flag: &'static str,
    arn: &str,
    value: &str,
) -> Result<Published, PublishError> {
    let err = |op: &'static str, message: String| PublishError {
        flag,
        arn: arn.to_string(),
        op,
        message,
    };
    match client.get_secret_value().secret_id(arn).send().await {
        Ok(out) if out.secret_string() == Some(value) => return Ok(Published::Unchanged),
        Ok(_) => {}
        // A secret made without a value (the deployment's placeholder) has no AWSCURRENT yet.
        Err(e)
            if e.code() == Some("ResourceNotFoundException") && e.as_service_error().is_some() => {}
        Err(e) => return Err(err("GetSecretValue", message(&e))),
    }
    client
        .put_secret_value()
        .secret_id(arn)
        .secret_string(value)
        .send()
        .await
        .map_err(|e| err("PutSecretValue", message(&e)))?;
    Ok(Published::Written)
}
