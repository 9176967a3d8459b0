//! The process clock, the wall clock and the clock's error bound.
//!
//! Every timestamp an agent uses for its own timing arithmetic (RTTs, pacing) comes from
//! [`Clock::now_ns`]: nanoseconds since the Unix epoch, computed as the wall-clock time at process
//! start plus the monotonic time elapsed since. It never jumps (NTP steps do not move it), so
//! differences of its readings are durations. `ts` in records is plain wall-clock time
//! ([`std::time::SystemTime`]).
//!
//! One-way delays compare this host's clock with another's, so they are computed on the wall
//! clock ([`wall_ns`]) that the clock error bound describes, never on the process clock: after an
//! NTP step the process clock is off the wall clock by the step, for the rest of the process.
//! A reflector stamps its replies (t2, t3) in wall time; a prober converts its own t1 and t4 to
//! wall time with the process-minus-wall offset measured at the end of each train
//! ([`wall_offset_ns`]) — so the conversion is re-anchored every train, and a step moves only
//! the train it falls in.
//!
//! The error bound and, for tests, a deliberate offset come from a [`ClockSource`] chosen with
//! `--clock-source` and [`install`]ed once at start: the kernel's adjtimex `maxerror` (the
//! default), chrony's tracking report, the ECS task metadata's `ClockDrift`, none, or a stand-in
//! with a set offset and bound.
//!
//! Kernel receive timestamps (`SO_TIMESTAMPING`, `CLOCK_REALTIME`) are mapped into the process
//! timebase with [`Clock::from_realtime_ns`], and into wall time with [`wall_from_realtime`].

#![allow(clippy::disallowed_types)] // this module is the one place that reads the OS clocks

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Anchor taken once per process.
struct Anchor {
    mono: Instant,
    wall_ns: u64,
}

static ANCHOR: OnceLock<Anchor> = OnceLock::new();

fn anchor() -> &'static Anchor {
    ANCHOR.get_or_init(|| Anchor {
        mono: Instant::now(),
        wall_ns: realtime_ns(),
    })
}

/// Nanoseconds since the Unix epoch from `CLOCK_REALTIME`.
pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The process clock. Zero-sized; all instances share the process anchor.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock;

impl Clock {
    /// Monotonic nanoseconds in the wall-clock timebase.
    pub fn now_ns() -> u64 {
        let a = anchor();
        a.wall_ns + a.mono.elapsed().as_nanos() as u64
    }

    /// Maps a `CLOCK_REALTIME` stamp (e.g. a kernel receive timestamp) taken very recently into
    /// the process timebase, by measuring the current offset between the two clocks.
    ///
    /// The offset is read as process clock / realtime / process clock, three times, keeping the
    /// tightest sandwich, so a preemption between two reads cannot skew it.
    pub fn from_realtime_ns(realtime: u64) -> u64 {
        (realtime as i128 + realtime_offset_ns() as i128).max(0) as u64
    }
}

/// Process clock minus `CLOCK_REALTIME`, in ns, measured robustly against preemption: up to five
/// process clock / realtime / process clock sandwiches, keeping the narrowest (a sandwich under
/// 200 ns is good enough to stop early).
pub fn realtime_offset_ns() -> i64 {
    let mut best: Option<(u64, i64)> = None;
    for _ in 0..5 {
        let a = Clock::now_ns();
        let real = realtime_ns();
        let b = Clock::now_ns();
        let width = b.saturating_sub(a);
        let offset = (a as i128 + (width / 2) as i128 - real as i128) as i64;
        if best.is_none_or(|(w, _)| width < w) {
            best = Some((width, offset));
        }
        if width < 200 {
            break;
        }
    }
    best.map_or(0, |(_, o)| o)
}

