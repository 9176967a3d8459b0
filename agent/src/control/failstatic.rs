//! Fail-static (DESIGN §3): what `control_mode` an agent is in.
//!
//! | state | mode | jobs |
//! | --- | --- | --- |
//! | session up | `connected` | the controller's latest job set |
//! | session lost, lease not expired | `static` | the last job set, unchanged |
//! | session lost, lease expired | `degraded` | the last job set, still measured; records marked `degraded` so analyses can tell measurements nobody has confirmed for a while |
//!
//! The lease (from the last job set, `lease_ms`) counts from the moment the session was lost.
//! An agent restarted without its controller resumes the job set stored in `--state-dir`
//! ([`super::state`]) with the lease counted from its start ([`FailStatic::resumed`]).
//! Measuring on in `degraded` is deliberate: a mesh that stops measuring when its controller is
//! down is blind exactly when an operator needs it; the mark lets the data be filtered.

use std::time::Duration;

use meshlat_proto::record::ControlMode;
use tokio::time::Instant;

/// Fail-static state.
#[derive(Clone, Debug)]
pub struct FailStatic {
    lease: Duration,
    lost_at: Option<Instant>,
    connected: bool,
}

impl Default for FailStatic {
    fn default() -> Self {
        FailStatic {
            lease: Duration::ZERO,
            lost_at: None,
            connected: false,
        }
    }
}

impl FailStatic {
    /// The session is up.
    pub fn connected(&mut self) {
        self.connected = true;
        self.lost_at = None;
    }

    /// A job set arrived with this lease.
    pub fn lease(&mut self, lease: Duration) {
        self.lease = lease;
    }

    /// The agent started (at `now`) with a stored job set of this lease and no session: as if
    /// the session had just been lost, so the mode is `static` for one lease, then `degraded`.
    pub fn resumed(&mut self, lease: Duration, now: Instant) {
        self.lease = lease;
        self.connected = false;
        self.lost_at = Some(now);
    }

    /// The session was lost at `now`.
    pub fn lost(&mut self, now: Instant) {
        if self.connected {
            self.lost_at = Some(now);
        }
        self.connected = false;
    }

    /// The mode at `now`.
    pub fn mode(&self, now: Instant) -> ControlMode {
        match (self.connected, self.lost_at) {
            (true, _) => ControlMode::Connected,
            (false, Some(t)) if now < t + self.lease => ControlMode::Static,
            // Never connected (no jobs yet) counts as static until a lease could have expired.
            (false, None) => ControlMode::Static,
            (false, Some(_)) => ControlMode::Degraded,
        }
    }

    /// When the mode next changes by itself (lease expiry), if it will.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.connected, self.lost_at) {
            (false, Some(t)) => Some(t + self.lease),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn connected_static_then_degraded_then_connected_again() {
        let mut f = FailStatic::default();
        f.connected();
        f.lease(Duration::from_secs(30));
        assert_eq!(f.mode(Instant::now()), ControlMode::Connected);
        f.lost(Instant::now());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(f.mode(Instant::now()), ControlMode::Static);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(f.mode(Instant::now()), ControlMode::Degraded);
        f.lost(Instant::now());
        assert_eq!(
            f.mode(Instant::now()),
            ControlMode::Degraded,
            "a failed reconnect does not renew the lease"
        );
        f.connected();
        assert_eq!(f.mode(Instant::now()), ControlMode::Connected);
        assert_eq!(f.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_job_set_is_static_for_one_lease_then_degraded() {
        let mut f = FailStatic::default();
        f.resumed(Duration::from_secs(10), Instant::now());
        assert_eq!(f.mode(Instant::now()), ControlMode::Static);
        f.lost(Instant::now());
        tokio::time::advance(Duration::from_secs(9)).await;
        f.lost(Instant::now());
        assert_eq!(
            f.mode(Instant::now()),
            ControlMode::Static,
            "failed connects keep it"
        );
        assert!(f.deadline().is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(f.mode(Instant::now()), ControlMode::Degraded);
    }
}
