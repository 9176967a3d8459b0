//! The `agent` command line (DESIGN §2). Every flag also reads a `MESHLAT_*` environment
//! variable; `agent probe` also honours perftest's `PERFTEST_URL` and `REP_LOCATION`.
//!
//! These are raw values: [`crate::config`] turns them into validated configuration.
//!
//! Before parsing, [`imply_probe`] turns perftest's command line, `agent [FLAGS] URL ...`
//! (what `docker run IMAGE URL` runs, the image's entry point being `agent`), into
//! `agent probe [FLAGS] URL ...`.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use meshlat_guard::cli::{DeadlineArgs, DeadlineHelp};
use meshlat_proto::job::DEFAULT_PACKETS;

use crate::respond::{DEFAULT_LIMITS, tally};
use crate::sink::firehose::request::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_RECORD_BYTES};

/// Default UDP reflector port.
pub const DEFAULT_UDP_PORT: u16 = 7710;
/// Default TCP responder port.
pub const DEFAULT_TCP_PORT: u16 = 7711;
/// Default QUIC responder port.
pub const DEFAULT_QUIC_PORT: u16 = 7712;
/// Default HTTP responder port.
pub const DEFAULT_HTTP_PORT: u16 = 7780;
/// Default HTTPS responder port.
pub const DEFAULT_HTTPS_PORT: u16 = 7743;

const ROOT_EXAMPLES: &str = "\
Examples:
  agent serve                                   # answer probes on the default ports
  agent probe -n 5 https://example.com/         # perftest-style HTTP phase timings
  agent probe --format json udp://10.0.0.7:7710 # UDP trains, one JSON record per train
  agent -n 5 https://example.com/               # the same as 'agent probe' (as perftest's command line)
  agent load -c 64 -d 30 http://10.0.0.7:7780/ping  # HTTP load: a line per second, a summary
  agent --controller https://ctl:7400 --token T # run under a controller (container entry point)

