//! Command line of the `controller` binary (DESIGN §2).

use clap::{Parser, Subcommand};

/// meshlat controller: assigns probe and relay jobs to the agents of one region.
#[derive(Debug, Parser)]
#[command(
    name = "controller",
    version,
    after_help = "Examples:\n  controller serve --region eu-west-1 --data-dir /var/lib/meshlat\n  controller job list --controller https://ctl.eu-west-1:7400"
)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Controller subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller for one region.
    Serve {
        /// Region this controller serves.
        #[arg(long, env = "MESHLAT_REGION")]
        region: String,
        /// gRPC/REST listen address.
        #[arg(long, env = "MESHLAT_LISTEN", default_value = "0.0.0.0:7400")]
        listen: String,
        /// Directory for the state store.
        #[arg(long, env = "MESHLAT_DATA_DIR", default_value = "./meshlat-controller")]
        data_dir: String,
    },
}
