//! `controller` binary: parses the command line and runs the library.

use clap::Parser;
use meshlat_controller::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Serve { region, .. }) => {
            anyhow::bail!(
                "controller serve --region {region}: the control plane is not built yet (see issue 4)"
            )
        }
        None => {
            eprintln!("controller: no command given; see `controller --help`");
            std::process::exit(2);
        }
    }
}
