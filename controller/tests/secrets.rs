//! Secrets handling, end to end on real `controller` processes (issue 10, item 6): seeded
//! secrets are never printed, generated ones go to a 0600 file, a changed seed rotates, named
//! credentials can be added and revoked, every state-changing call is audited, and a short
//! federation secret is refused.

mod support;
use support::tmp_dir;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

const JOIN_1: &str = "1111111111111111111111111111111111111111";
const JOIN_2: &str = "2222222222222222222222222222222222222222";
const OPS_1: &str = "ops:first-operator-secret-0123456789";
const OPS_2: &str = "ops:second-operator-secret-0123456789";

struct Ctl {
    child: Child,
    data: PathBuf,
    grpc: String,
    rest: String,
    /// Everything the controller wrote on stdout and stderr so far.
    output: Arc<Mutex<String>>,
}

impl Ctl {
    async fn start(data: &Path, env: &[(&str, &str)], extra: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_controller"));
        cmd.args(["serve", "--region", "r1", "--listen", "127.0.0.1:0"])
            .args(["--rest-listen", "127.0.0.1:0", "--log-json"])
            .args(extra)
            .arg("--data-dir")
            .arg(data)
            .env_remove("MESHLAT_JOIN_SECRET")
            .env_remove("MESHLAT_OPERATOR_CREDENTIAL")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawn controller")?;
        let output = Arc::new(Mutex::new(String::new()));
        let mut err = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let o = output.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = err.next_line().await {
                eprintln!("{l}");
                let mut o = o.lock().expect("lock");
                o.push_str(&l);
                o.push('\n');
            }
        });
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let (mut g, mut r) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .context("controller did not announce itself")??
                .ok_or_else(|| anyhow!("controller exited early"))?;
            output.lock().expect("lock").push_str(&format!("{line}\n"));
            let mut w = line.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("listening"), Some("grpc"), Some(a)) => g = Some(a.to_string()),
                (Some("listening"), Some("rest"), Some(a)) => r = Some(a.to_string()),
                // The last line of the announcement block.
                (Some("ca-sha256"), _, _) => break,
                _ => {}
            }
        }
        let o = output.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let mut o = o.lock().expect("lock");
                o.push_str(&l);
                o.push('\n');
            }
        });
        Ok(Ctl {
            child,
            data: data.to_path_buf(),
            grpc: g.context("grpc")?,
            rest: r.context("rest")?,
            output,
        })
    }

    fn output(&self) -> String {
        self.output.lock().expect("lock").clone()
    }

    async fn status(&self, method: &str, path: &str, body: &str, cred: &str) -> Result<u16> {
        let mut send = support::pinned_http1(&self.data, &self.rest).await?;
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("authorization", format!("Bearer {cred}"))
            .body(Full::new(bytes::Bytes::from(body.to_string())))?;
        let res = send.send_request(req).await?;
        let status = res.status().as_u16();
        let _ = res.into_body().collect().await?;
        Ok(status)
    }

    /// `controller credentials ARGS` against this controller as `cred`: (exit code, stdout,
    /// stderr).
    async fn cli(&self, cred: &str, args: &[&str]) -> Result<(i32, String, String)> {
        let out = Command::new(env!("CARGO_BIN_EXE_controller"))
            .arg("credentials")
            .args(args)
            .args(["--controller", &format!("https://{}", self.grpc)])
            .arg("--ca")
            .arg(self.data.join("ca.pem"))
            .env("MESHLAT_CREDENTIAL", cred)
            .output()
            .await?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    async fn stop(mut self) -> Result<String> {
        self.child.kill().await?;
        let _ = self.child.wait().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(self.output())
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_secrets_go_to_a_private_file_and_are_printed_only_on_request() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let root = tmp_dir("secrets", "generated");
    let ctl = Ctl::start(&root.join("a"), &[], &[]).await?;
    let path = root.join("a/first-start-secrets");
    until("the secrets-file line", || {
        ctl.output().contains("secrets-file ")
    })
    .await?;
    let out = ctl.output();
    assert!(
        out.contains(&format!("secrets-file {}", path.display())),
        "{out}"
    );
    let (token, cred) = support::read_secrets_file(&path)?;
    let (token, cred) = (token.context("token")?, cred.context("credential")?);
    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(ctl.status("GET", "/api/v1/jobs", "", &cred).await?, 200);
    let out = ctl.stop().await?;
    for secret in [&token, &cred] {
        assert!(
            !out.contains(secret.as_str()),
            "printed without --print-secrets"
        );
    }
    // With --print-secrets they are printed too.
    let ctl = Ctl::start(&root.join("b"), &[], &["--print-secrets"]).await?;
    until("the printed credential", || {
        ctl.output().contains("operator-credential ")
    })
    .await?;
    let (_, cred_b) = support::read_secrets_file(&root.join("b/first-start-secrets"))?;
    let out = ctl.stop().await?;
    assert!(out.contains(&format!("operator-credential {}", cred_b.context("cred")?)));
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_are_never_printed_rotate_and_credentials_are_named_revocable_and_audited()
-> Result<()> {
    let root = tmp_dir("secrets", "seeds");
    let data = root.join("ctl");
    let seeds1 = [
        ("MESHLAT_JOIN_SECRET", JOIN_1),
        ("MESHLAT_OPERATOR_CREDENTIAL", OPS_1),
    ];
    let ctl = Ctl::start(&data, &seeds1, &[]).await?;
    assert_eq!(ctl.status("GET", "/api/v1/jobs", "", OPS_1).await?, 200);
    assert!(
        !data.join("first-start-secrets").exists(),
        "nothing generated, nothing written"
    );

    // Named credentials: add (shown once), use, list, revoke (then 401), all audited.
    let (code, added, err) = ctl.cli(OPS_1, &["add", "ci"]).await?;
    assert_eq!(code, 0, "{err}");
    let ci = added.trim().to_string();
    assert!(ci.starts_with("ci:"), "{ci}");
    let job = r#"{"name":"audited","protocols":["udp"],"sources":["region=r1"],
        "targets":["region=r1"],"interval_ms":1000,"timeout_ms":500}"#;
    assert_eq!(ctl.status("POST", "/api/v1/jobs", job, &ci).await?, 201);
    let (code, list, _) = ctl.cli(&ci, &["list"]).await?;
    assert_eq!(code, 0);
    assert!(list.contains("ops ") && list.contains("seed"), "{list}");
    assert!(list.contains("ci ") && list.contains("added"), "{list}");
    assert!(!list.contains(&ci[3..]), "list never shows secrets");
    let (code, _, err) = ctl.cli(OPS_1, &["revoke", "ci"]).await?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        ctl.status("GET", "/api/v1/jobs", "", &ci).await?,
        401,
        "revoked"
    );
    assert_eq!(ctl.status("POST", "/api/v1/jobs", job, &ci).await?, 401);
    let (code, _, err) = ctl.cli(OPS_1, &["revoke", "ops"]).await?;
    assert_eq!(code, 1, "the last credential cannot be revoked");
    assert!(err.contains("last one"), "{err}");
    let (code, _, err) = ctl.cli(OPS_1, &["add", "bad name"]).await?;
    assert_eq!(code, 1);
    assert!(
        err.contains("InvalidArgument") && err.contains("name"),
        "{err}"
    );
    until("audit lines", || {
        ctl.output().matches("Operator call.").count() >= 6
    })
    .await?;
    let out = ctl.stop().await?;
    // The audit log: JSON lines with target "audit".
    let audit: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "audit")
        .collect();
    let has = |cred: &str, action: &str, object: &str, outcome: &str| {
        audit.iter().any(|v| {
            let f = &v["fields"];
            f["credential"] == cred
                && f["action"] == action
                && (object.is_empty() || f["object"] == object)
                && f["outcome"] == outcome
                && f["remote"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("127.0.0.1:"))
        })
    };
    assert!(has("ops", "credential.add", "ci", "ok"), "{audit:#?}");
    assert!(has("ci", "job.start", "", "ok"), "{audit:#?}");
    assert!(has("ops", "credential.revoke", "ci", "ok"), "{audit:#?}");
    assert!(
        has("-", "job.start", "", "unauthenticated"),
        "a revoked credential's attempt is audited: {audit:#?}"
    );
    assert!(
        has("ops", "credential.revoke", "ops", "failed_precondition"),
        "{audit:#?}"
    );
    assert!(
        has("ops", "credential.add", "bad name", "invalid_argument"),
        "{audit:#?}"
    );
    assert!(
        !audit.iter().any(|v| v["fields"]["action"] == "job.list"),
        "reads are not audited"
    );

    // Rotation: new seeds replace the stored hashes; the old credential gets 401.
    let seeds2 = [
        ("MESHLAT_JOIN_SECRET", JOIN_2),
        ("MESHLAT_OPERATOR_CREDENTIAL", OPS_2),
    ];
    let ctl = Ctl::start(&data, &seeds2, &[]).await?;
    assert_eq!(ctl.status("GET", "/api/v1/jobs", "", OPS_2).await?, 200);
    assert_eq!(ctl.status("GET", "/api/v1/jobs", "", OPS_1).await?, 401);
    let out = ctl.stop().await?;
    assert!(out.contains("rotated"), "the rotation is logged: {out}");
    for secret in [JOIN_1, JOIN_2, &OPS_1[4..], &OPS_2[4..]] {
        assert!(!out.contains(secret), "a seeded secret was printed: {out}");
    }
    let stored = std::fs::read_to_string(data.join("credentials.json"))?;
    assert!(!stored.contains(&OPS_2[4..]) && !stored.contains(JOIN_2));
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_federation_secret_or_a_plaintext_peer_is_refused_clearly() -> Result<()> {
    let root = tmp_dir("secrets", "fed");
    for (args, want) in [
        (
            vec!["--federation-secret", "short-secret"],
            "--federation-secret \"<12 bytes>\": must be at least 32 bytes",
        ),
        (
            vec![
                "--federation-secret",
                "0123456789abcdef0123456789abcdef",
                "--peer",
                "http://127.0.0.1:1",
            ],
            "--peer \"http://127.0.0.1:1\": must be an https:// URL",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_controller"))
            .args(["serve", "--region", "r1", "--listen", "127.0.0.1:0"])
            .args(["--rest-listen", "off"])
            .args(&args)
            .arg("--data-dir")
            .arg(root.join("d"))
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(!stderr.contains("short-secret"), "the secret is not echoed");
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
