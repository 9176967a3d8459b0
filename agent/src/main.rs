//! `agent` binary: parse, configure, run. The logic lives in the library (STYLE §1).

use std::process::ExitCode;

use clap::Parser;
use meshlat_agent::app::{self, ProbeApp, ProbeExit, ServeApp};
use meshlat_agent::cli::{Cli, Command};
use meshlat_agent::config::{ProbeConfig, ServeConfig};
use meshlat_agent::control::config::RunConfig;
use meshlat_agent::control::run::RunApp;

fn usage_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("agent: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return usage_error(format!("cannot start the runtime: {e}")),
    };
    match cli.command {
        Some(Command::Serve(args)) => {
            let cfg = match ServeConfig::from_args(&args) {
                Ok(c) => c,
                Err(e) => return usage_error(e),
            };
            app::init_logging(cfg.common.verbose, cfg.common.log_format);
            rt.block_on(async {
                let server = match ServeApp::bind(&cfg).await {
                    Ok(s) => s,
                    Err(e) => return usage_error(e),
                };
                for line in app::listening_lines(&server.addrs(), server.stats_addr()) {
                    println!("{line}");
                }
                server.run(app::shutdown_on_signals()).await;
                ExitCode::SUCCESS
            })
        }
        Some(Command::Probe(args)) => {
            let cfg = match ProbeConfig::from_args(&args, |k| std::env::var(k).ok()) {
                Ok(c) => c,
                Err(e) => return usage_error(e),
            };
            app::init_logging(cfg.common.verbose, cfg.common.log_format);
            rt.block_on(async {
                let probe = match ProbeApp::bind(cfg).await {
                    Ok(p) => p,
                    Err(e) => return usage_error(e),
                };
                match probe.run(app::shutdown_on_signals()).await.0 {
                    ProbeExit::AllOk => ExitCode::SUCCESS,
                    ProbeExit::SomeFailed => ExitCode::from(1),
                }
            })
        }
        Some(Command::Run(args)) => run(&rt, &args),
        None => run(&rt, &cli.run),
    }
}

fn run(rt: &tokio::runtime::Runtime, args: &meshlat_agent::cli::RunArgs) -> ExitCode {
    let cfg = match RunConfig::from_args(args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    app::init_logging(cfg.common.verbose, cfg.common.log_format);
    rt.block_on(async {
        let agent = match RunApp::bind(cfg).await {
            Ok(a) => a,
            Err(e) => return usage_error(e),
        };
        for line in app::listening_lines(&agent.addrs(), agent.stats_addr()) {
            println!("{line}");
        }
        agent.run(app::shutdown_on_signals()).await;
        ExitCode::SUCCESS
    })
}
