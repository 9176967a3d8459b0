//! Command line of the `controller` binary (DESIGN §2). Every flag also reads a `MESHLAT_*`
//! environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use meshlat_guard::cli::{DeadlineArgs, DeadlineHelp};
use meshlat_runtime::LogFormat;

use crate::limits::{
    DEFAULT_AGENT_EXPIRY, DEFAULT_MAX_AGENTS, DEFAULT_MAX_AGENTS_PER_TOKEN, DEFAULT_MAX_JOBS,
    DEFAULT_MAX_LIVE_BYTES, DEFAULT_MAX_LIVE_PAIRS, DEFAULT_MAX_PEER_AGENTS, DEFAULT_MAX_PEER_JOBS,
    DEFAULT_MAX_PEER_SUMMARY_PAIRS, DEFAULT_MAX_SUMMARY_BYTES, DEFAULT_STOPPED_JOB_TTL,
};

/// Default `--controller` of the client commands and `--url` of `controller health`: this
/// host's controller.
pub const DEFAULT_URL: &str = "https://127.0.0.1:7400";

/// Default `--data-dir` (of `controller serve` and `controller health`).
pub const DEFAULT_DATA_DIR: &str = "./meshlat-controller";

const EXAMPLES: &str = "\
Examples:
  controller --region eu-west-1 --data-dir /var/lib/meshlat      # serve (first start: secrets in DATA_DIR/first-start-secrets)
  controller --region eu-west-1 --state-bucket meshlat-state-x    # also keep CA and state in S3
  agent --controller https://ctl:7400 --token mlt1.<ca>.<secret>  # join an agent
  export MESHLAT_CONTROLLER=https://ctl:7400 MESHLAT_CREDENTIAL=op-1234:secret MESHLAT_CA=/var/lib/meshlat/ca.pem
  controller job start job.json        # or '-' for stdin; JSON as in POST /api/v1/jobs
  controller job list
  controller job watch ID              # a load job's live stats per step and region
  controller agents
  controller credentials add ci-pipeline   # prints ci-pipeline:SECRET once; list, revoke NAME
  controller tokens create fleet-b --expires-in 86400   # prints a join token once; list, revoke NAME
  controller matrix --by region --protocol udp --watch
  curl --cacert /var/lib/meshlat/ca.pem -H \"Authorization: Bearer $MESHLAT_CREDENTIAL\" https://ctl:7401/api/v1/jobs";

/// meshlat controller: assigns probe jobs to the agents of one region.
#[derive(Debug, Parser)]
#[command(name = "controller", version, after_help = EXAMPLES, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `serve` when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Controller subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller for one region (the default).
    Serve(Box<ServeArgs>),
    /// Start, list, show, update or stop jobs.
    Job {
        /// What to do.
        #[command(subcommand)]
        action: JobAction,
    },
    /// Add, list or revoke named operator credentials.
    Credentials {
        /// What to do.
        #[command(subcommand)]
        action: CredentialAction,
    },
    /// Create, list or revoke named join tokens.
    Tokens {
        /// What to do.
        #[command(subcommand)]
        action: TokenAction,
    },
    /// List the agents known to the controller.
    Agents(ClientArgs),
    /// List the load-job scenarios of the controller's --scenarios directory (and invalid
    /// files with their line), or `show NAME` one of them.
    #[command(args_conflicts_with_subcommands = true)]
    Scenarios {
        /// `show NAME`; none: list.
        #[command(subcommand)]
        action: Option<ScenarioAction>,
        /// Connection (when listing).
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The latency matrix (src × dst: p50/p99 ms and loss) from the agents' rolling summaries.
    Matrix(MatrixArgs),
    /// Asks a controller's gRPC health service (grpc.health.v1) over TLS; exit 0 if serving,
    /// 1 if not (the container and ECS health check).
    Health(HealthArgs),
}

/// `controller health` flags.
#[derive(Clone, Debug, Args)]
pub struct HealthArgs {
    /// The controller's gRPC URL.
    #[arg(long, env = "MESHLAT_HEALTH_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// CA certificate to verify it with (default: DATA_DIR/ca.pem).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The controller's data directory (for its ca.pem).
    #[arg(long, env = "MESHLAT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Give up after this long.
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    pub timeout: f64,
}

