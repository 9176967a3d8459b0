//! `--join-token-secret-arn`, `--ca-cert-secret-arn`, `--secrets-endpoint`: the secrets the
//! controller writes (its join token and CA certificate) for a deployment to read.

use crate::cli::ServeArgs;

use super::{ConfigError, endpoint_url, nonempty};

/// Validated `--join-token-secret-arn`, `--ca-cert-secret-arn` and `--secrets-endpoint`.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishConfig {
    /// Secret receiving the join token, with the join secret it is made from.
    pub join_token: Option<(SecretArn, String)>,
    /// Secret receiving the CA certificate.
    pub ca_cert: Option<SecretArn>,
    /// Endpoint URL override.
    pub endpoint: Option<String>,
}

/// A Secrets Manager secret's full ARN, `arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretArn {
    /// The ARN.
    pub arn: String,
    /// Its region (calls go there).
    pub region: String,
}

impl SecretArn {
    /// Parses a full secret ARN.
    ///
    /// # Errors
    ///
    /// Why it is not one.
    pub fn parse(v: &str) -> Result<Self, &'static str> {
        let parts: Vec<&str> = v.splitn(7, ':').collect();
        let ok = parts.len() == 7
            && parts[0] == "arn"
            && parts[1].starts_with("aws")
            && parts[2] == "secretsmanager"
            && !parts[3].is_empty()
            && parts[3]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
            && parts[4].len() == 12
            && parts[4].chars().all(|c| c.is_ascii_digit())
            && parts[5] == "secret"
            && !parts[6].is_empty()
            && !parts[6]
                .chars()
                .any(|c| c.is_control() || c.is_whitespace());
        if !ok {
            return Err(
                "not a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)",
            );
        }
        Ok(SecretArn {
            arn: v.to_string(),
            region: parts[3].to_string(),
        })
    }
}

pub(super) fn publish(a: &ServeArgs) -> Result<Option<PublishConfig>, ConfigError> {
    let arn = |flag: &'static str, v: &Option<String>| -> Result<Option<SecretArn>, ConfigError> {
        nonempty(v)
            .map(|v| {
                SecretArn::parse(v).map_err(|reason| ConfigError::Invalid {
                    flag,
                    value: v.into(),
                    reason,
                })
            })
            .transpose()
    };
    let token = arn("--join-token-secret-arn", &a.publish.join_token_secret_arn)?;
    let ca = arn("--ca-cert-secret-arn", &a.publish.ca_cert_secret_arn)?;
    let endpoint = endpoint_url("--secrets-endpoint", &a.publish.secrets_endpoint)?;
    if token.is_none() && ca.is_none() {
        if let Some(e) = endpoint {
            return Err(ConfigError::InvalidValue {
                flag: "--secrets-endpoint",
                value: e,
                reason: "needs --join-token-secret-arn or --ca-cert-secret-arn".into(),
            });
        }
        return Ok(None);
    }
    let join_token = match token {
        None => None,
        Some(t) => {
            // A generated join secret is stored hashed: only a seeded one can be written out
            // again on every start.
            let Some(secret) = nonempty(&a.join_secret) else {
                return Err(ConfigError::Invalid {
                    flag: "--join-token-secret-arn",
                    value: t.arn,
                    reason: "needs --join-secret (the token embeds it)",
                });
            };
            Some((t, secret.to_string()))
        }
    };
    Ok(Some(PublishConfig {
        join_token,
        ca_cert: ca,
        endpoint,
    }))
}