/// The clock error bound this host's kernel reports (adjtimex `maxerror`), in milliseconds, or
/// `None` when the clock is unsynchronised or the call is unavailable.
pub fn adjtimex_error_bound_ms() -> Option<f64> {
    // SAFETY: adjtimex with modes = 0 only reads the kernel's timex state into our struct.
    #[allow(unsafe_code)]
    let (rc, tx) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        let rc = libc::adjtimex(&mut tx);
        (rc, tx)
    };
    if rc < 0 || rc == libc::TIME_ERROR {
        return None;
    }
    // maxerror is in microseconds.
    Some(tx.maxerror as f64 / 1000.0)
}

/// Where the clock error bound comes from (`--clock-source`).
#[derive(Clone, Debug, PartialEq)]
pub enum ClockSource {
    /// The kernel's adjtimex `maxerror` (what NTP daemons and chrony maintain).
    Adjtimex,
    /// chrony's tracking report (`chronyc -c tracking`): |offset| + root delay / 2 + root
    /// dispersion, the bound chrony itself documents.
    Chrony {
        /// The `chronyc` program.
        command: PathBuf,
    },
    /// The ECS task metadata endpoint (`${ECS_CONTAINER_METADATA_URI_V4}/task`):
    /// `ClockDrift.ClockErrorBound` while `ClockSynchronizationStatus` is `SYNCHRONIZED`.
    Ecs {
        /// The task metadata URL, `http://HOST[:PORT]/PATH/task`.
        task_url: String,
    },
    /// No bound: one-way delays are never published.
    Unbounded,
    /// A stand-in for tests and demos: the wall clock is read `offset_ns` off the real one, and
    /// the bound is `bound_ms`.
    StandIn {
        /// Added to every wall-clock reading.
        offset_ns: i64,
        /// The bound claimed.
        bound_ms: f64,
    },
}

impl ClockSource {
    /// Parses `--clock-source`: `auto` (ECS when `ECS_CONTAINER_METADATA_URI_V4` is set in
    /// `env`, else adjtimex), `adjtimex`, `chrony[:PATH]`, `ecs`, `none` or
    /// `standin:OFFSET_MS:BOUND_MS`.
    ///
    /// # Errors
    ///
    /// What is wrong with `s`.
    pub fn parse(s: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let ecs_url = || {
            env("ECS_CONTAINER_METADATA_URI_V4")
                .filter(|u| !u.trim().is_empty())
                .map(|u| format!("{}/task", u.trim().trim_end_matches('/')))
        };
        match s.trim() {
            "auto" => Ok(
                ecs_url().map_or(ClockSource::Adjtimex, |task_url| ClockSource::Ecs {
                    task_url,
                }),
            ),
            "adjtimex" => Ok(ClockSource::Adjtimex),
            "chrony" => Ok(ClockSource::Chrony {
                command: PathBuf::from("chronyc"),
            }),
            "ecs" => ecs_url()
                .map(|task_url| ClockSource::Ecs { task_url })
                .ok_or_else(|| "ecs needs ECS_CONTAINER_METADATA_URI_V4 (set by ECS)".to_string()),
            "none" => Ok(ClockSource::Unbounded),
            other => {
                if let Some(path) = other.strip_prefix("chrony:") {
                    if path.is_empty() {
                        return Err("chrony:PATH needs the path of chronyc".into());
                    }
                    return Ok(ClockSource::Chrony {
                        command: PathBuf::from(path),
                    });
                }
                let Some(rest) = other.strip_prefix("standin:") else {
                    return Err(format!(
                        "{other:?}: expected auto, adjtimex, chrony[:PATH], ecs, none or \
                         standin:OFFSET_MS:BOUND_MS"
                    ));
                };
                let (off, bound) = rest
                    .split_once(':')
                    .ok_or("standin needs OFFSET_MS:BOUND_MS, e.g. standin:3:5")?;
                let off: f64 = off
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite() && v.abs() <= 3_600_000.0)
                    .ok_or("standin OFFSET_MS: a number of milliseconds within an hour")?;
                let bound_ms: f64 = bound
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite() && (0.0..=3_600_000.0).contains(v))
                    .ok_or("standin BOUND_MS: a number of milliseconds, 0 to an hour")?;
                Ok(ClockSource::StandIn {
                    offset_ns: (off * 1e6).round() as i64,
                    bound_ms,
                })
            }
        }
    }

    /// Whether the bound is read by [`poll`] (slow: a process or an HTTP call).
    fn is_polled(&self) -> bool {
        matches!(self, ClockSource::Chrony { .. } | ClockSource::Ecs { .. })
    }

    /// The bound as read now (blocking for the polled sources, within [`POLL_TIMEOUT`]).
    ///
    /// # Errors
    ///
    /// Why no bound could be read.
    pub fn read_bound_ms(&self) -> Result<f64, String> {
        match self {
            ClockSource::Adjtimex => {
                adjtimex_error_bound_ms().ok_or_else(|| "the kernel clock is unsynchronised".into())
            }
            ClockSource::Unbounded => Err("--clock-source none".into()),
            ClockSource::StandIn { bound_ms, .. } => Ok(*bound_ms),
            ClockSource::Chrony { command } => {
                let out = run_with_timeout(command, &["-c", "tracking"], POLL_TIMEOUT)?;
                parse_chrony_tracking(&out)
            }
            ClockSource::Ecs { task_url } => parse_ecs_task(&http_get(task_url, POLL_TIMEOUT)?),
        }
    }
}

