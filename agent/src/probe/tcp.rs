//! tcp prober. (Being built: see the foundation issue.)

use std::time::SystemTime;

use meshlat_proto::record::ErrorKind;

use super::{Measurement, Outcome, ProbeSetupError, ProbeSpec};
use crate::target::Target;

/// The tcp prober.
#[derive(Debug)]
pub struct TcpProbe {
    spec: ProbeSpec,
}

impl TcpProbe {
    /// Builds the prober.
    ///
    /// # Errors
    ///
    /// [`ProbeSetupError`] for an unusable spec.
    pub fn new(spec: &ProbeSpec) -> Result<Self, ProbeSetupError> {
        Ok(TcpProbe { spec: spec.clone() })
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
