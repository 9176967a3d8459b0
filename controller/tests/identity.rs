//! Per-agent identity (issue 10 item 2; `controller/src/identity.rs`) on real `controller` and
//! `agent` processes on loopback: what the join token can and can no longer do.
//!
//! - [`an_impostor_with_the_join_token_cannot_take_a_victims_id_or_session`][]: the impostor
//!   (join token, the victim's id) and the takeover (its own certificate, the victim's id) are
//!   refused with a reason; the victim stays connected and keeps measuring; a restarted
//!   controller still knows the identity.
//! - [`a_restarted_agent_reconnects_with_its_certificate_not_the_token`][]: restarted with its
//!   state directory and a wrong join secret, the agent connects with its certificate.
//! - [`an_agent_older_than_identities_is_served_or_told_to_upgrade`][]: N−1 agents.
//! - [`an_agent_without_a_state_dir_rejoins_with_a_fresh_id`][]: `--no-state-dir`.
//! - [`revoked_and_expired_join_tokens_admit_no_new_agent_but_identities_keep_working`][]:
//!   `controller tokens` and `/api/v1/tokens`.
//!
//! Impostors are simulated over the real `AgentService.Connect` protocol, as
//! `controller/tests/attacks.rs` does.

mod support;
use support::{AgentBuilder, TestAgent, TestController as Ctl, eventually, tmp_dir};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use meshlat_proto::pb;
use prost::Message;
use tokio::sync::mpsc;

/// A controller of region `r1` on `data` with `extra` flags, its secrets printed
/// (`--print-secrets`) and saved beside `data` for restarts.
async fn start(data: &Path, extra: &[&str]) -> Result<Ctl> {
    start_on(data, "127.0.0.1:0", extra).await
}

/// [`start`] with gRPC on `listen` (a restart keeps its address).
async fn start_on(data: &Path, listen: &str, extra: &[&str]) -> Result<Ctl> {
    std::fs::create_dir_all(data)?;
    Ctl::builder(data)
        .listen(listen, "127.0.0.1:0")
        .print_secrets(data.with_extension("secrets"))
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .log_append(data.with_extension("log"))
        .announce_within(Duration::from_secs(30))
        .spawn()
        .await
}

/// What this suite needs of a controller beyond the harness's.
impl Ctl {
    fn pin(&self) -> Result<[u8; 32]> {
        Ok(meshlat_proto::token::JoinToken::parse(self.token())?.ca_sha256)
    }

    /// A gRPC channel to the controller, pinned like an agent's, presenting `cert` if given.
    async fn channel(
        &self,
        cert: Option<(&[u8], &rcgen::KeyPair)>,
    ) -> Result<tonic::transport::Channel> {
        use meshlat_agent::control::pin;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = match cert {
            None => pin::client_config(self.pin()?)?,
            Some((der, key)) => pin::client_config_with_cert(
                self.pin()?,
                vec![rustls::pki_types::CertificateDer::from(der.to_vec())],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?,
        };
        let (host, port) = self.grpc.rsplit_once(':').context("grpc addr")?;
        Ok(pin::connect(host.to_string(), port.parse()?, Some(Arc::new(cfg))).await?)
    }
}

/// A simulated agent session's Welcome (or the refusal).
async fn hello(
    ch: &tonic::transport::Channel,
    token: Option<&str>,
    hello: pb::Hello,
) -> Result<(pb::Welcome, mpsc::Sender<pb::AgentMessage>), tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(hello)),
    })
    .await
    .map_err(|_| tonic::Status::internal("send"))?;
    let auth: Option<tonic::metadata::MetadataValue<_>> =
        token.map(|t| format!("Bearer {t}").parse().expect("header value"));
    let mut client = pb::agent_service_client::AgentServiceClient::with_interceptor(
        ch.clone(),
        move |mut req: tonic::Request<()>| {
            if let Some(a) = &auth {
                req.metadata_mut().insert("authorization", a.clone());
            }
            Ok(req)
        },
    );
    let mut rx = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match rx.message().await? {
        Some(pb::ControllerMessage {
            msg: Some(pb::controller_message::Msg::Welcome(w)),
        }) => Ok((w, tx)),
        other => Err(tonic::Status::internal(format!("no Welcome: {other:?}"))),
    }
}

fn hello_as(id: &str, request: Vec<u8>) -> pb::Hello {
    pb::Hello {
        agent_id: id.into(),
        region: "r1".into(),
        az: "r1a".into(),
        endpoints: vec![pb::ResponderEndpoint {
            protocol: pb::Protocol::Udp as i32,
            address: "127.0.0.1:9".into(),
        }],
        version: "impostor".into(),
        certificate_request: request,
        ..Default::default()
    }
}

