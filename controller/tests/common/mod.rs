//! Helpers shared by the controller's process-level tests (`mesh_e2e`, `state_s3_moto`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::time::Instant;

/// `MESHLAT_TEST_WAIT_SCALE` (default 1): multiplies every wait, for slow machines.
pub fn wait_scale() -> u32 {
    std::env::var("MESHLAT_TEST_WAIT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// Polls `f` every 200 ms until it returns `Some`, or fails after `secs` (scaled by
/// `MESHLAT_TEST_WAIT_SCALE`).
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs) * wait_scale();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {secs} s waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A fresh directory `meshlat-<suite>-<name>-<uuid>` under the temp dir.
pub fn tmp_dir(suite: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meshlat-{suite}-{name}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

/// The agent binary next to the controller's (`cargo test --workspace` builds it).
pub fn agent_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_controller")).with_file_name("agent");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p meshlat-agent --bin agent` (cargo test --workspace does)",
        p.display()
    );
    p
}
