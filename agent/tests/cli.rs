//! The `agent` command line as users meet it: real processes, exit statuses, messages, records.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message

mod support;

use meshlat_proto::record::ErrorKind;
use support::*;

#[test]
fn help_has_examples() {
    for args in [&["--help"][..], &["probe", "--help"], &["serve", "--help"]] {
        let out = std::process::Command::new(agent_bin())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Examples:"),
            "{args:?} help lacks examples:\n{text}"
        );
    }
}

#[test]
fn bad_input_exits_2_naming_what_is_wrong() {
    for (args, want) in [
        (&["ftp://example.com"][..], "unknown scheme"),
        (&["example.com"][..], "missing scheme"),
        (&["--packets", "0", "udp://127.0.0.1:9"][..], "--packets"),
        (
            &["-n", "lots", "udp://127.0.0.1:9"][..],
            "invalid value 'lots'",
        ),
        (
            &["--ca", "/nonexistent/ca.pem", "https://localhost/"][..],
            "--ca /nonexistent/ca.pem",
        ),
        (
            &["--bogus", "udp://127.0.0.1:9"][..],
            "unexpected argument '--bogus'",
        ),
        (
            &["-d", "1", "--timeout", "3", "udp://127.0.0.1:9"][..],
            "must not exceed -d",
        ),
        (&[][..], "no targets"),
    ] {
        let out = std::process::Command::new(agent_bin())
            .arg("probe")
            .args(args)
            .env_remove("PERFTEST_URL")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(want),
            "{args:?}: stderr {err:?} lacks {want:?}"
        );
    }
    let out = std::process::Command::new(agent_bin())
        .args(["serve", "--udp-port", "99999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a port"));
}

#[test]
fn failures_are_records_with_error_kinds_and_exit_1() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcp = format!("tcp://127.0.0.1:{port}");
    let http = format!("http://127.0.0.1:{port}/");
    let (out, recs) = probe_json(&[
        "-n",
        "2",
        "-d",
        "0.1",
        "--timeout",
        "0.1",
        &tcp,
        &http,
        "tcp://nonexistent.invalid:80",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(recs.len(), 6, "every sample, failed or not, is a record");
    for r in &recs {
        assert!(!r.ok);
        let want = if r.target.contains("nonexistent") {
            ErrorKind::Dns
        } else {
            ErrorKind::Refused
        };
        assert_eq!(r.error_kind, Some(want), "{r:?}");
        assert!(r.error.as_deref().is_some_and(|e| !e.is_empty()));
    }
}

#[test]
fn perftest_env_and_table_output() {
    let srv = serve_only(&[Proto::Http], &[]);
    let url = format!("http://{}/bytes/1234", srv.http.unwrap());
    let out = std::process::Command::new(agent_bin())
        .args(["probe", "-n", "3", "-d", "0.1"])
        .env("PERFTEST_URL", &url)
        .env("REP_LOCATION", "Test Lab,XX")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "# timestamp\tDNS\tTCP\tTLS\tFirst\tLastB\tTotal\tHTTP\tSize\tFrom_Location\tRemote_Addr\tproto://uri"
    );
    for (i, l) in lines[1..4].iter().enumerate() {
        let cols: Vec<&str> = l.split('\t').collect();
        assert_eq!(cols.len(), 12, "{l}");
        assert!(cols[0].starts_with(&format!("{} ", i + 1)), "{l}");
        assert_eq!(
            (cols[7], cols[8], cols[9], cols[10], cols[11]),
            ("200", "1234", "Test Lab,XX", "127.0.0.1", url.as_str())
        );
    }
    assert_eq!(lines[4], "");
    assert!(
        lines[5].starts_with("Recorded 3 samples in ") && lines[5].ends_with("s, average values:"),
        "{}",
        lines[5]
    );
    assert_eq!(lines[6], lines[0]);
    let avg: Vec<&str> = lines[7].split('\t').collect();
    assert!(
        avg[0].starts_with("3 ") && avg[0].ends_with("s   "),
        "{:?}",
        avg[0]
    );
    assert_eq!(
        (avg[7], avg[8], avg[9], avg[10]),
        ("", "1234", "", url.as_str())
    );
}

