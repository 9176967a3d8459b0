//! The `agent ...` and `controller ...` command lines shown in the repository's READMEs, for the
//! tests that parse them with the binaries' own command-line parsers (agent and controller
//! `tests/readme_commands.rs`; this file is included by path, not through `support/mod.rs`).
//!
//! Only fenced ```` ```sh ```` blocks count. A line continued with `\` is joined with the next; a
//! word starting with `#` begins a comment; words are split as a shell would (single and double
//! quotes, backslash), without expansion. Leading `NAME=value` words (environment) are dropped, as
//! are the README's notations for optional and elided parts: `[--flag value]` becomes
//! `--flag value`, and a `...` word is left out.

use std::path::{Path, PathBuf};

/// One command line: where it stands and its words, the program name first.
#[derive(Debug)]
pub struct Example {
    pub file: PathBuf,
    pub line: usize,
    pub text: String,
    pub argv: Vec<String>,
}

/// The repository root (this crate's parent).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every command line of `program` in the ```sh blocks of the given files (relative to the root).
pub fn examples(files: &[&str], program: &str) -> Vec<Example> {
    let mut out = Vec::new();
    for rel in files {
        let path = repo_root().join(rel);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut in_sh = None::<bool>;
        let mut pending: Option<(usize, String)> = None;
        for (i, raw) in text.lines().enumerate() {
            let trimmed = raw.trim_start();
            if let Some(info) = trimmed.strip_prefix("```") {
                in_sh = match in_sh {
                    None => Some(info.trim() == "sh"),
                    Some(_) => None,
                };
                pending = None;
                continue;
            }
            if in_sh != Some(true) {
                continue;
            }
            let (start, joined) = match pending.take() {
                Some((start, mut acc)) => {
                    acc.push(' ');
                    acc.push_str(trimmed);
                    (start, acc)
                }
                None => (i + 1, trimmed.to_string()),
            };
            if let Some(head) = joined.strip_suffix('\\') {
                pending = Some((start, head.to_string()));
                continue;
            }
            let mut argv: Vec<String> = words(&joined)
                .into_iter()
                .skip_while(|w| is_assignment(w))
                .collect();
            if argv.first().map(String::as_str) != Some(program) {
                continue;
            }
            argv.retain(|w| w != "...");
            for w in argv.iter_mut() {
                if w.starts_with("[-") {
                    w.remove(0);
                }
                if w.ends_with(']') && !w.contains('[') {
                    w.pop();
                }
            }
            out.push(Example {
                file: PathBuf::from(rel),
                line: start,
                text: joined,
                argv,
            });
        }
    }
    out
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Shell words of one line, up to a comment.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = cur.take() {
                    out.push(w);
                }
            }
            '#' if cur.is_none() => break,
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                w.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            '\\' => cur.get_or_insert_with(String::new).extend(chars.next()),
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(cur);
    out
}

/// Parses every example with the command-line parser `P` and fails naming each that does not
/// parse; also fails when fewer than `at_least` examples are found (the extraction itself broke).
#[allow(dead_code)] // the controller's test calls this, the agent's `check_all_rewritten`
pub fn check_all<P: clap::Parser>(program: &str, at_least: usize) {
    check_all_rewritten::<P>(program, at_least, |argv| argv);
}

/// [`check_all`], each command line passed through `rewrite` first, as the binary's `main` does
/// before parsing (the agent's `meshlat_agent::cli::imply_probe`).
pub fn check_all_rewritten<P: clap::Parser>(
    program: &str,
    at_least: usize,
    rewrite: impl Fn(Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString>,
) {
    let found = examples(&["README.md", "infra/README.md"], program);
    let mut bad = Vec::new();
    for ex in &found {
        let argv = rewrite(ex.argv.iter().map(Into::into).collect());
        if let Err(e) = P::try_parse_from(argv) {
            let first = e.to_string().lines().next().unwrap_or("").to_string();
            bad.push(format!(
                "{}:{}: {}\n    {first}",
                ex.file.display(),
                ex.line,
                ex.text
            ));
        }
    }
    println!(
        "{} `{program}` command lines in the READMEs, {} do not parse",
        found.len(),
        bad.len()
    );
    assert!(
        found.len() >= at_least,
        "only {} `{program}` command lines found in the READMEs' sh blocks (expected at least {at_least})",
        found.len()
    );
    assert!(
        bad.is_empty(),
        "README command lines that do not parse:\n{}",
        bad.join("\n")
    );
}
