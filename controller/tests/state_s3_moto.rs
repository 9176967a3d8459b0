//! The S3 state store against a local moto server, with real controller and agent processes.
//!
//! Run with `scripts/moto.sh start`, `cargo build -p meshlat-agent --bin agent`, then
//! `MESHLAT_TEST_MOTO_URL=$(scripts/moto.sh url) cargo test -p meshlat-controller --test
//! state_s3_moto` (`scripts/test.sh` does this in its `firehose-moto` stage). Without the
//! variable the tests fail with these instructions: they are never skipped.
//!
//! A controller starts on an empty data directory with the state in moto, gets a job and an
//! agent, and is killed (SIGKILL: no shutdown flush). A new controller process on a *fresh,
//! empty* data directory and the same bucket and prefix must come back with the same CA (so the
//! agent's join token, which pins it, still works), the same job id and version, and the same
//! agent id when the agent reconnects on its own.

mod common;
use common::{agent_bin, eventually, tmp_dir, wait_scale};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::{BodyExt, Full};
use meshlat_proto::pb;
use prost::Message;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

fn moto_url() -> String {
    match std::env::var("MESHLAT_TEST_MOTO_URL") {
        Ok(u) if !u.is_empty() => u.trim_end_matches('/').to_string(),
        _ => panic!(
            "MESHLAT_TEST_MOTO_URL is not set. Start the local AWS emulator with \
             `scripts/moto.sh start`, build the agent with `cargo build -p meshlat-agent --bin agent`, \
             then run `MESHLAT_TEST_MOTO_URL=$(scripts/moto.sh url) cargo test -p meshlat-controller \
             --test state_s3_moto` (scripts/test.sh runs this in its firehose-moto stage)."
        ),
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `scripts/moto_admin.py ARGS` with the moto virtualenv's python: its stdout, or `None` if it
/// exited with 3 (no such object).
async fn moto_admin(args: &[&str]) -> Result<Option<Vec<u8>>> {
    let py = Command::new(repo_root().join("scripts/moto.sh"))
        .arg("python")
        .output()
        .await
        .context("scripts/moto.sh python")?;
    let py = String::from_utf8(py.stdout)?.trim().to_string();
    let out = Command::new(py)
        .arg(repo_root().join("scripts/moto_admin.py"))
        .args(["--endpoint", &moto_url()])
        .args(args)
        .output()
        .await
        .context("moto_admin.py")?;
    match out.status.code() {
        Some(0) => Ok(Some(out.stdout)),
        Some(3) => Ok(None),
        _ => bail!(
            "moto_admin.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A fresh bucket in moto.
async fn create_bucket() -> Result<String> {
    let bucket = format!("meshlat-state-{}", uuid::Uuid::now_v7().simple());
    moto_admin(&["create-bucket", "--bucket", &bucket]).await?;
    Ok(bucket)
}

/// An object's content, `None` while it does not exist.
async fn object(bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
    moto_admin(&["get", "--bucket", bucket, "--key", key]).await
}

struct Ctl {
    child: Child,
    data: PathBuf,
    grpc: String,
    rest: String,
    ca_sha256: String,
    token: Option<String>,
    credential: Option<String>,
}

fn controller_cmd(data: &Path, grpc: &str, rest: &str, state: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_controller"));
    c.args([
        "serve",
        "--region",
        "r1",
        "--listen",
        grpc,
        "--rest-listen",
        rest,
    ])
    .args(state)
    .arg("--data-dir")
    .arg(data)
    // moto accepts any credentials; keep the SDK off IMDS and real profiles.
    .env("AWS_ACCESS_KEY_ID", "test")
    .env("AWS_SECRET_ACCESS_KEY", "test")
    .env("AWS_EC2_METADATA_DISABLED", "true")
    .env_remove("AWS_PROFILE")
    .env_remove("AWS_REGION")
    .kill_on_drop(true);
    c
}

impl Ctl {
    /// Starts a controller and reads its announcements (token and credential only appear on
    /// the start that created them).
    async fn start(data: &Path, grpc: &str, rest: &str, state: &[String]) -> Result<Self> {
        let mut child = controller_cmd(data, grpc, rest, state)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn controller")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let (mut g, mut r, mut ca, mut token, mut credential) = (None, None, None, None, None);
        let deadline = Instant::now() + Duration::from_secs(30) * wait_scale();
        // `ca-sha256` follows the listeners; the secrets (if any) follow it.
        while ca.is_none() || (token.is_some() && credential.is_none()) {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .context("controller did not announce itself")??
                .ok_or_else(|| anyhow!("controller exited early"))?;
            let mut w = line.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("listening"), Some("grpc"), Some(a)) => g = Some(a.to_string()),
                (Some("listening"), Some("rest"), Some(a)) => r = Some(a.to_string()),
                (Some("ca-sha256"), Some(h), _) => {
                    ca = Some(h.to_string());
                    // On a restart nothing more follows: stop waiting shortly.
                    if let Ok(Ok(Some(next))) =
                        tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await
                        && let Some(p) = next.strip_prefix("secrets-file ")
                    {
                        (token, credential) = common::read_secrets_file(Path::new(p.trim()))?;
                    }
                }
                _ => {}
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Ctl {
            child,
            data: data.to_path_buf(),
            grpc: g.context("grpc")?,
            rest: r.context("rest")?,
            ca_sha256: ca.context("ca")?,
            token,
            credential,
        })
    }

    /// One REST call over TLS pinned to the controller's CA (read from its data directory).
    async fn rest(&self, method: &str, path: &str, body: &str, cred: &str) -> Result<(u16, Value)> {
        let mut send = common::pinned_http1(&self.data, &self.rest).await?;
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {cred}"))
            .body(Full::new(bytes::Bytes::from(body.to_string())))?;
        let res = send.send_request(req).await?;
        let status = res.status().as_u16();
        let b = res.into_body().collect().await?.to_bytes();
        Ok((status, serde_json::from_slice(&b).unwrap_or(Value::Null)))
    }

    async fn agents(&self, cred: &str) -> Vec<(String, bool)> {
        match self.rest("GET", "/api/v1/agents", "", cred).await {
            Ok((200, v)) => v["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    let id = x["id"].as_str().unwrap_or_default().to_string();
                    (id, x["connected"].as_bool().unwrap_or(false))
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn start_agent(grpc: &str, token: &str, out: &Path, state: &Path) -> Result<Child> {
    Command::new(agent_bin())
        .args(["--controller", &format!("https://{grpc}"), "--token", token])
        .args(["--region", "r1", "--listen", "127.0.0.1"])
        .args(["--udp-port", "0", "--tcp-port", "0", "--quic-port", "off"])
        .args(["--http-port", "off", "--https-port", "off"])
        .arg("--out")
        .arg(out)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawn agent")
}

const JOB: &str = r#"{"name":"s3","protocols":["tcp"],"sources":["region=r1"],
    "targets":["region=r1"],"interval_ms":1000,"timeout_ms":500}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_on_an_empty_disk_comes_back_from_s3_with_its_ca_jobs_and_agents() -> Result<()>
{
    let url = moto_url();
    let bucket = create_bucket().await?;
    let prefix = format!("it/{}", uuid::Uuid::now_v7().simple());
    let state: Vec<String> = [
        "--state-bucket",
        &bucket,
        "--state-prefix",
        &prefix,
        "--state-region",
        "us-east-1",
        "--state-endpoint",
        &url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let root = tmp_dir("s3", "restart");

    // Controller A: empty data directory, first start.
    let mut a = Ctl::start(&root.join("ctl-a"), "127.0.0.1:0", "127.0.0.1:0", &state).await?;
    let token = a
        .token
        .clone()
        .context("first start prints the join token")?;
    let cred = a
        .credential
        .clone()
        .context("first start prints the credential")?;
    assert!(
        token.starts_with(&format!("mlt1.{}.", a.ca_sha256)),
        "{token} pins {}",
        a.ca_sha256
    );
    let (st, job) = a.rest("POST", "/api/v1/jobs", JOB, &cred).await?;
    assert_eq!(st, 201, "{job}");
    let job_id = job["id"].as_str().context("job id")?.to_string();
    let (st, job) = a
        .rest("PUT", &format!("/api/v1/jobs/{job_id}"), JOB, &cred)
        .await?;
    assert_eq!((st, job["version"].as_u64()), (200, Some(2)), "{job}");

    let agent_state = root.join("agent-state");
    let mut agent = start_agent(&a.grpc, &token, &root.join("out"), &agent_state)?;
    let agent_id = eventually("the agent connected to A", 30, || async {
        let id = std::fs::read_to_string(agent_state.join("agent-id")).ok()?;
        let id = id.trim().to_string();
        a.agents(&cred)
            .await
            .iter()
            .any(|(x, c)| *x == id && *c)
            .then_some(id)
    })
    .await?;

    // The bucket has the job (version 2) and the agent before A dies; no flush at exit.
    let key = |name: &str| format!("{prefix}/{name}");
    eventually("jobs.pb and agents.pb in moto", 20, || async {
        let jobs = object(&bucket, &key("jobs.pb")).await.ok()??;
        let agents = object(&bucket, &key("agents.pb")).await.ok()??;
        let jobs = pb::StoredJobs::decode(&jobs[..]).ok()?;
        let agents = pb::StoredAgents::decode(&agents[..]).ok()?;
        (jobs.jobs.iter().any(|j| j.id == job_id && j.version == 2)
            && agents
                .agents
                .iter()
                .any(|x| x.info.as_ref().is_some_and(|i| i.id == agent_id)))
        .then_some(())
    })
    .await?;
    for name in ["ca.pem", "ca.key", "credentials.json", "grant.key"] {
        let o = object(&bucket, &key(name)).await?;
        assert!(o.is_some(), "{name} is in the bucket");
    }
    a.child.kill().await?;
    a.child.wait().await?;

    // Controller B: a fresh, empty data directory, the same bucket and prefix and addresses.
    let b_dir = root.join("ctl-b");
    let b = Ctl::start(&b_dir, &a.grpc, &a.rest, &state).await?;
    assert_eq!(
        b.ca_sha256, a.ca_sha256,
        "same CA after a restart on an empty disk"
    );
    assert!(b.token.is_none(), "no new secrets on a restored start");
    assert_eq!(
        std::fs::read(b_dir.join("ca.key"))?,
        std::fs::read(root.join("ctl-a/ca.key"))?
    );
    // The relay-grant signing key too: relays keep trusting the same public key.
    assert_eq!(
        std::fs::read(b_dir.join("grant.key"))?,
        std::fs::read(root.join("ctl-a/grant.key"))?
    );
    let (st, job) = b
        .rest("GET", &format!("/api/v1/jobs/{job_id}"), "", &cred)
        .await?;
    assert_eq!(st, 200, "the operator credential still works: {job}");
    assert_eq!(
        (job["id"].as_str(), job["version"].as_u64()),
        (Some(job_id.as_str()), Some(2))
    );
    // The agent reconnects by itself with its old token (pinning the same CA), as the same id.
    eventually("the agent reconnected to B with its id", 60, || async {
        let ag = b.agents(&cred).await;
        (ag.len() == 1 && ag[0] == (agent_id.clone(), true)).then_some(())
    })
    .await?;
    assert!(matches!(agent.try_wait(), Ok(None)), "agent still running");
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_or_missing_bucket_fails_the_start_naming_the_flag() -> Result<()> {
    // A port with nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let moto = moto_url();
    for (bucket, endpoint, want) in [
        (
            "meshlat-unreachable",
            format!("http://{closed}"),
            "Connection refused",
        ),
        ("meshlat-no-such-bucket", moto, "NoSuchBucket"),
    ] {
        let data = tmp_dir("s3", "unreachable");
        let args: Vec<String> = [
            "--state-bucket",
            bucket,
            "--state-region",
            "us-east-1",
            "--state-endpoint",
            &endpoint,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            controller_cmd(&data, "127.0.0.1:0", "127.0.0.1:0", &args).output(),
        )
        .await
        .context("controller did not give up")??;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--state-bucket") && stderr.contains(want),
            "{bucket}: {stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("join-token"),
            "no token is printed for a CA that would not survive"
        );
        let _ = std::fs::remove_dir_all(&data);
    }
    Ok(())
}

/// `--join-token-secret-arn` / `--ca-cert-secret-arn` (infra/cloudformation/services.yaml): the
/// controller writes its join token and CA certificate into secrets made without a value (as
/// deploy.sh makes them); the token is what agents join with, the certificate is ca.pem without
/// any key; a restart with the same CA and join secret writes no new version; a new join secret
/// (rotation) writes the new token; a missing secret fails the start naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_publishes_its_join_token_and_ca_certificate_once() -> Result<()> {
    let moto = moto_url();
    let name = uuid::Uuid::now_v7().simple().to_string();
    let secret_arn = |what: &str| {
        let what = what.to_string();
        let name = name.clone();
        async move {
            let out = moto_admin(&["create-secret", "--name", &format!("meshlat/{name}/{what}")])
                .await?
                .context("create-secret")?;
            Ok::<_, anyhow::Error>(String::from_utf8(out)?.trim().to_string())
        }
    };
    let (token_arn, ca_arn) = (
        secret_arn("join-token").await?,
        secret_arn("ca-cert").await?,
    );
    let get = |arn: &str| {
        let arn = arn.to_string();
        async move {
            moto_admin(&["get-secret", "--arn", &arn])
                .await
                .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
        }
    };
    let versions = |arn: &str| {
        let arn = arn.to_string();
        async move {
            let out = moto_admin(&["secret-versions", "--arn", &arn])
                .await?
                .context("versions")?;
            Ok::<_, anyhow::Error>(String::from_utf8(out)?.trim().parse::<u32>()?)
        }
    };
    assert_eq!(get(&token_arn).await?, None, "made without a value");
    let join1 = "0123456789abcdef0123456789abcdef01";
    let args = |join: &str| -> Vec<String> {
        [
            "--join-secret",
            join,
            "--join-token-secret-arn",
            &token_arn,
            "--ca-cert-secret-arn",
            &ca_arn,
            "--secrets-endpoint",
            &moto,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let data = tmp_dir("publish", "ctl");
    let mut ctl = Ctl::start(&data, "127.0.0.1:0", "127.0.0.1:0", &args(join1)).await?;
    let token = get(&token_arn).await?.context("no token written")?;
    assert_eq!(token, format!("mlt1.{}.{join1}", ctl.ca_sha256));
    let ca = get(&ca_arn).await?.context("no CA certificate written")?;
    assert_eq!(ca, std::fs::read_to_string(data.join("ca.pem"))?);
    assert!(
        ca.contains("BEGIN CERTIFICATE") && !ca.contains("PRIVATE KEY"),
        "{ca}"
    );
    // The token works: an agent joins with it.
    let out = tmp_dir("publish", "out");
    let state = tmp_dir("publish", "agent");
    let cred = ctl
        .credential
        .clone()
        .context("generated operator credential")?;
    let mut agent = start_agent(&ctl.grpc, &token, &out, &state)?;
    eventually("the agent joins with the published token", 30, || async {
        ctl.agents(&cred)
            .await
            .iter()
            .any(|(_, connected)| *connected)
            .then_some(())
    })
    .await?;
    agent.kill().await?;
    println!(
        "versions after first start: token {}, ca {}",
        versions(&token_arn).await?,
        versions(&ca_arn).await?
    );
    assert_eq!(
        (versions(&token_arn).await?, versions(&ca_arn).await?),
        (1, 1)
    );

    // Same CA and join secret: nothing new.
    ctl.child.kill().await?;
    let mut ctl = Ctl::start(&data, "127.0.0.1:0", "127.0.0.1:0", &args(join1)).await?;
    assert_eq!(
        (versions(&token_arn).await?, versions(&ca_arn).await?),
        (1, 1),
        "a restart rewrote an unchanged secret"
    );
    // A rotated join secret: the new token, the same CA certificate.
    ctl.child.kill().await?;
    let join2 = "fedcba9876543210fedcba9876543210fe";
    let mut ctl = Ctl::start(&data, "127.0.0.1:0", "127.0.0.1:0", &args(join2)).await?;
    assert_eq!(
        get(&token_arn).await?,
        Some(format!("mlt1.{}.{join2}", ctl.ca_sha256))
    );
    assert_eq!(
        (versions(&token_arn).await?, versions(&ca_arn).await?),
        (2, 1)
    );
    ctl.child.kill().await?;

    // A secret that does not exist: exit 2, naming the flag and the service's error.
    let missing = token_arn.replace("join-token", "no-such-secret");
    let mut bad = args(join1);
    bad[3] = missing;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        controller_cmd(
            &tmp_dir("publish", "bad"),
            "127.0.0.1:0",
            "127.0.0.1:0",
            &bad,
        )
        .output(),
    )
    .await
    .context("controller did not give up")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--join-token-secret-arn") && stderr.contains("ResourceNotFoundException"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}