Without a subcommand, arguments naming a target (proto://...) or using flags only 'probe' has
(-n, -d, --format, ...) mean 'probe'; anything else means 'run'.";

const SERVE_EXAMPLES: &str = "\
Examples:
  agent serve
  agent serve --listen 127.0.0.1 --udp-port 0 --http-port off -s 9100
  MESHLAT_KEY=s3cret agent serve --udp-port 7710
  agent serve --region eu-west-1 --out ./data --serve-interval 10   # server records to files

Ports: a number, 0 for any free port, or 'off'. Bound addresses are printed on stdout as
'listening <proto> <addr>' lines.";

const PROBE_EXAMPLES: &str = "\
Examples:
  agent probe -n 5 -d 2 https://www.example.com/
  agent probe -n 0 --format json --out ./data udp://10.0.0.7:7710 tcp://10.0.0.7:7711
  PERFTEST_URL=https://example.com REP_LOCATION='Paris,FR' agent probe -n 3
  agent probe --ca ./ca.pem https://internal.example:7743/ping

Exit status: 0 all measurements ok, 1 some failed, 2 usage or configuration error.";

const LOAD_EXAMPLES: &str = "\
Examples:
  agent load --workers 64 --duration 30 http://10.0.0.7:7780/ping
  agent load --workers 10 --step-workers 10 --steps 5 --step-duration 10 http://api.internal/
  agent load --rate 2000 --duration 60 --max-connections 128 http://10.0.0.7:7780/ping
  agent load --rate 100 --step-rate 100 --steps 4 --step-duration 15 \\
             --credentials ./keys.txt --header 'X-Env: staging' https://api.internal/v1/items

Closed model (--workers): each worker keeps one connection and sends its next request when the
last one is answered (after --think-time). Open model (--rate): requests are due at fixed
intended times whether or not earlier ones were answered; latency is measured from the intended
time (corrected for coordinated omission, as wrk2) and also from the actual send (uncorrected).
One line per second on stdout, then a summary per step and for the run. Exit status: 0 when
some request was answered, 1 when none was, 2 for bad flags.";

/// meshlat agent: answers probes, measures latency, writes one record per measurement.
#[derive(Debug, Parser)]
#[command(name = "agent", version, after_help = ROOT_EXAMPLES, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Subcommand; without one, `run` (connect to a controller), or `probe` when the
    /// arguments name a target (see [`imply_probe`]).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `run` when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `args` (the program name first) with `probe` inserted after the program name when they name
/// no subcommand but ask for a measurement, as perftest's `perftest [FLAGS] URL ...` did: when
/// the first positional argument contains `://` (a target; flags may come before it, as in
/// `agent -n 5 -d 1 https://example.com/`), or, with no positional argument at all, when a flag
/// only `probe` has is given (`agent -n 3` with `PERFTEST_URL` set). Otherwise `args` are
/// returned as they are: `agent`, `agent --controller URL ...` (a URL as a flag's value is not
/// a target) and every subcommand parse as before.
pub fn imply_probe(mut args: Vec<OsString>) -> Vec<OsString> {
    if probe_implied(args.get(1..).unwrap_or_default()) {
        args.insert(1, OsString::from("probe"));
    }
    args
}

/// Whether `args` (without the program name) mean `probe` (see [`imply_probe`]).
fn probe_implied(args: &[OsString]) -> bool {
    let root = Cli::command();
    let Some(probe) = root.find_subcommand("probe") else {
        return false;
    };
    // What a flag is in a command: unknown, or known and whether it takes a value.
    let lookup = |cmd: &clap::Command, long: Option<&str>, short: Option<char>| {
        cmd.get_arguments()
            .find(|a| match (long, short) {
                (Some(l), _) => a
                    .get_long_and_visible_aliases()
                    .is_some_and(|v| v.contains(&l)),
                (None, Some(c)) => a
                    .get_short_and_visible_aliases()
                    .is_some_and(|v| v.contains(&c)),
                (None, None) => false,
            })
            .map(|a| a.get_action().takes_values())
    };
    let mut probe_only_flag = false;
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        i += 1;
        let Some(arg) = arg.to_str() else {
            return false;
        };
        if arg == "--" {
            return args
                .get(i)
                .and_then(|a| a.to_str())
                .is_some_and(|a| a.contains("://"));
        }
        let (long, short, inline_value) = if let Some(l) = arg.strip_prefix("--") {
            (
                Some(l.split_once('=').map_or(l, |(n, _)| n)),
                None,
                l.contains('='),
            )
        } else if let Some(sh) = arg.strip_prefix('-').filter(|sh| !sh.is_empty()) {
            (None, sh.chars().next(), sh.chars().count() > 1)
        } else {
            // The first positional argument: a target, or a subcommand (or a mistake) for clap.
            return arg.contains("://");
        };
        let (takes_value, probe_only) = match lookup(&root, long, short) {
            Some(v) => (v, false),
            None => match lookup(probe, long, short) {
                Some(v) => (v, true),
                None => (false, false),
            },
        };
        probe_only_flag |= probe_only;
        if takes_value && !inline_value {
            i += 1;
        }
    }
    probe_only_flag
}

/// Agent subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer probes: UDP reflector, TCP, QUIC, HTTP and HTTPS responders.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// Measure the given targets and print the results (perftest's table by default).
    #[command(after_help = PROBE_EXAMPLES)]
    Probe(ProbeArgs),
    /// Connect to a controller and run the jobs it assigns (the default).
    Run(RunArgs),
    /// Put HTTP load on one URL (closed or open model, stepped) and print per-second results.
    #[command(after_help = LOAD_EXAMPLES)]
    Load(LoadArgs),
}

/// A responder port: a number, 0 (any), or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortArg(pub Option<u16>);

impl std::str::FromStr for PortArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "none" | "disabled" => Ok(PortArg(None)),
            n => n
                .parse::<u16>()
                .map(|p| PortArg(Some(p)))
                .map_err(|_| format!("{s:?} is not a port (0-65535) or 'off'")),
        }
    }
}