/// `controller matrix` flags.
#[derive(Clone, Debug, Args)]
pub struct MatrixArgs {
    /// Connection.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Rows and columns: `agent` ids or `region`s.
    #[arg(long, default_value = "agent", value_parser = ["agent", "region"])]
    pub by: String,
    /// One protocol (udp, tcp, quic, http, https); default all.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Print a new matrix every few seconds until interrupted.
    #[arg(long)]
    pub watch: bool,
}

/// `controller job ...`.
#[derive(Debug, Subcommand)]
pub enum JobAction {
    /// Start a job from a JSON spec (FILE, or '-' for stdin).
    Start {
        /// Connection.
        #[command(flatten)]
        client: ClientArgs,
        /// JSON job spec.
        file: PathBuf,
    },
    /// List jobs.
    List {
        /// Connection.
        #[command(flatten)]
        client: ClientArgs,
        /// Include stopped jobs.
        #[arg(long)]
        all: bool,
    },
    /// Show one job.
    Show(JobIdArgs),
    /// Replace a job's spec (FILE, or '-' for stdin).
    Update {
        /// Connection.
        #[command(flatten)]
        client: ClientArgs,
        /// Job id.
        id: String,
        /// JSON job spec.
        file: PathBuf,
        /// Refuse if the stored version differs.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Stop a job.
    Stop(JobIdArgs),
    /// Live stats of a load job per step and source region (level, achieved rate, p50/p99,
    /// errors), updated every second in place on a terminal (changed rows as plain lines
    /// otherwise), until the job stops.
    Watch(JobIdArgs),
}

/// A connection and a job id: `controller job show` and `stop`.
#[derive(Clone, Debug, Args)]
pub struct JobIdArgs {
    /// Connection.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Job id.
    pub id: String,
}

/// A connection and a name: `controller credentials revoke` and `tokens revoke`.
#[derive(Clone, Debug, Args)]
pub struct NameArgs {
    /// Connection.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Name.
    pub name: String,
}

impl JobAction {
    /// The connection flags.
    pub fn client(&self) -> &ClientArgs {
        match self {
            JobAction::Start { client, .. }
            | JobAction::List { client, .. }
            | JobAction::Update { client, .. } => client,
            JobAction::Show(a) | JobAction::Stop(a) | JobAction::Watch(a) => &a.client,
        }
    }
}

/// `controller scenarios ...`.
#[derive(Debug, Subcommand)]
pub enum ScenarioAction {
    /// List scenarios and invalid files (the default).
    List(ClientArgs),
    /// One scenario: description, knobs with defaults, requests with weights.
    Show(NameArgs),
}

/// `controller credentials ...`.
#[derive(Debug, Subcommand)]
pub enum CredentialAction {
    /// Make a credential NAME and print NAME:SECRET (shown only now; the controller keeps a hash).
    Add {
        /// Connection.
        #[command(flatten)]
        client: ClientArgs,
        /// Name: 1-64 of A-Za-z0-9._-
        name: String,
    },
    /// List credential names and origins (never secrets).
    List(ClientArgs),
    /// Revoke credential NAME: its next call is refused (401 / Unauthenticated).
    Revoke(NameArgs),
}

/// `controller tokens ...`.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Make join token NAME and print it (`mlt1.CA.SECRET`; shown only now, the controller
    /// keeps a hash).
    Create {
        /// Connection.
        #[command(flatten)]
        client: ClientArgs,
        /// Name: 1-64 of A-Za-z0-9._- ("default" is the seeded or generated token).
        name: String,
        /// It admits new agents for this many seconds (default: until revoked).
        #[arg(long, value_name = "SECONDS")]
        expires_in: Option<u64>,
    },
    /// List join tokens (never secrets): created, expiry and revocation times.
    List(ClientArgs),
    /// Revoke join token NAME: it admits no new agent (agents holding their own certificate
    /// keep working).
    Revoke(NameArgs),
}

