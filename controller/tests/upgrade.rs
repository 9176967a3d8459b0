//! Upgrades: this version starts on the state the previous release wrote
//! (`tests/fixtures/state-0.1.0`, never regenerated) and keeps what operators and agents rely on:
//! the CA (so every join token keeps its pin), the seeded operator credential, the running job
//! with its id, and the agent's id; its state files are migrated to the current state format
//! (`meshlat_proto::state_file`). Regions upgrade one at a time, so this must hold for every
//! release; add a fixture directory per release. A downgrade — state files of a newer format —
//! is refused naming the file and its format.

mod support;
use support::TestController;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use meshlat_proto::pb;
use serde_json::Value;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/state-0.1.0");
const CA_SHA256: &str = "973bdb79b5b02db77cf11fe71798e130e727833c550146fff28c737f1fda1fd2";
const CREDENTIAL: &str = "fixture:fixture-operator-secret-0123456789";
const JOIN_SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const RUNNING_JOB: &str = "01a23556-f5f4-75e2-b9a9-5c8552a34d6f";
const AGENT_ID: &str = "01a23556-e354-74ca-b044-81483dac9181";

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), &dst)?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn starts_on_the_previous_releases_state_and_keeps_ca_credential_jobs_and_agents()
-> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let root = support::tmp_dir("upgrade", "0.1.0");
    let data = root.join("controller");
    copy_dir(&Path::new(FIXTURE).join("controller"), &data)?;
    // git keeps no modes beyond the executable bit: restore what 0.1.0 wrote.
    for f in ["ca.key", "credentials.json"] {
        std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o600))?;
    }
    // Agents not heard from for --agent-expiry are removed (at most 366 days): once the fixture
    // is older than that, move its agent's last-seen time to now — only that field, so the
    // file is still 0.1.0's encoding of everything else.
    let agents_pb = data.join("state/agents.pb");
    let mut agents: pb::StoredAgents =
        prost::Message::decode(std::fs::read(&agents_pb)?.as_slice())?;
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let mut touched = false;
    for a in &mut agents.agents {
        if let Some(i) = a.info.as_mut()
            && now_ms - i.last_seen_unix_ms > 360 * 86_400_000
        {
            i.last_seen_unix_ms = now_ms;
            touched = true;
        }
    }
    if touched {
        std::fs::write(&agents_pb, prost::Message::encode_to_vec(&agents))?;
    }
    // Started as 0.1.0 was, with the same seeds (a deployment's configuration does not change
    // with the upgrade).
    let ctl = TestController::builder(&data)
        .region("fx-1")
        .args([
            "--join-secret",
            JOIN_SECRET,
            "--operator-credential",
            CREDENTIAL,
        ])
        .args(["--agent-expiry", "31622400"])
        .env("NO_COLOR", "1")
        .log(root.join("controller.log"))
        .announce_within(Duration::from_secs(30))
        .spawn()
        .await?;
    let (rest, ca) = (ctl.rest.clone(), Some(ctl.ca_sha256.clone()));
    assert_eq!(
        ca.as_deref(),
        Some(CA_SHA256),
        "the CA changed: every join token breaks"
    );

    let get = |path: &str| {
        let (data, rest, path) = (data.clone(), rest.clone(), path.to_string());
        async move {
            let mut send = support::pinned_http1(&data, &rest).await?;
            let req = http::Request::builder()
                .uri(format!("https://{rest}{path}"))
                .header("host", rest.as_str())
                .header("authorization", format!("Bearer {CREDENTIAL}"))
                .body(Full::new(bytes::Bytes::new()))?;
            let resp = send.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, serde_json::from_slice::<Value>(&body)?))
        }
    };
    let (st, jobs) = get("/api/v1/jobs").await?;
    assert_eq!(st, 200, "the 0.1.0 operator credential is refused: {jobs}");
    let ids: Vec<&str> = jobs["jobs"]
        .as_array()
        .context("jobs")?
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    println!("upgrade: jobs after the upgrade: {ids:?}");
    assert!(
        ids.contains(&RUNNING_JOB),
        "the running job is gone: {jobs}"
    );
    let (st, job) = get(&format!("/api/v1/jobs/{RUNNING_JOB}")).await?;
    assert_eq!(st, 200);
    assert_eq!(job["spec"]["name"], "fixture-mesh");
    assert_eq!(job["spec"]["protocols"], serde_json::json!(["udp", "tcp"]));
    let (st, agents) = get("/api/v1/agents").await?;
    assert_eq!(st, 200);
    let known: Vec<&str> = agents["agents"]
        .as_array()
        .context("agents")?
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    println!("upgrade: agents after the upgrade: {known:?}");
    assert!(known.contains(&AGENT_ID), "the agent id is gone: {agents}");
    // Migrated: every state file now carries the current state format.
    for f in ["state/jobs.pb", "state/agents.pb"] {
        let b = std::fs::read(data.join(f))?;
        let (format, _) = meshlat_proto::state_file::decode(&b)?;
        assert_eq!(
            format,
            meshlat_proto::state_file::FORMAT,
            "{f} not migrated"
        );
        assert!(b.starts_with(&meshlat_proto::state_file::MAGIC), "{f}");
    }
    let creds: Value = serde_json::from_slice(&std::fs::read(data.join("credentials.json"))?)?;
    assert_eq!(
        creds["format_version"],
        meshlat_proto::state_file::FORMAT,
        "credentials.json not migrated: {creds}"
    );
    let log = std::fs::read_to_string(root.join("controller.log"))?;
    let migrated = log
        .lines()
        .filter(|l| l.contains("State file migrated.") && l.contains("from_format=0"))
        .count();
    assert_eq!(migrated, 3, "jobs.pb, agents.pb, credentials.json:\n{log}");
    ctl.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// Starts the controller on `data` expecting it to refuse: its stderr.
