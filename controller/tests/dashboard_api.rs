//! The API foundations of the web dashboard (issue 14), with a controller and agents as
//! separate processes on loopback: each job's per-agent acknowledgement status, the agents'
//! roles and control mode, relayed paths kept apart from direct ones in the matrix, and (with
//! two federated controllers) live summaries of a peer's agents in a controller's matrix.
//!
//! The agent binary is found next to the controller's (`target/debug/agent`): `cargo test
//! --workspace` builds it; with `-p meshlat-controller` alone, run
//! `cargo build -p meshlat-agent --bin agent` first.

mod support;
use support::{AgentBuilder, TestAgent, TestController, bearer, eventually, tmp_dir};

use std::path::PathBuf;

use anyhow::Result;
use serde_json::Value;

fn agent(ctl: &TestController, out: impl Into<PathBuf>, state: impl Into<PathBuf>) -> AgentBuilder {
    TestAgent::builder(ctl, out, state).args(["--flush-interval", "0.2"])
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

/// `(agent, state, reason)` of a job's `agent_status`.
fn statuses(job: &Value) -> Vec<(String, String, String)> {
    job["agent_status"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| (s(x, "agent"), s(x, "state"), s(x, "reason")))
        .collect()
}

/// An agent of `GET /api/v1/agents` by id.
async fn listed(ctl: &TestController, id: &str) -> Option<Value> {
    let (st, v) = ctl.rest("GET", "/api/v1/agents", "", None).await.ok()?;
    if st != 200 {
        return None;
    }
    v["agents"]
        .as_array()?
        .iter()
        .find(|a| s(a, "id") == id)
        .cloned()
}

/// A job an agent accepts shows `acked` at each source; one it refuses (a `tcp://` URL without
/// a port passes the controller's validation but not the agent's target parser) shows
/// `rejected` with the agent's reason — over REST (one job and the list), gRPC and the CLI.
/// The agents list names the relay's role and each agent's control mode, which turns
/// `disconnected` when its session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_acks_rejections_roles_and_control_mode_are_served() -> Result<()> {
    use meshlat_proto::pb;
    let root = tmp_dir("dash", "acks");
    let ctl = TestController::builder(root.join("ctl"))
        .args(["--relay-agent", "location=hub"])
        .spawn()
        .await?;
    let a = agent(&ctl, root.join("out-a"), root.join("st-a")).spawn()?;
    let r = agent(&ctl, root.join("out-r"), root.join("st-r"))
        .args(["--relay", "--location", "hub"])
        .spawn()?;
    eventually("both agents connected", 30, || async {
        let ag = ctl.agents().await;
        (ag.len() == 2 && ag.iter().all(|(_, c)| *c)).then_some(())
    })
    .await?;
    let (a_id, r_id) = (a.stored_id("a").await?, r.stored_id("r").await?);

    // Roles and control mode.
    let ra = listed(&ctl, &r_id).await.expect("relay listed");
    assert_eq!(ra["roles"], serde_json::json!(["relay"]), "{ra}");
    assert_eq!(s(&ra, "control_mode"), "connected", "{ra}");
    let aa = listed(&ctl, &a_id).await.expect("agent listed");
    assert_eq!(aa["roles"], serde_json::json!([]), "{aa}");
    assert_eq!(s(&aa, "control_mode"), "connected", "{aa}");

    // An accepted job: acked at both sources.
    let (st, good) = ctl
        .rest(
            "POST",
            "/api/v1/jobs",
            r#"{"name":"good","protocols":["udp"],"sources":["region=r1"],"targets":["region=r1"],
                "interval_ms":500,"timeout_ms":300,"packets":3,"packet_interval_ms":5}"#,
            None,
        )
        .await?;
    assert_eq!(st, 201, "{good}");
    let good = s(&good, "id");
    let got = eventually("the good job acked by both agents", 30, || async {
        let (st, j) = ctl
            .rest("GET", &format!("/api/v1/jobs/{good}"), "", None)
            .await
            .ok()?;
        let v = statuses(&j);
        (st == 200 && v.len() == 2 && v.iter().all(|(_, st, _)| st == "acked")).then_some(j)
    })
    .await?;
    for x in got["agent_status"].as_array().into_iter().flatten() {
        assert_eq!(s(x, "region"), "r1", "{x}");
        assert!(x["acked_unix_ms"].as_i64().unwrap_or(0) > 0, "{x}");
        assert_eq!(s(x, "reason"), "", "{x}");
    }

    // A job the agent refuses: rejected, with its reason.
    let (st, bad) = ctl
        .rest(
            "POST",
            "/api/v1/jobs",
            &format!(
                r#"{{"name":"bad","protocols":["tcp"],"sources":["{a_id}"],
                "targets":["tcp://127.0.0.1"],"interval_ms":500,"timeout_ms":300}}"#
            ),
            None,
        )
        .await?;
    assert_eq!(st, 201, "{bad}");
    let bad = s(&bad, "id");
    let (_, _, why) = eventually("the bad job rejected by a", 30, || async {
        let (st, j) = ctl
            .rest("GET", &format!("/api/v1/jobs/{bad}"), "", None)
            .await
            .ok()?;
        let v = statuses(&j);
        (st == 200 && v.len() == 1 && v[0].0 == a_id && v[0].1 == "rejected").then(|| v[0].clone())
    })
    .await?;
    assert!(
        why.contains("tcp://127.0.0.1") && why.contains("host:port"),
        "{why}"
    );

    // The list carries the same.
    let (st, list) = ctl.rest("GET", "/api/v1/jobs", "", None).await?;
    assert_eq!(st, 200);
    let of = |id: &str| {
        list["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| s(j, "id") == id)
            .map(statuses)
            .unwrap_or_default()
    };
    assert!(
        of(&good).iter().all(|x| x.1 == "acked") && of(&good).len() == 2,
        "{list}"
    );
    assert_eq!(
        of(&bad),
        vec![(a_id.clone(), "rejected".into(), why.clone())]
    );

    // gRPC GetJob and ListJobs.
    let mut c = pb::operator_service_client::OperatorServiceClient::with_interceptor(
        ctl.grpc_channel().await?,
        bearer(ctl.credential()),
    );
    let j = c
        .get_job(pb::GetJobRequest { id: bad.clone() })
        .await?
        .into_inner();
    assert_eq!(j.agent_status.len(), 1, "{j:?}");
    assert_eq!(
        (j.agent_status[0].state.as_str(), &j.agent_status[0].reason),
        ("rejected", &why)
    );
    let jobs = c
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    assert!(
        jobs.iter()
            .any(|j| j.id == good && j.agent_status.iter().all(|x| x.state == "acked")),
        "{jobs:?}"
    );

    // The CLI: `job list` counts and names the rejection; `job show` prints the statuses.
    let (ok, out, err) = ctl.cli(&["job", "list"]).await?;
    assert!(ok, "{err}");
    assert!(out.contains("acked 2, pending 0, rejected 0"), "{out}");
    assert!(out.contains("acked 0, pending 0, rejected 1"), "{out}");
    assert!(
        out.contains(&format!("rejected by {a_id} (r1): tcp://127.0.0.1")),
        "{out}"
    );
    let (ok, out, err) = ctl.cli(&["job", "show", &bad]).await?;
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out)?;
    assert_eq!(statuses(&shown)[0].1, "rejected", "{out}");
    let (ok, out, err) = ctl.cli(&["agents"]).await?;
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&r_id))
        .unwrap_or_default();
    assert!(
        line.contains("connected") && line.contains("relay"),
        "{out}"
    );

    // The relay's session ends: disconnected.
    r.stop().await?;
    eventually("the relay listed disconnected", 30, || async {
        let ra = listed(&ctl, &r_id).await?;
        (s(&ra, "control_mode") == "disconnected").then_some(())
    })
    .await?;
    drop(a);
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// Whether matrix `m` has a cell `src -> dst` with samples.
fn has_cell(m: &Value, src: &str, dst: &str) -> bool {
    m["cells"].as_array().is_some_and(|c| {
        c.iter().any(|c| {
            s(c, "src") == src && s(c, "dst") == dst && c["samples"].as_u64().unwrap_or(0) > 0
        })
    })
}

