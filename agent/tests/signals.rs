//! The process skeleton on a real agent (meshlat_runtime): the first SIGTERM shuts `agent serve`
//! down cleanly (exit 0), even when sent as soon as the addresses are announced. The second
//! signal's exit 130 is shared code, checked on a busy controller
//! (`controller/tests/signals.rs`) and in `meshlat-runtime`'s unit tests.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

#[test]
fn first_sigterm_exits_0() {
    let mut s = support::serve(&[]);
    // At once after the `listening` lines: the handlers are registered before they are printed.
    let pid = s.proc.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Up to 15 s, in 50 ms steps.
    let status = (0..300)
        .find_map(|_| {
            let st = s.proc.child.try_wait().unwrap();
            if st.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            st
        })
        .expect("agent serve did not exit within 15 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
}
