//! The process skeleton both meshlat binaries (`agent`, `controller`) share, so they log, stop and
//! exit the same way (STYLE §1: `main.rs` parses, configures and calls into a library).
//!
//! - [`block_on`]: the multi-threaded tokio runtime a command runs on.
//! - [`init_logging`]: tracing on stderr, text or JSON ([`LogFormat`]), the level from `-v`
//!   unless `RUST_LOG` is set; colours unless `NO_COLOR` is set (tracing-subscriber's own check).
//! - [`shutdown_on_signals`]: the first SIGINT or SIGTERM (ECS stops tasks with SIGTERM) cancels a
//!   [`CancellationToken`] for a graceful shutdown; a second one exits at once with
//!   [`Exit::Interrupted`] (130). The decision is the small state machine [`Signals`].
//! - [`Exit`]: the exit codes, and [`fail`] to print an error and pick one.
//! - `aws::sdk_config` (feature `aws`): the AWS SDK configuration both binaries' AWS clients use.
//!
//! Shaped after mini-redis's `src/bin/server.rs` (the server runs until a shutdown future
//! resolves) and linkerd2-proxy's `linkerd/signal` (one place that knows which signals stop the
//! process).

#[cfg(feature = "aws")]
pub mod aws;

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
pub use tokio_util::sync::CancellationToken;

/// How a meshlat process exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done: served until asked to stop, or every measurement succeeded.
    Success = 0,
    /// Ran, but failed: some measurements failed (`agent probe`), a client command's request
    /// failed, or the server stopped with an error.
    Failure = 1,
    /// Could not start: bad flags or configuration, a listener that cannot bind, unusable
    /// files (clap's own usage errors exit 2 too).
    Setup = 2,
    /// A second SIGINT/SIGTERM arrived during the graceful shutdown (128 + SIGINT, as shells
    /// report an interrupted command).
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// Prints `bin: error` on stderr and returns `code`.
pub fn fail(bin: &str, code: Exit, error: impl Display) -> ExitCode {
    eprintln!("{bin}: {error}");
    code.into()
}

/// Runs `main` on a multi-threaded tokio runtime; if the runtime cannot start, says so and
/// exits [`Exit::Setup`].
pub fn block_on<F: Future<Output = ExitCode>>(bin: &str, main: F) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(main),
        Err(e) => fail(bin, Exit::Setup, format!("cannot start the runtime: {e}")),
    }
}

/// Log output format (stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for CloudWatch and friends).
    Json,
}

/// The `RUST_LOG`-style default filter for `-v` given `verbose` times.
pub fn default_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

/// Sets up logging on stderr: `format`, level from `-v` (`verbose`) unless `RUST_LOG` is set.
/// Text is coloured unless `NO_COLOR` is set to a non-empty value. A second call does nothing.
pub fn init_logging(verbose: u8, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_filter(verbose)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// What to do about a stop signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalAction {
    /// The first: start the graceful shutdown.
    Shutdown,
    /// Another while shutting down: exit at once with [`Exit::Interrupted`].
    ExitNow,
}

/// Counts stop signals: the first asks for a graceful shutdown, any later one for an exit at
/// once (sans-IO: [`shutdown_on_signals`] feeds it the process's signals).
#[derive(Clone, Copy, Debug, Default)]
pub struct Signals {
    received: u32,
}

impl Signals {
    /// One more stop signal arrived.
    pub fn on_signal(&mut self) -> SignalAction {
        self.received = self.received.saturating_add(1);
        if self.received == 1 {
            SignalAction::Shutdown
        } else {
            SignalAction::ExitNow
        }
    }
}

/// Where stop signals come from: the process's ([`shutdown_on_signals`]) or, in tests, a
/// channel.
pub trait SignalSource: Send {
    /// The next stop signal's name, or `None` when no more can come.
    fn recv(&mut self) -> impl Future<Output = Option<&'static str>> + Send;
}

