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

mod support;
use support::{ControllerBuilder, TestAgent, TestController, eventually, tmp_dir, wait_scale};

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meshlat_proto::pb;
use prost::Message;
use tokio::process::Command;

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

/// A controller of region `r1` over `data` with `args`, announcing itself within 30 s (scaled);
/// moto accepts any credentials, so the SDK is kept off IMDS and real profiles.
fn moto_ctl(data: impl Into<PathBuf>, args: &[String]) -> ControllerBuilder {
    TestController::builder(data)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_REGION")
        .announce_within(Duration::from_secs(30) * wait_scale())
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
    let mut a = moto_ctl(root.join("ctl-a"), &state).spawn().await?;
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
    let (st, job) = a.rest("POST", "/api/v1/jobs", JOB, Some(&cred)).await?;
    assert_eq!(st, 201, "{job}");
    let job_id = job["id"].as_str().context("job id")?.to_string();
    let (st, job) = a
        .rest("PUT", &format!("/api/v1/jobs/{job_id}"), JOB, Some(&cred))
        .await?;
    assert_eq!((st, job["version"].as_u64()), (200, Some(2)), "{job}");

    let agent_state = root.join("agent-state");
    let mut agent = TestAgent::builder(&a, root.join("out"), &agent_state)
        .token(&token)
        .spawn()?;
    let agent_id = eventually("the agent connected to A", 30, || async {
        let id = std::fs::read_to_string(agent_state.join("agent-id")).ok()?;
        let id = id.trim().to_string();
        a.agents_as(Some(&cred))
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
        let jobs = pb::StoredJobs::decode(meshlat_proto::state_file::decode(&jobs).ok()?.1).ok()?;
        let agents =
            pb::StoredAgents::decode(meshlat_proto::state_file::decode(&agents).ok()?.1).ok()?;
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
    let b = moto_ctl(&b_dir, &state)
        .listen(&a.grpc, &a.rest)
        .spawn()
        .await?;
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
        .rest("GET", &format!("/api/v1/jobs/{job_id}"), "", Some(&cred))
        .await?;
    assert_eq!(st, 200, "the operator credential still works: {job}");
    assert_eq!(
        (job["id"].as_str(), job["version"].as_u64()),
        (Some(job_id.as_str()), Some(2))
    );
    // The agent reconnects by itself with its old token (pinning the same CA), as the same id.
    eventually("the agent reconnected to B with its id", 60, || async {
        let ag = b.agents_as(Some(&cred)).await;
        (ag.len() == 1 && ag[0] == (agent_id.clone(), true)).then_some(())
    })
    .await?;
    assert!(
        matches!(agent.child.try_wait(), Ok(None)),
        "agent still running"
    );
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
            moto_ctl(&data, &args).command().output(),
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
    let mut ctl = moto_ctl(&data, &args(join1)).spawn().await?;
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
    let mut agent = TestAgent::builder(&ctl, &out, &state)
        .token(&token)
        .spawn()?;
    eventually("the agent joins with the published token", 30, || async {
        ctl.agents_as(Some(&cred))
            .await
            .iter()
            .any(|(_, connected)| *connected)
            .then_some(())
    })
    .await?;
    agent.child.kill().await?;
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
    let mut ctl = moto_ctl(&data, &args(join1)).spawn().await?;
    assert_eq!(
        (versions(&token_arn).await?, versions(&ca_arn).await?),
        (1, 1),
        "a restart rewrote an unchanged secret"
    );
    // A rotated join secret: the new token, the same CA certificate.
    ctl.child.kill().await?;
    let join2 = "fedcba9876543210fedcba9876543210fe";
    let mut ctl = moto_ctl(&data, &args(join2)).spawn().await?;
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
        moto_ctl(tmp_dir("publish", "bad"), &bad).command().output(),
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
