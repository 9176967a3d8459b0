//! The deadline flags every guarded listener takes (`--handshake-timeout`, `--header-timeout`,
//! `--idle-timeout`), as one clap argument group both binaries flatten into their command line
//! (`clap` feature). The flag names, environment variables, value name and the accepted range
//! are the same everywhere; each binary states its own help text and defaults through a
//! [`DeadlineHelp`] (what the deadlines cover differs: HTTPS and QUIC in the agent, gRPC and REST
//! in the controller).

use std::marker::PhantomData;
use std::time::Duration;

use clap::Args;

/// Accepted deadline range, in seconds.
pub const DEADLINE_SECS: std::ops::RangeInclusive<f64> = 0.1..=3600.0;

/// A binary's help text and defaults for [`DeadlineArgs`].
pub trait DeadlineHelp: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// Help of `--handshake-timeout`.
    const HANDSHAKE: &'static str;
    /// Default of `--handshake-timeout`, in seconds.
    const HANDSHAKE_DEFAULT: f64;
    /// Help of `--header-timeout`.
    const HEADER: &'static str;
    /// Default of `--header-timeout`, in seconds.
    const HEADER_DEFAULT: f64;
    /// Help of `--idle-timeout`.
    const IDLE: &'static str;
    /// Default of `--idle-timeout`, in seconds.
    const IDLE_DEFAULT: f64;
}

/// `--handshake-timeout`, `--header-timeout` and `--idle-timeout`, in seconds as given.
#[derive(Clone, Debug, Args)]
pub struct DeadlineArgs<H: DeadlineHelp> {
    /// See [`DeadlineHelp::HANDSHAKE`].
    #[arg(long, env = "MESHLAT_HANDSHAKE_TIMEOUT", value_name = "SECONDS")]
    #[arg(default_value_t = H::HANDSHAKE_DEFAULT, help = H::HANDSHAKE)]
    pub handshake_timeout: f64,
    /// See [`DeadlineHelp::HEADER`].
    #[arg(long, env = "MESHLAT_HEADER_TIMEOUT", value_name = "SECONDS")]
    #[arg(default_value_t = H::HEADER_DEFAULT, help = H::HEADER)]
    pub header_timeout: f64,
    /// See [`DeadlineHelp::IDLE`].
    #[arg(long, env = "MESHLAT_IDLE_TIMEOUT", value_name = "SECONDS")]
    #[arg(default_value_t = H::IDLE_DEFAULT, help = H::IDLE)]
    pub idle_timeout: f64,
    #[arg(skip)]
    help: PhantomData<H>,
}

/// A deadline flag outside [`DEADLINE_SECS`] (or not a finite number).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BadDeadline {
    /// The flag, e.g. `--idle-timeout`.
    pub flag: &'static str,
    /// The value given.
    pub value: f64,
}

/// The three deadlines, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// `--handshake-timeout`.
    pub handshake: Duration,
    /// `--header-timeout`.
    pub header: Duration,
    /// `--idle-timeout`.
    pub idle: Duration,
}

impl<H: DeadlineHelp> DeadlineArgs<H> {
    /// The deadlines, each checked against [`DEADLINE_SECS`] in flag order.
    ///
    /// # Errors
    ///
    /// [`BadDeadline`] naming the first flag out of range.
    pub fn deadlines(&self) -> Result<Deadlines, BadDeadline> {
        let check = |flag, value: f64| {
            if value.is_finite() && DEADLINE_SECS.contains(&value) {
                Ok(Duration::from_secs_f64(value))
            } else {
                Err(BadDeadline { flag, value })
            }
        };
        Ok(Deadlines {
            handshake: check("--handshake-timeout", self.handshake_timeout)?,
            header: check("--header-timeout", self.header_timeout)?,
            idle: check("--idle-timeout", self.idle_timeout)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Clone, Debug)]
    struct Help;
    impl DeadlineHelp for Help {
        const HANDSHAKE: &'static str = "handshake help";
        const HANDSHAKE_DEFAULT: f64 = 10.0;
        const HEADER: &'static str = "header help";
        const HEADER_DEFAULT: f64 = 5.0;
        const IDLE: &'static str = "idle help";
        const IDLE_DEFAULT: f64 = 60.0;
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        deadlines: DeadlineArgs<Help>,
    }

    #[test]
    fn defaults_help_and_range_come_from_one_place() {
        let cli = Cli::try_parse_from(["t"]).expect("defaults parse");
        let d = cli.deadlines.deadlines().expect("defaults are valid");
        assert_eq!(d.handshake, Duration::from_secs(10));
        assert_eq!(d.header, Duration::from_secs(5));
        assert_eq!(d.idle, Duration::from_secs(60));

        let cli = Cli::try_parse_from(["t", "--header-timeout", "0.05"]).expect("parses");
        assert_eq!(
            cli.deadlines.deadlines(),
            Err(BadDeadline {
                flag: "--header-timeout",
                value: 0.05
            })
        );

        let help = <Cli as clap::CommandFactory>::command()
            .render_help()
            .to_string();
        assert!(help.contains("idle help"), "{help}");
        assert!(help.contains("--idle-timeout <SECONDS>"), "{help}");
    }
}