/// Responder flags, shared by `serve` and `run`.
#[derive(Clone, Debug, Args)]
pub struct ResponderArgs {
    /// Address every responder binds.
    #[arg(long, env = "MESHLAT_LISTEN", default_value = "0.0.0.0")]
    pub listen: IpAddr,
    /// UDP reflector port (0: any, off: disabled).
    #[arg(long, env = "MESHLAT_UDP_PORT", default_value_t = PortArg(Some(DEFAULT_UDP_PORT)), value_name = "P")]
    pub udp_port: PortArg,
    /// TCP responder port.
    #[arg(long, env = "MESHLAT_TCP_PORT", default_value_t = PortArg(Some(DEFAULT_TCP_PORT)), value_name = "P")]
    pub tcp_port: PortArg,
    /// QUIC responder port.
    #[arg(long, env = "MESHLAT_QUIC_PORT", default_value_t = PortArg(Some(DEFAULT_QUIC_PORT)), value_name = "P")]
    pub quic_port: PortArg,
    /// HTTP responder port.
    #[arg(long, env = "MESHLAT_HTTP_PORT", default_value_t = PortArg(Some(DEFAULT_HTTP_PORT)), value_name = "P")]
    pub http_port: PortArg,
    /// HTTPS responder port.
    #[arg(long, env = "MESHLAT_HTTPS_PORT", default_value_t = PortArg(Some(DEFAULT_HTTPS_PORT)), value_name = "P")]
    pub https_port: PortArg,
    /// Shared secret for UDP packet authentication; repeat to accept several (key rotation).
    /// Without one, `serve` uses a well-known default key (a warning is logged); under a
    /// controller the reflector accepts the controller's mesh key instead.
    #[arg(long = "key", env = "MESHLAT_KEY", value_name = "KEY")]
    #[arg(value_delimiter = ',')]
    pub keys: Vec<String>,
    /// Also relay: forward UDP relay-forward packets to the destination named in their grant
    /// and their replies back (off by default). Standalone, grants are verified with the
    /// Ed25519 public key derived from --key (so --key is required); under a controller, only
    /// with the public keys of the federation's controllers, and only if the controller's
    /// operator made this agent a relay (controller --relay-agent).
    #[arg(long, env = "MESHLAT_RELAY")]
    pub relay: bool,
    /// Seconds between server records (kind=serve / relay_serve: the UDP reflector's and
    /// relay's packets answered, relayed and dropped per source); the last interval is written
    /// at shutdown.
    #[arg(long, env = "MESHLAT_SERVE_INTERVAL", value_name = "SECONDS")]
    #[arg(default_value_t = tally::DEFAULT_INTERVAL.as_secs_f64())]
    pub serve_interval: f64,
    /// Distinct sources counted per interval in server records; further sources share one
    /// overflow row (src_addr null), so a spray of source addresses cannot grow memory.
    #[arg(long, env = "MESHLAT_SERVE_MAX_SOURCES", value_name = "N")]
    #[arg(default_value_t = tally::DEFAULT_MAX_SOURCES)]
    pub serve_max_sources: usize,
    /// PEM certificate chain for HTTPS and QUIC (default: a self-signed certificate).
    #[arg(long, env = "MESHLAT_TLS_CERT", value_name = "FILE")]
    #[arg(requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "MESHLAT_TLS_KEY", value_name = "FILE")]
    #[arg(requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl std::fmt::Display for PortArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{p}"),
            None => f.write_str("off"),
        }
    }
}

/// Flags common to commands that run long: logging and the stats endpoint.
#[derive(Clone, Debug, Args)]
pub struct CommonArgs {
    /// Serve /health, /metrics (Prometheus) and /memstats (JSON) on this port.
    #[arg(short = 's', long, env = "MESHLAT_STATS_PORT", value_name = "PORT")]
    pub stats_port: Option<u16>,
    /// Address the stats server binds (default: --listen where the command has it, else
    /// 0.0.0.0).
    #[arg(long, env = "MESHLAT_STATS_LISTEN", value_name = "IP")]
    pub stats_listen: Option<IpAddr>,
    /// Most pairs (destination and protocol) given their own RTT and loss series on /metrics;
    /// samples of further pairs are only counted (meshlat_metrics_pairs_over_cap_samples_total).
    /// 0: no per-pair series.
    #[arg(long, env = "MESHLAT_METRICS_MAX_PAIRS", value_name = "N")]
    #[arg(default_value_t = crate::metrics::DEFAULT_MAX_PAIRS)]
    pub metrics_max_pairs: usize,
    /// Most connections open at once on each TCP listener (HTTP, HTTPS, stats) and QUIC
    /// responder; over it a new connection is closed (QUIC: refused) at once.
    #[arg(long, env = "MESHLAT_MAX_CONNS", value_name = "N")]
    #[arg(default_value_t = DEFAULT_LIMITS.max_conns)]
    pub max_conns: usize,
    /// Most connections open at once from one source address, per listener.
    #[arg(long, env = "MESHLAT_MAX_CONNS_PER_IP", value_name = "N")]
    #[arg(default_value_t = DEFAULT_LIMITS.max_conns_per_ip)]
    pub max_conns_per_ip: usize,
    /// `--handshake-timeout`, `--header-timeout`, `--idle-timeout`.
    #[command(flatten)]
    pub deadlines: DeadlineArgs<AgentDeadlines>,
    /// Where the clock error bound comes from, which one-way delays need from both ends: auto
    /// (ECS task metadata on ECS, else adjtimex), adjtimex (the kernel's maxerror), chrony or chrony:PATH
    /// (`chronyc -c tracking`), ecs, none, or standin:OFFSET_MS:BOUND_MS (tests and demos: the
    /// wall clock read OFFSET_MS off, claiming BOUND_MS).
    #[arg(
        long,
        env = "MESHLAT_CLOCK_SOURCE",
        value_name = "SOURCE",
        default_value = "auto"
    )]
    pub clock_source: String,
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log format on stderr.
    #[arg(long, env = "MESHLAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The agent's help text and defaults for the deadline flags (they cover its HTTP, HTTPS, stats
