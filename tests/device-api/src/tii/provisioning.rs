//! The provisioning server double: `POST /api/devices/provision` with
//! `{"csr": "<PEM>"}` and no credentials. It checks the request and the CSR
//! (signature, key type, common name from the template, clientAuth), signs
//! it with the fleet's issuing CA, lets the device into the NATS server, and
//! answers `{certificate, caCertificate, fleetManagementNatsUrl}`.

use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_SHA256WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256,
};
use x509_parser::prelude::FromDer;

use crate::listen;

use super::{Fleet, KeyKind, Provision, ProvisionReply};

const MAX_REQUEST_BODY: usize = 1 << 20;

type Answer = Response<Full<Bytes>>;

pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    fleet: Arc<Fleet>,
) {
    listen::accept(listener, tls, move |connection| {
        let fleet = fleet.clone();
        async move {
            let service = hyper::service::service_fn(move |req| handle(fleet.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(connection.stream), service)
                .await;
        }
    })
    .await;
}

fn answer(code: u16, value: &Value) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = StatusCode::from_u16(code).expect("status code");
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn refuse(code: u16, why: impl Into<String>) -> Answer {
    answer(code, &json!({ "error": why.into() }))
}

async fn handle(
    fleet: Arc<Fleet>,
    req: Request<Incoming>,
) -> Result<Answer, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(refuse(413, "request body too large")),
    };
    let mut provision = Provision {
        path: parts.uri.path().to_owned(),
        headers: crate::listen::header_pairs(&parts.headers),
        body: body.to_vec(),
        outcome: Err(String::new()),
    };
    let response = respond(&fleet, &parts.method, &body, &mut provision).await;
    fleet.state().provisions.push(provision);
    Ok(response)
}

/// What a CSR that passed every check says.
struct CheckedCsr {
    common_name: String,
    id: String,
    key: KeyKind,
    public_key: rcgen::PublicKey,
}

async fn respond(fleet: &Fleet, method: &Method, body: &[u8], provision: &mut Provision) -> Answer {
    if provision.path != "/api/devices/provision" {
        provision.outcome = Err(format!("no such path {}", provision.path));
        return refuse(404, "not found");
    }
    if method != Method::POST {
        provision.outcome = Err("not a POST".into());
        return refuse(405, "method not allowed");
    }
    let reply = fleet.next_provision_reply();
    if let ProvisionReply::Status { code, body } = &reply {
        provision.outcome = Err(format!("scripted {code}"));
        let mut response = Response::new(Full::new(Bytes::from(body.clone())));
        *response.status_mut() = StatusCode::from_u16(*code).expect("status code");
        return response;
    }
    let checked = match check_request(provision, body, &fleet.cn_template) {
        Ok(checked) => checked,
        Err(why) => {
            provision.outcome = Err(why.clone());
            return refuse(400, why);
        }
    };
    let issued = match fleet.pki.issue_device(
        &checked.common_name,
        &checked.public_key,
        reply == ProvisionReply::ForeignChain,
    ) {
        Ok(issued) => issued,
        Err(e) => {
            provision.outcome = Err(format!("cannot sign: {e}"));
            return refuse(500, format!("cannot sign: {e}"));
        }
    };
    // The device may talk to the fleet manager from now on.
    fleet.allow_device(&checked.common_name, &checked.id).await;

    let ca_field = if reply == ProvisionReply::SnakeCase {
        "ca_certificate"
    } else {
        "caCertificate"
    };
    let nats_url = match reply {
        ProvisionReply::HostPortUrl => format!("127.0.0.1:{}", fleet.nats_port),
        _ => format!("nats://127.0.0.1:{}", fleet.nats_port),
    };
    let mut answer_body = json!({
        "certificate": issued.chain_pem,
        "fleetManagementNatsUrl": nats_url,
    });
    answer_body[ca_field] = Value::String(fleet.pki.root_pem());
    provision.outcome = Ok(super::Issued {
        id: checked.id,
        common_name: checked.common_name,
        key: checked.key,
        leaf_pem: issued.leaf_pem,
    });
    answer(200, &answer_body)
}

fn check_request(
    provision: &Provision,
    body: &[u8],
    template: &(String, String),
) -> Result<CheckedCsr, String> {
    if provision.header("content-type") != Some("application/json") {
        return Err("Content-Type must be application/json".into());
    }
    if provision.header("authorization").is_some() {
        return Err("the provisioning server takes no credentials".into());
    }
    let request: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let Some(fields) = request.as_object() else {
        return Err("body must be a JSON object".into());
    };
    if fields.len() != 1 {
        return Err(format!(
            "body must hold only csr, not {:?}",
            fields.keys().collect::<Vec<_>>()
        ));
    }
    let Some(Value::String(pem)) = fields.get("csr") else {
        return Err("csr must be a string".into());
    };
    check_csr(pem, template)
}

fn check_csr(pem_text: &str, (prefix, suffix): &(String, String)) -> Result<CheckedCsr, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map_err(|e| format!("invalid CSR: {e}"))?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(format!("invalid CSR: PEM label {:?}", pem.label));
    }
    let (rest, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("invalid CSR: {e}"))?;
    if !rest.is_empty() {
        return Err("invalid CSR: trailing data".into());
    }
    csr.verify_signature()
        .map_err(|e| format!("CSR signature does not verify: {e}"))?;
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let signature = &csr.signature_algorithm.algorithm;
    let key = if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if curve != Some(OID_EC_P256) || *signature != OID_SIG_ECDSA_WITH_SHA256 {
            return Err("an EC CSR must be P-256 signed with ECDSA-SHA256".into());
        }
        KeyKind::EcP256
    } else if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => 0,
        };
        if bits != 2048 || *signature != OID_PKCS1_SHA256WITHRSA {
            return Err(format!(
                "an RSA CSR must be 2048 bits signed with sha256WithRSAEncryption (got {bits} bits, {signature})"
            ));
        }
        KeyKind::Rsa2048
    } else {
        return Err(format!("unsupported key type {}", spki.algorithm.algorithm));
    };

    let names: Vec<&str> = info
        .subject
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .collect();
    if names.len() != 1 || info.subject.iter().count() != 1 {
        return Err(format!(
            "the subject must be exactly one common name, not {}",
            info.subject
        ));
    }
    let common_name = names[0].to_string();
    let id = common_name
        .strip_prefix(prefix.as_str())
        .and_then(|rest| rest.strip_suffix(suffix.as_str()))
        .filter(|id| {
            !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or_else(|| format!("common name {common_name:?} is not {prefix}<device id>{suffix}"))?
        .to_string();

    let client_auth = info
        .iter_attributes()
        .filter_map(|attr| match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(req) => Some(&req.extensions),
            _ => None,
        })
        .flatten()
        .any(|ext| matches!(ext.parsed_extension(), ParsedExtension::ExtendedKeyUsage(eku) if eku.client_auth));
    if !client_auth {
        return Err("the CSR must request extendedKeyUsage clientAuth".into());
    }

    let public_key = rcgen::CertificateSigningRequestParams::from_der(&pem.contents.clone().into())
        .map_err(|e| format!("invalid CSR: {e}"))?
        .public_key;
    Ok(CheckedCsr {
        common_name,
        id,
        key,
        public_key,
    })
}