/// How long one read of a polled source may take.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often [`poll`] re-reads a polled source.
pub const POLL_EVERY: Duration = Duration::from_secs(16);
/// A polled bound older than this is not used (the source stopped answering).
pub const POLL_STALE: Duration = Duration::from_secs(300);

/// The bound from `chronyc -c tracking` output (CSV: reference id, address, stratum, reference
/// time, system time offset s, last offset s, RMS offset s, frequency ppm, residual frequency
/// ppm, skew ppm, root delay s, root dispersion s, update interval s, leap status), in ms:
/// |system time offset| + root delay / 2 + root dispersion.
///
/// # Errors
///
/// What is missing or wrong, or an unsynchronised leap status.
pub fn parse_chrony_tracking(csv: &str) -> Result<f64, String> {
    let line = csv.lines().next().unwrap_or_default();
    let f: Vec<&str> = line.split(',').collect();
    if f.len() < 14 {
        return Err(format!(
            "chronyc tracking: {} fields, expected 14: {line:?}",
            f.len()
        ));
    }
    if f[13].trim() == "Not synchronised" {
        return Err("chrony is not synchronised".into());
    }
    let num = |i: usize, name: &str| -> Result<f64, String> {
        f[i].trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("chronyc tracking: {name} {:?} is not a number", f[i]))
    };
    let offset = num(4, "system time offset")?;
    let delay = num(10, "root delay")?;
    let dispersion = num(11, "root dispersion")?;
    Ok((offset.abs() + delay.abs() / 2.0 + dispersion.abs()) * 1000.0)
}

/// The bound from an ECS task metadata v4 `/task` document: `ClockDrift.ClockErrorBound` (ms)
/// while `ClockSynchronizationStatus` is `SYNCHRONIZED`.
///
/// # Errors
///
/// What is missing or wrong.
pub fn parse_ecs_task(body: &str) -> Result<f64, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("task metadata: not JSON: {e}"))?;
    let drift = v
        .get("ClockDrift")
        .ok_or("task metadata has no ClockDrift (platform version too old?)")?;
    let status = drift
        .get("ClockSynchronizationStatus")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    if status != "SYNCHRONIZED" {
        return Err(format!("ClockSynchronizationStatus is {status:?}"));
    }
    drift
        .get("ClockErrorBound")
        .and_then(serde_json::Value::as_f64)
        .filter(|b| b.is_finite() && *b >= 0.0)
        .ok_or_else(|| "ClockDrift.ClockErrorBound is not a non-negative number".into())
}

