//! The load engine against real loopback servers: stepped closed model, updates, stop, rate
//! limiting, credentials, and the latency truth of the open model's correction.
//!
//! The test server runs on its own thread and runtime (not the engine's), counts what it
//! receives and answers as told: after a delay, with a status, or stalling every request for a
//! known time once the n-th request has arrived. Assertions compare relative quantities with
//! generous bounds (the machine has two shared cores): counts at the server against the
//! engine's, worker counts, ratios of rates and of percentiles.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use meshlat_agent::load::credentials::Credentials;
use meshlat_agent::load::mix::RequestMix;
use meshlat_agent::load::plan::{Caps, Model, Schedule, Steps};
use meshlat_agent::load::{LoadEngine, LoadHandle, LoadSpec, SecondReport};
use meshlat_agent::target::Target;
use meshlat_agent::tls::TlsClientOptions;
use tokio::time::Instant;

// === test server ===

/// How the test server answers.
#[derive(Clone, Copy, Debug, Default)]
struct Behaviour {
    /// Wait this long before answering each request.
    delay: Duration,
    /// Answer every `n`-th request (1-based count) with 429, the rest with 200; 0: never.
    every_nth_429: u64,
    /// When request number `at` arrives, stall every request (that one included) until `for`
    /// has passed.
    stall: Option<(u64, Duration)>,
    /// Close every connection after its first response (`Connection: close`).
    close_each: bool,
}

#[derive(Default)]
struct ServerState {
    requests: AtomicU64,
    answered_200: AtomicU64,
    answered_429: AtomicU64,
    connections: AtomicU64,
    /// Connections open now.
    open: AtomicU64,
    /// Requests in progress (head received, answer not yet sent).
    in_flight: AtomicU64,
    stall_until: Mutex<Option<Instant>>,
    /// Authorization values seen, per connection id.
    auth: Mutex<BTreeMap<u64, BTreeSet<String>>>,
}

struct TestServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
}

impl TestServer {
    fn start(b: Behaviour) -> TestServer {
        let state = Arc::new(ServerState::default());
        let st = Arc::clone(&state);
        let addr = support::serve_http_on_thread(!b.close_each, move || {
            let conn_id = st.connections.fetch_add(1, Ordering::SeqCst);
            st.open.fetch_add(1, Ordering::SeqCst);
            let (st2, st_done) = (Arc::clone(&st), Arc::clone(&st));
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let st = Arc::clone(&st2);
                async move { Ok::<_, Infallible>(answer(&st, b, conn_id, &req).await) }
            });
            let on_close: Box<dyn FnOnce() + Send> = Box::new(move || {
                st_done.open.fetch_sub(1, Ordering::SeqCst);
            });
            (svc, on_close)
        });
        TestServer { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/ping", self.addr)
    }

    fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }
}

async fn answer(
    st: &ServerState,
    b: Behaviour,
    conn_id: u64,
    req: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let n = st.requests.fetch_add(1, Ordering::SeqCst) + 1;
    st.in_flight.fetch_add(1, Ordering::SeqCst);
    if let Some(a) = req.headers().get("authorization") {
        st.auth
            .lock()
            .unwrap()
            .entry(conn_id)
            .or_default()
            .insert(a.to_str().unwrap_or("?").to_string());
    }
    if let Some((at, stall)) = b.stall
        && n == at
    {
        *st.stall_until.lock().unwrap() = Some(Instant::now() + stall);
    }
    let until = *st.stall_until.lock().unwrap();
    if let Some(t) = until.filter(|t| *t > Instant::now()) {
        tokio::time::sleep_until(t).await;
    }
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    let status = if b.every_nth_429 > 0 && n.is_multiple_of(b.every_nth_429) {
        st.answered_429.fetch_add(1, Ordering::SeqCst);
        StatusCode::TOO_MANY_REQUESTS
    } else {
        st.answered_200.fetch_add(1, Ordering::SeqCst);
        StatusCode::OK
    };
    st.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut r = Response::new(Full::new(Bytes::from_static(b"pong\n")));
    *r.status_mut() = status;
    r
}

// === helpers ===

fn spec(url: &str, model: Model, steps: Steps, duration: Duration) -> LoadSpec {
    LoadSpec {
        target: Target::parse(url).unwrap(),
        schedule: Schedule::new(
            model,
            steps,
            Caps {
                max_connections: 64,
                max_rate: 10_000.0,
            },
        ),
        duration,
        think_time: Duration::ZERO,
        timeout: Duration::from_secs(10),
        headers: http::HeaderMap::new(),
        mix: RequestMix::target_get(),
        credentials: Credentials::default(),
        credentials_header: None,
        tls: TlsClientOptions::default(),
    }
}

