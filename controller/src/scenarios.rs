//! The controller's load-job scenarios (issue 15 item 3): the `--scenarios` directory, re-read
//! when it changes, listed by `GET /api/v1/scenarios` and `controller scenarios`, and the hook
//! that fills a load job's requests from the scenario it names ([`ScenarioStore::resolve`]).
//!
//! # The directory
//!
//! Every regular file `NAME.json` of the directory (not its subdirectories; names starting with
//! `.` are skipped, as are other extensions, e.g. an editor's swap files) is a scenario, parsed
//! by [`meshlat_proto::scenario`]. [`ScenarioStore::run`] looks at the directory every
//! [`POLL_INTERVAL`] and re-reads a file whose modification time or size changed, or that was
//! modified less than [`RACY`] ago (so a rewrite of the same size within the file system's
//! time granularity is not missed, as git treats "racily clean" files); it is re-parsed when
//! its contents differ. A file removed is dropped, a file added is loaded — no restart, no new
//! dependency (polling, not inotify).
//!
//! A file that does not parse is listed as **invalid** with its line, column and error, and is
//! not usable — not even an earlier good version of it: a job naming it is refused until the
//! file is fixed, so no job is ever filled from something other than what the directory holds
//! now. Jobs already created keep the requests they were filled with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use meshlat_proto::pb;
use meshlat_proto::scenario::{self, Scenario, ScenarioError, ScenarioFileError, Weight};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How often the directory is looked at.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A file modified less than this long ago is re-read at every look, whatever its stamp.
pub const RACY: Duration = Duration::from_secs(2);
/// Most files of the directory considered (the rest are logged and skipped).
pub const MAX_FILES: usize = 1000;

/// The scenarios of one directory, as last read.
#[derive(Debug)]
pub struct ScenarioStore {
    dir: PathBuf,
    files: RwLock<BTreeMap<String, FileState>>,
}

/// One file as last read.
#[derive(Clone, Debug)]
struct FileState {
    /// Modification time and size when read: a change of either re-reads.
    stamp: (Option<SystemTime>, u64),
    /// Hash of the contents read: a change re-parses.
    hash: u64,
    parsed: Result<Arc<Scenario>, ScenarioFileError>,
}

/// Why [`ScenarioStore::get`] has no scenario.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// No file of that name.
    #[error("no scenario {name:?} (scenarios: {known})")]
    NotFound {
        /// Asked for.
        name: String,
        /// The valid ones, comma-separated.
        known: String,
    },
    /// The file is there but invalid.
    #[error("scenario {name:?} is invalid: {error}")]
    Invalid {
        /// Asked for.
        name: String,
        /// Its file's error.
        error: ScenarioFileError,
    },
}

// === impl ScenarioStore ===

