//! `controller` binary: parse, configure, run. The logic lives in the library (STYLE §1);
//! logging, signals and exit codes are the skeleton both binaries share ([`meshlat_runtime`]).

use std::process::ExitCode;

use clap::Parser;
use meshlat_controller::app::Controller;
use meshlat_controller::cli::{Cli, Command};
use meshlat_controller::{client, config::ServeConfig};
use meshlat_runtime::{Exit, fail};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serve = match cli.command {
        Some(Command::Serve(a)) => *a,
        None => cli.serve,
        // Client commands: their output on stdout, or their error and exit 1.
        Some(command) => {
            return meshlat_runtime::block_on("controller", async move {
                match client::run(&command).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail("controller", Exit::Failure, e),
                }
            });
        }
    };
    let cfg = match ServeConfig::from_args(&serve) {
        Ok(c) => c,
        Err(e) => return fail("controller", Exit::Setup, e),
    };
    meshlat_runtime::init_logging(serve.log.verbose, serve.log.format());
    meshlat_runtime::block_on("controller", async move {
        let ctl = match Controller::bind(cfg).await {
            Ok(c) => c,
            Err(e) => return fail("controller", Exit::Setup, e),
        };
        let shutdown = meshlat_runtime::shutdown_on_signals();
        for line in ctl.announcements() {
            println!("{line}");
        }
        match ctl.run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("controller", Exit::Failure, e),
        }
    })
}
