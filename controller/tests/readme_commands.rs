//! Every `controller ...` command line shown in README.md and infra/README.md parses with the
//! controller's own command-line parser (`meshlat_controller::cli::Cli`; nothing is started).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message

#[path = "../../agent/tests/support/readme.rs"]
mod readme;

#[test]
fn readme_controller_commands_parse() {
    readme::check_all::<meshlat_controller::cli::Cli>("controller", 7);
}
