//! `meshlat-linkemu`: UDP/TCP forwarder, and packet-level link between network namespaces, with
//! per-direction delay and seeded loss (no netem here).
//! The logic is in the library, [`meshlat_linkemu`].

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use meshlat_linkemu::{LinkEmu, RouteSpec};

/// Forwards UDP/TCP, or every IPv4 packet between two network namespaces, with per-direction
/// one-way delay and seeded loss, standing in for netem.
///
/// Prints one line per route on stdout once bound (`route I PROTO LISTEN -> UPSTREAM`), runs until
/// SIGINT/SIGTERM, then prints per-route counts on stderr (`summary route I ...`).
#[derive(Debug, Parser)]
#[command(
    name = "meshlat-linkemu",
    version,
    after_help = "ROUTE SYNTAX:
  PROTO:LISTEN=UPSTREAM[,KEY=VALUE]...
    PROTO         udp | tcp | tun
    LISTEN        ip:port to listen on (port 0: any; the bound port is printed)
    UPSTREAM      ip:port to forward to (IPv6 as [addr]:port)
  tun:NS_A/IPV4_A=NS_B/IPV4_B[,KEY=VALUE]...
                  a packet-level link: a TUN device in each existing network namespace
                  (ip netns add), addressed IPV4_A and IPV4_B as point-to-point peers; every
                  IPv4 packet between them (TCP handshakes too) gets the delay and loss.
                  Needs root. fwd is NS_A -> NS_B.
    fwd=DUR       one-way delay client -> upstream (5ms, 250us, 1.5ms, 0; default 0)
    ret=DUR       one-way delay upstream -> client (default 0)
    loss_fwd=PCT  loss client -> upstream, percent 0..=100 (udp and tun; default 0)
    loss_ret=PCT  loss upstream -> client, percent 0..=100 (udp and tun; default 0)
    seed=N        seed of the loss decisions (u64; default 0)
    idle=DUR      release a UDP client idle this long, or a TCP connection of which one
                  direction ended and the other is idle this long (default 30s)
    warm=DUR      tun only: write a warm-up packet (a TCP RST to port 0, which the far
                  kernel drops unanswered) this long before each held packet that answers
                  the end it goes to (that end sent within fwd + ret + 1ms), so an answer
                  finds the receiving kernel as warm as on an undelayed path (default 0:
                  off; at most 10ms; 100us is what the accuracy bench uses)

EXAMPLES:
  meshlat-linkemu --route udp:127.0.0.1:0=127.0.0.1:862,fwd=5ms,ret=15ms
  meshlat-linkemu --route udp:0.0.0.0:7862=10.0.0.2:862,fwd=20ms,ret=20ms,loss_fwd=2.5,seed=42 \\
                  --route tcp:0.0.0.0:7443=10.0.0.2:443,fwd=20ms,ret=20ms --log /tmp/emu.ndjson
  meshlat-linkemu --routes-file routes.txt
  ip netns add a; ip netns add b
  meshlat-linkemu --route tun:a/10.77.1.1=b/10.77.1.2,fwd=10ms,ret=5ms,warm=100us

Bad route specs exit with status 2 and name the bad part."
)]
struct Cli {
    /// A route (repeatable); see ROUTE SYNTAX below.
    #[arg(long = "route", value_name = "SPEC")]
    routes: Vec<RouteSpec>,
    /// A file with one route spec per line (blank lines and `#` comments ignored).
    #[arg(long, value_name = "FILE")]
    routes_file: Option<PathBuf>,
    /// Write one JSON line per packet (and a summary per route at exit) to FILE.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    // First, while this is the only thread (see its docs: keeps RSS flat over long runs).
    meshlat_linkemu::limit_malloc_arenas();
    let cli = Cli::parse();
    let mut routes = cli.routes;
    if let Some(path) = &cli.routes_file {
        match read_routes(path) {
            Ok(more) => routes.extend(more),
            Err(e) => {
                eprintln!("meshlat-linkemu: {e:#}");
                std::process::exit(2);
            }
        }
    }
    if routes.is_empty() {
        eprintln!(
            "meshlat-linkemu: no routes; give --route SPEC or --routes-file FILE (see --help)"
        );
        std::process::exit(2);
    }
    let emu = LinkEmu::start_with_log(routes, cli.log.as_deref()).context("starting routes")?;
    let mut out = std::io::stdout().lock();
    for line in emu.describe() {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    drop(out);

    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(wait_for_signal())?;
    let summary = emu.summary();
    emu.shutdown();
    for line in summary {
        eprintln!("{line}");
    }
    Ok(())
}

fn read_routes(path: &std::path::Path) -> anyhow::Result<Vec<RouteSpec>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    text.lines()
        .enumerate()
        .map(|(n, l)| (n, l.split('#').next().unwrap_or_default().trim()))
        .filter(|(_, l)| !l.is_empty())
        .map(|(n, l)| {
            l.parse::<RouteSpec>()
                .with_context(|| format!("{}:{}", path.display(), n + 1))
        })
        .collect()
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
