//! Every `agent ...` command line shown in README.md and infra/README.md parses with the agent's
//! own command-line parser (`meshlat_agent::cli::Cli`, after `main`'s argument rewrite
//! `meshlat_agent::cli::imply_probe`; nothing is started).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message

#[path = "support/readme.rs"]
mod readme;

#[test]
fn readme_agent_commands_parse() {
    // As main parses them: `agent URL ...` is `agent probe URL ...`.
    readme::check_all_rewritten::<meshlat_agent::cli::Cli>(
        "agent",
        10,
        meshlat_agent::cli::imply_probe,
    );
}