async fn refused_start(data: &Path) -> Result<String> {
    let mut cmd = TestController::builder(data).region("fx-1").command();
    cmd.stdout(Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .context("the controller started on a newer state (it should have refused)")??;
    anyhow::ensure!(!out.status.success(), "exit status {}", out.status);
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Starts the controller on `data`, where `file` (its content `was`) is of state format
/// `newer`: refused with an error naming the file and its format, the file left as it was.
async fn refused_naming(data: &Path, file: &Path, was: &[u8], newer: u16) -> Result<()> {
    let err = refused_start(data).await?;
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    println!("newer {name}: {err}");
    assert!(
        err.contains(&file.display().to_string())
            && err.contains(&format!("state format {newer}, written by a newer meshlat")),
        "{err}"
    );
    assert_eq!(std::fs::read(file)?, was, "left as it was");
    Ok(())
}

/// A downgrade: state files written by a newer release (a newer state format) are refused with
/// an error naming the file and its format, and left as they are; 0.1.0's files are read.
#[tokio::test]
async fn a_state_file_of_a_newer_format_is_refused_naming_it() -> Result<()> {
    let newer = meshlat_proto::state_file::FORMAT + 1;
    let root = support::tmp_dir("upgrade", "downgrade");
    let data = root.join("controller");
    copy_dir(&Path::new(FIXTURE).join("controller"), &data)?;
    // jobs.pb as a newer build would write it.
    let jobs = data.join("state/jobs.pb");
    let mut file = meshlat_proto::state_file::encode(&std::fs::read(&jobs)?);
    file[5..7].copy_from_slice(&newer.to_be_bytes());
    std::fs::write(&jobs, &file)?;
    refused_naming(&data, &jobs, &file, newer).await?;
    // credentials.json of a newer release, with a field this build does not know: the error is
    // about the format, not the field.
    let old_jobs = std::fs::read(Path::new(FIXTURE).join("controller/state/jobs.pb"))?;
    std::fs::write(&jobs, old_jobs)?;
    let creds_path = data.join("credentials.json");
    let mut creds: Value = serde_json::from_slice(&std::fs::read(&creds_path)?)?;
    creds["format_version"] = newer.into();
    creds["token_policies"] = serde_json::json!([]);
    let text = serde_json::to_vec_pretty(&creds)?;
    std::fs::write(&creds_path, &text)?;
    refused_naming(&data, &creds_path, &text, newer).await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