/// and QUIC listeners).
#[derive(Clone, Debug)]
pub struct AgentDeadlines;

impl DeadlineHelp for AgentDeadlines {
    const HANDSHAKE: &'static str =
        "A TLS (HTTPS) or QUIC handshake must finish within this, in seconds";
    const HANDSHAKE_DEFAULT: f64 = DEFAULT_LIMITS.handshake_timeout.as_secs_f64();
    const HEADER: &'static str =
        "Every HTTP request head must arrive within this, in seconds (also bounds idle keep-alive)";
    const HEADER_DEFAULT: f64 = DEFAULT_LIMITS.header_timeout.as_secs_f64();
    const IDLE: &'static str = "A connection with no traffic for this long is closed, in seconds (QUIC: the responder's idle timeout)";
    const IDLE_DEFAULT: f64 = DEFAULT_LIMITS.idle_timeout.as_secs_f64();
}

/// Log output format (shared with the controller: [`meshlat_runtime::LogFormat`]).
pub use meshlat_runtime::LogFormat;

/// `agent serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Responders.
    #[command(flatten)]
    pub responders: ResponderArgs,
    /// Identity labels written in server records (region is the file layout's partition),
    /// their sinks (kind=serve / relay_serve; none: no server records), logging and stats.
    #[command(flatten)]
    pub records: RecordArgs,
}

/// What `serve` and `probe` take after their own flags: the identity labels of their records,
/// the sinks the records go to, logging and stats. (`run` takes the same groups, with its
/// responders among them.)
#[derive(Clone, Debug, Args)]
pub struct RecordArgs {
    /// Identity labels.
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Sinks.
    #[command(flatten)]
    pub sinks: SinkArgs,
    /// Logging and stats.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Output format of `agent probe` on stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// perftest's table (HTTP) and equivalent tables for other protocols.
    Table,
    /// One JSON record per line.
    Json,
}

/// Sink flags, shared by `probe` and `run`.
#[derive(Clone, Debug, Args)]
pub struct SinkArgs {
    /// Also write records under DIR in the Hive layout records/region=R/dt=D/hour=H/*.ndjson.
    #[arg(long, env = "MESHLAT_OUT", value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Rotate output files at this size (bytes).
    #[arg(long, env = "MESHLAT_FILE_MAX_BYTES", value_name = "BYTES")]
    #[arg(default_value_t = 64 * 1024 * 1024)]
    pub file_max_bytes: u64,
    /// Rotate output files at this age (seconds).
    #[arg(long, env = "MESHLAT_FILE_MAX_AGE", value_name = "SECONDS")]
    #[arg(default_value_t = 300.0)]
    pub file_max_age: f64,
    /// Flush output files at least this often (seconds): the most a crash can lose.
    #[arg(long, env = "MESHLAT_FLUSH_INTERVAL", value_name = "SECONDS")]
    #[arg(default_value_t = 1.0)]
    pub flush_interval: f64,
    /// Also write latency, loss and a heartbeat as CloudWatch Embedded Metric Format lines on
    /// stdout once a minute (ECS's awslogs driver turns them into CloudWatch metrics).
    #[arg(long, env = "MESHLAT_EMF")]
    pub emf: bool,
    /// CloudWatch namespace of the --emf metrics.
    #[arg(long, env = "MESHLAT_EMF_NAMESPACE", value_name = "NAME")]
    #[arg(default_value = crate::sink::emf::DEFAULT_NAMESPACE)]
    pub emf_namespace: String,
    /// Seconds per --emf interval (whole seconds; 60 gives one data point per agent and minute,
    /// which the shipped AgentDown alarm counts on).
    #[arg(long, env = "MESHLAT_EMF_INTERVAL", value_name = "SECONDS")]
    #[arg(default_value_t = 60.0, hide = true)]
    pub emf_interval: f64,
    /// Firehose sink (enabled by --firehose-stream). Boxed so `Command`'s variants stay
    /// similar in size (clippy::large_enum_variant).
    #[command(flatten)]
    pub firehose: Box<FirehoseArgs>,
}

