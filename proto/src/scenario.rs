//! Load-job scenarios (issue 15 item 3, after seed 002's Dyno): declarative files of weighted
//! HTTP requests with knobs, parsed here — sans-IO, shared by the controller (which lists its
//! scenarios directory and fills a load job's `requests` from the named scenario) and the agent
//! (`agent load --scenario FILE`, and the `{{NAME}}` templates of [`render`]).
//!
//! # Format
//!
//! A scenario is one JSON file, `NAME.json`; its name is the file name without `.json`
//! (1 to [`MAX_SCENARIO_NAME_BYTES`] bytes of `[A-Za-z0-9_.-]`, not
//! starting with `.`). Every key is checked: an unknown
//! key, a wrong type or a value out of range refuses the whole file with its file name, line
//! and column ([`ScenarioFileError`]) — a file is never loaded half.
//!
//! ```json
//! {
//!   "description": "Product API with an error page",
//!   "knobs": { "ERROR_WEIGHT": 1, "LABEL_WEIGHT": "2", "LABEL_NAME": "foo_label" },
//!   "requests": [
//!     { "label": "products", "path": "/api/products", "weight": 6 },
//!     { "label": "order", "method": "POST", "path": "/api/orders",
//!       "headers": { "Content-Type": "application/json" },
//!       "body": "{\"product\": 1}", "expect_status": 201 },
//!     { "label": "error", "path": "/oopsie", "weight": "{{ERROR_WEIGHT}}", "expect_status": 500 },
//!     { "label": "labelled", "path": "/api/label?name={{LABEL_NAME}}", "weight": "{{LABEL_WEIGHT}}" }
//!   ]
//! }
//! ```
//!
//! | key | meaning |
//! | --- | --- |
//! | `description` | optional text, at most [`MAX_DESCRIPTION_BYTES`] bytes |
//! | `knobs` | optional map of knob name (`[A-Za-z0-9_]`, at most [`MAX_KNOB_NAME_BYTES`] bytes) to its default (a string or a whole number; at most [`MAX_KNOB_VALUE_BYTES`] bytes, no control characters); at most [`MAX_KNOBS`] |
//! | `requests` | 1 to [`MAX_REQUESTS`] requests, below |
//! | `requests[].method` | `GET` (default), `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE` or `OPTIONS` |
//! | `requests[].path` | required; path and query appended to the job target's origin, starting with `/`, no whitespace; at most [`MAX_PATH_BYTES`] bytes |
//! | `requests[].headers` | optional map of header name to value; at most [`MAX_HEADERS`], names at most [`MAX_HEADER_NAME_BYTES`] bytes, values at most [`MAX_HEADER_VALUE_BYTES`] |
//! | `requests[].body` | optional string, at most [`MAX_BODY_BYTES`] bytes |
//! | `requests[].weight` | a whole number 0 to [`MAX_WEIGHT`] (default 1), or `"{{KNOB}}"` — the knob's value is the weight |
//! | `requests[].expect_status` | the status of a success, 100 to 599; absent or 0: any 2xx |
//! | `requests[].label` | optional short name, at most [`MAX_LABEL_BYTES`] bytes |
//!
//! `{{NAME}}` in a path, header value or body is replaced by knob `NAME`'s value when the request
//! is sent; every `{{` must open a reference to a knob the file declares. Knobs are just names:
//! none is special. (Dyno's `SERVER_URL` is the load job's target; `ERROR_WEIGHT` and
//! `LABEL_WEIGHT` are ordinary knobs a file uses as weights, as in the example.)
//!
//! # Resolution
//!
//! A load job names a scenario and may override its knobs ([`Scenario::fill`]): overrides of
//! knobs the scenario does not declare are refused naming them, each weight is resolved from
//! the knobs, requests whose weight is 0 are left out (so `ERROR_WEIGHT=0` turns the error page
//! off), and all of them at 0 is refused. The job's `requests` become the scenario's, templates
//! kept, and its `knobs` every knob's value (defaults with the overrides): the agent renders
//! the templates.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::pb;

// The limits of a load job's fields are `meshlat_proto::job`'s (one source), by the names
// used here.
pub use crate::job::{
    MAX_HEADER_NAME_BYTES, MAX_HEADER_VALUE_BYTES, MAX_KNOB_NAME_BYTES, MAX_KNOB_VALUE_BYTES,
    MAX_KNOBS, MAX_SCENARIO_NAME_BYTES, template_refs,
};
/// Most bytes of a scenario file.
pub const MAX_FILE_BYTES: usize = 256 * 1024;
/// Most bytes of a description.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Most requests of a scenario (`LoadSpec.requests`).
pub const MAX_REQUESTS: usize = crate::job::MAX_LOAD_REQUESTS;
/// Most bytes of a request's path.
pub const MAX_PATH_BYTES: usize = crate::job::MAX_URL_BYTES;
/// Most headers of a request.
pub const MAX_HEADERS: usize = crate::job::MAX_LOAD_HEADERS;
/// Most bytes of a request body.
pub const MAX_BODY_BYTES: usize = crate::job::MAX_LOAD_BODY_BYTES;
/// Largest weight.
pub const MAX_WEIGHT: u32 = crate::job::MAX_LOAD_WEIGHT;
/// Most bytes of a label.
pub const MAX_LABEL_BYTES: usize = crate::job::MAX_LOAD_LABEL_BYTES;
/// The methods a request may have.
pub const METHODS: [&str; 7] = crate::job::LOAD_METHODS;
/// Headers the agent sets, which a request may not.
pub const RESERVED_HEADERS: [&str; 4] =
    ["host", "content-length", "transfer-encoding", "connection"];
