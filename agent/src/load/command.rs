//! `agent load`: runs one [`LoadEngine`] from a [`LoadConfig`], printing a line per second and
//! a summary (bind + run, STYLE §1; `main.rs` only parses and calls in).

use std::io::Write as _;

use meshlat_runtime::Exit;
use tokio_util::sync::CancellationToken;

use super::client::EndpointError;
use super::config::LoadConfig;
use super::engine::LoadEngine;
use super::report;

/// A load run ready to start.
#[derive(Debug)]
pub struct LoadCommand {
    engine: LoadEngine,
    banner: String,
    model: super::plan::Model,
}

impl LoadCommand {
    /// Prepares the run (TLS configuration, request template) and logs the capped levels.
    ///
    /// # Errors
    ///
    /// [`EndpointError`] when the target or TLS options are unusable.
    pub fn bind(cfg: LoadConfig) -> Result<Self, EndpointError> {
        for w in &cfg.warnings {
            tracing::warn!(message = "Load level capped.", detail = %w);
        }
        let model = cfg.spec.schedule.model();
        let banner = report::banner(
            &cfg.spec.target.raw,
            model,
            cfg.spec.schedule.at(std::time::Duration::ZERO).level,
            cfg.spec.duration,
        );
        Ok(LoadCommand {
            engine: LoadEngine::new(cfg.spec)?,
            banner,
            model,
        })
    }

    /// Runs until the duration is over or `shutdown` is cancelled (Ctrl-C: the summary of what
    /// ran is still printed). [`Exit::Success`] when any request was answered, else
    /// [`Exit::Failure`].
    pub async fn run(self, shutdown: CancellationToken) -> Exit {
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "{}", self.banner);
        let _ = writeln!(stdout, "{}", report::header(self.model));
        let mut handle = self.engine.start();
        let mut stopping = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    handle.stop();
                }
                r = handle.next_report() => match r {
                    Some(r) => {
                        let _ = writeln!(stdout, "{}", report::second_line(self.model, &r));
                    }
                    None => break,
                },
            }
        }
        match handle.join().await {
            Ok(summary) => {
                let _ = write!(stdout, "{}", report::summary(&summary));
                let _ = stdout.flush();
                if report::answered_any(&summary.total) {
                    Exit::Success
                } else {
                    Exit::Failure
                }
            }
            Err(e) => {
                tracing::error!(message = "Load run failed.", error = %e);
                Exit::Failure
            }
        }
    }
}
