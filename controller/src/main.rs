//! `controller` binary: parse, configure, run. The logic lives in the library (STYLE §1).

use std::process::ExitCode;

use clap::Parser;
use meshlat_controller::app::Controller;
use meshlat_controller::cli::{Cli, Command};
use meshlat_controller::{client, config::ServeConfig};

fn fail(code: u8, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("controller: {e}");
    ExitCode::from(code)
}

/// Prints a client command's output, or its error (exit 1).
fn report(r: Result<String, client::ClientError>) -> ExitCode {
    match r {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(2, format!("cannot start the runtime: {e}")),
    };
    let serve = match cli.command {
        Some(Command::Job { action }) => return report(rt.block_on(client::job(&action))),
        Some(Command::Credentials { action }) => {
            return report(rt.block_on(client::credentials(&action)));
        }
        Some(Command::Tokens { action }) => return report(rt.block_on(client::tokens(&action))),
        Some(Command::Agents { client }) => return report(rt.block_on(client::agents(&client))),
        Some(Command::Matrix(m)) => {
            use std::io::Write;
            let print = |s: &str| {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(s.as_bytes());
                let _ = o.flush();
            };
            return match rt.block_on(client::matrix(&m, print)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(1, e),
            };
        }
        Some(Command::Health(h)) => return report(rt.block_on(client::health(&h))),
        Some(Command::Serve(a)) => *a,
        None => cli.serve,
    };
    let cfg = match ServeConfig::from_args(&serve) {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    meshlat_controller::app::init_logging(serve.verbose, serve.log_json);
    rt.block_on(async {
        let ctl = match Controller::bind(cfg).await {
            Ok(c) => c,
            Err(e) => return fail(2, e),
        };
        for line in ctl.announcements() {
            println!("{line}");
        }
        match ctl
            .run(meshlat_controller::app::shutdown_on_signals())
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, e),
        }
    })
}
