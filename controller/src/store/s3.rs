//! [`ObjectApi`] on Amazon S3 (or moto, with `--state-endpoint`).
//!
//! This is the only module that imports `aws_sdk_s3` (STYLE §5). The SDK setup is
//! [`crate::aws`]: the HTTPS client is rustls with ring, the workspace's one crypto provider, as
//! in the agent's Firehose client. Objects are `<prefix>/<name>`; listing asks only for that prefix
//! (`s3:ListBucket` may be limited to it with an `s3:prefix` condition). Encryption at rest is
//! the bucket's default encryption (infra/cloudformation/services.yaml makes the bucket with
//! SSE-KMS); no header is sent, so a bucket policy demanding a particular key still applies.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use super::mirror::{ObjectApi, ObjectError};
use crate::config::StateStoreConfig;

/// An S3 bucket prefix.
#[derive(Clone, Debug)]
pub struct S3Objects {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl S3Objects {
    /// A client with credentials from the standard chain (environment, profile, ECS task role,
    /// instance metadata) for `cfg`'s bucket and prefix.
    ///
    /// # Errors
    ///
    /// [`ObjectError`] (op `setup`) if no region is known.
    pub async fn new(cfg: &StateStoreConfig) -> Result<Self, ObjectError> {
        // The SDK retries each call (crate::aws::MAX_ATTEMPTS); the mirror retries uploads on
        // its own too.
        let sdk = crate::aws::sdk_config(cfg.region.as_deref(), cfg.endpoint.as_deref()).await;
        let location = format!("s3://{}/{}/", cfg.bucket, cfg.prefix);
        if sdk.region().is_none() {
            return Err(ObjectError {
                op: "setup",
                location,
                message: "no AWS region: give --state-region or set AWS_REGION".into(),
            });
        }
        // Emulators (moto) answer on one host: path-style addressing.
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.endpoint.is_some())
            .build();
        Ok(S3Objects {
            client: aws_sdk_s3::Client::from_conf(conf),
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    fn error<E, R>(&self, op: &'static str, name: &str, e: SdkError<E, R>) -> ObjectError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let message = match &e {
            SdkError::ServiceError(ctx) => {
                let err = ctx.err();
                format!(
                    "{}: {}",
                    err.code().unwrap_or("error"),
                    err.message().unwrap_or("(no message)")
                )
            }
            SdkError::TimeoutError(_) => "timed out".into(),
            _ => DisplayErrorContext(&e).to_string(),
        };
        ObjectError {
            op,
            location: format!("s3://{}/{}", self.bucket, self.key(name)),
            message,
        }
    }
}

impl ObjectApi for S3Objects {
    async fn list(&self) -> Result<Vec<String>, ObjectError> {
        let prefix = self.key("");
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .delimiter("/")
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| self.error("list", "", e))?;
            names.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key()?.strip_prefix(&prefix))
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(names),
            }
        }
    }

    async fn get(&self, name: &str) -> Result<Vec<u8>, ObjectError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
            .map_err(|e| self.error("get", name, e))?;
        let body = out.body.collect().await.map_err(|e| ObjectError {
            op: "get",
            location: format!("s3://{}/{}", self.bucket, self.key(name)),
            message: e.to_string(),
        })?;
        Ok(body.into_bytes().to_vec())
    }

    async fn put(&self, name: &str, data: Vec<u8>) -> Result<(), ObjectError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .content_type("application/octet-stream")
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.error("put", name, e))?;
        Ok(())
    }

    fn location(&self) -> String {
        format!("s3://{}/{}/", self.bucket, self.prefix)
    }
}
