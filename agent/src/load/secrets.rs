//! Load credentials from AWS Secrets Manager (`LoadCredentials.secrets_manager_arn`): the
//! secret's string value holds `key:secret` lines, the format of a credentials file
//! ([`super::credentials`]).
//!
//! The session fetches them when a job set arrives, before converting it
//! ([`LoadSecrets::resolve`]), so a secret that cannot be read refuses its job in the job set's
//! acknowledgement. A secret read for a job is kept until the job changes (a new version) or
//! goes; a failed read is tried again with the next job set. The call goes to the secret's own
//! region (from its ARN) with the agent's AWS credentials (the SDK's default chain: environment,
//! profile, ECS task role, instance metadata); `--load-secrets-endpoint` points it elsewhere
//! (moto, LocalStack, a VPC endpoint). Values are never logged; errors carry the service's code
//! and message, or the line number of a malformed line, never the value.
//!
//! This is the only module of the agent that imports `aws_sdk_secretsmanager` (STYLE §5).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata};
use meshlat_proto::pb;

use super::credentials::Credentials;

/// Longest wait for one secret (all attempts).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where secret values come from: Secrets Manager, or a fake in tests.
pub trait SecretSource: Send + Sync + 'static {
    /// The secret's string value.
    ///
    /// # Errors
    ///
    /// Why it could not be read (never the value).
    fn get(&self, arn: &str) -> impl Future<Output = Result<String, String>> + Send;
}

/// AWS Secrets Manager through the SDK.
#[derive(Clone, Debug, Default)]
pub struct SecretsManager {
    /// Endpoint override (`--load-secrets-endpoint`); `None`: AWS's.
    pub endpoint: Option<String>,
}

/// The credentials of each load job whose source is a Secrets Manager ARN, by job id:
/// what [`super::job::load_set`] uses for them.
pub type ResolvedSecrets = BTreeMap<String, Result<Credentials, String>>;

/// The session's secret reader and what it has read (cheap to clone: shared).
#[derive(Clone)]
pub struct LoadSecrets<S = SecretsManager> {
    source: Arc<S>,
    /// (job id, version, ARN) → credentials read for it.
    cache: Arc<Mutex<BTreeMap<(String, u64, String), Credentials>>>,
}