/// Two federated controllers: a job started on A whose sources are B's agents shows their
/// acknowledgement on A (from B's directory), and A's matrix — REST, the SSE stream and gRPC —
/// holds the cells those agents measure (B sends its own agents' live summaries in the
/// exchange); when B goes away they age out with its entries, well before the summary TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_serves_the_peers_job_acks_and_live_summaries() -> Result<()> {
    use meshlat_proto::pb;
    let root = tmp_dir("dash", "fed");
    let secret = "fed-secret-dash-0123456789abcdef0123".to_string();
    let mut ctl_b = TestController::builder(root.join("ctl-b"))
        .region("b")
        .federation_secret(&secret)
        .spawn()
        .await?;
    let ctl_a = TestController::builder(root.join("ctl-a"))
        .region("a")
        .federation_secret(&secret)
        .peer(&ctl_b)
        .args(["--peer-ttl", "6"])
        .spawn()
        .await?;
    let a1 = agent(&ctl_a, root.join("out-a"), root.join("st-a"))
        .region("a")
        .spawn()?;
    let b1 = agent(&ctl_b, root.join("out-b"), root.join("st-b"))
        .region("b")
        .spawn()?;
    eventually("both agents in A's directory", 30, || async {
        (ctl_a.agents().await.len() == 2).then_some(())
    })
    .await?;
    let (a_id, b_id) = (a1.stored_id("a1").await?, b1.stored_id("b1").await?);
    let peer_agent = listed(&ctl_a, &b_id).await.expect("b1 listed on A");
    assert_eq!(s(&peer_agent, "control_mode"), "connected", "{peer_agent}");

    // Sources in B's region, started on A.
    let (st, j) = ctl_a
        .rest(
            "POST",
            "/api/v1/jobs",
            r#"{"name":"fed","protocols":["udp"],"sources":["region=b"],"targets":["region=a"],
                "interval_ms":500,"timeout_ms":300,"packets":3,"packet_interval_ms":5}"#,
            None,
        )
        .await?;
    assert_eq!(st, 201, "{j}");
    let jid = s(&j, "id");
    let got = eventually("A shows b1's ack of its job", 30, || async {
        let (st, j) = ctl_a
            .rest("GET", &format!("/api/v1/jobs/{jid}"), "", None)
            .await
            .ok()?;
        let v = statuses(&j);
        (st == 200 && v.len() == 1 && v[0].1 == "acked").then_some(j)
    })
    .await?;
    let st0 = &got["agent_status"][0];
    assert_eq!(
        (s(st0, "agent"), s(st0, "region")),
        (b_id.clone(), "b".into())
    );

    // A's matrix has b1's measurements of a1: by region, by agent, streamed and over gRPC.
    eventually("A's region matrix has the b -> a cell", 40, || async {
        let (st, m) = ctl_a
            .rest("GET", "/api/v1/matrix?by=region&protocol=udp", "", None)
            .await
            .ok()?;
        (st == 200 && has_cell(&m, "b", "a")).then_some(())
    })
    .await?;
    let (_, m) = ctl_a.rest("GET", "/api/v1/matrix", "", None).await?;
    assert!(has_cell(&m, &b_id, &a_id), "{m}");
    let cell = m["cells"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| s(c, "src") == b_id)
        .cloned()
        .unwrap_or_default();
    assert_eq!(s(&cell, "via"), "", "a direct path: {cell}");
    assert!(cell["relay_penalty_ms"].is_null(), "{cell}");
    let (ev, _) = ctl_a.first_sse_matrix("?by=region").await?;
    assert!(has_cell(&ev, "b", "a"), "{ev}");
    // The dashboard's view of one region pair: only pairs from and to those regions.
    let (_, m) = ctl_a
        .rest(
            "GET",
            "/api/v1/matrix?by=agent&src_region=b&dst_region=a",
            "",
            None,
        )
        .await?;
    assert!(has_cell(&m, &b_id, &a_id), "{m}");
    for q in ["src_region=a", "dst_region=b", "src_region=nowhere"] {
        let (st, m) = ctl_a
            .rest("GET", &format!("/api/v1/matrix?by=agent&{q}"), "", None)
            .await?;
        assert_eq!(st, 200, "{q}: {m}");
        assert!(!has_cell(&m, &b_id, &a_id), "{q} lets b -> a through: {m}");
    }
    let (ev, _) = ctl_a
        .first_sse_matrix("?by=agent&src_region=b&dst_region=a")
        .await?;
    assert!(has_cell(&ev, &b_id, &a_id), "{ev}");
    let mut c = pb::operator_service_client::OperatorServiceClient::with_interceptor(
        ctl_a.grpc_channel().await?,
        bearer(ctl_a.credential()),
    );
    let gm = c
        .get_matrix(pb::GetMatrixRequest {
            by: "agent".into(),
            protocol: "udp".into(),
        })
        .await?
        .into_inner();
    assert!(
        gm.cells.iter().any(|x| x.src == b_id && x.dst == a_id),
        "{gm:?}"
    );
    // B's own matrix has it too, once (A sends B nothing of B's back: its own agent measures
    // nothing here).
    let (_, mb) = ctl_b.rest("GET", "/api/v1/matrix", "", None).await?;
    let n = mb["cells"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| s(c, "src") == b_id && s(c, "dst") == a_id)
        .count();
    assert_eq!(n, 1, "{mb}");

    // B goes away: its agents' summaries leave A's matrix with B's entries (peer TTL 6 s plus
    // a sweep), well before the 30 s summary TTL.
    ctl_b.child.kill().await?;
    let t0 = tokio::time::Instant::now();
    eventually("b's cells leave A's matrix with the peer", 20, || async {
        let (st, m) = ctl_a
            .rest("GET", "/api/v1/matrix?by=region", "", None)
            .await
            .ok()?;
        (st == 200 && !has_cell(&m, "b", "a")).then_some(())
    })
    .await?;
    // The summary TTL alone would take at least 25 s (30 s after b1's last report to B).
    assert!(t0.elapsed().as_secs() < 18, "{:?}", t0.elapsed());
    drop((a1, b1));
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// A pair measured directly and through a relay: the matrix has one cell per path — the
/// direct one with an empty `via` and no penalty, the relayed one naming the relay with its
/// median penalty — over REST and gRPC, and `controller matrix` lists the relayed path below
/// its table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_and_direct_paths_are_separate_cells() -> Result<()> {
    use meshlat_proto::pb;
    let root = tmp_dir("dash", "via");
    let ctl = TestController::builder(root.join("ctl"))
        .args(["--relay-agent", "location=hub"])
        .spawn()
        .await?;
    let a = agent(&ctl, root.join("out-a"), root.join("st-a")).spawn()?;
    let b = agent(&ctl, root.join("out-b"), root.join("st-b"))
        .args(["--location", "dc1"])
        .spawn()?;
    let r = agent(&ctl, root.join("out-r"), root.join("st-r"))
        .args(["--relay", "--location", "hub"])
        .spawn()?;
    eventually("three agents connected", 30, || async {
        let ag = ctl.agents().await;
        (ag.len() == 3 && ag.iter().all(|(_, c)| *c)).then_some(())
    })
    .await?;
    let (a_id, b_id, r_id) = (
        a.stored_id("a").await?,
        b.stored_id("b").await?,
        r.stored_id("r").await?,
    );
    for body in [
        format!(
            r#"{{"name":"direct","protocols":["udp"],"sources":["{a_id}"],"targets":["{b_id}"],
            "interval_ms":400,"timeout_ms":300,"packets":4,"packet_interval_ms":5}}"#
        ),
        format!(
            r#"{{"name":"relayed","kind":"relay","protocols":["udp"],"sources":["{a_id}"],
            "targets":["{b_id}"],"relays":["{r_id}"],"interval_ms":400,"timeout_ms":300,
            "packets":4,"packet_interval_ms":5}}"#
        ),
    ] {
        let (st, j) = ctl.rest("POST", "/api/v1/jobs", &body, None).await?;
        assert_eq!(st, 201, "{j}");
    }
    let cells = eventually("a -> b direct and via r in the matrix", 40, || async {
        let (st, m) = ctl
            .rest("GET", "/api/v1/matrix?by=agent&protocol=udp", "", None)
            .await
            .ok()?;
        let ab: Vec<Value> = m["cells"]
            .as_array()?
            .iter()
            .filter(|c| s(c, "src") == a_id && s(c, "dst") == b_id)
            .cloned()
            .collect();
        (st == 200 && ab.len() == 2).then_some(ab)
    })
    .await?;
    let direct = cells
        .iter()
        .find(|c| s(c, "via").is_empty())
        .expect("direct");
    let relayed = cells.iter().find(|c| s(c, "via") == r_id).expect("via r");
    assert!(direct["relay_penalty_ms"].is_null(), "{direct}");
    assert!(relayed["relay_penalty_ms"].is_f64(), "{relayed}");
    assert!(
        relayed["p50_ms"].as_f64().unwrap_or(0.0) > 0.0
            && direct["samples"].as_u64().unwrap_or(0) > 0,
        "{cells:?}"
    );
    let mut c = pb::operator_service_client::OperatorServiceClient::with_interceptor(
        ctl.grpc_channel().await?,
        bearer(ctl.credential()),
    );
    let m = c
        .get_matrix(pb::GetMatrixRequest {
            by: "region".into(),
            protocol: "udp".into(),
        })
        .await?
        .into_inner();
    let vias: Vec<&str> = m
        .cells
        .iter()
        .filter(|x| x.src == "r1" && x.dst == "r1")
        .map(|x| x.via.as_str())
        .collect();
    assert!(vias.contains(&"") && vias.contains(&r_id.as_str()), "{m:?}");
    let (ok, out, err) = ctl
        .cli(&["matrix", "--by", "agent", "--protocol", "udp"])
        .await?;
    assert!(ok, "{err}");
    assert!(out.contains("UDP relayed paths"), "{out}");
    assert!(
        out.contains(&format!("{a_id} -> {b_id} via {r_id}")) && out.contains("penalty"),
        "{out}"
    );
    drop((a, b, r));
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
