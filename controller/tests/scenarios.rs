//! The `--scenarios` directory of a running controller process: a scenario file added, changed
//! to invalid (listed as invalid with its line, not usable), fixed and removed while it runs,
//! seen through `GET /api/v1/scenarios[/{name}]` and `controller scenarios [show NAME]`; the
//! same credential rule as the other read endpoints; load jobs naming the scenario filled from
//! it at start and update (400 naming `spec.load.scenario` or `spec.load.knobs.NAME`
//! otherwise); a bad `--scenarios` refused at start.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message

mod support;

use anyhow::Result;
use serde_json::Value;
use support::{TestController, eventually, tmp_dir};

const GOOD: &str = r#"{
  "description": "shop mix",
  "knobs": { "ERROR_WEIGHT": 1, "ID": "7" },
  "requests": [
    { "label": "item", "path": "/items/{{ID}}", "weight": 3 },
    { "label": "error", "path": "/oopsie", "weight": "{{ERROR_WEIGHT}}", "expect_status": 500 }
  ]
}"#;

/// The same file with an unknown knob reference on line 5.
const BAD: &str = r#"{
  "description": "shop mix",
  "knobs": { "ERROR_WEIGHT": 1, "ID": "7" },
  "requests": [
    { "label": "item", "path": "/items/{{NOPE}}", "weight": 3 },
    { "label": "error", "path": "/oopsie", "weight": "{{ERROR_WEIGHT}}", "expect_status": 500 }
  ]
}"#;

/// A closed-model load job to 127.0.0.1 naming `scenario` with `knobs` (a JSON object).
fn load_job(scenario: &str, knobs: &str) -> String {
    let knobs: Value = serde_json::from_str(knobs).unwrap();
    serde_json::json!({
        "name": "scenario-job",
        "kind": "load",
        "protocols": ["http"],
        "sources": ["region=nowhere"],
        "targets": ["http://127.0.0.1:9/"],
        "timeout_ms": 1000,
        "duration_ms": 60_000,
        "load": { "model": "closed", "start": 1, "scenario": scenario, "knobs": knobs }
    })
    .to_string()
}

