//! The fleet manager double: a NATS client over mutual TLS, subscribed to
//! `device_actions.*.register`. It checks every registration (headers, body
//! fields, the certificate it carries against the one the provisioning
//! double issued) and answers on `device_results.<id>.register` as scripted.
//!
//! Who sent it: nats-server lets only the connection whose verified client
//! certificate was issued for id X publish to `device_actions.X.register`
//! (see `nats_server`). On top of that the double asks the server's
//! monitoring endpoint who subscribes to `device_results.X.register`: the
//! device must have subscribed before it published, and as the user mapped
//! from the certificate issued for X (`CN=<prefix>X<suffix>`).

use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::nats_server::monitor;
use super::{Fleet, FleetReply, Registration};

/// Fields the registration may carry, and which must be there.
const REQUIRED: &[&str] = &[
    "id",
    "deviceType",
    "architecture",
    "buildVersion",
    "certificate",
    "caCertificate",
];
const OPTIONAL: &[&str] = &["currentOwner", "tailscaleID", "alias"];

pub(crate) async fn connect(fleet: &Fleet) -> async_nats::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(fleet.pki.root_der()).expect("root");
    let key =
        rustls::pki_types::PrivateKeyDer::Pkcs8(fleet.pki.fleet_manager_key_der.clone().into());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(fleet.pki.fleet_manager_chain.clone(), key)
    .expect("fleet manager certificate");
    async_nats::ConnectOptions::new()
        .name("fleet-manager-double")
        .require_tls(true)
        .tls_client_config(tls)
        .connect(format!("tls://127.0.0.1:{}", fleet.nats_port))
        .await
        .expect("the fleet manager double connects to nats-server")
}

/// Subscribes, then serves until the connection is closed.
pub(crate) async fn serve(
    fleet: Arc<Fleet>,
    client: async_nats::Client,
    subscribed: tokio::sync::oneshot::Sender<()>,
) {
    let mut actions = client
        .subscribe("device_actions.*.register")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let _ = subscribed.send(());
    while let Some(message) = actions.next().await {
        let mut registration = check(&fleet, &message);
        if let Some(id) = &registration.id {
            if let Err(problem) = check_subscriber(&fleet, id).await {
                registration.problems.push(problem);
            }
        }
        let reply = fleet.next_fleet_reply(registration.id.as_deref());
        let answer = if registration.problems.is_empty() {
            match &reply {
                FleetReply::Success { payload, alias } => Some(
                    json!({"status": "success", "payload": payload, "alias": alias}).to_string(),
                ),
                FleetReply::Failure(error) => {
                    Some(json!({"status": "failure", "error": error}).to_string())
                }
                FleetReply::AlreadyRegistered => Some(
                    json!({"status": "failure", "error": "device already registered"}).to_string(),
                ),
                FleetReply::Garbage => Some("this is not JSON".to_string()),
                FleetReply::Silence => None,
            }
        } else {
            Some(
                json!({"status": "failure", "error": format!("double: {}", registration.problems.join("; "))})
                    .to_string(),
            )
        };
        let id = registration.id.clone();
        fleet.state().registrations.push(Registration {
            reply: reply.clone(),
            ..registration
        });
        if let (Some(answer), Some(id)) = (answer, id) {
            let _ = client
                .publish(format!("device_results.{id}.register"), answer.into())
                .await;
            let _ = client.flush().await;
        }
    }
}