/// The extension of scenario files.
pub const FILE_EXTENSION: &str = "json";

/// A parsed, valid scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// From the file name.
    pub name: String,
    /// The file name it came from.
    pub file: String,
    /// What it does, for the listing.
    pub description: String,
    /// Every knob and its default.
    pub knobs: BTreeMap<String, String>,
    /// The requests, as written (templates kept).
    pub requests: Vec<ScenarioRequest>,
}

/// One request of a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioRequest {
    /// One of [`METHODS`].
    pub method: String,
    /// Path and query, may hold `{{NAME}}`.
    pub path: String,
    /// Extra headers; values may hold `{{NAME}}`.
    pub headers: BTreeMap<String, String>,
    /// Body, may hold `{{NAME}}`.
    pub body: String,
    /// Weight, fixed or from a knob.
    pub weight: Weight,
    /// Status of a success; 0: any 2xx.
    pub expect_status: u32,
    /// Short name.
    pub label: String,
}

/// A request's weight as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Weight {
    /// A number.
    Fixed(u32),
    /// `"{{KNOB}}"`: the knob's value.
    Knob(String),
}

/// Why a scenario file was refused: its file, where and what. `line` and `column` are 1-based;
/// a problem with the whole file (its name, size or encoding) is at line 1, column 0.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ScenarioFileError {
    /// File name.
    pub file: String,
    /// Line (1-based).
    pub line: usize,
    /// Column (1-based; 0 for the whole file).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Why a load job's scenario or knobs were refused, with the job-spec field at fault
/// (`load.scenario`, `load.knobs.NAME`, `load.knobs`, `load.requests[3].path`), so the API can
/// name it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ScenarioError {
    /// Field path relative to the job spec.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ScenarioError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ScenarioError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<ScenarioError> for crate::job::JobSpecError {
    fn from(e: ScenarioError) -> Self {
        crate::job::JobSpecError {
            field: e.field.into(),
            problem: crate::job::Problem::Invalid(e.message.into()),
        }
    }
}

// === templates ===

/// `s` with every `{{NAME}}` replaced by `knobs(NAME)`.
///
/// # Errors
///
/// A message naming a reference that is malformed or whose knob `knobs` does not have.
pub fn render<'a>(s: &str, knobs: impl Fn(&str) -> Option<&'a str>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut missing = None;
    crate::job::scan_template(s, |literal, name| {
        out.push_str(literal);
        match name.map(|n| (n, knobs(n))) {
            Some((_, Some(v))) => out.push_str(v),
            Some((n, None)) => missing = missing.or(Some(n)),
            None => {}
        }
    })
    .map_err(|e| match e {
        crate::job::TemplateError::Unclosed => "\"{{\" without a closing \"}}\"".to_string(),
        crate::job::TemplateError::BadName(name) => format!(
            "\"{{{{{name}}}}}\" is not a knob reference (a name of A-Z, a-z, 0-9 and _, at \
             most {MAX_KNOB_NAME_BYTES} bytes)"
        ),
    })?;
    match missing {
        Some(name) => Err(format!("no knob {name} for \"{{{{{name}}}}}\"")),
        None => Ok(out),
    }
}

/// Checks a knob value: length and no control characters.
fn check_knob_value(v: &str) -> Result<(), String> {
    if v.len() > MAX_KNOB_VALUE_BYTES {
        return Err(format!(
            "{} bytes exceed the limit of {MAX_KNOB_VALUE_BYTES}",
            v.len()
        ));
    }
    if v.chars().any(char::is_control) {
        return Err("holds control characters".into());
    }
    Ok(())
}

/// The resolved weight of a knob value.
fn knob_weight(name: &str, value: &str) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(w) if w <= MAX_WEIGHT => Ok(w),
        _ => Err(format!(
            "knob {name} is a request weight: must be a whole number 0 to {MAX_WEIGHT}, not {value:?}"
        )),
    }
}

// === parsing ===

thread_local! {
    /// The knobs of the file being parsed (its first pass), for the checks of the second.
    static KNOBS: RefCell<BTreeMap<String, String>> = const { RefCell::new(BTreeMap::new()) };
}

