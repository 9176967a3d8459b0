//! `agent` binary: parse, configure, run. The logic lives in the library (STYLE §1); logging,
//! signals and exit codes are the skeleton both binaries share ([`meshlat_runtime`]).

use std::process::ExitCode;

use clap::Parser;
use meshlat_agent::app::{self, ProbeApp, ServeApp};
use meshlat_agent::cli::{self, Cli, Command};
use meshlat_agent::config::{ProbeConfig, ServeConfig};
use meshlat_agent::control::{config::RunConfig, run::RunApp};
use meshlat_agent::load::{command::LoadCommand, config::LoadConfig};
use meshlat_runtime::{Exit, fail};

/// A configuration error or a failed start: exit 2 naming it.
fn setup(e: impl std::fmt::Display) -> ExitCode {
    fail("agent", Exit::Setup, e)
}

/// Installs `--clock-source` (read once, blocking, when it is chrony or ECS); the caller keeps
/// it fresh with [`meshlat_agent::clock::poll`].
fn use_clock_source(common: &meshlat_agent::config::CommonConfig) {
    let source = common.clock_source.clone();
    tracing::debug!(message = "Clock source.", ?source);
    // Only `main` installs it, once per process.
    let _ = meshlat_agent::clock::install(source);
}

fn main() -> ExitCode {
    // `agent [FLAGS] URL ...` is `agent probe [FLAGS] URL ...` (perftest's command line).
    let cli = Cli::parse_from(cli::imply_probe(std::env::args_os().collect()));
    let command = cli.command.unwrap_or(Command::Run(cli.run));
    meshlat_runtime::block_on("agent", async move {
        run(command).await.map_or_else(|code| code, ExitCode::from)
    })
}

/// Binds and runs `command` until it is done or a signal stops it.
async fn run(command: Command) -> Result<Exit, ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    match command {
        Command::Serve(args) => {
            let cfg = ServeConfig::from_args(&args).map_err(setup)?;
            meshlat_runtime::init_logging(cfg.common.verbose, cfg.common.log_format);
            use_clock_source(&cfg.common);
            let server = ServeApp::bind(&cfg).await.map_err(setup)?;
            let shutdown = meshlat_runtime::shutdown_on_signals();
            tokio::spawn(meshlat_agent::clock::poll(shutdown.clone()));
            for line in app::listening_lines(&server.addrs(), server.stats_addr()) {
                println!("{line}");
            }
            server.run(shutdown).await;
            Ok(Exit::Success)
        }
        Command::Probe(args) => {
            let cfg = ProbeConfig::from_args(&args, env).map_err(setup)?;
            meshlat_runtime::init_logging(cfg.common.verbose, cfg.common.log_format);
            use_clock_source(&cfg.common);
            let probe = ProbeApp::bind(cfg).await.map_err(setup)?;
            let shutdown = meshlat_runtime::shutdown_on_signals();
            tokio::spawn(meshlat_agent::clock::poll(shutdown.clone()));
            Ok(probe.run(shutdown).await.0.into())
        }
        Command::Load(args) => {
            let cfg = LoadConfig::from_args(&args).map_err(setup)?;
            meshlat_runtime::init_logging(cfg.verbose, cfg.log_format);
            let load = LoadCommand::bind(cfg).map_err(setup)?;
            Ok(load.run(meshlat_runtime::shutdown_on_signals()).await)
        }
        Command::Run(args) => {
            let cfg = RunConfig::from_args(&args, env).map_err(setup)?;
            meshlat_runtime::init_logging(cfg.common.verbose, cfg.common.log_format);
            use_clock_source(&cfg.common);
            let agent = RunApp::bind(cfg).await.map_err(setup)?;
            let shutdown = meshlat_runtime::shutdown_on_signals();
            tokio::spawn(meshlat_agent::clock::poll(shutdown.clone()));
            for line in app::listening_lines(&agent.addrs(), agent.stats_addr()) {
                println!("{line}");
            }
            agent.run(shutdown).await;
            Ok(Exit::Success)
        }
    }
}
