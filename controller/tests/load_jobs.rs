//! Load jobs at the controller (issue 15 item 6), with controllers and agents as separate
//! processes on loopback: a load job is accepted only when every target's host is on the
//! controller's `--load-allow` list, refused with 400 naming the target otherwise (at start and
//! at update); a controller without the list accepts none; a federation peer's load job to a
//! host not on this controller's list is refused when its directory is read and never assigned
//! to this controller's agents; credentials are references, never secrets.
//!
//! The agent binary is found next to the controller's (`target/debug/agent`): `cargo test
//! --workspace` builds it; with `-p meshlat-controller` alone, run
//! `cargo build -p meshlat-agent --bin agent` first.

mod support;
use support::{TestAgent, TestController, eventually, tmp_dir};

use anyhow::Result;
use serde_json::Value;

fn load_job(name: &str, sources: &str, target: &str) -> String {
    serde_json::json!({
        "name": name,
        "kind": "load",
        "protocols": ["http"],
        "sources": [sources],
        "targets": [target],
        "timeout_ms": 1000,
        "duration_ms": 600_000,
        "load": {
            "model": "closed", "start": 1, "step": 1, "steps": 2, "step_duration_ms": 300_000,
            "credentials": {"file": "/nonexistent/meshlat-keys", "header": "X-Api-Key"}
        }
    })
    .to_string()
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

fn msg(e: &Value) -> String {
    s(&e["error"], "message")
}

fn assigned(job: &Value) -> Vec<String> {
    job["agent_status"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| s(x, "agent"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_jobs_go_only_to_allowed_hosts_here_and_at_peers() -> Result<()> {
    let root = tmp_dir("load-jobs", "allow");
    let secret = "fed-secret-load-0123456789abcdef0123".to_string();
    // B has no --load-allow: it accepts no load job, its own or a peer's.
    let mut ctl_b = TestController::builder(root.join("ctl-b"))
        .region("b")
        .log(root.join("ctl-b.log"))
        .federation_secret(&secret)
        .spawn()
        .await?;
    let ctl_a = TestController::builder(root.join("ctl-a"))
        .region("a")
        .federation_secret(&secret)
        .peer(&ctl_b)
        .args([
            "--peer-ttl",
            "6",
            "--load-allow",
            "127.0.0.1, *.test.example",
        ])
        .spawn()
        .await?;
    let a1 = TestAgent::builder(&ctl_a, root.join("out-a"), root.join("st-a"))
        .region("a")
        .spawn()?;
    let b1 = TestAgent::builder(&ctl_b, root.join("out-b"), root.join("st-b"))
        .region("b")
        .spawn()?;
    eventually("both agents in A's directory", 30, || async {
        (ctl_a.agents().await.len() == 2).then_some(())
    })
    .await?;
    let a_id = a1.stored_id("a1").await?;

    // Refused: a host not on the list, at start, naming the target and the list.
    let (st, e) = ctl_a
        .rest(
            "POST",
            "/api/v1/jobs",
            &load_job("victim", "region=a", "http://victim.example/"),
            None,
        )
        .await?;
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["field"], "spec.targets[0]", "{e}");
    assert!(
        msg(&e).contains(
            "\"victim.example\" is not on this controller's load allowlist \
             (--load-allow 127.0.0.1/32, *.test.example)"
        ),
        "{e}"
    );
    // An address written as a name, a userinfo trick, and a second target: each refused.
    for (target, want) in [
        ("http://localhost:8080/", "\"localhost\""),
        ("http://127.0.0.1@victim.example/", "no user@"),
        ("http://test.example/", "\"test.example\""),
    ] {
        let (st, e) = ctl_a
            .rest(
                "POST",
                "/api/v1/jobs",
                &load_job("x", "region=a", target),
                None,
            )
            .await?;
        assert_eq!(st, 400, "{target}: {e}");
        assert!(msg(&e).contains(want), "{target}: {e}");
    }

    // Accepted: an allowed address, assigned to a1, shown with the credentials' reference only.
    let (st, j) = ctl_a
        .rest(
            "POST",
            "/api/v1/jobs",
            &load_job("local", "region=a", "http://127.0.0.1:9/"),
            None,
        )
        .await?;
    assert_eq!(st, 201, "{j}");
    let id = s(&j, "id");
    assert_eq!(j["spec"]["kind"], "load", "{j}");
    assert_eq!(j["spec"]["load"]["model"], "closed", "{j}");
    assert_eq!(
        j["spec"]["load"]["credentials"],
        serde_json::json!({"file": "/nonexistent/meshlat-keys", "secrets_manager_arn": "", "header": "X-Api-Key"}),
        "{j}"
    );
    eventually("A assigns its load job to a1", 30, || async {
        let (st, j) = ctl_a
            .rest("GET", &format!("/api/v1/jobs/{id}"), "", None)
            .await
            .ok()?;
        (st == 200 && assigned(&j) == [a_id.clone()]).then_some(())
    })
    .await?;
    // An update to a refused host is refused; the job keeps its version.
    let (st, e) = ctl_a
        .rest_with_if_match(
            &format!("/api/v1/jobs/{id}"),
            &load_job("local", "region=a", "https://api.victim.example/"),
            1,
        )
        .await?;
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["field"], "spec.targets[0]", "{e}");
    // A probe job to the same host needs no allowlist: load is what the list guards.
    let (st, j) = ctl_a
        .rest(
            "POST",
            "/api/v1/jobs",
            r#"{"protocols":["http"],"sources":["region=a"],"targets":["http://victim.example/"],
                "interval_ms":60000,"timeout_ms":1000}"#,
            None,
        )
        .await?;
    assert_eq!(st, 201, "{j}");

    // B accepts no load job of its own, and says how to allow one.
    let (st, e) = ctl_b
        .rest(
            "POST",
            "/api/v1/jobs",
            &load_job("b", "region=b", "http://127.0.0.1:9/"),
            None,
        )
        .await?;
    assert_eq!(st, 400, "{e}");
    assert!(
        msg(&e).contains("accepts no load jobs: start it with --load-allow"),
        "{e}"
    );

    // A's load job with sources in B's region: allowed at A, refused at B, which reads it from
    // A's directory and never assigns it to b1.
    let (st, j) = ctl_a
        .rest(
            "POST",
            "/api/v1/jobs",
            &load_job("to-b", "region=b", "http://127.0.0.1:9/"),
            None,
        )
        .await?;
    assert_eq!(st, 201, "{j}");
    let fed_id = s(&j, "id");
    eventually("B refuses A's load job", 40, || async {
        let log = ctl_b.log_text();
        log.lines()
            .any(|l| {
                l.contains("Peer job refused.")
                    && l.contains(&fed_id)
                    && l.contains("targets[0]")
                    && l.contains("--load-allow")
            })
            .then_some(())
    })
    .await?;
    // A probe job from region b, started after, reaches b1: the federation works, so the load
    // job's absence is B's refusal.
    let (st, j) = ctl_a
        .rest(
            "POST",
            "/api/v1/jobs",
            r#"{"protocols":["udp"],"sources":["region=b"],"targets":["region=a"],
                "interval_ms":1000,"timeout_ms":500}"#,
            None,
        )
        .await?;
    assert_eq!(st, 201, "{j}");
    let probe_id = s(&j, "id");
    eventually("b1 is assigned A's probe job", 40, || async {
        let (_, j) = ctl_a
            .rest("GET", &format!("/api/v1/jobs/{probe_id}"), "", None)
            .await
            .ok()?;
        (!assigned(&j).is_empty()).then_some(())
    })
    .await?;
    let (_, j) = ctl_a
        .rest("GET", &format!("/api/v1/jobs/{fed_id}"), "", None)
        .await?;
    assert!(
        assigned(&j).is_empty(),
        "B assigned a refused load job: {j}"
    );
    assert!(ctl_b.alive(), "B survived");
    drop((a1, b1));
    Ok(())
}