/// Parses the scenario file `file_name` (`NAME.json`) with contents `text`.
///
/// # Errors
///
/// [`ScenarioFileError`] with the file, line and column of the first problem.
pub fn parse(file_name: &str, text: &str) -> Result<Scenario, ScenarioFileError> {
    let whole = |message: String| ScenarioFileError {
        file: file_name.to_string(),
        line: 1,
        column: 0,
        message,
    };
    let name = scenario_name(file_name).map_err(whole)?;
    if text.len() > MAX_FILE_BYTES {
        return Err(whole(format!(
            "{} bytes exceed the limit of {MAX_FILE_BYTES}",
            text.len()
        )));
    }
    let at = |e: serde_json::Error| {
        let msg = e.to_string();
        // serde_json appends " at line L column C"; the position has its own fields.
        let message = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        ScenarioFileError {
            file: file_name.to_string(),
            line: e.line().max(1),
            column: e.column(),
            message,
        }
    };
    // Pass 1: the knobs (they may come after the requests that use them).
    let knobs = serde_json::from_str::<KnobPass>(text).map_err(at)?.knobs.0;
    // Pass 2: everything, with the knobs at hand for the requests' checks.
    KNOBS.with(|k| *k.borrow_mut() = knobs.clone());
    let raw = serde_json::from_str::<RawFile>(text);
    KNOBS.with(|k| k.borrow_mut().clear());
    let raw = raw.map_err(at)?;
    Ok(Scenario {
        name,
        file: file_name.to_string(),
        description: raw.description.0,
        knobs,
        requests: raw.requests.0,
    })
}

/// Reads and parses the scenario file at `path` (at most [`MAX_FILE_BYTES`]).
///
/// # Errors
///
/// [`ScenarioFileError`] naming the file when it cannot be read, or [`parse`]'s.
pub fn parse_file(path: &std::path::Path) -> Result<Scenario, ScenarioFileError> {
    let (file_name, bytes) = read_file(path)?;
    parse_bytes(&file_name, &bytes)
}

/// The file name and contents of the scenario file at `path` (at most [`MAX_FILE_BYTES`]).
///
/// # Errors
///
/// [`ScenarioFileError`] naming the file when it cannot be read or is too large.
pub fn read_file(path: &std::path::Path) -> Result<(String, Vec<u8>), ScenarioFileError> {
    use std::io::Read as _;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let whole = |message: String| ScenarioFileError {
        file: file_name.clone(),
        line: 1,
        column: 0,
        message,
    };
    let f = std::fs::File::open(path).map_err(|e| whole(format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| whole(format!("cannot read: {e}")))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(whole(format!(
            "larger than the limit of {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok((file_name, bytes))
}

/// Parses the contents of scenario file `file_name` (UTF-8 JSON).
///
/// # Errors
///
/// [`ScenarioFileError`]: not UTF-8, or [`parse`]'s.
pub fn parse_bytes(file_name: &str, bytes: &[u8]) -> Result<Scenario, ScenarioFileError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ScenarioFileError {
        file: file_name.to_string(),
        line: 1,
        column: 0,
        message: "not UTF-8".into(),
    })?;
    parse(file_name, text)
}

/// The scenario name of a file name (`NAME.json`).
///
/// # Errors
///
/// Why the file name is not one of a scenario.
pub fn scenario_name(file_name: &str) -> Result<String, String> {
    let Some(stem) = file_name.strip_suffix(&format!(".{FILE_EXTENSION}")) else {
        return Err(format!("a scenario file is NAME.{FILE_EXTENSION}"));
    };
    if !crate::job::scenario_name_ok(stem) {
        return Err(format!(
            "the name {stem:?} must be 1 to {MAX_SCENARIO_NAME_BYTES} bytes of A-Z, a-z, 0-9, _, . and -, not starting with ."
        ));
    }
    Ok(stem.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KnobPass {
    #[serde(default)]
    #[allow(dead_code)]
    description: IgnoredAny,
    #[serde(default)]
    knobs: Knobs,
    #[serde(default)]
    #[allow(dead_code)]
    requests: IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    description: Description,
    #[serde(default)]
    #[allow(dead_code)]
    knobs: IgnoredAny,
    requests: Requests,
}

// Every check runs inside a visitor called by serde_json's `deserialize_*` for the value, so
// serde_json stamps the error with the position right after that value (an error raised after
// `deserialize` returned would get the position of the enclosing object's end).

/// A visitor of one string, checked by `F`.
struct StrVisitor<F>(F);

impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for StrVisitor<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
}

/// A seed of one string, checked by `F` (for map keys and values).
struct CheckedStr<F>(F);

impl<'de, T, F: FnOnce(&str) -> Result<T, String>> de::DeserializeSeed<'de> for CheckedStr<F> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_str(StrVisitor(self.0))
    }
}

/// A string checked by `check`.
fn checked_str<'de, D: Deserializer<'de>, T>(
    d: D,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    d.deserialize_str(StrVisitor(check))
}

#[derive(Default)]
struct Description(String);

impl<'de> Deserialize<'de> for Description {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| {
            if s.len() > MAX_DESCRIPTION_BYTES {
                return Err(format!(
                    "description: {} bytes exceed the limit of {MAX_DESCRIPTION_BYTES}",
                    s.len()
                ));
            }
            Ok(Description(s.to_string()))
        })
    }
}

/// A knob's default (a string or a whole number), checked.
struct KnobValueSeed<'a>(&'a str);

impl<'de> de::DeserializeSeed<'de> for KnobValueSeed<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        struct V<'a>(&'a str);
        impl Visitor<'_> for V<'_> {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a whole number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
                check_knob_value(v)
                    .map_err(|e| E::custom(format!("knobs: {}'s default {e}", self.0)))?;
                Ok(v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
                Ok(v.to_string())
            }
        }
        d.deserialize_any(V(self.0))
    }
}

