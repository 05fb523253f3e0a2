//! The fleet's test PKI: a root (`caCertificate`), the issuing CA that signs
//! device certificates, the NATS server's certificate (for 127.0.0.1), the
//! fleet manager's client certificate, and a foreign CA for answers whose
//! chain must not verify.

use rcgen::{
    CertificateParams, CertifiedIssuer, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use time::Duration;

use crate::pki::{ca_params, random_serial, set_validity};

type Issuer = CertifiedIssuer<'static, KeyPair>;

const EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
/// DER of `SEQUENCE { id-kp-clientAuth }`.
const EKU_CLIENT_AUTH_DER: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
];

pub(crate) struct FleetPki {
    root: Issuer,
    issuing: Issuer,
    foreign: Issuer,
    /// PEM of the NATS server's certificate and key.
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// The fleet manager double's client certificate (CN=fleet-manager).
    pub fleet_manager_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub fleet_manager_key_der: Vec<u8>,
}

/// A device certificate, as issued.
pub(crate) struct Issued {
    /// The device certificate, PEM.
    pub leaf_pem: String,
    /// What the answer's `certificate` holds: the leaf, then its issuer.
    pub chain_pem: String,
}

fn client_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let mut eku = CustomExtension::from_oid_content(EXTENDED_KEY_USAGE, EKU_CLIENT_AUTH_DER.into());
    eku.set_criticality(true);
    params.custom_extensions = vec![eku];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, Duration::hours(1), Duration::days(365));
    params
}

impl FleetPki {
    pub(crate) fn new() -> anyhow::Result<FleetPki> {
        let root = Issuer::self_signed(
            ca_params("TII Test Fleet Root", None, None),
            KeyPair::generate()?,
        )?;
        let issuing = Issuer::signed_by(
            ca_params("TII Test Device CA", None, Some(0)),
            KeyPair::generate()?,
            &root,
        )?;
        let foreign = Issuer::self_signed(
            ca_params("Foreign Device CA", None, None),
            KeyPair::generate()?,
        )?;

        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "tii-test-nats");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, Duration::hours(1), Duration::days(365));
        let server_cert_pem = params.signed_by(&server_key, &root)?.pem();

        let fleet_manager_key = KeyPair::generate()?;
        let fleet_manager =
            client_params("fleet-manager").signed_by(&fleet_manager_key, &issuing)?;

        Ok(FleetPki {
            fleet_manager_chain: vec![fleet_manager.der().clone(), issuing.der().clone()],
            fleet_manager_key_der: fleet_manager_key.serialize_der(),
            server_cert_pem,
            server_key_pem: server_key.serialize_pem(),
            root,
            issuing,
            foreign,
        })
    }

    /// `caCertificate`, and what nats-server checks client certificates with.
    pub(crate) fn root_pem(&self) -> String {
        self.root.pem()
    }

    pub(crate) fn issuing_pem(&self) -> String {
        self.issuing.pem()
    }

    pub(crate) fn root_der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.root.der().clone()
    }

    /// HTTPS for the provisioning double, with the NATS server's
    /// certificate (127.0.0.1, issued by the root).
    pub(crate) fn tls_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::pem::PemObject;
        let chain = vec![rustls::pki_types::CertificateDer::from_pem_slice(
            self.server_cert_pem.as_bytes(),
        )
        .expect("server certificate")];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .expect("server key");
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
    }

    /// A device certificate for `key`: the CSR's common name, clientAuth.
    pub(crate) fn issue_device(
        &self,
        common_name: &str,
        key: &impl PublicKeyData,
        foreign: bool,
    ) -> anyhow::Result<Issued> {
        let issuer = if foreign {
            &self.foreign
        } else {
            &self.issuing
        };
        let leaf_pem = client_params(common_name).signed_by(key, issuer)?.pem();
        let chain_pem = format!("{leaf_pem}{}", issuer.pem());
        Ok(Issued {
            leaf_pem,
            chain_pem,
        })
    }
}