impl TokenAction {
    /// The connection flags.
    pub fn client(&self) -> &ClientArgs {
        match self {
            TokenAction::Create { client, .. } | TokenAction::List(client) => client,
            TokenAction::Revoke(a) => &a.client,
        }
    }
}

impl CredentialAction {
    /// The connection flags.
    pub fn client(&self) -> &ClientArgs {
        match self {
            CredentialAction::Add { client, .. } | CredentialAction::List(client) => client,
            CredentialAction::Revoke(a) => &a.client,
        }
    }
}

/// How client commands reach the controller.
#[derive(Clone, Debug, Args)]
pub struct ClientArgs {
    /// Controller gRPC URL (https://host:7400, or http:// with --plaintext controllers).
    #[arg(long, env = "MESHLAT_CONTROLLER", default_value = DEFAULT_URL)]
    pub controller: String,
    /// Operator credential NAME:SECRET (from DATA_DIR/first-start-secrets, a seed, or
    /// `controller credentials add`).
    #[arg(long, env = "MESHLAT_CREDENTIAL", hide_env_values = true)]
    pub credential: Option<String>,
    /// CA certificate of the controller (its DATA_DIR/ca.pem).
    #[arg(long, env = "MESHLAT_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// The controller's help text and defaults for the deadline flags (they cover its gRPC and REST
/// listeners).
#[derive(Clone, Debug)]
pub struct ControllerDeadlines;

impl DeadlineHelp for ControllerDeadlines {
    const HANDSHAKE: &'static str =
        "A TLS handshake (gRPC and REST) must finish within this, in seconds";
    const HANDSHAKE_DEFAULT: f64 = 10.0;
    const HEADER: &'static str = "A request head must arrive within this, in seconds (REST: every request, counted from \
        when the server starts waiting for it, so it also bounds idle keep-alive; gRPC: the \
        first request of a connection, counted from the end of the handshake)";
    const HEADER_DEFAULT: f64 = 10.0;
    const IDLE: &'static str = "A connection with no bytes moving either way for this long is closed, in seconds \
        (gRPC keepalive pings every 10 s and server-sent-event heartbeats every 15 s keep \
        healthy connections busy)";
    const IDLE_DEFAULT: f64 = 60.0;
}

/// `controller serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Region this controller serves.
    #[arg(long, env = "MESHLAT_REGION")]
    pub region: Option<String>,
    /// gRPC listen address.
    #[arg(long, env = "MESHLAT_LISTEN", default_value = "0.0.0.0:7400")]
    pub listen: String,
    /// REST/JSON listen address ('off' to disable).
    #[arg(long, env = "MESHLAT_REST_LISTEN", default_value = "0.0.0.0:7401")]
    pub rest_listen: String,
    /// Directory for the CA, credentials and the state store.
    #[arg(long, env = "MESHLAT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Directory of load-job scenarios (NAME.json files; README "Scenarios"), re-read every
    /// second: listed by `controller scenarios` and GET /api/v1/scenarios, named by load jobs.
    #[arg(long, env = "MESHLAT_SCENARIOS", value_name = "DIR")]
    pub scenarios: Option<PathBuf>,
    /// Serve gRPC and REST without TLS (local experiments only).
    #[arg(long, env = "MESHLAT_PLAINTEXT")]
    pub plaintext: bool,
    /// Extra DNS names or IPs for the server certificate (e.g. the load balancer's name).
    #[arg(long, env = "MESHLAT_TLS_SAN", value_name = "NAME")]
    #[arg(value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// Lease given with job sets: how long agents keep running them without the controller
    /// (then they degrade), in seconds.
    #[arg(long, env = "MESHLAT_LEASE", value_name = "SECONDS")]
    #[arg(default_value_t = 60.0)]
    pub lease: f64,
    /// How long an agent stays scheduled after it was last heard from, in seconds.
    #[arg(long, env = "MESHLAT_AGENT_TTL", value_name = "SECONDS")]
    #[arg(default_value_t = 120.0)]
    pub agent_ttl: f64,
    /// `--max-full-mesh`, `--max-jobs`, ... `--max-peer-jobs`.
    #[command(flatten)]
    pub limits: LimitsArgs,
    /// Validity of the client certificates issued to agents (their identities), in seconds
    /// (default 30 days); agents renew theirs once two thirds of it have passed.
    #[arg(long, env = "MESHLAT_AGENT_CERT_VALIDITY", value_name = "SECONDS")]
    #[arg(default_value_t = crate::identity::DEFAULT_VALIDITY.as_secs_f64())]
    pub agent_cert_validity: f64,
    /// Refuse agents that do not ask for their own identity (versions before per-agent
    /// identities); they are told to upgrade. Off by default, so such agents keep working
    /// during an upgrade; not with --plaintext.
    #[arg(long, env = "MESHLAT_REQUIRE_AGENT_IDENTITY")]
    pub require_agent_identity: bool,
    /// Join secret (hex, >= 32 digits) instead of a random one. Never printed; applied at every
    /// start: a value that differs from the stored hash replaces it (rotation).
    #[arg(long, env = "MESHLAT_JOIN_SECRET", hide_env_values = true)]
    pub join_secret: Option<String>,
    /// Operator credential NAME:SECRET instead of a random one. Never printed; applied at every
    /// start: a value that differs from the stored hash replaces the previous seeded one.
    #[arg(long, env = "MESHLAT_OPERATOR_CREDENTIAL", hide_env_values = true)]
    pub operator_credential: Option<String>,
    /// Also print the secrets generated on first start on stdout (they are always written to
    /// DATA_DIR/first-start-secrets, mode 0600). Seeded secrets are never printed.
    #[arg(long, env = "MESHLAT_PRINT_SECRETS")]
    pub print_secrets: bool,
    /// `--peer`, `--federation-secret*`, `--peer-ca*`, `--peer-ttl`.
    #[command(flatten)]
    pub federation: FederationArgs,
    /// `--grpc-max-conns*`, `--rest-max-conns*` and the deadlines.
    #[command(flatten)]
    pub conns: ConnArgs,
    /// `--rate-limit-*`.
    #[command(flatten)]
    pub rate_limit: RateLimitArgs,
    /// Agents that may relay (repeatable; the environment separates entries with ';'): an
    /// agent id, or a selector such as `region=eu-west-1` or `region=eu-west-1,az=eu-west-1a`.
    /// An agent is a relay only if it runs with --relay *and* matches an entry; without any
    /// entry no agent is a relay.
    #[arg(long = "relay-agent", env = "MESHLAT_RELAY_AGENTS")]
    #[arg(value_delimiter = ';', value_name = "ID|SELECTOR")]
    pub relay_agents: Vec<String>,
    /// Address ranges agents may advertise (repeatable, or comma separated; the environment
    /// separates entries with ','), e.g. `--agent-cidr 10.20.0.0/16`. Without it each address an
    /// agent advertises must be the address its connection comes from (set it when agents
    /// connect through a load balancer or NAT); with it each must lie in one of the ranges.
    #[arg(long = "agent-cidr", env = "MESHLAT_AGENT_CIDRS", value_name = "CIDR")]
    #[arg(value_delimiter = ',')]
    pub agent_cidrs: Vec<String>,
    /// Where load jobs may send requests (repeatable, or comma separated): a host name
    /// (`api.example.com`), `*.DOMAIN`, or an IP address or CIDR range (`10.0.0.0/16`). Every
    /// target of every load job this controller schedules, a federation peer's included, must
    /// be on it; without it no load job is accepted.
    #[arg(
        long = "load-allow",
        env = "MESHLAT_LOAD_ALLOW",
        value_name = "HOST|CIDR"
    )]
    #[arg(value_delimiter = ',')]
    pub load_allow: Vec<String>,
    /// `--state-bucket`, `--state-prefix`, `--state-region`, `--state-endpoint`.
    #[command(flatten)]
    pub state: StateStoreArgs,
    /// Jobs this controller keeps running, as a JSON array of job specs (the REST API's form),
    /// each with a unique name: at every start, a spec whose name no running job has is started,
    /// a running job of that name with another spec is updated, an equal one is left alone, so
    /// a deployment re-applying them never duplicates a job (infra/README.md: default jobs).
    #[arg(long, env = "MESHLAT_DEFAULT_JOBS", value_name = "JSON")]
    pub default_jobs: Option<String>,
    /// `--join-token-secret-arn`, `--ca-cert-secret-arn`, `--secrets-endpoint`.
    #[command(flatten)]
    pub publish: PublishArgs,
    /// `-v`, `--log-json`.
    #[command(flatten)]
    pub log: LogArgs,
    /// Serve /health, /metrics (Prometheus) and /memstats (JSON) on this port, without
    /// authentication (default: off).
    #[arg(long = "stats-port", env = "MESHLAT_STATS_PORT", value_name = "PORT")]
    pub stats_port: Option<u16>,
    /// Address the stats server binds (default: the IP of --listen).
    #[arg(long, env = "MESHLAT_STATS_LISTEN", value_name = "IP")]
    pub stats_listen: Option<std::net::IpAddr>,
}