#[derive(Default)]
struct Knobs(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Knobs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Knobs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of knob names and defaults")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Knobs, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(k) = m.next_key_seed(CheckedStr(|k: &str| {
                    if !crate::job::knob_name_ok(k) {
                        return Err(format!(
                            "knobs: {k:?} is not a knob name (1 to {MAX_KNOB_NAME_BYTES} bytes of A-Z, a-z, 0-9 and _)"
                        ));
                    }
                    Ok(k.to_string())
                }))? {
                    if out.contains_key(&k) {
                        return Err(de::Error::custom(format!("knobs: {k:?} is given twice")));
                    }
                    if out.len() == MAX_KNOBS {
                        return Err(de::Error::custom(format!(
                            "knobs: more than the limit of {MAX_KNOBS}"
                        )));
                    }
                    let v = m.next_value_seed(KnobValueSeed(&k))?;
                    out.insert(k, v);
                }
                Ok(Knobs(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Checks `s`'s templates against the knobs of the file being parsed.
fn check_refs(what: &str, s: &str) -> Result<(), String> {
    let refs = template_refs(s).map_err(|e| format!("{what}: {e}"))?;
    KNOBS.with(|k| {
        let k = k.borrow();
        for r in refs {
            if !k.contains_key(r) {
                return Err(format!(
                    "{what}: {{{{{r}}}}} names no knob of this file (knobs: {})",
                    list(k.keys())
                ));
            }
        }
        Ok(())
    })
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    #[serde(default)]
    method: Option<Method>,
    path: Path,
    #[serde(default)]
    headers: Option<Headers>,
    #[serde(default)]
    body: Option<Body>,
    #[serde(default)]
    weight: Option<WeightRaw>,
    #[serde(default)]
    expect_status: Option<ExpectStatus>,
    #[serde(default)]
    label: Option<Label>,
}

struct Method(String);

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| {
            if !METHODS.contains(&s) {
                return Err(format!(
                    "method: {s:?} is not one of {}",
                    METHODS.join(", ")
                ));
            }
            Ok(Method(s.to_string()))
        })
    }
}

struct Path(String);

impl<'de> Deserialize<'de> for Path {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| {
            if !s.starts_with('/') {
                return Err(format!(
                    "path: {s:?} must start with '/' (it is appended to the job target's origin)"
                ));
            }
            if s.len() > MAX_PATH_BYTES {
                return Err(format!(
                    "path: {} bytes exceed the limit of {MAX_PATH_BYTES}",
                    s.len()
                ));
            }
            if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "path: {s:?} holds whitespace or control characters (percent-encode them)"
                ));
            }
            check_refs("path", s)?;
            Ok(Path(s.to_string()))
        })
    }
}

struct Headers(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Headers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of header names and values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Headers, A::Error> {
                let mut out = BTreeMap::new();
                let mut lower: BTreeMap<String, String> = BTreeMap::new();
                while let Some(k) = m.next_key_seed(CheckedStr(|k: &str| {
                    if k.len() > MAX_HEADER_NAME_BYTES || !crate::job::header_name_ok(k) {
                        return Err(format!(
                            "headers: {k:?} is not a header name (at most {MAX_HEADER_NAME_BYTES} bytes of token characters)"
                        ));
                    }
                    if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                        return Err(format!(
                            "headers: {k:?} is set by the agent; a request may not set it"
                        ));
                    }
                    if let Some(first) = lower.get(&k.to_ascii_lowercase()) {
                        return Err(format!(
                            "headers: {k:?} repeats {first:?} (header names ignore case)"
                        ));
                    }
                    Ok(k.to_string())
                }))? {
                    lower.insert(k.to_ascii_lowercase(), k.clone());
                    if out.len() == MAX_HEADERS {
                        return Err(de::Error::custom(format!(
                            "headers: more than the limit of {MAX_HEADERS}"
                        )));
                    }
                    let v = m.next_value_seed(CheckedStr(|v: &str| {
                        if v.len() > MAX_HEADER_VALUE_BYTES {
                            return Err(format!(
                                "headers: {k}'s value: {} bytes exceed the limit of {MAX_HEADER_VALUE_BYTES}",
                                v.len()
                            ));
                        }
                        if v.chars().any(|c| c.is_control() && c != '\t') {
                            return Err(format!("headers: {k}'s value holds control characters"));
                        }
                        check_refs(&format!("headers: {k}"), v)?;
                        Ok(v.to_string())
                    }))?;
                    out.insert(k, v);
                }
                Ok(Headers(out))
            }
        }
        d.deserialize_map(V)
    }
}

struct Body(String);

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| {
            if s.len() > MAX_BODY_BYTES {
                return Err(format!(
                    "body: {} bytes exceed the limit of {MAX_BODY_BYTES}",
                    s.len()
                ));
            }
            check_refs("body", s)?;
            Ok(Body(s.to_string()))
        })
    }
}

struct WeightRaw(Weight);