/// Firehose sink flags (part of [`SinkArgs`]).
#[derive(Clone, Debug, Args)]
pub struct FirehoseArgs {
    /// Also send records to this Amazon Data Firehose stream (Direct PUT), alongside other sinks.
    #[arg(long, env = "MESHLAT_FIREHOSE_STREAM", value_name = "NAME")]
    pub firehose_stream: Option<String>,
    /// AWS region of the stream (default: AWS_REGION, the profile, or the ECS task's region).
    #[arg(long, env = "MESHLAT_FIREHOSE_REGION", value_name = "REGION")]
    pub firehose_region: Option<String>,
    /// Firehose endpoint URL (default: AWS's for the region; e.g. http://127.0.0.1:5000 for moto).
    #[arg(long, env = "MESHLAT_FIREHOSE_ENDPOINT", value_name = "URL")]
    pub firehose_endpoint: Option<String>,
    /// Send a Firehose request once its oldest record has waited this long (seconds).
    #[arg(long, env = "MESHLAT_FIREHOSE_BATCH_AGE", value_name = "SECONDS")]
    #[arg(default_value_t = 2.0)]
    pub firehose_batch_age: f64,
    /// Largest Firehose record (bytes; lines are packed up to it; Firehose maximum 1024000).
    #[arg(long, env = "MESHLAT_FIREHOSE_RECORD_MAX_BYTES", value_name = "BYTES")]
    #[arg(default_value_t = MAX_RECORD_BYTES)]
    pub firehose_record_max_bytes: usize,
    /// Most records per PutRecordBatch (Firehose maximum 500).
    #[arg(long, env = "MESHLAT_FIREHOSE_BATCH_MAX_RECORDS", value_name = "N")]
    #[arg(default_value_t = MAX_BATCH_RECORDS)]
    pub firehose_batch_max_records: usize,
    /// Largest PutRecordBatch (bytes; Firehose maximum 4194304).
    #[arg(long, env = "MESHLAT_FIREHOSE_BATCH_MAX_BYTES", value_name = "BYTES")]
    #[arg(default_value_t = MAX_BATCH_BYTES)]
    pub firehose_batch_max_bytes: usize,
    /// Most PutRecordBatch requests in flight at once.
    #[arg(long, env = "MESHLAT_FIREHOSE_MAX_IN_FLIGHT", value_name = "N")]
    #[arg(default_value_t = 4)]
    pub firehose_max_in_flight: usize,
    /// Batches held in memory before the oldest move to the spool (bytes).
    #[arg(long, env = "MESHLAT_FIREHOSE_MEMORY_MAX_BYTES", value_name = "BYTES")]
    #[arg(default_value_t = 64 * 1024 * 1024)]
    pub firehose_memory_max_bytes: u64,
    /// Directory for undelivered Firehose batches (a subdirectory per stream, mode 0700);
    /// replayed at start. Default: STATE_DIR/spool (`agent probe`: ./meshlat-agent-state/spool).
    #[arg(long, env = "MESHLAT_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Write every Firehose batch to the spool (fsynced) before sending it, so a SIGKILL loses at
    /// most --firehose-batch-age of records (one file write per request).
    #[arg(long, env = "MESHLAT_SPOOL_ALWAYS")]
    pub spool_always: bool,
    /// Spool size limit (bytes); beyond it the oldest batches are deleted and counted.
    #[arg(long, env = "MESHLAT_SPOOL_MAX_BYTES", value_name = "BYTES")]
    #[arg(default_value_t = 1024 * 1024 * 1024)]
    pub spool_max_bytes: u64,
}

