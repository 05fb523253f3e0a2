//! This profile's parsers of untrusted input, for the fuzz targets in
//! `fuzz/` (docs/fuzzing.md), beside the shared ones in
//! `crate::fuzzing`: the profile's own functions, re-exported, or thin
//! adapters where its types are private to the crate. Not an
//! API: hidden from the documentation.

use crate::error::Error;
use x509_parser::time::ASN1Time;

/// A device certificate the DPS profile accepted: `device.crt` as stored,
/// and the chain (DER, leaf first).
#[derive(Debug)]
pub struct DpsCertificate {
    pub pem: String,
    pub chain: Vec<Vec<u8>>,
    pub leaf_pem: String,
}

fn factory_ca(pem: Option<&str>) -> Option<crate::config::CaBundle> {
    pem.map(|pem| crate::config::CaBundle {
        path: "factory_ca.pem".into(),
        certificates: crate::x509::require_certificates(pem).expect("a usable factory CA"),
    })
}

fn dps_certificate(cert: super::factory::DeviceCertificate) -> DpsCertificate {
    DpsCertificate {
        leaf_pem: cert.leaf_pem(),
        chain: cert.chain.iter().map(|der| der.to_vec()).collect(),
        pem: cert.pem,
    }
}

/// The factory's enrolment answer (201 body), checked as the DPS profile
/// checks it; `factory_ca`: the PEM of the configured factory CA.
pub fn dps_factory_answer(
    body: &[u8],
    public_key: &[u8],
    id: &str,
    factory_ca_pem: Option<&str>,
    now: ASN1Time,
) -> Result<DpsCertificate, Error> {
    let ca = factory_ca(factory_ca_pem);
    super::factory::validate(body, public_key, id, ca.as_ref(), now).map(dps_certificate)
}

/// `device.crt` as a later run checks it before registering with DPS.
pub fn dps_stored_certificate(
    pem: &str,
    public_key: &[u8],
    id: &str,
    factory_ca_pem: Option<&str>,
    now: ASN1Time,
) -> Result<DpsCertificate, String> {
    let ca = factory_ca(factory_ca_pem);
    super::factory::check_chain(pem, public_key, id, ca.as_ref(), now).map(dps_certificate)
}

/// One operation status from DPS (the register's or a poll's answer, HTTP
/// 200), read as the registration reads it (`dps.rs` `decide`, then
/// `assignment`): the assigned hub and device id, or what is shown instead
/// and the operation the next poll asks about.
pub fn dps_operation_status(
    body: &[u8],
    polled: Option<&str>,
    id: &str,
) -> Result<(String, String), (String, Option<String>)> {
    let response = crate::http::Response {
        status: 200,
        retry_after: None,
        body: body.to_vec(),
    };
    super::dps::read_operation_status(&response, polled.map(str::to_string), id)
        .map(|assignment| (assignment.assigned_hub, assignment.device_id))
}