impl<'de> Deserialize<'de> for WeightRaw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = WeightRaw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a whole number 0 to {MAX_WEIGHT} or \"{{{{KNOB}}}}\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WeightRaw, E> {
                match u32::try_from(v) {
                    Ok(w) if w <= MAX_WEIGHT => Ok(WeightRaw(Weight::Fixed(w))),
                    _ => Err(E::custom(format!(
                        "weight: {v} is out of range 0..={MAX_WEIGHT}"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WeightRaw, E> {
                Err(E::custom(format!(
                    "weight: {v} is out of range 0..={MAX_WEIGHT}"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<WeightRaw, E> {
                Err(E::custom(format!(
                    "weight: {v} is not a whole number 0 to {MAX_WEIGHT}"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WeightRaw, E> {
                let name = v
                    .strip_prefix("{{")
                    .and_then(|r| r.strip_suffix("}}"))
                    .filter(|n| crate::job::knob_name_ok(n))
                    .ok_or_else(|| {
                        E::custom(format!(
                            "weight: {v:?} is neither a number nor \"{{{{KNOB}}}}\""
                        ))
                    })?;
                KNOBS.with(|k| {
                    let k = k.borrow();
                    let Some(default) = k.get(name) else {
                        return Err(E::custom(format!(
                            "weight: {{{{{name}}}}} names no knob of this file (knobs: {})",
                            list(k.keys())
                        )));
                    };
                    knob_weight(name, default)
                        .map_err(|e| E::custom(format!("weight: the default of {e}")))?;
                    Ok(WeightRaw(Weight::Knob(name.to_string())))
                })
            }
        }
        d.deserialize_any(V)
    }
}

struct ExpectStatus(u32);

impl<'de> Deserialize<'de> for ExpectStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ExpectStatus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("0 or a status 100 to 599")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ExpectStatus, E> {
                match v {
                    0 | 100..=599 => Ok(ExpectStatus(v as u32)),
                    _ => Err(E::custom(format!(
                        "expect_status: {v} is not 0 or a status 100 to 599"
                    ))),
                }
            }
        }
        d.deserialize_u64(V)
    }
}

struct Label(String);

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| {
            if s.len() > MAX_LABEL_BYTES {
                return Err(format!(
                    "label: {} bytes exceed the limit of {MAX_LABEL_BYTES}",
                    s.len()
                ));
            }
            if s.chars().any(char::is_control) {
                return Err("label: holds control characters".into());
            }
            Ok(Label(s.to_string()))
        })
    }
}

struct Requests(Vec<ScenarioRequest>);

impl<'de> Deserialize<'de> for Requests {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Requests;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of requests")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Requests, A::Error> {
                let mut requests = Vec::new();
                while let Some(r) = s.next_element::<RawRequest>()? {
                    if requests.len() == MAX_REQUESTS {
                        return Err(de::Error::custom(format!(
                            "requests: more than the limit of {MAX_REQUESTS}"
                        )));
                    }
                    requests.push(ScenarioRequest {
                        method: r.method.map_or_else(|| "GET".to_string(), |m| m.0),
                        path: r.path.0,
                        headers: r.headers.map(|h| h.0).unwrap_or_default(),
                        body: r.body.map(|b| b.0).unwrap_or_default(),
                        weight: r.weight.map_or(Weight::Fixed(1), |w| w.0),
                        expect_status: r.expect_status.map_or(0, |e| e.0),
                        label: r.label.map(|l| l.0).unwrap_or_default(),
                    });
                }
                if requests.is_empty() {
                    return Err(de::Error::custom("requests: must not be empty"));
                }
                let total = KNOBS.with(|k| {
                    let k = k.borrow();
                    requests
                        .iter()
                        .map(|r| match &r.weight {
                            Weight::Fixed(w) => u64::from(*w),
                            Weight::Knob(n) => k
                                .get(n)
                                .and_then(|v| knob_weight(n, v).ok())
                                .map_or(0, u64::from),
                        })
                        .sum::<u64>()
                });
                if total == 0 {
                    return Err(de::Error::custom(
                        "requests: every weight is 0 with the knobs' defaults (nothing would be sent)",
                    ));
                }
                Ok(Requests(requests))
            }
        }
        d.deserialize_seq(V)
    }
}

// === resolution ===

impl Scenario {
    /// The weight of each request with `knobs` (every knob's value).
    fn weights(&self, knobs: &BTreeMap<String, String>) -> Result<Vec<u32>, ScenarioError> {
        self.requests
            .iter()
            .map(|r| match &r.weight {
                Weight::Fixed(w) => Ok(*w),
                Weight::Knob(n) => {
                    let v = knobs.get(n).map_or("", String::as_str);
                    knob_weight(n, v).map_err(|e| ScenarioError::new(format!("load.knobs.{n}"), e))
                }
            })
            .collect()
    }