/// The region of a Secrets Manager secret ARN (`arn:PARTITION:secretsmanager:REGION:…`).
pub fn arn_region(arn: &str) -> Option<&str> {
    let mut parts = arn.split(':');
    let (Some("arn"), Some(_), Some("secretsmanager"), Some(region)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    (!region.is_empty()).then_some(region)
}

impl SecretSource for SecretsManager {
    async fn get(&self, arn: &str) -> Result<String, String> {
        let region = arn_region(arn).ok_or_else(|| {
            "not a Secrets Manager ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)"
                .to_string()
        })?;
        let sdk = meshlat_runtime::aws::sdk_config(meshlat_runtime::aws::SdkSetup {
            region: Some(region),
            endpoint: self.endpoint.as_deref(),
            retry: RetryConfig::standard().with_max_attempts(2),
            connect_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(4),
        })
        .await;
        let client = aws_sdk_secretsmanager::Client::new(&sdk);
        let out = client
            .get_secret_value()
            .secret_id(arn)
            .send()
            .await
            .map_err(|e| match e.code() {
                Some(code) => format!(
                    "GetSecretValue: {code}: {}",
                    e.message().unwrap_or_default()
                ),
                None => format!("GetSecretValue: {}", DisplayErrorContext(&e)),
            })?;
        out.secret_string()
            .map(str::to_string)
            .ok_or_else(|| "the secret has no string value".to_string())
    }
}

impl LoadSecrets<SecretsManager> {
    /// Reads from Secrets Manager (at `endpoint`, if given).
    pub fn new(endpoint: Option<String>) -> Self {
        LoadSecrets::with_source(SecretsManager { endpoint })
    }
}

impl<S: SecretSource> LoadSecrets<S> {
    /// Reads from `source`.
    pub fn with_source(source: S) -> Self {
        LoadSecrets {
            source: Arc::new(source),
            cache: Arc::default(),
        }
    }

    /// The credentials of every load job of `set` that names a Secrets Manager ARN, read now
    /// unless read before for the same job version (module docs).
    pub async fn resolve(&self, set: &pb::JobSet) -> ResolvedSecrets {
        let mut out = BTreeMap::new();
        let mut keep = Vec::new();
        for a in &set.assignments {
            let Some(job) = &a.job else { continue };
            let Some(spec) = &job.spec else { continue };
            let arn = spec
                .load
                .as_ref()
                .and_then(|l| l.credentials.as_ref())
                .map(|c| c.secrets_manager_arn.as_str())
                .unwrap_or_default();
            if spec.kind != pb::JobKind::Load as i32 || job.stopped || arn.is_empty() {
                continue;
            }
            let key = (job.id.clone(), job.version, arn.to_string());
            keep.push(key.clone());
            let cached = lock(&self.cache).get(&key).cloned();
            let result = match cached {
                Some(c) => Ok(c),
                None => self.fetch(arn).await.inspect(|c| {
                    lock(&self.cache).insert(key, c.clone());
                }),
            };
            if let Err(reason) = &result {
                tracing::warn!(message = "Load credentials not read from Secrets Manager.", job = %job.id, %arn, %reason);
            }
            out.insert(job.id.clone(), result);
        }
        lock(&self.cache).retain(|k, _| keep.contains(k));
        out
    }

    async fn fetch(&self, arn: &str) -> Result<Credentials, String> {
        let text = tokio::time::timeout(FETCH_TIMEOUT, self.source.get(arn))
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
        Credentials::parse(arn, &text).map_err(|e| e.to_string())
    }
}

impl<S> std::fmt::Debug for LoadSecrets<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LoadSecrets(<{} read, redacted>)",
            lock(&self.cache).len()
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers from a map, counting calls.
    struct Fake(BTreeMap<String, Result<String, String>>, Arc<AtomicUsize>);

    impl SecretSource for Fake {
        async fn get(&self, arn: &str) -> Result<String, String> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0
                .get(arn)
                .cloned()
                .unwrap_or_else(|| Err("ResourceNotFoundException".into()))
        }
    }

    const GOOD: &str = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:keys-AbCdEf";
    const BAD: &str = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:bad-AbCdEf";
    const GONE: &str = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gone-AbCdEf";

    fn set(jobs: &[(&str, u64, &str)]) -> pb::JobSet {
        pb::JobSet {
            assignments: jobs
                .iter()
                .map(|(id, version, arn)| pb::Assignment {
                    job: Some(pb::Job {
                        id: (*id).into(),
                        version: *version,
                        spec: Some(pb::JobSpec {
                            kind: pb::JobKind::Load as i32,
                            load: Some(pb::LoadSpec {
                                credentials: Some(pb::LoadCredentials {
                                    secrets_manager_arn: (*arn).into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn arn_regions() {
        assert_eq!(arn_region(GOOD), Some("eu-west-1"));
        assert_eq!(
            arn_region("arn:aws-cn:secretsmanager:cn-north-1:1:secret:x"),
            Some("cn-north-1")
        );
        assert_eq!(arn_region("arn:aws:s3:::bucket"), None);
        assert_eq!(arn_region("keys"), None);
    }

    #[tokio::test]
    async fn secrets_are_read_once_per_job_version_and_failures_say_why() {
        let calls = Arc::new(AtomicUsize::new(0));
        let secrets = LoadSecrets::with_source(Fake(
            BTreeMap::from([
                (GOOD.into(), Ok("k1:hunter2\nk2:swordfish\n".into())),
                (BAD.into(), Ok("no-colon-hunter2".into())),
            ]),
            Arc::clone(&calls),
        ));
        let r = secrets
            .resolve(&set(&[("a", 1, GOOD), ("b", 1, BAD), ("c", 1, GONE)]))
            .await;
        assert_eq!(r["a"].as_ref().map(Credentials::len), Ok(2));
        let bad = r["b"].as_ref().unwrap_err();
        assert!(bad.contains("line 1") && !bad.contains("hunter2"), "{bad}");
        assert!(r["c"].as_ref().unwrap_err().contains("ResourceNotFound"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // The same versions again: only the failures are read again.
        secrets
            .resolve(&set(&[("a", 1, GOOD), ("b", 1, BAD), ("c", 1, GONE)]))
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        // A new version of a: read again.
        let r = secrets.resolve(&set(&[("a", 2, GOOD)])).await;
        assert!(r["a"].is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        assert_eq!(lock(&secrets.cache).len(), 1, "only what the set still has");
        assert!(!format!("{secrets:?}").contains("hunter2"));
    }
}