/// A key pair and a certificate request for it.
fn key_and_request() -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr");
    (key, csr.der().to_vec())
}

/// A real agent of region r1 joining `ctl` with `token`, its state in `state`, records in
/// `out`, run in the directory of `out`, its log appended to `log`.
fn agent_as(ctl: &Ctl, token: &str, state: &Path, out: &Path, log: &Path) -> AgentBuilder {
    TestAgent::builder(ctl, out, state)
        .token(token)
        .args(["--flush-interval", "0.2"])
        .current_dir(out.parent().unwrap_or(out))
        .env("NO_COLOR", "1")
        .log_append(log)
}

/// Records under `out` (every `.ndjson` line).
fn records(out: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![out.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ndjson") {
                n += std::fs::read_to_string(&p)
                    .unwrap_or_default()
                    .lines()
                    .count();
            }
        }
    }
    n
}

/// The agent's certificate once it has one (`agent-cert.pb` in its state directory).
async fn certificate(state: &Path) -> Result<pb::AgentCertificate> {
    eventually("the agent stores its certificate", 30, || async {
        std::fs::read(state.join("agent-cert.pb"))
            .ok()
            .and_then(|b| pb::AgentCertificate::decode(&b[..]).ok())
    })
    .await
}

/// Starts a TCP probe job from every agent to the controller's REST port (a listening socket).
async fn probe_job(ctl: &Ctl) -> Result<()> {
    let body = format!(
        r#"{{"name":"ident","protocols":["tcp"],"sources":["region=r1"],
        "targets":["tcp://{}"],"interval_ms":400,"timeout_ms":300}}"#,
        ctl.rest
    );
    let (st, v) = ctl.rest("POST", "/api/v1/jobs", &body, None).await?;
    anyhow::ensure!(st == 201, "start job: {st} {v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_with_the_join_token_cannot_take_a_victims_id_or_session() -> Result<()> {
    let root = tmp_dir("identity", "impostor");
    let ctl = start(&root.join("ctl"), &[]).await?;
    let (state, out) = (root.join("victim-state"), root.join("victim-out"));
    let victim = agent_as(&ctl, ctl.token(), &state, &out, &root.join("victim.log")).spawn()?;
    let cert = certificate(&state).await?;
    let id = cert.agent_id.clone();
    assert_eq!(
        std::fs::read_to_string(state.join("agent-id"))?.trim(),
        id,
        "the certificate names the agent's id"
    );
    probe_job(&ctl).await?;
    eventually("the victim measures", 30, || async {
        (records(&out) >= 3).then_some(())
    })
    .await?;

    // (b) of issue 10: the join token and the victim's id, with and without a request.
    let ch = ctl.channel(None).await?;
    for request in [Vec::new(), key_and_request().1] {
        let e = hello(&ch, Some(ctl.token()), hello_as(&id, request))
            .await
            .expect_err("impostor admitted");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(
            e.message().contains("has its own identity") && e.message().contains(&id),
            "{e}"
        );
    }
    // Takeover with a certificate of its own: the impostor joins as a new agent (it holds the
    // join token), then presents its certificate with the victim's id.
    let (key, request) = key_and_request();
    let (w, _keep) = hello(&ch, Some(ctl.token()), hello_as("", request))
        .await
        .expect("a new agent joins");
    let own = w.certificate.context("a certificate for the new agent")?;
    assert_ne!(own.agent_id, id);
    let ch2 = ctl.channel(Some((&own.der, &key))).await?;
    let e = hello(&ch2, None, hello_as(&id, Vec::new()))
        .await
        .expect_err("takeover admitted");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("speaks for agent"), "{e}");
    // The same certificate speaks for its own id, without the join token.
    let (w, _keep2) = hello(&ch2, None, hello_as(&own.agent_id, Vec::new()))
        .await
        .expect("its own id");
    assert_eq!(w.agent_id, own.agent_id);
    // A certificate from another CA (the victim's key, self-made) is refused.
    let forged = {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(rcgen::DnType::CommonName, id.as_str());
        p.self_signed(&key)?.der().to_vec()
    };
    let ch3 = ctl.channel(Some((&forged, &key))).await?;
    let e = hello(&ch3, None, hello_as(&id, Vec::new()))
        .await
        .expect_err("forged certificate admitted");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(
        e.message().contains("not issued by this controller's CA"),
        "{e}"
    );

    // The victim kept its session and its jobs.
    let before = records(&out);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = records(&out);
    println!("figures identity_impostor victim_records_before={before} after_2s={after}");
    assert!(after > before, "the victim stopped measuring");
    assert!(
        ctl.agents().await.contains(&(id.clone(), true)),
        "victim connected"
    );
    let log = victim.log_text();
    assert!(
        !log.contains("session lost"),
        "the victim's session was disturbed:\n{log}"
    );

    // A restarted controller still knows the identity.
    let (data, listen) = (ctl.data.clone(), ctl.grpc.clone());
    ctl.stop().await?;
    let ctl = start_on(&data, &listen, &[]).await?;
    eventually("the victim reconnects", 30, || async {
        ctl.agents()
            .await
            .contains(&(id.clone(), true))
            .then_some(())
    })
    .await?;
    let ch = ctl.channel(None).await?;
    let e = hello(&ch, Some(ctl.token()), hello_as(&id, Vec::new()))
        .await
        .expect_err("impostor admitted after a restart");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(
        ctl.log_text().contains("Agent session refused: identity."),
        "the refusal is logged"
    );
    victim.stop().await?;
    ctl.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_reconnects_with_its_certificate_not_the_token() -> Result<()> {
    let root = tmp_dir("identity", "restart");
    let ctl = start(&root.join("ctl"), &[]).await?;
    let (state, out) = (root.join("state"), root.join("out"));
    let log = root.join("agent.log");
    let agent = agent_as(&ctl, ctl.token(), &state, &out, &log).spawn()?;
    let cert = certificate(&state).await?;
    use std::os::unix::fs::PermissionsExt;
    for f in ["agent-key.pem", "agent-cert.pb"] {
        let mode = std::fs::metadata(state.join(f))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    agent.stop().await?;
    // The same pin, a join secret the controller never issued: only the certificate can
    // admit it.
    let wrong = format!("mlt1.{}.{}", hex::encode(ctl.pin()?), "0".repeat(48));
    let agent = agent_as(&ctl, &wrong, &state, &out, &log).spawn()?;
    eventually("the agent reconnects with its certificate", 30, || async {
        ctl.agents()
            .await
            .contains(&(cert.agent_id.clone(), true))
            .then_some(())
    })
    .await?;
    let text = agent.log_text();
    assert!(
        text.contains("identity=\"certificate\"") || text.contains("identity=certificate"),
        "{text}"
    );
    // Without its certificate the wrong token is refused: a fresh state directory.
    let other = agent_as(
        &ctl,
        &wrong,
        &root.join("state2"),
        &root.join("out2"),
        &root.join("agent2.log"),
    )
    .spawn()?;
    let refused = eventually("the wrong token is refused", 30, || async {
        let t = other.log_text();
        t.contains("refused").then_some(t)
    })
    .await?;
    assert!(refused.contains("join token"), "{refused}");
    other.stop().await?;
    agent.stop().await?;
    ctl.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_older_than_identities_is_served_or_told_to_upgrade() -> Result<()> {
    // The Hello exactly as an agent of 62cc385 sends it: no certificate_request (field 8 did
    // not exist; an absent proto3 field encodes to nothing), the join token as bearer.
    let old_hello = |id: &str| pb::Hello {
        version: "0.1.0".into(),
        ..hello_as(id, Vec::new())
    };
    let root = tmp_dir("identity", "old");
    // Default: served, without a certificate, and warned about.
    let ctl = start(&root.join("ctl"), &[]).await?;
    let ch = ctl.channel(None).await?;
    let (w, _s) = hello(&ch, Some(ctl.token()), old_hello(""))
        .await
        .expect("an old agent is served");
    assert!(w.certificate.is_none());
    assert!(!w.agent_id.is_empty());
    // Its reconnect with its id works too (it has no identity to prove).
    drop(_s);
    let (w2, _s2) = hello(&ch, Some(ctl.token()), old_hello(&w.agent_id))
        .await
        .expect("an old agent reconnects");
    assert_eq!(w2.agent_id, w.agent_id);
    assert!(ctl.log_text().contains("upgrade it"), "warned");
    ctl.stop().await?;
    // --require-agent-identity: refused, telling it to upgrade (an old agent logs the status
    // message: "Controller session lost." with `error=failed_precondition: ...`).
    let ctl = start(&root.join("ctl2"), &["--require-agent-identity"]).await?;
    let ch = ctl.channel(None).await?;
    let e = hello(&ch, Some(ctl.token()), old_hello(""))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(
        e.message().contains("upgrade the agent") && e.message().contains("0.1.0"),
        "{e}"
    );
    // A current agent is admitted.
    let (w, _s) = hello(&ch, Some(ctl.token()), hello_as("", key_and_request().1))
        .await
        .expect("a current agent");
    assert!(w.certificate.is_some());
    ctl.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_state_dir_rejoins_with_a_fresh_id() -> Result<()> {
    let root = tmp_dir("identity", "nostate");
    let ctl = start(&root.join("ctl"), &[]).await?;
    let cwd = root.join("agent-cwd");
    let out = cwd.join("out");
    std::fs::create_dir_all(&out)?;
    // Not passed: the agents run with --no-state-dir.
    let no_state = root.join("no-state");
    let connected = |ids: Vec<(String, bool)>| -> Vec<String> {
        ids.into_iter()
            .filter(|(_, c)| *c)
            .map(|(i, _)| i)
            .collect()
    };
    let a = agent_as(&ctl, ctl.token(), &no_state, &out, &root.join("a.log"))
        .no_state_dir()
        .spawn()?;
    let first = eventually("the agent joins", 30, || async {
        let c = connected(ctl.agents().await);
        (c.len() == 1).then(|| c[0].clone())
    })
    .await?;
    assert!(
        a.log_text().contains("Agent certificate received"),
        "it holds a certificate in memory:\n{}",
        a.log_text()
    );
    a.stop().await?;
    let b = agent_as(&ctl, ctl.token(), &no_state, &out, &root.join("b.log"))
        .no_state_dir()
        .spawn()?;
    let second = eventually("the restarted agent joins", 30, || async {
        let c = connected(ctl.agents().await);
        (c.len() == 1 && c[0] != first).then(|| c[0].clone())
    })
    .await?;
    assert_ne!(first, second, "a fresh id");
    // Nothing was written but records: no default state directory appeared.
    let entries: Vec<_> = std::fs::read_dir(&cwd)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, vec!["out".to_string()], "{entries:?}");
    b.stop().await?;
    ctl.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_join_tokens_admit_no_new_agent_but_identities_keep_working()
-> Result<()> {
    let root = tmp_dir("identity", "tokens");
    let ctl = start(&root.join("ctl"), &[]).await?;
    // A named token from the CLI, an expiring one over REST.
    let (ok, fleet, err) = ctl.cli(&["tokens", "create", "fleet"]).await?;
    assert!(ok, "{err}");
    let fleet = fleet.trim().to_string();
    assert!(fleet.starts_with("mlt1."), "{fleet}");
    let (st, short) = ctl
        .rest(
            "POST",
            "/api/v1/tokens",
            r#"{"name":"short","expires_in_s":1}"#,
            None,
        )
        .await?;
    assert_eq!(st, 201, "{short}");
    let short = short["token"].as_str().context("token")?.to_string();
    let (st, bad) = ctl
        .rest(
            "POST",
            "/api/v1/tokens",
            r#"{"name":"x","expires_in_s":0}"#,
            None,
        )
        .await?;
    assert_eq!(
        (st, bad["error"]["field"].as_str()),
        (400, Some("expires_in_s")),
        "{bad}"
    );

    // An agent joins with the fleet token and gets its identity.
    let (state, out) = (root.join("state"), root.join("out"));
    let log = root.join("agent.log");
    let agent = agent_as(&ctl, &fleet, &state, &out, &log).spawn()?;
    let cert = certificate(&state).await?;
    agent.stop().await?;

    let (st, v) = ctl.rest("DELETE", "/api/v1/tokens/fleet", "", None).await?;
    assert_eq!(st, 200, "{v}");
    assert!(v["revoked_unix"].as_u64().is_some(), "{v}");
    let ch = ctl.channel(None).await?;
    let e = hello(&ch, Some(&fleet), hello_as("", key_and_request().1))
        .await
        .expect_err("a revoked token admits nobody");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("\"fleet\" was revoked"), "{e}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = hello(&ch, Some(&short), hello_as("", key_and_request().1))
        .await
        .expect_err("an expired token admits nobody");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("\"short\" expired"), "{e}");
    // The default token still works.
    hello(&ch, Some(ctl.token()), hello_as("", key_and_request().1))
        .await
        .expect("the default token admits");

    // The agent that joined with the revoked token comes back with its certificate.
    let agent = agent_as(&ctl, &fleet, &state, &out, &log).spawn()?;
    eventually(
        "the agent reconnects after its token was revoked",
        30,
        || async {
            ctl.agents()
                .await
                .contains(&(cert.agent_id.clone(), true))
                .then_some(())
        },
    )
    .await?;
    let (ok, list, err) = ctl.cli(&["tokens", "list"]).await?;
    assert!(ok, "{err}");
    let fleet_line = list
        .lines()
        .find(|l| l.starts_with("fleet "))
        .context("fleet listed")?;
    assert!(
        !fleet_line.trim_end().ends_with('-'),
        "revoked time listed: {list}"
    );
    assert!(list.lines().any(|l| l.starts_with("default ")), "{list}");
    let log_text = ctl.log_text();
    assert!(
        log_text.contains("token.revoke") && log_text.contains("token.create"),
        "audited"
    );
    agent.stop().await?;
    ctl.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