/// The controller's caps (flags of `controller serve`; [`crate::limits`] has the defaults and
/// what happens at each cap).
#[derive(Clone, Debug, Args)]
pub struct LimitsArgs {
    /// Most agents a `full` strategy job may involve.
    #[arg(long, env = "MESHLAT_MAX_FULL_MESH", default_value_t = 200)]
    pub max_full_mesh: usize,
    /// Most jobs stored, stopped ones included until they expire (at most 2000); a new job
    /// beyond it is refused.
    #[arg(long, env = "MESHLAT_MAX_JOBS", default_value_t = DEFAULT_MAX_JOBS)]
    pub max_jobs: usize,
    /// How long a stopped job is kept (then deleted), in seconds (default 7 days).
    #[arg(long, env = "MESHLAT_STOPPED_JOB_TTL", value_name = "SECONDS")]
    #[arg(default_value_t = DEFAULT_STOPPED_JOB_TTL.as_secs_f64())]
    pub stopped_job_ttl: f64,
    /// Most agents known (connected or not); a new agent id beyond it is refused.
    #[arg(long, env = "MESHLAT_MAX_AGENTS", default_value_t = DEFAULT_MAX_AGENTS)]
    pub max_agents: usize,
    /// Most agents joined with one join token.
    #[arg(long, env = "MESHLAT_MAX_AGENTS_PER_TOKEN")]
    #[arg(default_value_t = DEFAULT_MAX_AGENTS_PER_TOKEN)]
    pub max_agents_per_token: usize,
    /// An agent not heard from this long is removed from the directory, the matrix and the
    /// saved state, in seconds (default 24 h; at least --agent-ttl).
    #[arg(long, env = "MESHLAT_AGENT_EXPIRY", value_name = "SECONDS")]
    #[arg(default_value_t = DEFAULT_AGENT_EXPIRY.as_secs_f64())]
    pub agent_expiry: f64,
    /// Most bytes of one agent's live summaries kept (pairs beyond are dropped).
    #[arg(long, env = "MESHLAT_MAX_SUMMARY_BYTES", default_value_t = DEFAULT_MAX_SUMMARY_BYTES)]
    pub max_summary_bytes: usize,
    /// Most summary pairs kept over all agents.
    #[arg(long, env = "MESHLAT_MAX_LIVE_PAIRS", default_value_t = DEFAULT_MAX_LIVE_PAIRS)]
    pub max_live_pairs: usize,
    /// Most bytes of summaries kept over all agents.
    #[arg(long, env = "MESHLAT_MAX_LIVE_BYTES", default_value_t = DEFAULT_MAX_LIVE_BYTES)]
    pub max_live_bytes: usize,
    /// Most agents accepted from one peer's directory per exchange.
    #[arg(long, env = "MESHLAT_MAX_PEER_AGENTS", default_value_t = DEFAULT_MAX_PEER_AGENTS)]
    pub max_peer_agents: usize,
    /// Most jobs accepted from one peer's directory per exchange.
    #[arg(long, env = "MESHLAT_MAX_PEER_JOBS", default_value_t = DEFAULT_MAX_PEER_JOBS)]
    pub max_peer_jobs: usize,
    /// Most live summary pairs of this controller's agents sent to a peer per exchange, and
    /// kept from one peer (they count against --max-live-pairs and --max-live-bytes too).
    #[arg(long, env = "MESHLAT_MAX_PEER_SUMMARY_PAIRS")]
    #[arg(default_value_t = DEFAULT_MAX_PEER_SUMMARY_PAIRS)]
    pub max_peer_summary_pairs: usize,
}