    /// The knobs' defaults with `overrides` over them.
    ///
    /// # Errors
    ///
    /// [`ScenarioError`] at `load.knobs.NAME` for a knob this scenario does not declare or a
    /// value out of bounds.
    pub fn knob_values(
        &self,
        overrides: &HashMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ScenarioError> {
        let mut knobs = self.knobs.clone();
        let mut names: Vec<&String> = overrides.keys().collect();
        names.sort();
        for name in names {
            let field = || format!("load.knobs.{name}");
            let Some(slot) = knobs.get_mut(name) else {
                return Err(ScenarioError::new(
                    field(),
                    format!(
                        "scenario {} has no knob {name} (knobs: {})",
                        self.name,
                        list(self.knobs.keys())
                    ),
                ));
            };
            let v = &overrides[name];
            check_knob_value(v).map_err(|e| ScenarioError::new(field(), e))?;
            slot.clone_from(v);
        }
        Ok(knobs)
    }

    /// Fills `load` from this scenario (module docs, "Resolution"): `load.knobs` are overrides
    /// on entry and every knob's value on return; `load.requests` is replaced by the requests
    /// whose weight is above 0, templates kept. `load.scenario` is left as it is.
    ///
    /// # Errors
    ///
    /// [`ScenarioError`] naming `load.knobs.NAME` (unknown knob, bad value or weight) or
    /// `load.knobs` (every weight 0, or a rendered path, header or body out of bounds); `load`
    /// is unchanged then.
    pub fn fill(&self, load: &mut pb::LoadSpec) -> Result<(), ScenarioError> {
        let knobs = self.knob_values(&load.knobs)?;
        let weights = self.weights(&knobs)?;
        let mut requests = Vec::new();
        for (r, w) in self.requests.iter().zip(weights) {
            if w == 0 {
                continue;
            }
            let get = |n: &str| knobs.get(n).map(String::as_str);
            let bad = |what: &str, e: String| {
                ScenarioError::new("load.knobs", format!("request {:?}: {what}: {e}", r.label))
            };
            let path = render(&r.path, get).map_err(|e| bad("path", e))?;
            if path.len() > MAX_PATH_BYTES
                || path.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(bad(
                    "path",
                    format!(
                        "{path:?} with these knobs is over {MAX_PATH_BYTES} bytes or holds whitespace"
                    ),
                ));
            }
            for (k, v) in &r.headers {
                let v = render(v, get).map_err(|e| bad(k, e))?;
                if v.len() > MAX_HEADER_VALUE_BYTES {
                    return Err(bad(
                        k,
                        format!("over {MAX_HEADER_VALUE_BYTES} bytes with these knobs"),
                    ));
                }
            }
            let body = render(&r.body, get).map_err(|e| bad("body", e))?;
            if body.len() > MAX_BODY_BYTES {
                return Err(bad(
                    "body",
                    format!("over {MAX_BODY_BYTES} bytes with these knobs"),
                ));
            }
            requests.push(pb::LoadRequest {
                method: r.method.clone(),
                path: r.path.clone(),
                headers: r.headers.clone().into_iter().collect(),
                body: r.body.clone(),
                weight: w,
                expect_status: r.expect_status,
                label: r.label.clone(),
            });
        }
        if requests.is_empty() {
            return Err(ScenarioError::new(
                "load.knobs",
                format!(
                    "every request of scenario {} has weight 0 with these knobs (nothing would be sent)",
                    self.name
                ),
            ));
        }
        load.requests = requests;
        load.knobs = knobs.into_iter().collect();
        Ok(())
    }
}

