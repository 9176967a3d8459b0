//! Join tokens and operator credentials, held as SHA-256 hashes in `credentials.json` (mode
//! 0600): created on first start, seeded and rotated from `--join-secret` and
//! `--operator-credential`, added, listed and revoked by operators (module docs of [`super`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use meshlat_proto::token::JoinToken;
use serde::{Deserialize, Serialize};

use super::tls::join_token;
use super::{
    AuthError, CREDENTIALS_FILE, CredentialError, FIRST_START_SECRETS_FILE, check_name, ct_eq, io,
    random_hex, sha256, unix_now, write_private,
};

/// Where an operator credential came from.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `--operator-credential` (replaced when the seed changes).
    Seed,
    /// Generated on first start.
    Generated,
    /// `controller credentials add`.
    Added,
}

impl Origin {
    /// Lower-case name, as stored and listed.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Seed => "seed",
            Origin::Generated => "generated",
            Origin::Added => "added",
        }
    }
}

/// One operator credential as listed (never the secret).
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorInfo {
    /// Name (the part before `:`).
    pub name: String,
    /// Where it came from.
    pub origin: Origin,
    /// When it was made or last rotated (Unix seconds; 0: before this was recorded).
    pub created_unix: u64,
}

#[derive(Clone, Debug)]
struct Operator {
    info: OperatorInfo,
    sha256: [u8; 32],
}

#[derive(Clone, Debug)]
struct Inner {
    agent_secret_sha256: [u8; 32],
    /// When the default join token was revoked (a new seed brings it back).
    default_token_revoked: Option<u64>,
    /// Join tokens made with `controller tokens create`.
    tokens: Vec<Token>,
    operators: Vec<Operator>,
}

/// The name under which the seeded or generated join secret is listed.
pub const DEFAULT_TOKEN: &str = "default";

/// One join token as listed (never the secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// Name ([`DEFAULT_TOKEN`] for the seeded or generated one).
    pub name: String,
    /// When it was made (Unix seconds; 0: unknown, the default token).
    pub created_unix: u64,
    /// When it stops admitting new agents (Unix seconds), if ever.
    pub expires_unix: Option<u64>,
    /// When it was revoked, if it was.
    pub revoked_unix: Option<u64>,
}

#[derive(Clone, Debug)]
struct Token {
    info: TokenInfo,
    sha256: [u8; 32],
}

/// Why a join token admits no agent ([`Credentials::check_join_token`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenRefusal {
    /// No token of this controller has this secret.
    #[error("join token: not one of this controller's (rotated, or mistyped)")]
    Unknown,
    /// The token was revoked.
    #[error("join token {name:?} was revoked; ask the operator for a current one")]
    Revoked {
        /// Its name.
        name: String,
    },
    /// The token expired.
    #[error(
        "join token {name:?} expired at {expires_unix} (Unix time); ask the operator for a current one"
    )]
    Expired {
        /// Its name.
        name: String,
        /// When.
        expires_unix: u64,
    },
}

/// Called with the new content of `credentials.json` after every change (the S3 mirror).
pub type SaveHook = Arc<dyn Fn(Vec<u8>) + Send + Sync>;

/// Hashed credentials, checked on every call; operator credentials can be added and revoked
/// while serving.
pub struct Credentials {
    inner: RwLock<Inner>,
    /// The CA pin join tokens carry ([`Credentials::set_token_pin`]).
    pin: RwLock<Option<[u8; 32]>>,
    /// `credentials.json` (`None`: in memory only, tests).
    path: Option<PathBuf>,
    on_save: RwLock<Option<SaveHook>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("path", &self.path)
            .field("operators", &self.list_operators())
            .finish_non_exhaustive()
    }
}

/// Secrets generated on this start; written to `first-start-secrets`, never stored in clear
/// elsewhere.
#[derive(Clone, Default)]
pub struct NewSecrets {
    /// The join secret (agents present it inside the join token), if generated.
    pub join_secret: Option<String>,
    /// The operator credential `NAME:SECRET`, if generated.
    pub operator_credential: Option<String>,
}

impl std::fmt::Debug for NewSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewSecrets(<redacted>)")
    }
}