#[test]
fn out_dir_gets_hive_layout_records_and_stats_endpoint_works() {
    let srv = serve_only(&[Proto::Tcp], &["-s", "0"]);
    let stats = srv.stats.unwrap();
    let health = http_get(stats, "/health");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    let mem = http_get(stats, "/memstats");
    assert!(mem.contains("\"rss_bytes\":"), "{mem}");
    let dir = tmpdir("out");
    let target = format!("tcp://{}", srv.tcp.unwrap());
    let recs = probe_ok(&[
        "-n",
        "3",
        "-d",
        "0.05",
        "--region",
        "eu-test-1",
        "--out",
        dir.to_str().unwrap(),
        &target,
    ]);
    assert_eq!(recs.len(), 3);
    assert!(
        recs.iter()
            .all(|r| r.ok && r.tcp_ms.is_some_and(|v| v > 0.0) && r.rtt_ms == r.tcp_ms)
    );
    // On Linux the handshake time is the kernel's (TCP_INFO), and the record says so.
    #[cfg(target_os = "linux")]
    assert!(
        recs.iter()
            .all(|r| r.tcp_time_source == Some(meshlat_proto::record::TcpTimeSource::Kernel)),
        "{recs:?}"
    );
    let region_dir = dir.join("records").join("region=eu-test-1");
    let mut on_disk = Vec::new();
    for dt in std::fs::read_dir(&region_dir).unwrap() {
        let dt = dt.unwrap().path();
        assert!(dt.file_name().unwrap().to_string_lossy().starts_with("dt="));
        for hour in std::fs::read_dir(&dt).unwrap() {
            let hour = hour.unwrap().path();
            assert!(
                hour.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("hour=")
            );
            for f in std::fs::read_dir(&hour).unwrap() {
                let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
                on_disk.extend(text.lines().map(|l| {
                    serde_json::from_str::<meshlat_proto::record::Record>(l)
                        .unwrap()
                        .record_id
                }));
            }
        }
    }
    let mut sent: Vec<_> = recs.iter().map(|r| r.record_id.clone()).collect();
    sent.sort();
    on_disk.sort();
    assert_eq!(
        on_disk, sent,
        "the file sink holds exactly the records printed"
    );
    let metrics = http_get(stats, "/metrics");
    assert!(
        metrics
            .contains("meshlat_responder_requests_total{protocol=\"tcp\",result=\"answered\"} 3"),
        "{metrics}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf
}

#[test]
fn https_with_private_ca_via_flag_and_clear_tls_failure_without() {
    let dir = tmpdir("pki");
    let (ca_pem, cert_pem, key_pem) = private_pki(&dir);
    let srv = serve_only(
        &[Proto::Https],
        &[
            "--tls-cert",
            cert_pem.to_str().unwrap(),
            "--tls-key",
            key_pem.to_str().unwrap(),
        ],
    );
    let url = format!("https://localhost:{}/ping", srv.https.unwrap().port());
    let recs = probe_ok(&[
        "-n",
        "2",
        "-d",
        "0.1",
        "--ca",
        ca_pem.to_str().unwrap(),
        &url,
    ]);
    for r in &recs {
        assert!(
            r.ok && r.tls_ms.is_some_and(|t| t > 0.0)
                && r.tls_version.is_some()
                && r.http_status == Some(200),
            "{r:?}"
        );
    }
    let (out, recs) = probe_json(&["-n", "1", &url]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(recs[0].error_kind, Some(ErrorKind::Tls));
    let detail = recs[0].error.clone().unwrap_or_default();
    assert!(
        detail.contains("certificate"),
        "TLS failure should say why: {detail}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_advertise_endpoint_exits_2_naming_it() {
    let token = "mlt1.0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.0123456789abcdef0123456789abcdef";
    for (flag, env, want) in [
        (
            Some("udp=10.0.0.7"),
            None,
            "--advertise-endpoint \"udp=10.0.0.7\"",
        ),
        (
            None,
            Some("udp=10.0.0.7:7710,udp=10.0.0.8:7710"),
            "udp is given more than once",
        ),
    ] {
        let mut cmd = std::process::Command::new(agent_bin());
        cmd.args(["--controller", "https://127.0.0.1:9", "--token", token]);
        cmd.args(["--state-dir", "/nonexistent/state"]);
        if let Some(f) = flag {
            cmd.args(["--advertise-endpoint", f]);
        }
        if let Some(e) = env {
            cmd.env("MESHLAT_ADVERTISE_ENDPOINTS", e);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag:?} {env:?}: {err}");
        assert!(err.contains(want), "stderr {err:?} lacks {want:?}");
    }
}

/// The container image sets MESHLAT_STATE_DIR; `--no-state-dir` (the ECS task definitions'
/// flag) overrides it instead of conflicting: the configuration is then checked as having no
/// state directory (here: a Firehose stream without --spool-dir is refused for that reason).
#[test]
fn no_state_dir_overrides_the_images_state_dir_variable() {
    let out = std::process::Command::new(agent_bin())
        .args([
            "run",
            "--no-state-dir",
            "--controller",
            "https://127.0.0.1:9",
            "--token",
            "mlt1.0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.0123456789abcdef0123456789abcdef",
            "--firehose-stream",
            "s",
        ])
        .env("MESHLAT_STATE_DIR", "/var/lib/meshlat/state")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("cannot be used with"), "{err}");
    assert!(
        err.contains("--no-state-dir with --firehose-stream"),
        "{err}"
    );
}

/// The packet gap within a train is `--packet-interval-ms`; the old `--interval-ms` still
/// measures, hidden from `--help`, with a warning naming the new flag.
#[test]
fn packet_interval_ms_and_its_deprecated_alias() {
    let server = serve(&[]);
    let target = format!("udp://{}", server.udp.unwrap());
    for (flag, warned) in [("--packet-interval-ms", false), ("--interval-ms", true)] {
        let out = std::process::Command::new(agent_bin())
            .args(["probe", "--format", "json", "-n", "1", "--packets", "3"])
            .args([flag, "1", &target])
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{flag}: {err}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().count(),
            1,
            "{flag}"
        );
        assert_eq!(
            err.contains(
                "--interval-ms (MESHLAT_INTERVAL_MS) is deprecated: use --packet-interval-ms"
            ),
            warned,
            "{flag}: {err}"
        );
    }
    let help = std::process::Command::new(agent_bin())
        .args(["probe", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--packet-interval-ms"), "{help}");
    assert!(!help.contains("--interval-ms"), "{help}");
}

/// `agent ARGS` (no subcommand) with no location label in its environment.
fn agent_unlabelled(args: &[&str]) -> std::process::Output {
    std::process::Command::new(agent_bin())
        .args(args)
        .env_remove("PERFTEST_URL")
        .env_remove("REP_LOCATION")
        .env_remove("MESHLAT_LOCATION")
        .output()
        .unwrap()
}

#[test]
fn a_url_alone_means_probe_and_from_location_is_the_local_address() {
    // What `docker run IMAGE URL -n 2` runs: the image's entry point is the agent.
    let srv = serve_only(&[Proto::Http], &[]);
    let url = format!("http://{}/ping", srv.http.unwrap());
    let out = agent_unlabelled(&[&url, "-n", "2", "-d", "0.1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("# timestamp\tDNS\t"), "{text}");
    for l in &lines[1..3] {
        let cols: Vec<&str> = l.split('\t').collect();
        // No --location, no REP_LOCATION: From_Location is the address the probe came from.
        assert_eq!(
            (cols[7], cols[9], cols[10], cols[11]),
            ("200", "127.0.0.1", "127.0.0.1", url.as_str()),
            "{l}"
        );
    }
    assert!(lines[4].starts_with("Recorded 2 samples in "), "{text}");
    // The records say so too; a label wins over the address. perftest's flags-first form.
    let out = agent_unlabelled(&["-n", "1", "--format", "json", "--location", "lab", &url]);
    assert!(out.status.success());
    let r: meshlat_proto::record::Record =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(r.src_location.as_deref(), Some("lab"));
    let out = agent_unlabelled(&["-n", "1", "--format", "json", &url]);
    let r: meshlat_proto::record::Record =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(r.src_location.as_deref(), Some("127.0.0.1"));
}

#[test]
fn several_targets_print_one_labelled_block_each() {
    let srv = serve_only(&[Proto::Http, Proto::Tcp], &[]);
    let http = format!("http://{}/bytes/10", srv.http.unwrap());
    let tcp = format!("tcp://{}", srv.tcp.unwrap());
    let out = agent_unlabelled(&["probe", "-n", "3", "-d", "0.1", &http, &tcp]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two blocks, each opened by its label, holding only its own target's lines.
    let blocks: Vec<&str> = text.split("# target ").filter(|b| !b.is_empty()).collect();
    assert_eq!(blocks.len(), 2, "{text}");
    let mut seen = Vec::new();
    for block in blocks {
        let target = block.lines().next().unwrap();
        seen.push(target.to_string());
        let rows: Vec<&str> = block
            .lines()
            .skip(1)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("Recorded"))
            .collect();
        // Three numbered samples then the averages, all naming this target.
        assert_eq!(rows.len(), 4, "{block}");
        for (i, l) in rows.iter().enumerate() {
            assert!(l.ends_with(&format!("\t{target}")), "{l}");
            if i < 3 {
                assert!(l.starts_with(&format!("{} ", i + 1)), "{l}");
            }
        }
        assert!(block.contains("\nRecorded 3 samples in "), "{block}");
    }
    seen.sort();
    let mut want = vec![http, tcp];
    want.sort();
    assert_eq!(seen, want);
}
