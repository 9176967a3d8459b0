//! udp prober. (Being built: see the foundation issue.)

use std::time::SystemTime;

use meshlat_proto::record::ErrorKind;

use super::{Measurement, Outcome, ProbeSetupError, ProbeSpec};
use crate::target::Target;

/// The udp prober.
#[derive(Debug)]
pub struct UdpProbe {
    spec: ProbeSpec,
}

impl UdpProbe {
    /// Builds the prober.
    ///
    /// # Errors
    ///
    /// [`ProbeSetupError`] for an unusable spec.
    pub fn new(spec: &ProbeSpec) -> Result<Self, ProbeSetupError> {
        Ok(UdpProbe { spec: spec.clone() })
    }

    /// One sample.
    pub async fn run_once(&self, target: &Target) -> Measurement {
        let _ = (&self.spec, target);
        Measurement::new(
            SystemTime::now(),
            Outcome::failed(ErrorKind::Local, "not built yet"),
        )
    }
}