/// Checks that every `{{NAME}}` in `load.requests` (path, header values, body) names one of
/// `load.knobs` — for inline requests, and what an agent checks before running a mix.
///
/// # Errors
///
/// [`ScenarioError`] at `load.requests[i].path`, `.headers.NAME` or `.body`.
pub fn check_templates(load: &pb::LoadSpec) -> Result<(), ScenarioError> {
    for (i, r) in load.requests.iter().enumerate() {
        let mut parts: Vec<(String, &str)> = vec![
            (format!("load.requests[{i}].path"), r.path.as_str()),
            (format!("load.requests[{i}].body"), r.body.as_str()),
        ];
        let mut headers: Vec<(&String, &String)> = r.headers.iter().collect();
        headers.sort();
        for (k, v) in headers {
            parts.push((format!("load.requests[{i}].headers.{k}"), v.as_str()));
        }
        for (field, s) in parts {
            render(s, |n| load.knobs.get(n).map(String::as_str))
                .map_err(|e| ScenarioError::new(field, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
  "description": "API mix",
  "knobs": { "ERROR_WEIGHT": 1, "LABEL_WEIGHT": "2", "LABEL_NAME": "foo" },
  "requests": [
    { "label": "list", "path": "/api/products", "weight": 6 },
    { "label": "order", "method": "POST", "path": "/api/orders",
      "headers": { "Content-Type": "application/json", "X-Label": "{{LABEL_NAME}}" },
      "body": "{\"product\": 1}", "expect_status": 201 },
    { "label": "error", "path": "/oopsie", "weight": "{{ERROR_WEIGHT}}", "expect_status": 500 },
    { "label": "labelled", "path": "/label?name={{LABEL_NAME}}", "weight": "{{LABEL_WEIGHT}}" }
  ]
}"#;

    #[test]
    fn a_good_file_parses() {
        let s = parse("api_mix.json", GOOD).unwrap();
        assert_eq!(s.name, "api_mix");
        assert_eq!(s.description, "API mix");
        assert_eq!(s.knobs["ERROR_WEIGHT"], "1");
        assert_eq!(s.knobs["LABEL_WEIGHT"], "2");
        assert_eq!(s.requests.len(), 4);
        assert_eq!(s.requests[0].method, "GET");
        assert_eq!(s.requests[0].weight, Weight::Fixed(6));
        assert_eq!(s.requests[1].weight, Weight::Fixed(1));
        assert_eq!(s.requests[1].expect_status, 201);
        assert_eq!(s.requests[2].weight, Weight::Knob("ERROR_WEIGHT".into()));
        assert_eq!(s.requests[1].headers["X-Label"], "{{LABEL_NAME}}");
    }

    /// Each bad file: the line of the problem and a piece of the message.
    #[test]
    fn errors_name_file_line_and_problem() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "x.json",
                "{\n \"requests\": [\n {\"path\": \"/\", \"colour\": 1}\n ]\n}",
                3,
                "unknown field `colour`",
            ),
            (
                "x.json",
                "{\n \"requests\": [\n {\"path\": \"/\"},\n {\"method\": \"FETCH\",\n \"path\": \"/\"}\n ]\n}",
                4,
                "method: \"FETCH\" is not one of",
            ),
            (
                "x.json",
                "{\n \"requests\": [\n {\n \"path\": \"api\"\n }\n ]\n}",
                4,
                "path: \"api\" must start with '/'",
            ),
            (
                "x.json",
                "{\n \"requests\": [\n {\n \"path\": \"/a/{{NOPE}}\"\n }\n ]\n}",
                4,
                "{{NOPE}} names no knob of this file (knobs: none)",
            ),
            (
                "x.json",
                "{\n \"knobs\": {\"A\": \"1\"},\n \"requests\": [\n {\"path\": \"/\",\n \"weight\": \"{{B}}\"}\n ]\n}",
                5,
                "weight: {{B}} names no knob of this file (knobs: A)",
            ),
            (
                "x.json",
                "{\n \"knobs\": {\"W\": \"0\"},\n \"requests\": [\n {\"path\": \"/\", \"weight\": 0},\n {\"path\": \"/\", \"weight\": \"{{W}}\"}\n ]\n}",
                6,
                "every weight is 0",
            ),
            (
                "x.json",
                "{\n \"knobs\": {\"W\": \"lots\"},\n \"requests\": [\n {\"path\": \"/\", \"weight\": \"{{W}}\"}\n ]\n}",
                4,
                "knob W is a request weight",
            ),
            (
                "x.json",
                "{\n \"requests\": [\n {\"path\": \"/\",\n \"weight\": 1000001}\n ]\n}",
                4,
                "weight: 1000001 is out of range",
            ),
            (
                "x.json",
                "{\n \"requests\": [\n {\"path\": \"/\",\n \"expect_status\": 700}\n ]\n}",
                4,
                "expect_status: 700",
            ),
            (
                "x.json",
                "{\n \"requests\": [\n {\"path\": \"/\",\n \"headers\": {\"Bad Name\": \"x\"}}\n ]\n}",
                4,
                "\"Bad Name\" is not a header name",
            ),
            (
                "x.json",
                "{\n \"requests\": [\n {\"path\": \"/\",\n \"headers\": {\"Host\": \"x\"}}\n ]\n}",
                4,
                "\"Host\" is set by the agent",
            ),
            (
                "x.json",
                "{\n \"knobs\": {\"bad-name\": \"1\"},\n \"requests\": [{\"path\": \"/\"}]\n}",
                2,
                "\"bad-name\" is not a knob name",
            ),
            (
                "x.json",
                "{\n \"knobs\": {\"A\": \"1\",\n \"A\": \"2\"},\n \"requests\": [{\"path\": \"/\"}]\n}",
                3,
                "\"A\" is given twice",
            ),
            (
                "x.json",
                "{\n \"requests\": []\n}",
                2,
                "requests: must not be empty",
            ),
            (
                "x.json",
                "{\n \"description\": \"x\"\n}",
                3,
                "missing field `requests`",
            ),
            (
                "x.json",
                "{\n \"requests\": [\n {\"path\": \"/\"\n ]\n}",
                4,
                "expected",
            ),
            (
                "x.json",
                "{\n \"requests\": [\n {\"path\": \"/{{a-b}}\"}\n ]\n}",
                3,
                "{{a-b}}: a knob name is",
            ),
            (
                "x.json",
                "{\"requests\": [{\"path\": \"/\"}], \"extra\": 1}",
                1,
                "unknown field `extra`",
            ),
            ("bad name.json", "{}", 1, "the name \"bad name\""),
            ("x.yaml", "{}", 1, "a scenario file is NAME.json"),
        ];
        for (file, text, line, want) in cases {
            let e = parse(file, text).expect_err(want);
            assert_eq!(e.file, *file, "{e}");
            assert!(e.message.contains(want), "{text}: got {e}, want {want:?}");
            assert_eq!(e.line, *line, "{text}: {e}");
            let shown = e.to_string();
            assert!(shown.starts_with(&format!("{file}:{line}:")), "{shown}");
        }
        let mut many = String::from("{\"requests\": [");
        for i in 0..=MAX_REQUESTS {
            many.push_str(if i == 0 {
                "\n{\"path\": \"/\"}"
            } else {
                ",\n{\"path\": \"/\"}"
            });
        }
        many.push_str("\n]}");
        let e = parse("many.json", &many).unwrap_err();
        assert!(e.message.contains("more than the limit of 64"), "{e}");
        let big = format!(
            "{{\"requests\": [{{\"path\": \"/\", \"body\": \"{}\"}}]}}",
            "b".repeat(MAX_BODY_BYTES + 1)
        );
        assert!(
            parse("big.json", &big)
                .unwrap_err()
                .message
                .contains("body: 16385 bytes")
        );
    }

    #[test]
    fn fill_resolves_weights_drops_zero_and_keeps_templates() {
        let s = parse("api_mix.json", GOOD).unwrap();
        let mut load = pb::LoadSpec {
            scenario: "api_mix".into(),
            ..Default::default()
        };
        s.fill(&mut load).unwrap();
        let weights: Vec<(String, u32)> = load
            .requests
            .iter()
            .map(|r| (r.label.clone(), r.weight))
            .collect();
        assert_eq!(
            weights,
            [("list", 6), ("order", 1), ("error", 1), ("labelled", 2)]
                .map(|(l, w)| (l.to_string(), w))
        );
        assert_eq!(load.knobs["LABEL_NAME"], "foo");
        assert_eq!(load.requests[3].path, "/label?name={{LABEL_NAME}}");
        assert_eq!(check_templates(&load), Ok(()));

        // ERROR_WEIGHT=0 turns the error page off; overrides win over defaults.
        let mut load = pb::LoadSpec {
            knobs: [("ERROR_WEIGHT", "0"), ("LABEL_NAME", "bar")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            ..Default::default()
        };
        s.fill(&mut load).unwrap();
        assert!(load.requests.iter().all(|r| r.label != "error"));
        assert_eq!(load.requests.len(), 3);
        assert_eq!(load.knobs["LABEL_NAME"], "bar");
        assert_eq!(load.knobs["ERROR_WEIGHT"], "0");
    }

    #[test]
    fn fill_refuses_naming_the_knob() {
        let s = parse("api_mix.json", GOOD).unwrap();
        let with = |k: &str, v: &str| pb::LoadSpec {
            knobs: [(k.to_string(), v.to_string())].into(),
            requests: vec![pb::LoadRequest::default()],
            ..Default::default()
        };
        let mut l = with("SERVER_URL", "http://x");
        let e = s.fill(&mut l).unwrap_err();
        assert_eq!(e.field, "load.knobs.SERVER_URL");
        assert!(
            e.message
                .contains("has no knob SERVER_URL (knobs: ERROR_WEIGHT, LABEL_NAME, LABEL_WEIGHT)"),
            "{e}"
        );
        assert_eq!(l.requests.len(), 1, "unchanged on error");
        let e = s.fill(&mut with("ERROR_WEIGHT", "-1")).unwrap_err();
        assert_eq!(e.field, "load.knobs.ERROR_WEIGHT");
        let e = s.fill(&mut with("LABEL_NAME", "a b")).unwrap_err();
        assert_eq!(e.field, "load.knobs", "{e}");
        let e = s.fill(&mut with("LABEL_NAME", "a\nb")).unwrap_err();
        assert_eq!(e.field, "load.knobs.LABEL_NAME", "{e}");
        let only_errors = parse(
            "e.json",
            r#"{"knobs": {"W": 1}, "requests": [{"path": "/e", "weight": "{{W}}"}]}"#,
        )
        .unwrap();
        let e = only_errors.fill(&mut with("W", "0")).unwrap_err();
        assert_eq!(e.field, "load.knobs");
        assert!(e.message.contains("weight 0"), "{e}");
        let je: crate::job::JobSpecError = e.into();
        assert_eq!(je.field, "load.knobs");
    }

    #[test]
    fn templates_render_and_refuse_unknown_knobs() {
        let k: HashMap<&str, &str> = [("A", "1"), ("B", "two")].into();
        let get = |n: &str| k.get(n).copied();
        assert_eq!(render("/x/{{A}}?b={{B}}{{A}}", get).unwrap(), "/x/1?b=two1");
        assert_eq!(
            render("{\"a\": {\"b\": 1}}", get).unwrap(),
            "{\"a\": {\"b\": 1}}"
        );
        assert!(render("/{{C}}", get).unwrap_err().contains("no knob C"));
        assert!(render("/{{A", get).is_err());
        assert!(render("/{{-}}", get).is_err());
        let load = pb::LoadSpec {
            requests: vec![pb::LoadRequest {
                path: "/{{X}}".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            check_templates(&load).unwrap_err().field,
            "load.requests[0].path"
        );
    }

    /// The scenarios shipped in the repository's `scenarios/` directory parse and resolve.
    #[test]
    fn shipped_examples_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let s = parse_file(&path).unwrap_or_else(|e| panic!("{e}"));
            let mut load = pb::LoadSpec::default();
            s.fill(&mut load)
                .unwrap_or_else(|e| panic!("{}: {e}", s.name));
            assert_eq!(check_templates(&load), Ok(()));
            for (i, r) in load.requests.iter().enumerate() {
                // What the job validator will check of the filled requests.
                crate::job::check_load_request(i, r, &load.knobs)
                    .unwrap_or_else(|e| panic!("{}: {e}", s.name));
            }
            assert!(!s.description.is_empty(), "{}", s.name);
            names.push(s.name);
        }
        names.sort();
        assert_eq!(names, ["api_mix", "high_error_rates", "read_write"]);
        let api = parse_file(&dir.join("api_mix.json")).unwrap();
        let mut load = pb::LoadSpec {
            knobs: [("ERROR_WEIGHT".to_string(), "0".to_string())].into(),
            ..Default::default()
        };
        api.fill(&mut load).unwrap();
        assert!(load.requests.iter().all(|r| r.path != "/oopsie"));
    }
}