fn check(fleet: &Fleet, message: &async_nats::Message) -> Registration {
    let mut problems = Vec::new();
    let subject = message.subject.to_string();
    let id = subject
        .strip_prefix("device_actions.")
        .and_then(|rest| rest.strip_suffix(".register"))
        .map(str::to_string);
    let headers: Vec<(String, String)> = message
        .headers
        .iter()
        .flat_map(|headers| headers.iter())
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_string()))
        })
        .collect();
    let header = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };

    match (header("ID").as_slice(), &id) {
        ([value], Some(id)) if value == id => {}
        (values, _) => problems.push(format!(
            "header ID {values:?} is not the subject's id {id:?}"
        )),
    }
    match header("timestamp").as_slice() {
        [stamp] => {
            if let Err(why) = check_timestamp(stamp) {
                problems.push(format!("header timestamp {stamp:?}: {why}"));
            }
        }
        other => problems.push(format!("header timestamp: {other:?}")),
    }

    let body: Value = match serde_json::from_slice(&message.payload) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(_) => {
            problems.push("the body is not a JSON object".into());
            Value::Null
        }
        Err(e) => {
            problems.push(format!("the body is not JSON: {e}"));
            Value::Null
        }
    };
    if let Value::Object(fields) = &body {
        for name in fields.keys() {
            if !REQUIRED.contains(&name.as_str()) && !OPTIONAL.contains(&name.as_str()) {
                problems.push(format!("unexpected field {name:?}"));
            }
        }
        for (name, value) in fields {
            if !value.is_string() || value.as_str() == Some("") {
                problems.push(format!("field {name:?} must be a non-empty string"));
            }
        }
        for name in REQUIRED {
            if !fields.contains_key(*name) {
                problems.push(format!("missing field {name:?}"));
            }
        }
        if body["id"].as_str() != id.as_deref() {
            problems.push(format!(
                "body id {} is not the subject's id {id:?}",
                body["id"]
            ));
        }
        if let Some(id) = &id {
            match fleet.issued_for(id) {
                Some(leaf_pem) if body["certificate"].as_str() == Some(leaf_pem.as_str()) => {}
                Some(_) => problems.push("certificate is not the one issued for this id".into()),
                None => problems.push(format!("no certificate was issued for {id}")),
            }
        }
        if body["caCertificate"].as_str() != Some(fleet.pki.issuing_pem().as_str()) {
            problems.push("caCertificate is not the issuing CA".into());
        }
    }
    Registration {
        subject,
        id,
        headers,
        body,
        problems,
        reply: FleetReply::Silence,
    }
}

/// Someone listens on `device_results.<id>.register` (so it subscribed
/// before it published), over TLS, as the user of the certificate issued
/// for `id`.
async fn check_subscriber(fleet: &Fleet, id: &str) -> Result<(), String> {
    let port = fleet.monitor_port;
    let subject = format!("device_results.{id}.register");
    let subs = monitor(port, &format!("/subsz?subs=1&test={subject}")).await?;
    let list = subs["subscriptions_list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if list.is_empty() {
        return Err(format!(
            "nobody subscribed to {subject} before the registration"
        ));
    }
    let (prefix, suffix) = &fleet.cn_template;
    let expected = format!("CN={prefix}{id}{suffix}");
    for sub in list {
        let cid = sub["cid"]
            .as_u64()
            .ok_or("subscription without a connection id")?;
        let connz = monitor(port, &format!("/connz?cid={cid}&auth=true")).await?;
        let connection = &connz["connections"][0];
        if connection["authorized_user"].as_str() != Some(expected.as_str()) {
            return Err(format!(
                "{subject} is subscribed by connection {cid} of user {}, not {expected}",
                connection["authorized_user"]
            ));
        }
        if connection["tls_version"].as_str().is_none_or(str::is_empty) {
            return Err(format!("connection {cid} is not TLS"));
        }
    }
    Ok(())
}

/// RFC 3339, UTC ("Z"), whole seconds, and close to now.
fn check_timestamp(stamp: &str) -> Result<(), String> {
    use time::format_description::well_known::Rfc3339;
    let parsed = time::OffsetDateTime::parse(stamp, &Rfc3339).map_err(|e| e.to_string())?;
    if !stamp.ends_with('Z') {
        return Err("not UTC (Z)".into());
    }
    let skew = (time::OffsetDateTime::now_utc() - parsed).abs();
    if skew > time::Duration::minutes(5) {
        return Err(format!("{skew} away from now"));
    }
    Ok(())
}