impl NewSecrets {
    /// The lines of `first-start-secrets` (and of `--print-secrets`): `join-token TOKEN`,
    /// `operator-credential NAME:SECRET`.
    pub fn lines(&self, ca_sha256: [u8; 32]) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(s) = &self.join_secret {
            v.push(format!("join-token {}", join_token(ca_sha256, s)));
        }
        if let Some(c) = &self.operator_credential {
            v.push(format!("operator-credential {c}"));
        }
        v
    }

    /// Writes `first-start-secrets` in `dir` (mode 0600); returns its path.
    ///
    /// # Errors
    ///
    /// [`AuthError::Io`].
    pub fn write(&self, dir: &Path, ca_sha256: [u8; 32]) -> Result<PathBuf, AuthError> {
        let path = dir.join(FIRST_START_SECRETS_FILE);
        let mut text = self.lines(ca_sha256).join("\n");
        text.push('\n');
        write_private(&path, text.as_bytes())?;
        Ok(path)
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    /// The state format ([`meshlat_proto::state_file::FORMAT`]); absent (0) in 0.1.0's files,
    /// which are migrated (rewritten with it) at start. A newer format is refused before the
    /// rest is read ([`FormatOnly`]).
    #[serde(default)]
    format_version: u16,
    /// SHA-256 (hex) of the join secret (the default join token).
    agent_secret_sha256: String,
    /// When the default join token was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_token_revoked_unix: Option<u64>,
    /// Join tokens made with `controller tokens create` (absent while there are none, so such a
    /// file stays readable by versions before them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    join_tokens: Vec<TokenEntry>,
    /// Operator names and the SHA-256 (hex) of their secrets.
    operators: Vec<OperatorEntry>,
}