/// Runs `cmd args` and returns its stdout, killing it after `timeout`.
fn run_with_timeout(
    cmd: &std::path::Path,
    args: &[&str],
    timeout: Duration,
) -> Result<String, String> {
    use std::io::Read;
    let mut child = std::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", cmd.display()))?;
    let until = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                if let Some(mut o) = child.stdout.take() {
                    let _ = o.read_to_string(&mut out);
                }
                return if status.success() {
                    Ok(out)
                } else {
                    Err(format!("{} exited with {status}", cmd.display()))
                };
            }
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} took over {timeout:?}", cmd.display()));
            }
            Err(e) => return Err(format!("{}: {e}", cmd.display())),
        }
    }
}

/// A plain-HTTP `GET url` (the ECS metadata endpoint is `http://169.254.170.2/...`): the body of
/// a `200`, within `timeout`, at most 1 MiB.
fn http_get(url: &str, timeout: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let host_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&host_port)
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("{authority}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n\r\n")
            .as_bytes(),
    )
    .map_err(|e| format!("{authority}: {e}"))?;
    let mut buf = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{authority}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: no HTTP response"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("{url}: HTTP status {status:?}"));
    }
    Ok(body.to_string())
}

/// The source [`install`]ed, its offset and its last polled bound.
struct Installed {
    source: ClockSource,
    offset_ns: i64,
    /// f64 bits of the last polled bound; NaN: none.
    polled_bound: AtomicU64,
    /// [`Clock::now_ns`] of that reading.
    polled_at: AtomicU64,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Makes `source` this process's clock source (the first call wins; before any, adjtimex with
/// no offset). A polled source is read once here (blocking, within [`POLL_TIMEOUT`]) so the
/// first measurements have a bound; keep it fresh with [`poll`].
///
/// # Errors
///
/// A source was already installed.
pub fn install(source: ClockSource) -> Result<(), ClockSource> {
    let offset_ns = match source {
        ClockSource::StandIn { offset_ns, .. } => offset_ns,
        _ => 0,
    };
    let polled = source.is_polled();
    let inst = Installed {
        source,
        offset_ns,
        polled_bound: AtomicU64::new(f64::NAN.to_bits()),
        polled_at: AtomicU64::new(0),
    };
    INSTALLED.set(inst).map_err(|i| i.source)?;
    if polled {
        refresh();
    }
    Ok(())
}

/// Re-reads a polled source (logged when it fails or recovers).
fn refresh() {
    let Some(i) = INSTALLED.get() else { return };
    let was = f64::from_bits(i.polled_bound.load(Ordering::Relaxed));
    match i.source.read_bound_ms() {
        Ok(b) => {
            i.polled_bound.store(b.to_bits(), Ordering::Relaxed);
            i.polled_at.store(Clock::now_ns(), Ordering::Relaxed);
            if was.is_nan() {
                tracing::info!(message = "Clock error bound read.", source = ?i.source, bound_ms = b);
            }
        }
        Err(error) => {
            if !was.is_nan() || i.polled_at.load(Ordering::Relaxed) == 0 {
                tracing::warn!(message = "No clock error bound: one-way delays are not published until it is back.", source = ?i.source, %error);
            }
            i.polled_bound.store(f64::NAN.to_bits(), Ordering::Relaxed);
            i.polled_at.store(Clock::now_ns().max(1), Ordering::Relaxed);
        }
    }
}

/// Keeps a polled source's bound fresh (every [`POLL_EVERY`]) until `shutdown`; returns at once
/// for the others.
pub async fn poll(shutdown: tokio_util::sync::CancellationToken) {
    if !INSTALLED.get().is_some_and(|i| i.source.is_polled()) {
        return;
    }
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if tokio::task::spawn_blocking(refresh).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The clock error bound of this host's wall clock, ms, from the installed [`ClockSource`]
/// (`None`: unknown, so one-way delays are not published).
pub fn clock_error_bound_ms() -> Option<f64> {
    let Some(i) = INSTALLED.get() else {
        return adjtimex_error_bound_ms();
    };
    match &i.source {
        ClockSource::Adjtimex => adjtimex_error_bound_ms(),
        ClockSource::Unbounded => None,
        ClockSource::StandIn { bound_ms, .. } => Some(*bound_ms),
        ClockSource::Chrony { .. } | ClockSource::Ecs { .. } => {
            let b = f64::from_bits(i.polled_bound.load(Ordering::Relaxed));
            let age = Clock::now_ns().saturating_sub(i.polled_at.load(Ordering::Relaxed));
            (!b.is_nan() && age <= POLL_STALE.as_nanos() as u64).then_some(b)
        }
    }
}

/// The stand-in offset of the installed source, ns (0 for real sources).
fn wall_offset() -> i64 {
    INSTALLED.get().map_or(0, |i| i.offset_ns)
}

/// Wall-clock nanoseconds since the Unix epoch: `CLOCK_REALTIME` (plus a stand-in's offset),
/// the clock the error bound describes. May step; use [`Clock::now_ns`] for durations.
pub fn wall_ns() -> u64 {
    (i128::from(realtime_ns()) + i128::from(wall_offset())).clamp(0, i128::from(u64::MAX)) as u64
}

/// A kernel `CLOCK_REALTIME` stamp in wall time (plus a stand-in's offset).
pub fn wall_from_realtime(stamp: u64) -> u64 {
    (i128::from(stamp) + i128::from(wall_offset())).clamp(0, i128::from(u64::MAX)) as u64
}

/// Process clock minus wall clock, ns, now: a process-clock stamp `t` was taken at wall time
/// `t − wall_offset_ns()` (to within the clocks' drift since). Measured like
/// [`realtime_offset_ns`].
pub fn wall_offset_ns() -> i64 {
    realtime_offset_ns().saturating_sub(wall_offset())
}

/// Converts a nanosecond difference to milliseconds.
pub fn ns_to_ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_monotonic_and_close_to_wall_clock() {
        let a = Clock::now_ns();
        let b = Clock::now_ns();
        assert!(b >= a);
        let wall = realtime_ns();
        let diff = (wall as i128 - b as i128).abs();
        assert!(
            diff < 1_000_000_000,
            "process clock {b} is {diff} ns away from the wall clock"
        );
    }

    #[test]
    fn realtime_stamps_map_close_to_now() {
        let stamp = realtime_ns();
        let mapped = Clock::from_realtime_ns(stamp);
        let now = Clock::now_ns();
        assert!(now >= mapped.saturating_sub(1_000_000) && now - mapped < 50_000_000);
    }

    #[test]
    fn clock_sources_parse_with_clear_errors() {
        let no_env = |_: &str| None;
        let ecs_env = |k: &str| {
            (k == "ECS_CONTAINER_METADATA_URI_V4").then(|| "http://169.254.170.2/v4/abc/".into())
        };
        assert_eq!(
            ClockSource::parse("auto", no_env),
            Ok(ClockSource::Adjtimex)
        );
        assert_eq!(
            ClockSource::parse("auto", ecs_env),
            Ok(ClockSource::Ecs {
                task_url: "http://169.254.170.2/v4/abc/task".into()
            })
        );
        assert!(ClockSource::parse("ecs", no_env).is_err_and(|e| e.contains("ECS_CONTAINER")));
        assert_eq!(
            ClockSource::parse("none", no_env),
            Ok(ClockSource::Unbounded)
        );
        assert_eq!(
            ClockSource::parse("chrony:/usr/bin/chronyc", no_env),
            Ok(ClockSource::Chrony {
                command: "/usr/bin/chronyc".into()
            })
        );
        assert_eq!(
            ClockSource::parse("standin:-2.5:4", no_env),
            Ok(ClockSource::StandIn {
                offset_ns: -2_500_000,
                bound_ms: 4.0
            })
        );
        for bad in [
            "ntp",
            "standin:3",
            "standin:x:1",
            "standin:1:-1",
            "standin:1:NaN",
            "chrony:",
            "",
        ] {
            assert!(ClockSource::parse(bad, no_env).is_err(), "{bad:?} parsed");
        }
    }

    /// Real `chronyc -c tracking` output (chrony 4): offset 12.3 µs, root delay 1.2 ms, root
    /// dispersion 0.4 ms.
    const CHRONY: &str = "A9FEA97B,169.254.169.123,4,1764748800.123456789,0.000012300,\
                          -0.000001000,0.000020000,-3.210,0.001,0.050,0.001200000,0.000400000,\
                          64.2,Normal\n";

    #[test]
    fn chrony_and_ecs_reports_give_their_bounds() {
        let b = parse_chrony_tracking(CHRONY).expect("parses");
        assert!((b - (0.0123 + 0.6 + 0.4)).abs() < 1e-9, "{b}");
        let unsynced = CHRONY.replace("Normal", "Not synchronised");
        assert!(parse_chrony_tracking(&unsynced).is_err());
        assert!(parse_chrony_tracking("506 Cannot talk to daemon").is_err());
        assert!(parse_chrony_tracking(&CHRONY.replace("0.000400000", "x")).is_err());

        let task = r#"{"Cluster":"c","ClockDrift":{"ClockErrorBound":0.5458,
            "ReferenceTimestamp":"2021-09-07T16:57:44Z","ClockSynchronizationStatus":"SYNCHRONIZED"}}"#;
        assert_eq!(parse_ecs_task(task), Ok(0.5458));
        let unsynced = task.replace("\"SYNCHRONIZED", "\"NOT_SYNCHRONIZED");
        assert!(parse_ecs_task(&unsynced).is_err_and(|e| e.contains("NOT_SYNCHRONIZED")));
        assert!(parse_ecs_task(r#"{"Cluster":"c"}"#).is_err_and(|e| e.contains("ClockDrift")));
        assert!(parse_ecs_task("<html>").is_err());
        assert!(parse_ecs_task(&task.replace("0.5458", "-1")).is_err());
    }

    /// The polled sources' I/O: a real `chronyc` stand-in program, a real HTTP server.
    #[test]
    fn polled_sources_read_a_program_and_an_http_endpoint() {
        let dir = std::env::temp_dir().join(format!("meshlat-clock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let fake = dir.join("chronyc");
        std::fs::write(
            &fake,
            format!("#!/bin/sh\nprintf '%s' '{}'\n", CHRONY.trim()),
        )
        .expect("write");
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let b = ClockSource::Chrony { command: fake }
            .read_bound_ms()
            .expect("fake chronyc");
        assert!((b - 1.0123).abs() < 1e-9, "{b}");
        let hang = dir.join("hang");
        std::fs::write(&hang, "#!/bin/sh\nsleep 30\n").expect("write");
        std::fs::set_permissions(&hang, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let t = Instant::now();
        let e = run_with_timeout(&hang, &[], Duration::from_millis(300)).expect_err("killed");
        assert!(
            e.contains("took over") && t.elapsed() < Duration::from_secs(5),
            "{e}"
        );
        let missing = ClockSource::Chrony {
            command: dir.join("no-such-chronyc"),
        };
        assert!(missing.read_bound_ms().is_err());

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            for reply in [
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"ClockDrift\":{\"ClockErrorBound\":0.25,\"ClockSynchronizationStatus\":\"SYNCHRONIZED\"}}",
                "HTTP/1.1 404 Not Found\r\n\r\nno",
            ] {
                let (mut c, _) = listener.accept().expect("accept");
                let mut req = [0u8; 1024];
                let n = c.read(&mut req).expect("read");
                assert!(String::from_utf8_lossy(&req[..n]).starts_with("GET /v4/x/task "));
                c.write_all(reply.as_bytes()).expect("write");
            }
        });
        let ecs = ClockSource::Ecs {
            task_url: format!("http://{addr}/v4/x/task"),
        };
        assert_eq!(ecs.read_bound_ms(), Ok(0.25));
        assert!(ecs.read_bound_ms().is_err_and(|e| e.contains("404")));
        server.join().expect("server");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
