//! A load job whose credentials are an AWS Secrets Manager secret, read by the real `agent run`
//! process from moto's Secrets Manager (issue 15, credentials by reference).
//!
//! Needs a moto server: `scripts/moto.sh start`, then
//! `MESHLAT_TEST_MOTO_URL=$(scripts/moto.sh url) cargo test -p meshlat-agent --test secrets_moto`
//! (`scripts/test.sh` runs it in its `firehose-moto` stage). Without the variable the test fails
//! with these instructions: it is never skipped.
//!
//! The test creates the secret in moto, serves the agent a job set (a fake controller, as in
//! `tests/load_job.rs`) with one job naming it and one naming a secret that does not exist, and
//! checks: the second is refused in the ack with the service's reason; the first loads the
//! target with each key of the secret in `X-Api-Key`; no secret reaches the records or the
//! agent's log.

#![allow(clippy::unwrap_used)]

#[path = "support/load.rs"]
mod load_support;
mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use load_support::{
    TestTarget, closed, eventually, file_records, job_set, load_job, start_agent_under,
};
use meshlat_proto::pb;
use meshlat_proto::record::{Kind, Record};
use tokio::sync::watch;

fn moto_url() -> String {
    match std::env::var("MESHLAT_TEST_MOTO_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "MESHLAT_TEST_MOTO_URL is not set. Start the local AWS emulator with \
             `scripts/moto.sh start`, then run \
             `MESHLAT_TEST_MOTO_URL=$(scripts/moto.sh url) cargo test -p meshlat-agent --test secrets_moto` \
             (scripts/test.sh runs this in its firehose-moto stage)."
        ),
    }
}

/// Creates a secret in moto; its ARN.
async fn create_secret(moto: &str, name: &str, value: &str) -> String {
    let sdk = meshlat_runtime::aws::sdk_config(meshlat_runtime::aws::SdkSetup {
        region: Some("eu-west-1"),
        endpoint: Some(moto),
        retry: aws_config::retry::RetryConfig::disabled(),
        connect_timeout: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(10),
    })
    .await;
    let cfg = aws_sdk_secretsmanager::config::Builder::from(&sdk)
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    let client = aws_sdk_secretsmanager::Client::from_conf(cfg);
    let out = client
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap();
    out.arn().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_job_reads_its_credentials_from_secrets_manager() {
    let moto = moto_url();
    let dir = support::tmpdir("secrets-moto");
    let out = dir.join("records");
    let secrets = ["moto-secret-alpha", "moto-secret-beta"];
    let name = format!("meshlat-load-keys-{}", std::process::id());
    let arn = create_secret(
        &moto,
        &name,
        &format!("# load keys\nalpha:{}\nbeta:{}\n", secrets[0], secrets[1]),
    )
    .await;
    let missing = arn.replace(&name, "meshlat-no-such-secret");
    let target = TestTarget::start(Duration::from_millis(10), 0);
    let job = |id: &str, arn: &str| {
        let mut a = load_job(
            1,
            &target.url(),
            3_000,
            pb::LoadSpec {
                credentials: Some(pb::LoadCredentials {
                    secrets_manager_arn: arn.into(),
                    header: "X-Api-Key".into(),
                    ..Default::default()
                }),
                ..closed(2.0)
            },
        );
        a.job.as_mut().unwrap().id = id.into();
        a
    };
    let (_sets_tx, sets_rx) = watch::channel(job_set(
        1,
        vec![job("from-arn", &arn), job("missing", &missing)],
    ));
    let (fake, mut agent, server) = start_agent_under(
        sets_rx,
        &dir,
        &out,
        &["--load-secrets-endpoint", &moto],
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    assert!(
        eventually(Duration::from_secs(30), || fake.ack(1).is_some()).await,
        "ack of generation 1: {}",
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
    );
    let ack = fake.ack(1).unwrap();
    assert!(!ack.rejected.contains_key("from-arn"), "{ack:?}");
    let reason = ack.rejected.get("missing").cloned().unwrap_or_default();
    assert!(
        reason.contains("load.credentials.secrets_manager_arn")
            && reason.contains("ResourceNotFoundException"),
        "{ack:?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            let seen = target.state.seen.lock().unwrap();
            secrets
                .iter()
                .all(|s| seen.contains(&format!("x-api-key: {s}")))
        })
        .await,
        "each key of the secret used: {:?}",
        target.state.seen.lock().unwrap()
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            file_records(&out)
                .iter()
                .any(|r| r.kind == Some(Kind::Load) && r.seq >= 1)
        })
        .await,
        "load records"
    );
    agent.terminate();
    server.abort();
    assert!(target.state.requests.load(Ordering::SeqCst) > 0);
    let records: String = file_records(&out)
        .iter()
        .map(Record::to_json_line)
        .collect();
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    assert!(log.contains("Load job started."), "{log}");
    for s in secrets {
        assert!(!records.contains(s), "a record holds a secret");
        assert!(!log.contains(s), "the agent's log holds a secret");
        assert!(!ack.rejected.values().any(|r| r.contains(s)));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