/// The process's SIGINT and SIGTERM.
struct UnixSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl SignalSource for UnixSignals {
    async fn recv(&mut self) -> Option<&'static str> {
        tokio::select! {
            s = self.int.recv() => s.map(|()| "SIGINT"),
            s = self.term.recv() => s.map(|()| "SIGTERM"),
        }
    }
}

impl SignalSource for tokio::sync::mpsc::UnboundedReceiver<&'static str> {
    async fn recv(&mut self) -> Option<&'static str> {
        tokio::sync::mpsc::UnboundedReceiver::recv(self).await
    }
}

/// Applies the stop signals from `source` to `token`: the first cancels it, the second logs and
/// calls `exit(Exit::Interrupted)`. [`shutdown_on_signals`] drives it with the process's
/// SIGINT/SIGTERM and [`std::process::exit`].
pub async fn drive(
    mut source: impl SignalSource,
    token: CancellationToken,
    exit: impl FnOnce(Exit),
) {
    let mut state = Signals::default();
    while let Some(signal) = source.recv().await {
        match state.on_signal() {
            SignalAction::Shutdown => {
                tracing::info!(
                    message = "Shutting down; signal again to exit at once.",
                    signal
                );
                token.cancel();
            }
            SignalAction::ExitNow => {
                tracing::warn!(
                    message = "Second signal during shutdown; exiting at once.",
                    signal,
                    code = Exit::Interrupted as u8
                );
                exit(Exit::Interrupted);
                return;
            }
        }
    }
}

/// A token cancelled on the first SIGINT (Ctrl-C) or SIGTERM; a second one exits the process
/// at once with [`Exit::Interrupted`] (130).
///
/// The handlers are registered before this returns, so a signal sent as soon as the caller
/// has announced its addresses is handled, not fatal. Call it inside the runtime
/// ([`block_on`]).
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(int), Ok(term)) => {
            tokio::spawn(drive(UnixSignals { int, term }, token.clone(), |code| {
                std::process::exit(i32::from(code as u8))
            }));
        }
        (int, term) => {
            // Without handlers the default action (termination) stays.
            let error = int.err().or(term.err()).map(|e| e.to_string());
            tracing::warn!(message = "Cannot listen for stop signals.", ?error);
        }
    }
    token
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    #[test]
    fn first_signal_shuts_down_later_ones_exit() {
        let mut s = Signals::default();
        assert_eq!(s.on_signal(), SignalAction::Shutdown);
        assert_eq!(s.on_signal(), SignalAction::ExitNow);
        assert_eq!(s.on_signal(), SignalAction::ExitNow);
    }

    #[test]
    fn exit_codes() {
        let codes: Vec<u8> = [Exit::Success, Exit::Failure, Exit::Setup, Exit::Interrupted]
            .iter()
            .map(|e| *e as u8)
            .collect();
        assert_eq!(codes, [0, 1, 2, 130]);
        assert_eq!(default_filter(0), "info");
        assert_eq!(default_filter(1), "debug");
        assert_eq!(default_filter(5), "trace");
    }

    /// Feeds `drive` signals through a channel: one cancels the token and does not exit; the
    /// second exits with 130.
    #[tokio::test]
    async fn drive_cancels_then_exits_130() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
        let token = CancellationToken::new();
        let exited = Arc::new(Mutex::new(None));
        let task = tokio::spawn(drive(rx, token.clone(), {
            let exited = exited.clone();
            move |code| *exited.lock().unwrap() = Some(code)
        }));
        tx.send("SIGTERM").unwrap();
        tokio::time::timeout(Duration::from_secs(5), token.cancelled())
            .await
            .unwrap();
        assert_eq!(*exited.lock().unwrap(), None, "one signal must not exit");
        tx.send("SIGINT").unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*exited.lock().unwrap(), Some(Exit::Interrupted));
    }

    /// Without signals `drive` never cancels and ends when its source does.
    #[tokio::test]
    async fn drive_without_signals_does_nothing() {
        let token = CancellationToken::new();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
        drop(tx);
        drive(rx, token.clone(), |_| panic!("no exit")).await;
        assert!(!token.is_cancelled());
    }
}
