//! The registration request body and the 201 answers built from it.

use rcgen::{KeyPair, SubjectPublicKeyInfo};
use serde_json::{Map, Value};

use crate::csr::VerifiedCsr;
use crate::pki::{Issuance, Pki, Subject};
use crate::sota_toml::Overrides;
use crate::Reply;

/// A registration body that has the right shape.
#[derive(Debug)]
pub(crate) struct Request {
    pub name: String,
    pub uuid: String,
    pub csr: String,
    pub hardware_id: String,
    pub sota_config_dir: String,
    pub use_ostree_server: bool,
    pub group: Option<String>,
    pub overrides: Overrides,
    pub overrides_raw: Value,
}

/// Parses the JSON body; the error is the plain-text body of the 400 answer.
pub(crate) fn parse(body: &[u8], accept_string_booleans: bool) -> Result<Request, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("body must be a JSON object".into());
    };
    let string = |field: &str| match obj.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("field '{field}' must be a string")),
        None => Err(format!("missing field '{field}'")),
    };
    let use_ostree_server = match obj.get("use-ostree-server") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if accept_string_booleans && (s == "true" || s == "false") => {
            s == "true"
        }
        Some(_) => return Err("field 'use-ostree-server' must be a JSON boolean".into()),
        None => return Err("missing field 'use-ostree-server'".into()),
    };
    let group = match obj.get("group") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("field 'group' must be a string".into()),
    };
    let overrides_raw = obj.get("overrides").cloned().unwrap_or(Value::Null);
    Ok(Request {
        name: string("name")?,
        uuid: string("uuid")?,
        csr: string("csr")?,
        hardware_id: string("hardware-id")?,
        sota_config_dir: string("sota-config-dir")?,
        use_ostree_server,
        group,
        overrides: parse_overrides(&overrides_raw)?,
        overrides_raw,
    })
}

fn parse_overrides(raw: &Value) -> Result<Overrides, String> {
    let sections = match raw {
        Value::Null => return Ok(Vec::new()),
        Value::Object(sections) => sections,
        _ => return Err("field 'overrides' must be an object".into()),
    };
    sections
        .iter()
        .map(|(section, entries)| {
            let Value::Object(entries) = entries else {
                return Err(format!("field 'overrides.{section}' must be an object"));
            };
            let entries = entries
                .iter()
                .map(|(key, literal)| match literal {
                    Value::String(s) => Ok((key.clone(), s.clone())),
                    _ => Err(format!(
                        "field 'overrides.{section}.{key}' must be a string holding a TOML value"
                    )),
                })
                .collect::<Result<_, _>>()?;
            Ok((section.clone(), entries))
        })
        .collect()
}

/// The 201 body for one of the signing replies, and the `client.pem` in it.
pub(crate) fn signed_files(
    pki: &Pki,
    req: &Request,
    csr: &VerifiedCsr,
    sota_toml: String,
    reply: &Reply,
) -> anyhow::Result<(Map<String, Value>, String)> {
    let subject = Subject {
        uuid: &req.uuid,
        factory: &csr.factory,
        production: csr.production,
    };
    let how = Issuance {
        expired: matches!(reply, Reply::ExpiredCert),
        foreign: matches!(reply, Reply::ForeignChain),
    };
    let cert = if matches!(reply, Reply::WrongKeyCert) {
        pki.issue_client(&subject, &KeyPair::generate()?, how)?
    } else {
        let key = SubjectPublicKeyInfo::from_der(&csr.spki_der)?;
        pki.issue_client(&subject, &key, how)?
    };

    let mut files = Map::new();
    files.insert("root.crt".into(), pki.root_pem().into());
    files.insert("client.pem".into(), cert.pem.clone().into());
    files.insert("client.chained".into(), cert.chained.into());
    files.insert("sota.toml".into(), sota_toml.into());

    match reply {
        Reply::ExtraFile { name, content } => {
            files.insert(name.clone(), content.clone().into());
        }
        Reply::NonStringValue => {
            files.insert("root.crt".into(), 12345.into());
        }
        Reply::BadToml => {
            files.insert(
                "sota.toml".into(),
                "[tls\nserver = \"https://unterminated\n".into(),
            );
        }
        Reply::Oversized(target) => pad_sota_toml(&mut files, *target),
        _ => {}
    }
    Ok((files, cert.pem))
}

/// Appends TOML comment lines to `sota.toml` until the JSON body is about
/// `target` bytes: the answer stays a valid registration, only too big.
fn pad_sota_toml(files: &mut Map<String, Value>, target: usize) {
    const LINE: &str = "# padding padding padding padding padding padding padding padding\n";
    // In JSON each line costs one byte more: the newline becomes "\n".
    let size = Value::Object(files.clone()).to_string().len();
    let lines = target.saturating_sub(size) / (LINE.len() + 1);
    if let Some(Value::String(toml)) = files.get_mut("sota.toml") {
        toml.reserve(lines * LINE.len());
        for _ in 0..lines {
            toml.push_str(LINE);
        }
    }
}