impl ScenarioStore {
    /// Reads `dir` once.
    ///
    /// # Errors
    ///
    /// The I/O error when `dir` cannot be listed.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let store = ScenarioStore {
            dir: dir.to_path_buf(),
            files: RwLock::new(BTreeMap::new()),
        };
        std::fs::read_dir(dir)?;
        store.rescan();
        Ok(store)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Looks at the directory again: re-parses changed files, drops removed ones, loads new
    /// ones. Logs each change. Whether anything changed.
    pub fn rescan(&self) -> bool {
        let listing = match std::fs::read_dir(&self.dir) {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(message = "Scenarios directory unreadable; keeping the last listing.", dir = %self.dir.display(), %error);
                return false;
            }
        };
        let old = self.read().clone();
        let mut new = BTreeMap::new();
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(&format!(".{}", scenario::FILE_EXTENSION)) {
                continue;
            }
            let path = entry.path();
            // Follows symlinks (a ConfigMap mounts files as links).
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            if new.len() == MAX_FILES {
                tracing::warn!(message = "Too many scenario files; the rest are skipped.", dir = %self.dir.display(), max = MAX_FILES);
                break;
            }
            let stamp = (meta.modified().ok(), meta.len());
            let racy = stamp.0.is_none_or(|m| {
                SystemTime::now()
                    .duration_since(m)
                    .map_or(true, |age| age < RACY)
            });
            let before = old.get(&name);
            let state = match before {
                Some(s) if s.stamp == stamp && !racy => s.clone(),
                _ => match scenario::read_file(&path) {
                    Ok((file, bytes)) => {
                        let hash = hash_of(&bytes);
                        FileState {
                            stamp,
                            hash,
                            parsed: match before {
                                Some(b) if b.hash == hash => b.parsed.clone(),
                                _ => scenario::parse_bytes(&file, &bytes).map(Arc::new),
                            },
                        }
                    }
                    Err(e) => FileState {
                        stamp,
                        hash: 0,
                        parsed: Err(e),
                    },
                },
            };
            new.insert(name, state);
        }
        let mut changed = false;
        for (name, state) in &new {
            let before = old.get(name);
            if before.is_some_and(|b| b.hash == state.hash && b.stamp == state.stamp) {
                continue;
            }
            changed = true;
            if before.is_some_and(|b| b.hash == state.hash) {
                // Touched, same contents: nothing to log.
                continue;
            }
            match &state.parsed {
                Ok(s) => {
                    tracing::info!(message = "Scenario loaded.", file = %name, scenario = %s.name, requests = s.requests.len())
                }
                Err(e) => {
                    tracing::warn!(message = "Scenario file invalid; not loaded.", file = %name, line = e.line, column = e.column, error = %e.message)
                }
            }
        }
        for name in old.keys().filter(|n| !new.contains_key(*n)) {
            changed = true;
            tracing::info!(message = "Scenario file removed.", file = %name);
        }
        if changed {
            let invalid = new.values().filter(|s| s.parsed.is_err()).count();
            crate::metrics::scenarios_listed(new.len() - invalid, invalid);
            *self
                .files
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
        }
        changed
    }

    /// Re-reads the directory every [`POLL_INTERVAL`] until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let store = Arc::clone(&self);
            // Directory and file reads block; keep them off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || store.rescan()).await;
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, FileState>> {
        self.files
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every scenario and every invalid file.
    pub fn list(&self) -> pb::ListScenariosResponse {
        let files = self.read();
        let mut out = pb::ListScenariosResponse {
            dir: self.dir.display().to_string(),
            ..Default::default()
        };
        for state in files.values() {
            match &state.parsed {
                Ok(s) => out.scenarios.push(info(s)),
                Err(e) => out.invalid.push(file_error(e)),
            }
        }
        out
    }

    /// The scenario `name`.
    ///
    /// # Errors
    ///
    /// [`LookupError`] when there is no such scenario or its file is invalid.
    pub fn get(&self, name: &str) -> Result<Arc<Scenario>, LookupError> {
        let files = self.read();
        let file = format!("{name}.{}", scenario::FILE_EXTENSION);
        match files.get(&file).map(|s| &s.parsed) {
            Some(Ok(s)) => Ok(Arc::clone(s)),
            Some(Err(e)) => Err(LookupError::Invalid {
                name: name.to_string(),
                error: e.clone(),
            }),
            None => {
                let known: Vec<&str> = files
                    .values()
                    .filter_map(|s| s.parsed.as_ref().ok().map(|s| s.name.as_str()))
                    .collect();
                Err(LookupError::NotFound {
                    name: name.to_string(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                })
            }
        }
    }

    /// The hook of load-job creation and update: with `load.scenario` set, fills `load` from
    /// that scenario ([`Scenario::fill`]: `requests` replaced, `knobs` every knob's value with
    /// the job's overrides). Without it, nothing to do.
    ///
    /// # Errors
    ///
    /// [`ScenarioError`] at `load.scenario` (no such scenario, or its file is invalid) or at
    /// `load.knobs.NAME` / `load.knobs` (an override of a knob the scenario lacks, a bad
    /// value, every weight 0); `load` is unchanged then.
    pub fn resolve(&self, load: &mut pb::LoadSpec) -> Result<(), ScenarioError> {
        if load.scenario.is_empty() {
            return Ok(());
        }
        let s = self
            .get(&load.scenario)
            .map_err(|e| ScenarioError::new("load.scenario", e.to_string()))?;
        s.fill(load)
    }
}

/// [`ScenarioStore::resolve`] when the controller may have no scenarios directory: a load job
/// naming a scenario is then refused at `load.scenario`.
///
/// # Errors
///
/// As [`ScenarioStore::resolve`].
pub fn resolve(
    store: Option<&ScenarioStore>,
    load: &mut pb::LoadSpec,
) -> Result<(), ScenarioError> {
    match store {
        Some(s) => s.resolve(load),
        None if load.scenario.is_empty() => Ok(()),
        None => Err(ScenarioError::new(
            "load.scenario",
            "this controller has no scenarios directory (--scenarios DIR)",
        )),
    }
}

fn hash_of(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

// === conversions ===

/// A scenario as the API shows it.
pub fn info(s: &Scenario) -> pb::ScenarioInfo {
    pb::ScenarioInfo {
        name: s.name.clone(),
        file: s.file.clone(),
        description: s.description.clone(),
        knobs: s.knobs.clone().into_iter().collect(),
        requests: s
            .requests
            .iter()
            .map(|r| {
                let (weight, written) = match &r.weight {
                    Weight::Fixed(w) => (*w, w.to_string()),
                    Weight::Knob(k) => (
                        s.knobs
                            .get(k)
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0),
                        format!("{{{{{k}}}}}"),
                    ),
                };
                pb::ScenarioRequestInfo {
                    request: Some(pb::LoadRequest {
                        method: r.method.clone(),
                        path: r.path.clone(),
                        headers: r.headers.clone().into_iter().collect(),
                        body: r.body.clone(),
                        weight,
                        expect_status: r.expect_status,
                        label: r.label.clone(),
                    }),
                    weight: written,
                }
            })
            .collect(),
    }
}

/// A file error as the API shows it.
pub fn file_error(e: &ScenarioFileError) -> pb::ScenarioFileError {
    pb::ScenarioFileError {
        file: e.file.clone(),
        line: u32::try_from(e.line).unwrap_or(u32::MAX),
        column: u32::try_from(e.column).unwrap_or(u32::MAX),
        error: e.message.clone(),
    }
}

/// A scenario as JSON: `requests` in full (`full`: headers and body too) or summarized.
pub fn info_to_value(s: &pb::ScenarioInfo, full: bool) -> Value {
    let knobs: BTreeMap<&String, &String> = s.knobs.iter().collect();
    let requests: Vec<Value> = s
        .requests
        .iter()
        .map(|ri| {
            let r = ri.request.clone().unwrap_or_default();
            let mut v = json!({
                "label": r.label,
                "method": r.method,
                "path": r.path,
                "weight": ri.weight,
                "default_weight": r.weight,
                "expect_status": r.expect_status,
            });
            if full && let Some(o) = v.as_object_mut() {
                let headers: BTreeMap<&String, &String> = r.headers.iter().collect();
                o.insert("headers".into(), json!(headers));
                o.insert("body".into(), json!(r.body));
            }
            v
        })
        .collect();
    json!({
        "name": s.name,
        "file": s.file,
        "description": s.description,
        "knobs": knobs,
        "requests": requests,
    })
}

/// The listing as JSON.
pub fn list_to_value(l: &pb::ListScenariosResponse) -> Value {
    let scenarios: Vec<Value> = l
        .scenarios
        .iter()
        .map(|s| info_to_value(s, false))
        .collect();
    let invalid: Vec<Value> = l
        .invalid
        .iter()
        .map(|e| json!({"file": e.file, "line": e.line, "column": e.column, "error": e.error}))
        .collect();
    json!({ "dir": l.dir, "scenarios": scenarios, "invalid": invalid })
}

/// The listing as a text table (`controller scenarios`).
pub fn list_to_text(l: &pb::ListScenariosResponse) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if l.dir.is_empty() {
        out.push_str("no scenarios directory (controller serve --scenarios DIR)\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<24} {:>8}  {:<40} DESCRIPTION",
        "SCENARIO", "REQUESTS", "KNOBS"
    );
    for s in &l.scenarios {
        let mut knobs: Vec<String> = s.knobs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        knobs.sort();
        let _ = writeln!(
            out,
            "{:<24} {:>8}  {:<40} {}",
            s.name,
            s.requests.len(),
            knobs.join(","),
            s.description
        );
    }
    for e in &l.invalid {
        let _ = writeln!(
            out,
            "INVALID {}:{}:{}: {}",
            e.file, e.line, e.column, e.error
        );
    }
    out
}

/// One scenario as text (`controller scenarios show NAME`).
pub fn info_to_text(s: &pb::ScenarioInfo) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "scenario    {}", s.name);
    let _ = writeln!(out, "file        {}", s.file);
    let _ = writeln!(out, "description {}", s.description);
    let mut knobs: Vec<(&String, &String)> = s.knobs.iter().collect();
    knobs.sort();
    for (k, v) in knobs {
        let _ = writeln!(out, "knob        {k}={v}");
    }
    let _ = writeln!(
        out,
        "{:<16} {:<7} {:>20} {:>6}  PATH",
        "LABEL", "METHOD", "WEIGHT", "EXPECT"
    );
    for ri in &s.requests {
        let r = ri.request.clone().unwrap_or_default();
        let weight = if ri.weight == r.weight.to_string() {
            ri.weight.clone()
        } else {
            format!("{} ({})", ri.weight, r.weight)
        };
        let expect = if r.expect_status == 0 {
            "2xx".to_string()
        } else {
            r.expect_status.to_string()
        };
        let _ = writeln!(
            out,
            "{:<16} {:<7} {:>20} {:>6}  {}",
            r.label, r.method, weight, expect, r.path
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("meshlat-scn-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    /// A rewrite of the same size with the same modification time is seen while the file is
    /// recent (racy), by its contents.
    #[test]
    fn a_same_size_rewrite_is_seen() {
        let d = tmp("racy");
        let f = d.join("a.json");
        let write = |id: &str| {
            std::fs::write(
                &f,
                format!(
                    r#"{{"knobs": {{"ID": "{id}"}}, "requests": [{{"path": "/{{{{ID}}}}"}}]}}"#
                ),
            )
            .expect("write");
        };
        write("1");
        let t = std::fs::metadata(&f)
            .and_then(|m| m.modified())
            .expect("mtime");
        let s = ScenarioStore::open(&d).expect("open");
        assert_eq!(s.get("a").expect("a").knobs["ID"], "1");
        write("2");
        std::fs::File::options()
            .write(true)
            .open(&f)
            .and_then(|h| h.set_modified(t))
            .expect("set mtime");
        assert!(s.rescan(), "same size and mtime, other contents");
        assert_eq!(s.get("a").expect("a").knobs["ID"], "2");
        assert!(!s.rescan(), "nothing changed");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn resolve_names_the_field() {
        let d = tmp("resolve");
        std::fs::write(
            d.join("a.json"),
            r#"{"knobs": {"W": 1}, "requests": [{"path": "/", "weight": "{{W}}"}]}"#,
        )
        .expect("write");
        std::fs::write(d.join("b.json"), "{\n\"requests\": 1}").expect("write");
        std::fs::write(d.join("notes.txt"), "not a scenario").expect("write");
        let s = ScenarioStore::open(&d).expect("open");
        let l = s.list();
        assert_eq!(l.scenarios.len(), 1);
        assert_eq!(
            (l.invalid[0].file.as_str(), l.invalid[0].line),
            ("b.json", 2)
        );
        let mut load = pb::LoadSpec {
            scenario: "zzz".into(),
            ..Default::default()
        };
        let e = s.resolve(&mut load).expect_err("unknown");
        assert_eq!(e.field, "load.scenario");
        assert!(e.message.contains("scenarios: a"), "{e}");
        load.scenario = "b".into();
        let e = s.resolve(&mut load).expect_err("invalid");
        assert!(e.message.contains("b.json:2:"), "{e}");
        load.scenario = "a".into();
        load.knobs.insert("X".into(), "1".into());
        assert_eq!(
            s.resolve(&mut load).expect_err("knob").field,
            "load.knobs.X"
        );
        load.knobs.clear();
        s.resolve(&mut load).expect("good");
        assert_eq!(load.requests.len(), 1);
        assert!(resolve(None, &mut load).is_err());
        load.scenario.clear();
        assert!(resolve(None, &mut load).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