fn start(spec: LoadSpec) -> LoadHandle {
    LoadEngine::new(spec).unwrap().start()
}

/// Polls `f` every 10 ms until it holds or `within` has passed; whether it held.
async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn all_reports(h: &mut LoadHandle) -> Vec<SecondReport> {
    let mut v = Vec::new();
    while let Some(r) = h.next_report().await {
        v.push(r);
    }
    v
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepped_closed_model_reports_each_second_with_its_workers() {
    let server = TestServer::start(Behaviour {
        delay: Duration::from_millis(2),
        ..Behaviour::default()
    });
    let steps = Steps {
        start: 2.0,
        step: 2.0,
        steps: 3,
        step_duration: Duration::from_secs(1),
    };
    let mut h = start(spec(
        &server.url(),
        Model::Closed,
        steps,
        Duration::from_secs(3),
    ));
    let reports = all_reports(&mut h).await;
    let summary = h.join().await.unwrap();
    let got: Vec<(u64, u32, u32)> = reports
        .iter()
        .map(|r| (r.second, r.step, r.workers))
        .collect();
    assert_eq!(got, [(0, 0, 2), (1, 1, 4), (2, 2, 6)], "{reports:#?}");
    for r in &reports {
        assert_eq!(r.length, Duration::from_secs(1));
        assert!(
            r.tally.status.s2xx > 0,
            "second {} answered nothing",
            r.second
        );
        assert_eq!(r.tally.errors.total(), 0, "{:?}", r.tally.errors);
    }
    // One keep-alive connection per worker, never more.
    assert_eq!(server.connections(), 6);
    // What the server answered is what the engine counted (requests cut off at the end are
    // answered by the server but not counted: at most one per worker).
    let answered = summary.total.status.s2xx;
    let at_server = server.requests();
    assert!(
        answered <= at_server && at_server <= answered + 6,
        "{answered} vs {at_server}"
    );
    assert_eq!(
        summary
            .steps
            .iter()
            .map(|s| (s.step, s.workers))
            .collect::<Vec<_>>(),
        [(0, 2), (1, 4), (2, 6)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updating_workers_changes_the_achieved_rate_within_a_second() {
    // 20 ms per request: each worker does at most 50 req/s, whatever the CPU.
    let server = TestServer::start(Behaviour {
        delay: Duration::from_millis(20),
        ..Behaviour::default()
    });
    let mut h = start(spec(
        &server.url(),
        Model::Closed,
        Steps::constant(2.0),
        Duration::from_secs(4),
    ));
    let first = h.next_report().await.unwrap();
    let asked = Instant::now();
    h.set_level(8.0);
    assert!(
        eventually(Duration::from_secs(1), || server.connections() == 8).await,
        "8 connections within 1 s of the update: {}",
        server.connections()
    );
    let mut rest = all_reports(&mut h).await;
    let _ = h.join().await.unwrap();
    assert!(asked.elapsed() > Duration::from_secs(1));
    // Seconds 2 and 3 run with 8 workers.
    let after: Vec<&SecondReport> = rest.iter().filter(|r| r.second >= 2).collect();
    assert!(!after.is_empty(), "{rest:#?}");
    for r in &after {
        assert_eq!(r.workers, 8);
        assert!(
            r.achieved_rps() >= 2.0 * first.achieved_rps(),
            "second {}: {:.0} req/s vs {:.0} with 2 workers",
            r.second,
            r.achieved_rps(),
            first.achieved_rps()
        );
    }
    rest.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updating_the_rate_of_an_open_model_takes_effect_within_a_second() {
    let server = TestServer::start(Behaviour::default());
    let mut h = start(spec(
        &server.url(),
        Model::Open,
        Steps::constant(100.0),
        Duration::from_secs(3),
    ));
    let first = h.next_report().await.unwrap();
    let before = server.requests();
    h.set_level(400.0);
    // Within one second of the update, the server has seen at least 300 more requests (400/s
    // asked; 100/s would give 100).
    assert!(
        eventually(Duration::from_secs(1), || server.requests() >= before + 300).await,
        "{} requests in the second after the update",
        server.requests() - before
    );
    let rest = all_reports(&mut h).await;
    let _ = h.join().await.unwrap();
    let last = rest.iter().find(|r| r.second == 2).unwrap();
    assert!((first.intended_rps() - 100.0).abs() <= 1.0, "{first:?}");
    assert!((last.intended_rps() - 400.0).abs() <= 4.0, "{last:?}");
    assert!(
        last.achieved_rps() >= 3.0 * first.achieved_rps(),
        "{last:?} vs {first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closing_after_each_response_is_reconnected_to_not_an_error() {
    let server = TestServer::start(Behaviour {
        close_each: true,
        ..Behaviour::default()
    });
    let mut h = start(spec(
        &server.url(),
        Model::Closed,
        Steps::constant(2.0),
        Duration::from_secs(1),
    ));
    let _ = all_reports(&mut h).await;
    let t = h.join().await.unwrap().total;
    assert!(t.status.s2xx > 10, "{t:?}");
    assert_eq!(t.errors.total(), 0, "{:?}", t.errors);
    // One connection per request (at most one cut off at the end per worker).
    assert!(
        server.connections().abs_diff(t.status.s2xx) <= 2 + 2,
        "{} connections",
        server.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_all_requests_within_a_second() {
    // Every request hangs for 30 s: stopping must not wait for them.
    let server = TestServer::start(Behaviour {
        delay: Duration::from_secs(30),
        ..Behaviour::default()
    });
    let h = start(spec(
        &server.url(),
        Model::Closed,
        Steps::constant(4.0),
        Duration::from_secs(60),
    ));
    assert!(eventually(Duration::from_secs(5), || server.requests() == 4).await);
    let stopped_at = Instant::now();
    h.stop();
    let summary = tokio::time::timeout(Duration::from_secs(1), h.join())
        .await
        .expect("the run ends within 1 s of stop")
        .unwrap();
    assert!(summary.stopped);
    assert!(stopped_at.elapsed() < Duration::from_secs(1));
    // No request after the stop: the count at the server stays where it was.
    let at_stop = server.requests();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.requests(), at_stop);
    assert_eq!(at_stop, 4);

    // The same with a fast target and an open model: requests stop, the count settles.
    let server = TestServer::start(Behaviour::default());
    let mut h = start(spec(
        &server.url(),
        Model::Open,
        Steps::constant(500.0),
        Duration::from_secs(60),
    ));
    let _ = h.next_report().await.unwrap();
    h.stop();
    let _ = tokio::time::timeout(Duration::from_secs(1), h.join())
        .await
        .expect("the open run ends within 1 s of stop")
        .unwrap();
    let at_stop = server.requests();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.requests(), at_stop, "requests after stop");

    // Dropping the handle stops the run too.
    let server = TestServer::start(Behaviour::default());
    let mut h = start(spec(
        &server.url(),
        Model::Closed,
        Steps::constant(2.0),
        Duration::from_secs(60),
    ));
    let _ = h.next_report().await.unwrap();
    drop(h);
    assert!(
        eventually(Duration::from_secs(1), || {
            server.state.open.load(Ordering::SeqCst) == 0
        })
        .await,
        "connections still open 1 s after the handle was dropped"
    );
    let settled = server.requests();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.requests(),
        settled,
        "requests after the handle was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_counts_as_rate_limited_not_success() {
    let server = TestServer::start(Behaviour {
        every_nth_429: 3,
        ..Behaviour::default()
    });
    let mut h = start(spec(
        &server.url(),
        Model::Closed,
        Steps::constant(2.0),
        Duration::from_secs(1),
    ));
    let _ = all_reports(&mut h).await;
    let t = h.join().await.unwrap().total;
    let (ok, limited) = (
        server.state.answered_200.load(Ordering::SeqCst),
        server.state.answered_429.load(Ordering::SeqCst),
    );
    assert!(t.status.rate_limited > 0, "{t:?}");
    assert_eq!(t.status.s4xx, 0, "429 is not an ordinary 4xx");
    // Each in-flight request cut off at the end was answered but not counted (≤ 2 workers).
    assert!(
        limited.abs_diff(t.status.rate_limited) <= 2,
        "{limited} vs {:?}",
        t.status
    );
    assert!(ok.abs_diff(t.status.s2xx) <= 2, "{ok} vs {:?}", t.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_latency_truth_corrected_shows_a_stall_uncorrected_does_not() {
    // 200 req/s for 4 s over at most 4 connections; at the 300th request (about 1.5 s in) the
    // server stalls everything for 300 ms. About 60 requests are due during the stall: they
    // wait (corrected latency up to 300 ms); only the ~4 on the wire saw it on their own
    // clock (uncorrected), well under 1 % of 800.
    let stall = Duration::from_millis(300);
    let server = TestServer::start(Behaviour {
        stall: Some((300, stall)),
        ..Behaviour::default()
    });
    let mut s = spec(
        &server.url(),
        Model::Open,
        Steps::constant(200.0),
        Duration::from_secs(4),
    );
    s.schedule = Schedule::new(
        Model::Open,
        Steps::constant(200.0),
        Caps {
            max_connections: 4,
            max_rate: 10_000.0,
        },
    );
    let mut h = start(s);
    let reports = all_reports(&mut h).await;
    let summary = h.join().await.unwrap();
    let t = &summary.total;
    assert_eq!(t.intended, 800, "the schedule, whatever the target did");
    assert!(t.responses() >= 780, "achieved {} of 800", t.responses());
    assert!(
        reports.iter().all(|r| r.workers <= 4),
        "the connection cap holds"
    );
    let (c, u) = (t.corrected.summary(), t.uncorrected.summary());
    let (c99, u99) = (c.p99.unwrap(), u.p99.unwrap());
    let stall_ms = stall.as_secs_f64() * 1000.0;
    eprintln!("corrected {c:?}\nuncorrected {u:?}");
    assert!(
        c99 >= 0.5 * stall_ms,
        "corrected p99 {c99:.1} ms shows the stall; {c:?}"
    );
    assert!(
        u99 <= 0.5 * c99,
        "uncorrected p99 {u99:.1} ms does not show it (corrected {c99:.1} ms); {u:?}"
    );
    // The requests on the wire during the stall did see it.
    assert!(u.max.unwrap() >= 0.8 * stall_ms, "{u:?}");
    // The stall is in the second it happened in, corrected.
    let worst = reports
        .iter()
        .max_by(|a, b| {
            let p = |r: &SecondReport| r.tally.corrected.summary().p99.unwrap_or(0.0);
            p(a).total_cmp(&p(b))
        })
        .unwrap();
    assert!(
        (1..=2).contains(&worst.second),
        "worst second {}",
        worst.second
    );
}

// === the command line ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_credentials_rotate_over_workers_and_never_appear_in_output() {
    let server = TestServer::start(Behaviour {
        delay: Duration::from_millis(5),
        ..Behaviour::default()
    });
    let dir = std::env::temp_dir().join(format!("meshlat-load-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys.txt");
    let text = "# test keys\nalice-key:alice-s3cret\nbob-key:bob-s3cret\ncarol-key:carol:s3cret\n";
    std::fs::write(&file, text).unwrap();
    let url = server.url();
    let args = [
        "load",
        "--workers",
        "4",
        "--duration",
        "2",
        "-vv",
        "--credentials",
    ];
    let file_arg = file.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(support::agent_bin())
            .args(args)
            .arg(&file_arg)
            .arg(&url)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // A line per second, then the summary.
    let seconds = stdout
        .lines()
        .filter(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            c.len() == 13 && c[0].parse::<u64>().is_ok() && c[2] == "4"
        })
        .count();
    assert_eq!(seconds, 2, "{stdout}");
    assert!(
        stdout.contains("requests in") && stdout.contains("corrected"),
        "{stdout}"
    );
    // Worker i sends credential i mod 3, on its own connection, every time.
    let creds = Credentials::parse("keys.txt", text).unwrap();
    let want: Vec<String> = (0..3)
        .map(|i| {
            creds
                .for_worker(i)
                .unwrap()
                .basic_auth()
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let seen = server.state.auth.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "one connection per worker: {seen:?}");
    let mut uses: BTreeMap<String, usize> = BTreeMap::new();
    for values in seen.values() {
        assert_eq!(
            values.len(),
            1,
            "a connection keeps its worker's credential: {values:?}"
        );
        *uses
            .entry(values.iter().next().unwrap().clone())
            .or_default() += 1;
    }
    assert_eq!(uses.keys().cloned().collect::<Vec<_>>(), {
        let mut w = want.clone();
        w.sort();
        w
    });
    assert_eq!(
        uses.values().copied().max(),
        Some(2),
        "4 workers over 3 keys: {uses:?}"
    );
    // Nothing of the file reaches stdout or the (trace-level) logs.
    let shown = format!("{stdout}\n{stderr}");
    for secret in ["alice", "bob", "carol", "s3cret"]
        .into_iter()
        .map(String::from)
        .chain(
            want.iter()
                .map(|w| w.trim_start_matches("Basic ").to_string()),
        )
    {
        assert!(
            !shown.contains(&secret),
            "{secret:?} appears in the output:\n{shown}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_bad_flags_exit_2_naming_the_flag() {
    for (args, want) in [
        (&["load", "udp://127.0.0.1:9"][..], "http:// or https://"),
        (
            &["load", "--steps", "3", "http://127.0.0.1:9/"][..],
            "--step-duration",
        ),
        (
            &[
                "load",
                "--rate",
                "10",
                "--workers",
                "2",
                "http://127.0.0.1:9/",
            ][..],
            "cannot be used with",
        ),
        (
            &[
                "load",
                "--credentials",
                "/nonexistent/keys",
                "http://127.0.0.1:9/",
            ][..],
            "--credentials",
        ),
        (
            &["load", "--header", "nocolon", "http://127.0.0.1:9/"][..],
            "--header",
        ),
    ] {
        let out = std::process::Command::new(support::agent_bin())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}
