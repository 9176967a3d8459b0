//! Client commands (`controller job ...`, `controller agents`): the operator API over gRPC.

use std::io::Read;
use std::path::Path;

use meshlat_proto::pb;
use meshlat_proto::pb::operator_service_client::OperatorServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::cli::{ClientArgs, JobAction};
use crate::json;

/// A client command failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Bad flags.
    #[error("{0}")]
    Usage(String),
    /// Reading a spec or CA file.
    #[error("{path}: {source}")]
    File {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A spec does not parse.
    #[error("job spec: {0}")]
    Spec(#[from] json::JsonError),
    /// Connecting failed.
    #[error("cannot connect to the controller: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The controller refused.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    let f = |source| ClientError::File {
        path: path.display().to_string(),
        source,
    };
    if path.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b).map_err(f)?;
        Ok(b)
    } else {
        std::fs::read(path).map_err(f)
    }
}

async fn connect(
    a: &ClientArgs,
) -> Result<
    OperatorServiceClient<
        tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
    >,
    ClientError,
> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cred = a.credential.clone().ok_or_else(|| {
        ClientError::Usage("--credential KEY:SECRET (or MESHLAT_CREDENTIAL) is required".into())
    })?;
    let value: tonic::metadata::MetadataValue<_> = format!("Bearer {cred}")
        .parse()
        .map_err(|_| ClientError::Usage("--credential: not a valid header value".into()))?;
    let mut ep = Endpoint::from_shared(a.controller.clone())
        .map_err(|_| ClientError::Usage(format!("--controller {:?}: not a URL", a.controller)))?;
    if a.controller.starts_with("https://") {
        let ca = a.ca.as_ref().ok_or_else(|| {
            ClientError::Usage(
                "--ca FILE (or MESHLAT_CA) is required for https: the controller's DATA_DIR/ca.pem"
                    .into(),
            )
        })?;
        let pem = read(ca)?;
        ep = ep.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    }
    let ch = ep.connect().await?;
    Ok(OperatorServiceClient::with_interceptor(
        ch,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", value.clone());
            Ok(req)
        },
    ))
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Runs `controller job ...`; returns what to print.
///
/// # Errors
///
/// [`ClientError`].
pub async fn job(action: &JobAction) -> Result<String, ClientError> {
    let mut c = connect(action.client()).await?;
    let job = match action {
        JobAction::Start { file, .. } => {
            let spec = json::parse_spec(&read(file)?)?;
            c.start_job(pb::StartJobRequest { spec: Some(spec) })
                .await?
        }
        JobAction::List { all, .. } => {
            let jobs = c
                .list_jobs(pb::ListJobsRequest {
                    include_stopped: *all,
                })
                .await?
                .into_inner()
                .jobs;
            let mut out = format!(
                "{:<38} {:>7} {:<8} {:<20} PROTOCOLS\n",
                "ID", "VERSION", "STATE", "NAME"
            );
            for j in jobs {
                let spec = j.spec.unwrap_or_default();
                let protos: Vec<&str> = spec
                    .protocols
                    .iter()
                    .map(|p| json::protocol_name(*p))
                    .collect();
                out.push_str(&format!(
                    "{:<38} {:>7} {:<8} {:<20} {}\n",
                    j.id,
                    j.version,
                    if j.stopped { "stopped" } else { "running" },
                    spec.name,
                    protos.join(",")
                ));
            }
            return Ok(out);
        }
        JobAction::Show { id, .. } => c.get_job(pb::GetJobRequest { id: id.clone() }).await?,
        JobAction::Update {
            id,
            file,
            expected_version,
            ..
        } => {
            let spec = json::parse_spec(&read(file)?)?;
            c.update_job(pb::UpdateJobRequest {
                id: id.clone(),
                spec: Some(spec),
                expected_version: expected_version.unwrap_or(0),
            })
            .await?
        }
        JobAction::Stop { id, .. } => c.stop_job(pb::StopJobRequest { id: id.clone() }).await?,
    };
    Ok(pretty(&json::job_to_value(&job.into_inner())))
}

/// Runs `controller agents`; returns what to print.
///
/// # Errors
///
/// [`ClientError`].
pub async fn agents(a: &ClientArgs) -> Result<String, ClientError> {
    let mut c = connect(a).await?;
    let agents = c
        .list_agents(pb::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    let mut out = format!(
        "{:<38} {:<16} {:<16} {:<10} {:<9} VERSION\n",
        "ID", "REGION", "AZ", "LOCATION", "CONNECTED"
    );
    for a in agents {
        out.push_str(&format!(
            "{:<38} {:<16} {:<16} {:<10} {:<9} {}\n",
            a.id, a.region, a.az, a.location, a.connected, a.version
        ));
    }
    Ok(out)
}