/// Identity labels an agent puts in its records.
#[derive(Clone, Debug, Args)]
pub struct IdentityArgs {
    /// Region label (partition key of the record layout).
    #[arg(long, env = "MESHLAT_REGION")]
    pub region: Option<String>,
    /// Availability zone label.
    #[arg(long, env = "MESHLAT_AZ")]
    pub az: Option<String>,
    /// Location label (perftest's REP_LOCATION is read too).
    #[arg(long, env = "MESHLAT_LOCATION")]
    pub location: Option<String>,
}

/// `agent probe`.
#[derive(Clone, Debug, Args)]
pub struct ProbeArgs {
    /// Targets: http(s)://..., tcp://host:port, udp://host:port, quic://host:port.
    /// Default: $PERFTEST_URL (whitespace- or comma-separated).
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Samples per target (0: until Ctrl-C).
    #[arg(short = 'n', long, env = "MESHLAT_COUNT", default_value_t = 10)]
    pub count: u64,
    /// Seconds between the starts of consecutive samples of one target.
    #[arg(short = 'd', long, env = "MESHLAT_DELAY", value_name = "SECONDS")]
    #[arg(default_value_t = 1.0)]
    pub delay: f64,
    /// Per-sample timeout in seconds (default: 5, or -d if smaller).
    #[arg(long, env = "MESHLAT_TIMEOUT", value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Output format on stdout.
    #[arg(long, env = "MESHLAT_FORMAT", value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Packets per train (udp, quic).
    #[arg(long, env = "MESHLAT_PACKETS", default_value_t = DEFAULT_PACKETS, value_name = "N")]
    pub packets: u32,
    /// Milliseconds between the packets of one train (udp, quic; a job's `packet_interval_ms`),
    /// not between samples (that is -d/--delay). Default: 10.
    #[arg(long, env = "MESHLAT_PACKET_INTERVAL_MS", value_name = "MS")]
    pub packet_interval_ms: Option<f64>,
    /// Deprecated spelling of --packet-interval-ms: still accepted, with a warning.
    #[arg(long, env = "MESHLAT_INTERVAL_MS", value_name = "MS")]
    #[arg(hide = true, conflicts_with = "packet_interval_ms")]
    pub interval_ms: Option<f64>,
    /// UDP/QUIC datagram size in bytes (0: the minimum).
    #[arg(long, env = "MESHLAT_PAYLOAD_BYTES", value_name = "BYTES")]
    #[arg(default_value_t = 0)]
    pub payload_bytes: u32,
    /// Shared secret for UDP packet authentication (must match the reflector's).
    #[arg(long, env = "MESHLAT_KEY", value_name = "KEY")]
    pub key: Option<String>,
    /// Accept any certificate from https/quic targets.
    #[arg(long, env = "MESHLAT_TLS_SKIP_VERIFY")]
    pub tls_skip_verify: bool,
    /// Trust these PEM CA certificates for https/quic targets (instead of the web roots).
    #[arg(long, env = "MESHLAT_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Identity labels, sinks, logging and stats.
    #[command(flatten)]
    pub records: RecordArgs,
}