/// Only the format of `credentials.json`, read first: a newer release may add fields this build
/// would refuse as unknown, and the error must say "newer format", not "unknown field".
#[derive(Debug, Deserialize)]
struct FormatOnly {
    #[serde(default)]
    format_version: u16,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct OperatorEntry {
    key: String,
    secret_sha256: String,
    /// Absent in files written before credentials were named: such an entry was made at first
    /// start from the seed or generated, and a configured seed replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<Origin>,
    #[serde(default)]
    created_unix: u64,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    secret_sha256: String,
    created_unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_unix: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked_unix: Option<u64>,
}

/// Optional seeds for the secrets (e.g. from a secrets manager). Applied at every start: a seed
/// that differs from the stored hash replaces it.
#[derive(Clone, Default)]
pub struct Seeds {
    /// Join secret (hex, at least 32 digits).
    pub join_secret: Option<String>,
    /// Operator credential `NAME:SECRET`.
    pub operator_credential: Option<String>,
}

impl std::fmt::Debug for Seeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seeds")
            .field(
                "join_secret",
                &self.join_secret.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "operator_credential",
                &self.operator_credential.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn parse_operator_seed(c: &str) -> Result<(&str, &str), AuthError> {
    match c.trim().split_once(':') {
        Some((k, s)) if check_name(k).is_ok() && s.len() >= 16 => Ok((k, s)),
        _ => Err(AuthError::Seed {
            flag: "--operator-credential",
            reason: "must be NAME:SECRET (NAME of letters, digits, '.', '_', '-') with a secret of at least 16 characters",
        }),
    }
}

fn parse_join_seed(s: &str) -> Result<String, AuthError> {
    let s = s.trim();
    if s.len() >= 32 && hex::decode(s).is_ok() {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(AuthError::Seed {
            flag: "--join-secret",
            reason: "must be at least 32 hex digits",
        })
    }
}
impl Inner {
    fn to_file(&self) -> CredentialsFile {
        CredentialsFile {
            format_version: meshlat_proto::state_file::FORMAT,
            agent_secret_sha256: hex::encode(self.agent_secret_sha256),
            default_token_revoked_unix: self.default_token_revoked,
            join_tokens: self
                .tokens
                .iter()
                .map(|t| TokenEntry {
                    name: t.info.name.clone(),
                    secret_sha256: hex::encode(t.sha256),
                    created_unix: t.info.created_unix,
                    expires_unix: t.info.expires_unix,
                    revoked_unix: t.info.revoked_unix,
                })
                .collect(),
            operators: self
                .operators
                .iter()
                .map(|o| OperatorEntry {
                    key: o.info.name.clone(),
                    secret_sha256: hex::encode(o.sha256),
                    origin: Some(o.info.origin),
                    created_unix: o.info.created_unix,
                })
                .collect(),
        }
    }

    /// Applies the seeds; returns what changed (for the log), never a secret.
    fn apply_seeds(
        &mut self,
        join: Option<&str>,
        operator: Option<(&str, &str)>,
    ) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if let Some(j) = join {
            let h = sha256(j.as_bytes());
            if !ct_eq(&h, &self.agent_secret_sha256) {
                self.agent_secret_sha256 = h;
                self.default_token_revoked = None;
                changed.push("join secret");
            }
        }
        if let Some((name, secret)) = operator {
            let h = sha256(secret.as_bytes());
            let current = self
                .operators
                .iter()
                .any(|o| o.info.name == name && ct_eq(&o.sha256, &h));
            if !current {
                // The previous seeded credential (under any name) is replaced by this one.
                self.operators
                    .retain(|o| o.info.origin != Origin::Seed && o.info.name != name);
                self.operators.push(Operator {
                    info: OperatorInfo {
                        name: name.to_string(),
                        origin: Origin::Seed,
                        created_unix: unix_now(),
                    },
                    sha256: h,
                });
                changed.push("operator credential");
            }
        }
        changed
    }
}

impl Credentials {
    /// Loads the hashed credentials from `dir`, creating them on first start, and applies the
    /// seeds (a seed that differs from the stored hash replaces it, and is logged). Returns the
    /// secrets generated now (first start, no seed), which the caller writes to
    /// `first-start-secrets`.
    ///
    /// # Errors
    ///
    /// [`AuthError`] for unreadable or corrupt files, or malformed seeds.
    pub fn load_or_create(
        dir: &Path,
        seeds: &Seeds,
    ) -> Result<(Self, Option<NewSecrets>), AuthError> {
        let path = dir.join(CREDENTIALS_FILE);
        let join_seed = seeds
            .join_secret
            .as_deref()
            .map(parse_join_seed)
            .transpose()?;
        let op_seed = seeds
            .operator_credential
            .as_deref()
            .map(parse_operator_seed)
            .transpose()?;
        let mut new = None;
        let mut migrate_from = None;
        let mut inner = if path.exists() {
            let raw = std::fs::read(&path).map_err(io(&path))?;
            let corrupt = |reason: String| AuthError::Corrupt {
                path: path.clone(),
                reason,
            };
            let format = serde_json::from_slice::<FormatOnly>(&raw)
                .map_err(|e| corrupt(e.to_string()))?
                .format_version;
            if format > meshlat_proto::state_file::FORMAT {
                return Err(AuthError::Version {
                    path: path.clone(),
                    source: meshlat_proto::state_file::StateFileError::TooNew {
                        found: format,
                        supported: meshlat_proto::state_file::FORMAT,
                        build: env!("CARGO_PKG_VERSION"),
                    },
                });
            }
            migrate_from = (format < meshlat_proto::state_file::FORMAT).then_some(format);
            let file: CredentialsFile =
                serde_json::from_slice(&raw).map_err(|e| corrupt(e.to_string()))?;
            let digest = |h: &str| -> Result<[u8; 32], AuthError> {
                let mut d = [0u8; 32];
                hex::decode_to_slice(h, &mut d)
                    .map(|()| d)
                    .map_err(|_| corrupt("a hash is not 64 hex digits".into()))
            };
            Inner {
                agent_secret_sha256: digest(&file.agent_secret_sha256)?,
                default_token_revoked: file.default_token_revoked_unix,
                tokens: file
                    .join_tokens
                    .iter()
                    .map(|t| {
                        Ok(Token {
                            info: TokenInfo {
                                name: t.name.clone(),
                                created_unix: t.created_unix,
                                expires_unix: t.expires_unix,
                                revoked_unix: t.revoked_unix,
                            },
                            sha256: digest(&t.secret_sha256)?,
                        })
                    })
                    .collect::<Result<_, AuthError>>()?,
                operators: file
                    .operators
                    .iter()
                    .map(|o| {
                        Ok(Operator {
                            info: OperatorInfo {
                                name: o.key.clone(),
                                origin: o.origin.unwrap_or(Origin::Seed),
                                created_unix: o.created_unix,
                            },
                            sha256: digest(&o.secret_sha256)?,
                        })
                    })
                    .collect::<Result<_, AuthError>>()?,
            }
        } else {
            let mut made = NewSecrets::default();
            let join = match &join_seed {
                Some(_) => [0u8; 32],
                None => {
                    let s = random_hex(24);
                    let h = sha256(s.as_bytes());
                    made.join_secret = Some(s);
                    h
                }
            };
            let mut operators = Vec::new();
            if op_seed.is_none() {
                let name = format!("op-{}", random_hex(4));
                let secret = random_hex(24);
                operators.push(Operator {
                    info: OperatorInfo {
                        name: name.clone(),
                        origin: Origin::Generated,
                        created_unix: unix_now(),
                    },
                    sha256: sha256(secret.as_bytes()),
                });
                made.operator_credential = Some(format!("{name}:{secret}"));
            }
            if made.join_secret.is_some() || made.operator_credential.is_some() {
                new = Some(made);
            }
            Inner {
                agent_secret_sha256: join,
                default_token_revoked: None,
                tokens: Vec::new(),
                operators,
            }
        };
        let first = new.is_some() || !path.exists();
        let changed = inner.apply_seeds(join_seed.as_deref(), op_seed);
        if first || !changed.is_empty() || migrate_from.is_some() {
            let json =
                serde_json::to_vec_pretty(&inner.to_file()).map_err(|e| AuthError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            write_private(&path, &json)?;
        }
        if let Some(from) = migrate_from {
            tracing::info!(message = "State file migrated.", file = %path.display(), from_format = from, to_format = meshlat_proto::state_file::FORMAT);
        }
        if !first {
            for what in &changed {
                tracing::warn!(message = "Seeded secret differs from the stored one: rotated; the old one is no longer accepted.", secret = %what);
            }
        }
        Ok((
            Credentials {
                inner: RwLock::new(inner),
                path: Some(path),
                on_save: RwLock::new(None),
                pin: RwLock::new(None),
            },
            new,
        ))
    }

    /// Credentials from known secrets, in memory only (tests).
    pub fn from_secrets(join_secret: &str, operator_credential: &str) -> Self {
        let (key, secret) = operator_credential
            .split_once(':')
            .unwrap_or(("", operator_credential));
        Credentials {
            inner: RwLock::new(Inner {
                agent_secret_sha256: sha256(join_secret.as_bytes()),
                default_token_revoked: None,
                tokens: Vec::new(),
                operators: vec![Operator {
                    info: OperatorInfo {
                        name: key.to_string(),
                        origin: Origin::Seed,
                        created_unix: 0,
                    },
                    sha256: sha256(secret.as_bytes()),
                }],
            }),
            path: None,
            on_save: RwLock::new(None),
            pin: RwLock::new(None),
        }
    }

    /// Sets the CA pin of the join tokens [`Credentials::token_string`] makes.
    pub fn set_token_pin(&self, pin: [u8; 32]) {
        *self.pin.write().unwrap_or_else(|e| e.into_inner()) = Some(pin);
    }

    /// The join token an agent is given for `secret`: `mlt1.<pin>.<secret>` (the bare secret
    /// before a pin is set).
    pub fn token_string(&self, secret: &str) -> String {
        match *self.pin.read().unwrap_or_else(|e| e.into_inner()) {
            Some(pin) => join_token(pin, secret).to_string(),
            None => secret.to_string(),
        }
    }

    /// Sets the function told the new `credentials.json` after each change (the S3 mirror).
    pub fn set_save_hook(&self, hook: SaveHook) {
        *self.on_save.write().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// The content of `credentials.json` now.
    pub fn file_bytes(&self) -> Vec<u8> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        serde_json::to_vec_pretty(&inner.to_file()).unwrap_or_default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `token` (a whole join token, or just its secret) admits an agent now.
    pub fn check_agent(&self, token: &str) -> bool {
        self.check_join_token(token).is_ok()
    }

    /// Which join token `token` (a whole join token, or just its secret) is, if it admits an
    /// agent now: its name. Every token's hash is compared (constant time each).
    ///
    /// # Errors
    ///
    /// [`TokenRefusal`]: unknown, revoked or expired.
    pub fn check_join_token(&self, token: &str) -> Result<String, TokenRefusal> {
        let secret = match JoinToken::parse(token) {
            Ok(t) => t.secret,
            Err(_) => token.trim().to_ascii_lowercase(),
        };
        let h = sha256(secret.as_bytes());
        let inner = self.read();
        let mut found = None;
        if ct_eq(&h, &inner.agent_secret_sha256) {
            found = Some((DEFAULT_TOKEN.to_string(), None, inner.default_token_revoked));
        }
        for t in &inner.tokens {
            if ct_eq(&h, &t.sha256) {
                found = Some((
                    t.info.name.clone(),
                    t.info.expires_unix,
                    t.info.revoked_unix,
                ));
            }
        }
        match found {
            None => Err(TokenRefusal::Unknown),
            Some((name, _, Some(_))) => Err(TokenRefusal::Revoked { name }),
            Some((name, Some(e), None)) if unix_now() >= e => Err(TokenRefusal::Expired {
                name,
                expires_unix: e,
            }),
            Some((name, _, None)) => Ok(name),
        }
    }

    /// The join tokens (the default one first), revoked and expired ones included.
    pub fn list_tokens(&self) -> Vec<TokenInfo> {
        let inner = self.read();
        std::iter::once(TokenInfo {
            name: DEFAULT_TOKEN.into(),
            created_unix: 0,
            expires_unix: None,
            revoked_unix: inner.default_token_revoked,
        })
        .chain(inner.tokens.iter().map(|t| t.info.clone()))
        .collect()
    }

    /// Makes join token `name`, admitting new agents until `expires_unix` (if given); returns
    /// it and its secret (shown once: only its hash is kept). A revoked token's name may be
    /// reused.
    ///
    /// # Errors
    ///
    /// [`CredentialError`]: a bad or taken name, or the file could not be written.
    pub fn create_token(
        &self,
        name: &str,
        expires_unix: Option<u64>,
    ) -> Result<(TokenInfo, String), CredentialError> {
        check_name(name)?;
        let secret = random_hex(24);
        let info = TokenInfo {
            name: name.to_string(),
            created_unix: unix_now(),
            expires_unix,
            revoked_unix: None,
        };
        self.change(|inner| {
            let taken = name == DEFAULT_TOKEN
                || inner
                    .tokens
                    .iter()
                    .any(|t| t.info.name == name && t.info.revoked_unix.is_none());
            if taken {
                return Err(CredentialError::Exists { name: name.into() });
            }
            inner.tokens.retain(|t| t.info.name != name);
            inner.tokens.push(Token {
                info: info.clone(),
                sha256: sha256(secret.as_bytes()),
            });
            Ok(())
        })?;
        Ok((info, secret))
    }

    /// Revokes join token `name`: it admits no new agent from now on (agents that already
    /// hold their identity keep working). The default token comes back with a new seed.
    ///
    /// # Errors
    ///
    /// [`CredentialError`]: no such token (or already revoked), or the file could not be
    /// written.
    pub fn revoke_token(&self, name: &str) -> Result<TokenInfo, CredentialError> {
        let now = unix_now();
        self.change(|inner| {
            let missing = || CredentialError::NotFound { name: name.into() };
            if name == DEFAULT_TOKEN {
                if inner.default_token_revoked.is_some() {
                    return Err(missing());
                }
                inner.default_token_revoked = Some(now);
                return Ok(());
            }
            let t = inner
                .tokens
                .iter_mut()
                .find(|t| t.info.name == name && t.info.revoked_unix.is_none())
                .ok_or_else(missing)?;
            t.info.revoked_unix = Some(now);
            Ok(())
        })?;
        self.list_tokens()
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| CredentialError::NotFound { name: name.into() })
    }

    /// Whether `credential` (`NAME:SECRET`) is a known operator's; returns the name.
    pub fn check_operator(&self, credential: &str) -> Option<String> {
        let (key, secret) = credential.trim().split_once(':')?;
        let h = sha256(secret.as_bytes());
        // Compare every entry, so the time does not depend on which name matched.
        let mut found = None;
        for o in &self.read().operators {
            if ct_eq(&h, &o.sha256) && o.info.name == key {
                found = Some(o.info.name.clone());
            }
        }
        found
    }

    /// The operator credentials (names and origins, never secrets), in creation order.
    pub fn list_operators(&self) -> Vec<OperatorInfo> {
        self.read()
            .operators
            .iter()
            .map(|o| o.info.clone())
            .collect()
    }

    /// Makes a new operator credential `name`; returns `NAME:SECRET`, shown once (only its
    /// hash is kept).
    ///
    /// # Errors
    ///
    /// [`CredentialError`]: a bad or taken name, or the file could not be written.
    pub fn add_operator(&self, name: &str) -> Result<String, CredentialError> {
        check_name(name)?;
        let secret = random_hex(24);
        self.change(|inner| {
            if inner.operators.iter().any(|o| o.info.name == name) {
                return Err(CredentialError::Exists { name: name.into() });
            }
            inner.operators.push(Operator {
                info: OperatorInfo {
                    name: name.to_string(),
                    origin: Origin::Added,
                    created_unix: unix_now(),
                },
                sha256: sha256(secret.as_bytes()),
            });
            Ok(())
        })?;
        Ok(format!("{name}:{secret}"))
    }

    /// Revokes operator credential `name` (its next call gets `401`).
    ///
    /// # Errors
    ///
    /// [`CredentialError`]: unknown name, the last credential, or the file could not be
    /// written.
    pub fn revoke_operator(&self, name: &str) -> Result<OperatorInfo, CredentialError> {
        let mut removed = None;
        self.change(|inner| {
            let Some(i) = inner.operators.iter().position(|o| o.info.name == name) else {
                return Err(CredentialError::NotFound { name: name.into() });
            };
            if inner.operators.len() == 1 {
                return Err(CredentialError::Last { name: name.into() });
            }
            removed = Some(inner.operators.remove(i).info);
            Ok(())
        })?;
        removed.ok_or_else(|| CredentialError::NotFound { name: name.into() })
    }

    /// Applies `f` to a copy, writes the file, then makes the copy current (so a failed write
    /// changes nothing).
    fn change(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<(), CredentialError>,
    ) -> Result<(), CredentialError> {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let mut next = guard.clone();
        f(&mut next)?;
        let json = serde_json::to_vec_pretty(&next.to_file())
            .map_err(|e| CredentialError::Store(e.to_string()))?;
        if let Some(path) = &self.path {
            write_private(path, &json).map_err(|e| CredentialError::Store(e.to_string()))?;
        }
        *guard = next;
        drop(guard);
        let hook = self
            .on_save
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(h) = hook {
            h(json);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{CA_KEY_FILE, load_or_create_tls};

    fn tmp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("meshlat-auth-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        dir
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
    }

    #[test]
    fn credentials_are_created_once_stored_hashed_and_checked() {
        let dir = tmp();
        let (creds, new) = Credentials::load_or_create(&dir, &Seeds::default()).expect("create");
        let new = new.expect("first start makes secrets");
        let join = new.join_secret.clone().expect("generated join secret");
        let op = new
            .operator_credential
            .clone()
            .expect("generated credential");
        let stored = std::fs::read_to_string(dir.join(CREDENTIALS_FILE)).expect("stored");
        assert!(!stored.contains(&join), "stored hashed");
        let (_, op_secret) = op.split_once(':').expect("key:secret");
        assert!(!stored.contains(op_secret), "stored hashed");
        assert_eq!(mode(&dir.join(CREDENTIALS_FILE)), 0o600);
        let (again, none) = Credentials::load_or_create(&dir, &Seeds::default()).expect("load");
        assert!(none.is_none(), "secrets are made only once");
        for c in [&creds, &again] {
            assert!(c.check_agent(&join));
            assert!(!c.check_agent("0123456789abcdef0123456789abcdef"));
            assert!(c.check_operator(&op).is_some());
            assert!(c.check_operator("op-x:nope").is_none());
            assert!(c.check_operator("nocolon").is_none());
        }
        let tls = load_or_create_tls(&dir, &["localhost".into()]).expect("tls");
        let tls2 = load_or_create_tls(&dir, &["localhost".into()]).expect("tls again");
        assert_eq!(
            tls.ca_sha256, tls2.ca_sha256,
            "the CA (and so the pin) is kept"
        );
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        let token = join_token(tls.ca_sha256, &join).to_string();
        assert!(creds.check_agent(&token));
        // The generated secrets go to a private file, one `name value` line each.
        let path = new.write(&dir, tls.ca_sha256).expect("secrets file");
        assert_eq!(mode(&path), 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            format!("join-token {token}\noperator-credential {op}\n")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn seeds_are_never_in_the_secrets_file_and_a_changed_seed_rotates() {
        let dir = tmp();
        let join1 = "11111111111111111111111111111111";
        let seeds = |j: &str, o: &str| Seeds {
            join_secret: Some(j.into()),
            operator_credential: Some(o.into()),
        };
        let (c, new) = Credentials::load_or_create(&dir, &seeds(join1, "ops:first-secret-0123"))
            .expect("create");
        assert!(
            new.is_none(),
            "nothing generated, so nothing to write or print"
        );
        assert!(c.check_operator("ops:first-secret-0123").is_some());
        // Rotation: the new seed works, the old one no longer does.
        let join2 = "22222222222222222222222222222222";
        let (c, new) = Credentials::load_or_create(&dir, &seeds(join2, "ops:second-secret-0123"))
            .expect("rotate");
        assert!(new.is_none());
        assert!(c.check_agent(join2) && !c.check_agent(join1));
        assert_eq!(
            c.check_operator("ops:second-secret-0123").as_deref(),
            Some("ops")
        );
        assert!(c.check_operator("ops:first-secret-0123").is_none());
        // Renaming the seeded credential replaces it too; added credentials stay.
        let added = c.add_operator("ci").expect("add");
        let (c, _) = Credentials::load_or_create(&dir, &seeds(join2, "admin:third-secret-0123"))
            .expect("rename");
        assert!(c.check_operator("ops:second-secret-0123").is_none());
        assert!(c.check_operator("admin:third-secret-0123").is_some());
        assert!(
            c.check_operator(&added).is_some(),
            "added credentials survive"
        );
        // The same seed again changes nothing.
        let before = std::fs::read(dir.join(CREDENTIALS_FILE)).expect("read");
        let _ = Credentials::load_or_create(&dir, &seeds(join2, "admin:third-secret-0123"))
            .expect("same");
        assert_eq!(
            std::fs::read(dir.join(CREDENTIALS_FILE)).expect("read"),
            before
        );
        let stored = String::from_utf8(before).expect("utf8");
        for secret in [join2, "third-secret", "second-secret"] {
            assert!(!stored.contains(secret), "{secret} stored in clear");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_from_before_named_credentials_loads_and_its_seed_rotates() {
        let dir = tmp();
        let old = format!(
            "{{\"agent_secret_sha256\":\"{}\",\"operators\":[{{\"key\":\"op-1\",\"secret_sha256\":\"{}\"}}]}}",
            hex::encode(sha256(b"33333333333333333333333333333333")),
            hex::encode(sha256(b"old-secret-0123456789")),
        );
        std::fs::write(dir.join(CREDENTIALS_FILE), old).expect("old file");
        let (c, _) = Credentials::load_or_create(&dir, &Seeds::default()).expect("load");
        assert!(c.check_operator("op-1:old-secret-0123456789").is_some());
        let seeds = Seeds {
            join_secret: None,
            operator_credential: Some("op-1:new-secret-0123456789".into()),
        };
        let (c, _) = Credentials::load_or_create(&dir, &seeds).expect("rotate");
        assert!(c.check_operator("op-1:old-secret-0123456789").is_none());
        assert!(c.check_operator("op-1:new-secret-0123456789").is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn named_credentials_add_list_revoke_and_persist() {
        let dir = tmp();
        let (c, new) = Credentials::load_or_create(&dir, &Seeds::default()).expect("create");
        let first = new.and_then(|n| n.operator_credential).expect("generated");
        let saved = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = saved.clone();
        c.set_save_hook(Arc::new(move |b| s2.lock().expect("lock").push(b)));
        let ci = c.add_operator("ci").expect("add");
        assert!(ci.starts_with("ci:") && ci.len() > 40, "{ci}");
        assert_eq!(
            c.add_operator("ci"),
            Err(CredentialError::Exists { name: "ci".into() })
        );
        for bad in ["", "a:b", "a b", &"x".repeat(65)] {
            assert!(
                matches!(c.add_operator(bad), Err(CredentialError::BadName { .. })),
                "{bad:?}"
            );
        }
        let names: Vec<_> = c
            .list_operators()
            .into_iter()
            .map(|i| (i.name, i.origin))
            .collect();
        assert_eq!(names[1], ("ci".to_string(), Origin::Added));
        assert_eq!(names[0].1, Origin::Generated);
        assert!(c.check_operator(&ci).is_some());
        c.revoke_operator("ci").expect("revoke");
        assert!(c.check_operator(&ci).is_none(), "revoked");
        assert_eq!(
            c.revoke_operator("ci"),
            Err(CredentialError::NotFound { name: "ci".into() })
        );
        let last = first.split_once(':').expect("name").0.to_string();
        assert_eq!(
            c.revoke_operator(&last),
            Err(CredentialError::Last { name: last.clone() }),
            "the last credential cannot be revoked"
        );
        assert_eq!(
            saved.lock().expect("lock").len(),
            2,
            "each change is mirrored"
        );
        // The changes are on disk: a restart sees them.
        let (again, _) = Credentials::load_or_create(&dir, &Seeds::default()).expect("reload");
        assert!(again.check_operator(&ci).is_none());
        assert!(again.check_operator(&first).is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn join_tokens_are_named_revoked_expire_and_persist() {
        let dir = tmp();
        let (c, new) = Credentials::load_or_create(&dir, &Seeds::default()).expect("create");
        let default = new.and_then(|n| n.join_secret).expect("generated");
        assert_eq!(c.check_join_token(&default).as_deref(), Ok(DEFAULT_TOKEN));
        let (info, ci) = c.create_token("ci", None).expect("create");
        assert_eq!(info.name, "ci");
        assert_eq!(c.check_join_token(&ci).as_deref(), Ok("ci"));
        assert_eq!(
            c.create_token("ci", None).map(|_| ()),
            Err(CredentialError::Exists { name: "ci".into() })
        );
        assert!(c.create_token(DEFAULT_TOKEN, None).is_err(), "reserved");
        let (_, old) = c
            .create_token("old", Some(unix_now() - 1))
            .expect("expired");
        assert!(matches!(
            c.check_join_token(&old),
            Err(TokenRefusal::Expired { ref name, .. }) if name == "old"
        ));
        assert_eq!(
            c.check_join_token("0123456789abcdef0123456789abcdef"),
            Err(TokenRefusal::Unknown)
        );
        let r = c.revoke_token("ci").expect("revoke");
        assert!(r.revoked_unix.is_some());
        assert_eq!(
            c.check_join_token(&ci),
            Err(TokenRefusal::Revoked { name: "ci".into() })
        );
        assert!(c.revoke_token("ci").is_err(), "already revoked");
        c.revoke_token(DEFAULT_TOKEN).expect("revoke default");
        assert!(c.check_join_token(&default).is_err());
        // On disk: a restart sees the same.
        let (again, _) = Credentials::load_or_create(&dir, &Seeds::default()).expect("reload");
        assert_eq!(again.list_tokens(), c.list_tokens());
        assert!(again.check_join_token(&ci).is_err() && again.check_join_token(&default).is_err());
        let stored = std::fs::read_to_string(dir.join(CREDENTIALS_FILE)).expect("read");
        assert!(
            !stored.contains(&ci) && !stored.contains(&default),
            "hashed"
        );
        // A revoked name can be used again; a new default seed is active again.
        let (_, ci2) = again.create_token("ci", None).expect("reuse");
        assert_eq!(again.check_join_token(&ci2).as_deref(), Ok("ci"));
        let seed = "44444444444444444444444444444444";
        let seeds = Seeds {
            join_secret: Some(seed.into()),
            operator_credential: None,
        };
        let (rotated, _) = Credentials::load_or_create(&dir, &seeds).expect("rotate");
        assert_eq!(rotated.check_join_token(seed).as_deref(), Ok(DEFAULT_TOKEN));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