/// `GET /metrics` of the stats server at `addr` (plain HTTP/1.1, `Connection: close`).
async fn get_metrics(addr: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn names(v: &Value) -> Vec<String> {
    v["scenarios"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_is_followed_while_the_controller_runs() -> Result<()> {
    let root = tmp_dir("scenarios", "live");
    let dir = root.join("scenarios");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("notes.txt"), "not a scenario")?;
    let ctl = TestController::builder(root.join("ctl"))
        .arg("--scenarios")
        .arg(&dir)
        .args(["--load-allow", "127.0.0.1", "--stats-port", "0"])
        .spawn()
        .await?;

    // Empty at first; the same credential rule as every read endpoint.
    let (st, v) = ctl.rest("GET", "/api/v1/scenarios", "", None).await?;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["dir"], dir.display().to_string());
    assert_eq!(
        (names(&v).len(), v["invalid"].as_array().map(Vec::len)),
        (0, Some(0))
    );
    let (st, _) = ctl.rest("GET", "/api/v1/scenarios", "", Some("")).await?;
    assert_eq!(st, 401, "no credential");
    let (st, _) = ctl
        .rest("GET", "/api/v1/scenarios", "", Some("op:wrong-secret"))
        .await?;
    assert_eq!(st, 401, "a wrong credential");

    // Added: listed within a couple of polls.
    std::fs::write(dir.join("shop.json"), GOOD)?;
    let v = eventually("shop.json is listed", 10, || async {
        let (_, v) = ctl.rest("GET", "/api/v1/scenarios", "", None).await.ok()?;
        (names(&v) == ["shop"]).then_some(v)
    })
    .await?;
    let s = &v["scenarios"][0];
    assert_eq!(s["description"], "shop mix");
    assert_eq!(s["knobs"]["ERROR_WEIGHT"], "1");
    assert_eq!(s["requests"][1]["weight"], "{{ERROR_WEIGHT}}");
    assert_eq!(s["requests"][1]["default_weight"], 1);
    assert_eq!(s["requests"][1]["expect_status"], 500);
    let (st, one) = ctl.rest("GET", "/api/v1/scenarios/shop", "", None).await?;
    assert_eq!(st, 200, "{one}");
    assert_eq!(one["requests"][0]["path"], "/items/{{ID}}");
    assert_eq!(one["requests"][0]["body"], "");
    let (ok, out, err) = ctl.cli(&["scenarios"]).await?;
    assert!(ok, "{err}");
    assert!(
        out.contains("shop") && out.contains("ERROR_WEIGHT=1"),
        "{out}"
    );
    let (ok, out, err) = ctl.cli(&["scenarios", "show", "shop"]).await?;
    assert!(ok, "{err}");
    assert!(
        out.contains("{{ERROR_WEIGHT}} (1)") && out.contains("/items/{{ID}}"),
        "{out}"
    );

    // A load job naming it is filled from it: ERROR_WEIGHT=0 leaves the error page out, the
    // knobs are every knob's value; an update re-fills; bad names and knobs are 400s naming
    // the field.
    let (st, job) = ctl
        .rest(
            "POST",
            "/api/v1/jobs",
            &load_job("shop", r#"{"ERROR_WEIGHT": "0"}"#),
            None,
        )
        .await?;
    assert_eq!(st, 201, "{job}");
    let paths = |j: &Value| -> Vec<(String, u64)> {
        j["spec"]["load"]["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["path"].as_str().unwrap_or("").to_string(),
                    r["weight"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    assert_eq!(paths(&job), [("/items/{{ID}}".to_string(), 3)], "{job}");
    assert_eq!(job["spec"]["load"]["knobs"]["ID"], "7", "{job}");
    assert_eq!(job["spec"]["load"]["knobs"]["ERROR_WEIGHT"], "0", "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let (st, job) = ctl
        .rest(
            "PUT",
            &format!("/api/v1/jobs/{id}"),
            &load_job("shop", r#"{"ERROR_WEIGHT": "2"}"#),
            None,
        )
        .await?;
    assert_eq!(st, 200, "{job}");
    assert_eq!(
        paths(&job),
        [("/items/{{ID}}".to_string(), 3), ("/oopsie".to_string(), 2)],
        "{job}"
    );
    for (scenario, knobs, field, want) in [
        (
            "shop",
            r#"{"NOPE": "1"}"#,
            "spec.load.knobs.NOPE",
            "has no knob NOPE",
        ),
        (
            "nothere",
            "{}",
            "spec.load.scenario",
            "no scenario \"nothere\" (scenarios: shop)",
        ),
        (
            "shop",
            r#"{"ERROR_WEIGHT": "many"}"#,
            "spec.load.knobs.ERROR_WEIGHT",
            "whole number",
        ),
    ] {
        let (st, e) = ctl
            .rest("POST", "/api/v1/jobs", &load_job(scenario, knobs), None)
            .await?;
        assert_eq!(st, 400, "{e}");
        assert_eq!(e["error"]["field"], field, "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(want),
            "{e}"
        );
    }

    // Changed to invalid: listed as invalid with its line, not usable.
    std::fs::write(dir.join("shop.json"), BAD)?;
    let v = eventually("shop.json is listed as invalid", 10, || async {
        let (_, v) = ctl.rest("GET", "/api/v1/scenarios", "", None).await.ok()?;
        (v["invalid"].as_array().map(Vec::len) == Some(1)).then_some(v)
    })
    .await?;
    assert!(
        names(&v).is_empty(),
        "not its last good version either: {v}"
    );
    let metrics = get_metrics(ctl.stats.as_deref().unwrap()).await?;
    assert!(
        metrics.contains("meshlat_controller_scenarios{state=\"invalid\"} 1")
            && metrics.contains("meshlat_controller_scenarios{state=\"valid\"} 0"),
        "{metrics}"
    );
    let inv = &v["invalid"][0];
    assert_eq!(
        (inv["file"].as_str(), inv["line"].as_u64()),
        (Some("shop.json"), Some(5))
    );
    assert!(
        inv["error"]
            .as_str()
            .unwrap()
            .contains("{{NOPE}} names no knob"),
        "{inv}"
    );
    let (st, e) = ctl.rest("GET", "/api/v1/scenarios/shop", "", None).await?;
    assert_eq!(st, 409, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shop.json:5:"),
        "{e}"
    );
    let (ok, out, err) = ctl.cli(&["scenarios"]).await?;
    assert!(ok, "{err}");
    assert!(out.contains("INVALID shop.json:5:"), "{out}");
    let (ok, _, err) = ctl.cli(&["scenarios", "show", "shop"]).await?;
    assert!(
        !ok && err.contains("FailedPrecondition") && err.contains("shop.json:5:"),
        "{err}"
    );
    let (st, e) = ctl
        .rest("POST", "/api/v1/jobs", &load_job("shop", "{}"), None)
        .await?;
    assert_eq!(
        (st, e["error"]["field"].as_str()),
        (400, Some("spec.load.scenario")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shop.json:5:"),
        "{e}"
    );

    // Fixed: back.
    std::fs::write(dir.join("shop.json"), GOOD.replace("\"7\"", "\"8\""))?;
    let v = eventually("shop.json is fixed", 10, || async {
        let (_, v) = ctl.rest("GET", "/api/v1/scenarios", "", None).await.ok()?;
        (names(&v) == ["shop"]).then_some(v)
    })
    .await?;
    assert_eq!(v["scenarios"][0]["knobs"]["ID"], "8");
    assert_eq!(v["invalid"].as_array().map(Vec::len), Some(0));

    // Removed: gone.
    std::fs::remove_file(dir.join("shop.json"))?;
    eventually("shop.json is gone", 10, || async {
        let (_, v) = ctl.rest("GET", "/api/v1/scenarios", "", None).await.ok()?;
        names(&v).is_empty().then_some(())
    })
    .await?;
    let (st, e) = ctl.rest("GET", "/api/v1/scenarios/shop", "", None).await?;
    assert_eq!(st, 404, "{e}");
    let (ok, _, err) = ctl.cli(&["scenarios", "show", "shop"]).await?;
    assert!(!ok && err.contains("NotFound"), "{err}");
    let (ok, out, _) = ctl.cli(&["scenarios"]).await?;
    assert!(ok && !out.contains("shop"), "{out}");

    ctl.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

#[tokio::test]
async fn a_bad_scenarios_flag_is_refused_at_start() -> Result<()> {
    let root = tmp_dir("scenarios", "flag");
    let out = TestController::builder(root.join("ctl"))
        .arg("--scenarios")
        .arg(root.join("missing"))
        .command()
        .output()
        .await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--scenarios") && err.contains("missing"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
