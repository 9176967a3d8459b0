//! Identity on ECS (Fargate): region from `AWS_REGION`, availability zone and the task's private
//! IPv4 address from the task metadata endpoint (`$ECS_CONTAINER_METADATA_URI_V4/task`).
//!
//! The JSON has `AvailabilityZone` at the top and the address under
//! `Containers[0].Networks[0].IPv4Addresses[0]` (task metadata) or `Networks[0].IPv4Addresses[0]`
//! (container metadata); both are accepted.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// What the metadata tells us.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EcsIdentity {
    /// Availability zone.
    pub az: Option<String>,
    /// The task's private IPv4 address.
    pub ipv4: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Network {
    #[serde(default, rename = "IPv4Addresses")]
    ipv4_addresses: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Container {
    #[serde(default)]
    networks: Vec<Network>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Metadata {
    #[serde(default)]
    availability_zone: Option<String>,
    #[serde(default)]
    networks: Vec<Network>,
    #[serde(default)]
    containers: Vec<Container>,
}

/// Parses task (or container) metadata JSON.
///
/// # Errors
///
/// The JSON error, if it is not metadata-shaped JSON.
pub fn parse(json: &[u8]) -> Result<EcsIdentity, serde_json::Error> {
    let m: Metadata = serde_json::from_slice(json)?;
    let first_ip = |n: &[Network]| n.first().and_then(|n| n.ipv4_addresses.first().cloned());
    let ipv4 =
        first_ip(&m.networks).or_else(|| m.containers.iter().find_map(|c| first_ip(&c.networks)));
    Ok(EcsIdentity {
        az: m.availability_zone.filter(|s| !s.is_empty()),
        ipv4,
    })
}

/// Fetches and parses `$uri/task` (plain HTTP, link-local). `None` on any failure (logged).
pub async fn fetch(uri: &str) -> Option<EcsIdentity> {
    let url = format!("{}/task", uri.trim_end_matches('/'));
    let res = tokio::time::timeout(Duration::from_secs(3), get(&url)).await;
    match res {
        Ok(Ok(body)) => match parse(&body) {
            Ok(id) => Some(id),
            Err(error) => {
                tracing::warn!(message = "ECS task metadata unreadable.", %url, %error);
                None
            }
        },
        Ok(Err(error)) => {
            tracing::warn!(message = "ECS task metadata unavailable.", %url, %error);
            None
        }
        Err(_) => {
            tracing::warn!(message = "ECS task metadata timed out.", %url);
            None
        }
    }
}

async fn get(url: &str) -> Result<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>> {
    let uri: http::Uri = url.parse()?;
    let host = uri.host().ok_or("no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(uri.clone())
        .header(http::header::HOST, host)
        .body(Empty::<bytes::Bytes>::new())?;
    let res = send.send_request(req).await?;
    if !res.status().is_success() {
        return Err(format!("HTTP {}", res.status()).into());
    }
    Ok(res.into_body().collect().await?.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = r#"{
      "Cluster": "arn:aws:ecs:eu-west-1:111122223333:cluster/meshlat",
      "TaskARN": "arn:aws:ecs:eu-west-1:111122223333:task/meshlat/abc",
      "Family": "meshlat-agent", "Revision": "3",
      "AvailabilityZone": "eu-west-1b",
      "LaunchType": "FARGATE",
      "Containers": [{
        "Name": "agent",
        "Networks": [{"NetworkMode": "awsvpc", "IPv4Addresses": ["10.0.1.23"],
                      "PrivateDNSName": "ip-10-0-1-23.eu-west-1.compute.internal"}]
      }]
    }"#;

    #[test]
    fn task_and_container_metadata() {
        assert_eq!(
            parse(TASK.as_bytes()).expect("parses"),
            EcsIdentity {
                az: Some("eu-west-1b".into()),
                ipv4: Some("10.0.1.23".into())
            }
        );
        let container = r#"{"Name":"agent","Networks":[{"IPv4Addresses":["10.9.8.7"]}]}"#;
        assert_eq!(
            parse(container.as_bytes()).expect("parses").ipv4.as_deref(),
            Some("10.9.8.7")
        );
        assert!(parse(b"[1,2]").is_err());
    }
}