/// Federation with peer controllers (flags of `controller serve`).
#[derive(Clone, Debug, Args)]
pub struct FederationArgs {
    /// A peer controller's gRPC URL (repeatable): directories and jobs are exchanged with it.
    #[arg(long = "peer", env = "MESHLAT_PEERS", value_name = "URL")]
    #[arg(value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Secret shared by every controller of the federation, at least 32 bytes (required with
    /// --peer; serves FederationService when set). It also derives the mesh wire and grant keys.
    #[arg(long, env = "MESHLAT_FEDERATION_SECRET", hide_env_values = true)]
    pub federation_secret: Option<String>,
    /// Rotation, step 2 of 3 (README "Security"): the old federation secret, still accepted from
    /// peers, and its wire and grant keys still accepted by agents; never presented or signed
    /// with.
    #[arg(long, env = "MESHLAT_FEDERATION_SECRET_PREVIOUS")]
    #[arg(hide_env_values = true)]
    pub federation_secret_previous: Option<String>,
    /// Rotation, step 1 of 3 (README "Security"): the new federation secret, accepted from peers,
    /// and its wire and grant keys accepted by agents, before any controller presents or signs
    /// with it.
    #[arg(long, env = "MESHLAT_FEDERATION_SECRET_NEXT", hide_env_values = true)]
    pub federation_secret_next: Option<String>,
    /// CA certificate (PEM) of https:// peers, e.g. a peer's DATA_DIR/ca.pem (repeatable).
    #[arg(long, env = "MESHLAT_PEER_CA", value_name = "FILE")]
    #[arg(value_delimiter = ',')]
    pub peer_ca: Vec<PathBuf>,
    /// CA certificates (PEM text, one or more) of https:// peers, instead of or besides
    /// --peer-ca files: ECS injects it from a secret (infra/cloudformation/services.yaml). Only
    /// certificates are accepted (a private key in it is refused).
    #[arg(long, env = "MESHLAT_PEER_CA_PEM", value_name = "PEM")]
    #[arg(allow_hyphen_values = true)]
    pub peer_ca_pem: Option<String>,
    /// How long a peer's agents and jobs count after its last exchange.
    #[arg(long, env = "MESHLAT_PEER_TTL", value_name = "SECONDS")]
    #[arg(default_value_t = 30.0)]
    pub peer_ttl: f64,
}

