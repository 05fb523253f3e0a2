//! The test PKI: the device CA (root → intermediate) that signs client
//! certificates, a foreign CA for [`crate::Reply::ForeignChain`], and the
//! HTTPS server certificate with its own, separate CA.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CustomExtension, DistinguishedName,
    DnType, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use tokio_rustls::TlsAcceptor;

/// businessCategory (X.520), set to "production" for production devices.
pub(crate) const BUSINESS_CATEGORY: &[u64] = &[2, 5, 4, 15];
const EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
/// DER of `SEQUENCE { id-kp-clientAuth }` (1.3.6.1.5.5.7.3.2).
const EKU_CLIENT_AUTH_DER: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
];

type Issuer = CertifiedIssuer<'static, KeyPair>;

pub(crate) struct Pki {
    root: Issuer,
    intermediate: Issuer,
    foreign: Issuer,
    server_ca: Issuer,
    server_cert: CertificateDer<'static>,
    server_key: KeyPair,
}

/// Who a client certificate is for.
pub(crate) struct Subject<'a> {
    pub uuid: &'a str,
    pub factory: &'a str,
    pub production: bool,
}

/// How a client certificate is issued; the defaults are the honest ones.
#[derive(Clone, Copy, Default)]
pub(crate) struct Issuance {
    pub expired: bool,
    pub foreign: bool,
}

/// A signed client certificate, PEM, with the chain the server sends along.
pub(crate) struct ClientCert {
    pub pem: String,
    pub chained: String,
}

impl Pki {
    pub(crate) fn new(factory: &str) -> anyhow::Result<Pki> {
        let root = Issuer::self_signed(
            ca_params("Test Device Root", Some(factory), None),
            KeyPair::generate()?,
        )?;
        let intermediate = Issuer::signed_by(
            ca_params("Test Device Intermediate", Some(factory), Some(0)),
            KeyPair::generate()?,
            &root,
        )?;
        let foreign = Issuer::self_signed(
            ca_params("Foreign Device CA", Some(factory), None),
            KeyPair::generate()?,
        )?;
        let server_ca = Issuer::self_signed(
            ca_params("Test Server CA", None, None),
            KeyPair::generate()?,
        )?;

        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        params.distinguished_name = name("localhost", None);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, Duration::hours(1), Duration::days(365));
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let server_cert = params.signed_by(&server_key, &server_ca)?.der().clone();

        Ok(Pki {
            root,
            intermediate,
            foreign,
            server_ca,
            server_cert,
            server_key,
        })
    }

    pub(crate) fn root_pem(&self) -> String {
        self.root.pem()
    }

    pub(crate) fn intermediate_pem(&self) -> String {
        self.intermediate.pem()
    }

    pub(crate) fn server_ca_pem(&self) -> String {
        self.server_ca.pem()
    }

    pub(crate) fn tls_acceptor(&self) -> TlsAcceptor {
        self.acceptor(None)
    }

    /// An acceptor that completes the handshake only with a client whose
    /// certificate chains to the device root (as Azure DPS does).
    pub(crate) fn tls_acceptor_for_devices(&self) -> TlsAcceptor {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.root.der().clone())
            .expect("device-api: device root as a trust anchor");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("device-api: client certificate verifier");
        self.acceptor(Some(verifier))
    }

    fn acceptor(
        &self,
        clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> TlsAcceptor {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.serialize_der()));
        let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("device-api: rustls protocol versions");
        let builder = match clients {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(vec![self.server_cert.clone()], key)
            .expect("device-api: rustls server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    /// Issues a client certificate (CN=uuid, OU=factory, KU digitalSignature,
    /// EKU clientAuth, both critical) for `key`.
    pub(crate) fn issue_client(
        &self,
        subject: &Subject<'_>,
        key: &impl PublicKeyData,
        how: Issuance,
    ) -> anyhow::Result<ClientCert> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(subject.uuid, Some(subject.factory));
        if subject.production {
            params.distinguished_name.push(
                DnType::CustomDnType(BUSINESS_CATEGORY.to_vec()),
                "production",
            );
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // rcgen writes EKU non-critical; the factory servers mark it critical.
        let mut eku =
            CustomExtension::from_oid_content(EXTENDED_KEY_USAGE, EKU_CLIENT_AUTH_DER.into());
        eku.set_criticality(true);
        params.custom_extensions = vec![eku];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        if how.expired {
            set_validity(&mut params, Duration::days(400), -Duration::days(1));
        } else {
            set_validity(&mut params, Duration::hours(1), Duration::days(365));
        }

        let issuer = if how.foreign {
            &self.foreign
        } else {
            &self.intermediate
        };
        let pem = params.signed_by(key, issuer)?.pem();
        let chained = format!("{pem}{}", issuer.pem());
        Ok(ClientCert { pem, chained })
    }
}

pub(crate) fn ca_params(cn: &str, ou: Option<&str>, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn, ou);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, Duration::days(1), Duration::days(3650));
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = path_len.is_some();
    params
}

fn name(cn: &str, ou: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(ou) = ou {
        dn.push(DnType::OrganizationalUnitName, ou);
    }
    dn
}

/// Valid from `now - before` until `now + after`.
pub(crate) fn set_validity(params: &mut CertificateParams, before: Duration, after: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - before;
    params.not_after = now + after;
}

pub(crate) fn random_serial() -> SerialNumber {
    let mut serial = random_bytes(16);
    // Positive and without a leading zero byte, so it stays 16 bytes in DER.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&serial)
}

pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("device-api: system randomness");
    buf
}

/// Lower-case hex of `n` random bytes.
pub(crate) fn random_hex(n: usize) -> String {
    random_bytes(n).iter().map(|b| format!("{b:02x}")).collect()
}

/// 16 random bytes in the 8-4-4-4-12 form of a UUID (no version bits).
pub(crate) fn random_uuid() -> String {
    let hex = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}