/// `agent load`: HTTP load on one URL ([`crate::load`]).
#[derive(Clone, Debug, Args)]
pub struct LoadArgs {
    /// The URL to load: http://… or https://… (GET, or --scenario's requests; redirects not
    /// followed).
    #[arg(value_name = "URL")]
    pub url: String,
    /// Closed model: workers (one connection each) at the first step. Default model: closed,
    /// 10 workers.
    #[arg(short = 'c', long, value_name = "N", conflicts_with = "rate")]
    pub workers: Option<u32>,
    /// Open model: arrival rate at the first step, requests per second.
    #[arg(short = 'R', long, value_name = "REQ_PER_S")]
    pub rate: Option<f64>,
    /// Workers added at each following step (negative: removed).
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        conflicts_with = "rate"
    )]
    pub step_workers: Option<i64>,
    /// Rate added at each following step, requests per second (negative: removed).
    #[arg(long, value_name = "REQ_PER_S", allow_negative_numbers = true)]
    #[arg(conflicts_with = "workers", requires = "rate")]
    pub step_rate: Option<f64>,
    /// Number of steps, the first included (1: a constant load).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub steps: u32,
    /// Seconds per step (needed with --steps above 1).
    #[arg(long, value_name = "SECONDS")]
    pub step_duration: Option<f64>,
    /// Seconds the run lasts (default: --steps × --step-duration with steps, else 10); after the
    /// last step its level holds.
    #[arg(short = 'd', long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Closed model: seconds a worker waits after a response before its next request.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 0.0,
        conflicts_with = "rate"
    )]
    pub think_time: f64,
    /// Per-agent cap on connections (workers), enforced whatever --workers or the steps say.
    #[arg(long, value_name = "N", default_value_t = crate::load::config::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: u32,
    /// Per-agent cap on the arrival rate, requests per second, enforced whatever --rate or the
    /// steps say.
    #[arg(long, value_name = "REQ_PER_S", default_value_t = crate::load::config::DEFAULT_MAX_RATE)]
    pub max_rate: f64,
    /// Seconds one request may take, connecting included; longer counts as a timeout error.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::load::config::DEFAULT_TIMEOUT.as_secs_f64())]
    pub timeout: f64,
    /// An extra request header, 'Name: value'; repeatable.
    #[arg(short = 'H', long = "header", value_name = "'NAME: VALUE'")]
    pub headers: Vec<String>,
    /// Send the weighted request mix of this scenario file (the controller's scenario format,
    /// NAME.json; README "Scenarios") instead of a GET of URL: its paths are appended to URL's
    /// origin.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Set a knob of --scenario over its default, NAME=VALUE; repeatable (ERROR_WEIGHT=0 turns
    /// off a request weighted by it).
    #[arg(long = "knob", value_name = "NAME=VALUE", requires = "scenario")]
    pub knobs: Vec<String>,
    /// File of key:secret lines; sent as HTTP basic auth, spread round-robin over workers
    /// (connections). Never logged or printed.
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Accept any certificate from an https target.
    #[arg(long)]
    pub tls_skip_verify: bool,
    /// Trust these PEM CA certificates for an https target (instead of the web roots).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log format on stderr.
    #[arg(long, env = "MESHLAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `agent run` (the default): connect to a controller.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Controller URL, e.g. `https://controller.eu-west-1.internal:7400`.
    #[arg(long, env = "MESHLAT_CONTROLLER")]
    pub controller: Option<String>,
    /// Join token printed by the controller.
    #[arg(long, env = "MESHLAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Address other agents should probe (default: detected; on ECS the task IP).
    #[arg(long, env = "MESHLAT_ADVERTISE")]
    pub advertise: Option<String>,
    /// Advertise HOST:PORT instead for one protocol (udp, tcp, quic, http, https), e.g. behind
    /// NAT, a load balancer or a link emulator; repeatable.
    #[arg(long = "advertise-endpoint", env = "MESHLAT_ADVERTISE_ENDPOINTS")]
    #[arg(value_delimiter = ',', value_name = "PROTO=HOST:PORT")]
    pub advertise_endpoints: Vec<String>,
    /// Directory (mode 0700) keeping this agent's id, last job set (0600: it holds wire and grant
    /// keys) and, by default, the Firehose spool across restarts. Default: MESHLAT_STATE_DIR
    /// if set (the container image sets /var/lib/meshlat/state), else ./meshlat-agent-state.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Keep nothing on disk: the agent id, its key and certificate and the last job set live in
    /// memory for the life of the process, so a restarted agent joins as a new agent (for hosts
    /// whose disk does not outlive the process). With --firehose-stream, give --spool-dir.
    /// MESHLAT_STATE_DIR is then ignored (the image's default does not stand in the way).
    #[arg(long, env = "MESHLAT_NO_STATE_DIR", conflicts_with = "state_dir")]
    pub no_state_dir: bool,
    /// Most connections all load jobs open from this agent together, whatever they ask (shared
    /// evenly by the runs, job × target; a job's max_connections of 0 means its share; closed
    /// model: most workers). [1 to 100000]
    #[arg(long, env = "MESHLAT_LOAD_MAX_CONNECTIONS", value_name = "N")]
    #[arg(default_value_t = crate::load::job::DEFAULT_LOAD_MAX_CONNECTIONS)]
    pub load_max_connections: u32,
    /// Highest rate of all load jobs from this agent together, req/s, whatever they ask (shared
    /// evenly by the runs; a job's max_rate of 0 means its share). [above 0, up to 10000000]
    #[arg(long, env = "MESHLAT_LOAD_MAX_RATE", value_name = "REQ_PER_S")]
    #[arg(default_value_t = crate::load::job::DEFAULT_LOAD_MAX_RATE)]
    pub load_max_rate: f64,
    /// Secrets Manager endpoint for load jobs' `credentials.secrets_manager_arn` (moto,
    /// LocalStack, a VPC endpoint); default AWS's, in the secret's region.
    #[arg(long, env = "MESHLAT_LOAD_SECRETS_ENDPOINT", value_name = "URL")]
    pub load_secrets_endpoint: Option<String>,
    /// Identity labels (region and AZ default to AWS_REGION and the ECS task metadata).
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Responders.
    #[command(flatten)]
    pub responders: ResponderArgs,
    /// Sinks (records go to stdout as JSON when neither --out nor --firehose-stream is given).
    #[command(flatten)]
    pub sinks: SinkArgs,
    /// Logging and stats.
    #[command(flatten)]
    pub common: CommonArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `agent ARGS` after [`imply_probe`], without the program name.
    fn rewritten(args: &[&str]) -> Vec<String> {
        let argv = std::iter::once("agent")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        imply_probe(argv)
            .into_iter()
            .skip(1)
            .map(|a| a.into_string().expect("utf-8"))
            .collect()
    }

    #[test]
    fn a_target_without_a_subcommand_means_probe() {
        for args in [
            &["http://127.0.0.1:7780/", "-n", "2"][..],
            &["https://example.com/", "udp://10.0.0.7:7710"],
            &["tcp://10.0.0.7:7711"],
            &["quic://10.0.0.7:7712", "--format", "json"],
            &["relay://10.0.0.5:7710/10.0.0.7:7710"],
            // perftest's `docker run IMAGE -n 5 -d 1 URL`: flags first.
            &["-n", "5", "-d", "1", "https://www.example.com/"],
            &["-v", "-n=5", "--delay=1", "https://www.example.com/"],
            &["-n5", "--format", "json", "https://www.example.com/"],
            // Flags `run` has too, their values skipped.
            &[
                "-s",
                "9100",
                "--location",
                "lab",
                "https://www.example.com/",
            ],
            // A scheme probe refuses still means probe, which names what is wrong.
            &["ftp://example.com/"],
            // Only probe's flags (targets from PERFTEST_URL).
            &["-n", "3"],
            &["--format", "json", "-d", "2"],
            &["--", "https://example.com/"],
        ] {
            let want: Vec<String> = std::iter::once("probe")
                .chain(args.iter().copied())
                .map(String::from)
                .collect();
            assert_eq!(rewritten(args), want, "{args:?}");
        }
    }

    #[test]
    fn subcommands_and_run_flags_stay_as_they_are() {
        for args in [
            &[][..],
            &["--controller", "https://ctl:7400", "--token", "T"],
            &["--controller=https://ctl:7400"],
            &["--firehose-endpoint", "http://127.0.0.1:5000", "-v"],
            &["-s", "9100", "--region", "eu-west-1"],
            &["serve"],
            &["serve", "--listen", "127.0.0.1"],
            &["probe", "https://example.com/"],
            &["probe", "-n", "3"],
            &["run", "--controller", "https://ctl:7400"],
            &["help"],
            &["--help"],
            &["-V"],
            // Not a target: clap reports it (an unknown subcommand), as before.
            &["example.com"],
        ] {
            let want: Vec<String> = args.iter().copied().map(String::from).collect();
            assert_eq!(rewritten(args), want, "{args:?}");
        }
    }

    #[test]
    fn the_rewritten_arguments_parse_as_probe() {
        let argv = [
            "agent",
            "https://a.example/",
            "-n",
            "2",
            "tcp://10.0.0.7:7711",
        ]
        .map(OsString::from)
        .to_vec();
        let cli = Cli::try_parse_from(imply_probe(argv)).expect("parses");
        let Some(Command::Probe(p)) = cli.command else {
            panic!("not probe: {:?}", cli.command);
        };
        assert_eq!(
            (p.targets, p.count),
            (
                vec![
                    String::from("https://a.example/"),
                    String::from("tcp://10.0.0.7:7711")
                ],
                2
            )
        );
        let argv = ["agent", "--controller", "https://ctl:7400"]
            .map(OsString::from)
            .to_vec();
        let cli = Cli::try_parse_from(imply_probe(argv)).expect("parses");
        assert!(cli.command.is_none(), "run, as before: {:?}", cli.command);
        assert_eq!(cli.run.controller.as_deref(), Some("https://ctl:7400"));
    }
}