/// Connection caps and deadlines of the gRPC and REST listeners (flags of `controller serve`).
#[derive(Clone, Debug, Args)]
pub struct ConnArgs {
    /// Most gRPC connections open at once (agents, operators, peers; handshaking ones
    /// included); over it a new connection is closed at once. Default: derived from the open
    /// files limit (`ulimit -n`) minus a reserve, so the process never runs out of descriptors.
    #[arg(long, env = "MESHLAT_GRPC_MAX_CONNS", value_name = "N")]
    pub grpc_max_conns: Option<usize>,
    /// Most gRPC connections open at once from one source address. High by default: a whole
    /// region's agents may reach the controller from one address (NAT, a load balancer).
    #[arg(long, env = "MESHLAT_GRPC_MAX_CONNS_PER_IP", value_name = "N")]
    #[arg(default_value_t = 20_000)]
    pub grpc_max_conns_per_ip: usize,
    /// Most REST connections open at once. Default: an eighth of the descriptor budget, at
    /// most 1024.
    #[arg(long, env = "MESHLAT_REST_MAX_CONNS", value_name = "N")]
    pub rest_max_conns: Option<usize>,
    /// Most REST connections open at once from one source address.
    #[arg(long, env = "MESHLAT_REST_MAX_CONNS_PER_IP", value_name = "N")]
    #[arg(default_value_t = 64)]
    pub rest_max_conns_per_ip: usize,
    /// `--handshake-timeout`, `--header-timeout`, `--idle-timeout`.
    #[command(flatten)]
    pub deadlines: DeadlineArgs<ControllerDeadlines>,
}

/// Operator API rate limits (flags of `controller serve`).
#[derive(Clone, Debug, Args)]
pub struct RateLimitArgs {
    /// Operator API (REST and gRPC OperatorService) requests per second allowed from one
    /// source address (token bucket; 0: no limit). Over it: 429 with Retry-After (REST) or
    /// RESOURCE_EXHAUSTED with retry-after metadata (gRPC).
    #[arg(long, env = "MESHLAT_RATE_LIMIT_PER_IP", value_name = "PER_SECOND")]
    #[arg(default_value_t = 50.0)]
    pub rate_limit_per_ip: f64,
    /// Operator API requests per second allowed with one credential (0: no limit).
    #[arg(long, env = "MESHLAT_RATE_LIMIT_PER_CREDENTIAL")]
    #[arg(default_value_t = 50.0, value_name = "PER_SECOND")]
    pub rate_limit_per_credential: f64,
    /// Requests a client may make at once after a quiet spell (the token buckets' size).
    #[arg(long, env = "MESHLAT_RATE_LIMIT_BURST", value_name = "N")]
    #[arg(default_value_t = 200)]
    pub rate_limit_burst: u32,
}

/// Where the state store keeps the controller's state in S3 (flags of `controller serve`).
#[derive(Clone, Debug, Args)]
pub struct StateStoreArgs {
    /// S3 bucket for the state store: the data directory (CA key included), jobs and agent ids
    /// are kept under --state-prefix and restored from it on start, so a controller on an empty
    /// disk (a replaced Fargate task) keeps its CA and join token. Without it: the data dir only.
    #[arg(long, env = "MESHLAT_STATE_BUCKET", value_name = "BUCKET")]
    pub state_bucket: Option<String>,
    /// Key prefix in --state-bucket, one per controller (default controller-state/REGION).
    #[arg(long, env = "MESHLAT_STATE_PREFIX", value_name = "PREFIX")]
    pub state_prefix: Option<String>,
    /// AWS region of --state-bucket (default: AWS_REGION or the profile's region).
    #[arg(long, env = "MESHLAT_STATE_REGION", value_name = "REGION")]
    pub state_region: Option<String>,
    /// S3 endpoint URL instead of AWS's (an emulator such as moto, or a VPC endpoint).
    #[arg(long, env = "MESHLAT_STATE_ENDPOINT", value_name = "URL")]
    pub state_endpoint: Option<String>,
}

/// Secrets Manager secrets the controller writes at start (flags of `controller serve`).
#[derive(Clone, Debug, Args)]
pub struct PublishArgs {
    /// Secrets Manager secret (full ARN) the controller writes its agents' join token into at
    /// start, when the secret does not hold it yet (needs --join-secret: the token is
    /// `mlt1.<CA sha256>.<join secret>`). Deployments start agents from that secret.
    #[arg(long, env = "MESHLAT_JOIN_TOKEN_SECRET_ARN", value_name = "ARN")]
    pub join_token_secret_arn: Option<String>,
    /// Secrets Manager secret (full ARN) the controller writes its CA *certificate* (ca.pem,
    /// never the key) into at start, when it does not hold it yet: where peer controllers'
    /// deployments read it for their --peer-ca-pem.
    #[arg(long, env = "MESHLAT_CA_CERT_SECRET_ARN", value_name = "ARN")]
    pub ca_cert_secret_arn: Option<String>,
    /// Secrets Manager endpoint URL instead of AWS's (an emulator such as moto).
    #[arg(long, env = "MESHLAT_SECRETS_ENDPOINT", value_name = "URL")]
    pub secrets_endpoint: Option<String>,
}

/// Logging flags of `controller serve`.
#[derive(Clone, Debug, Args)]
pub struct LogArgs {
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log as JSON lines on stderr.
    #[arg(long, env = "MESHLAT_LOG_JSON")]
    pub log_json: bool,
}

impl LogArgs {
    /// The log format `--log-json` asks for.
    pub fn format(&self) -> LogFormat {
        if self.log_json {
            LogFormat::Json
        } else {
            LogFormat::Text
        }
    }
}
