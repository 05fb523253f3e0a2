//! Each service a profile talks to, step by step: the name resolves, a TCP
//! connection comes about, the TLS handshake succeeds with the trust the
//! registration would use (the agent's one TLS set-up: `tls::roots` and
//! `tls::client_config`), and what the server's certificate says. No
//! request is sent: the server sees a connection and a handshake, nothing
//! it could act on.

use super::Line;
use crate::profiles::Endpoint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const AREA: &str = "network";

/// The host as DNS and TLS know it (an IPv6 address without brackets).
fn host(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

/// Resolves `host`, giving up after `timeout` (a resolver that does not
/// answer would otherwise hold the check for minutes).
fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let name = host.to_string();
    std::thread::spawn(move || {
        let _ = sender.send(
            (name.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect),
        );
    });
    match receiver.recv_timeout(timeout) {
        Ok(Ok(addresses)) => Ok(addresses),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
    }
}

/// The checks of one endpoint, each step only when the one before passed.
pub(super) fn check(endpoint: &Endpoint, timeout: Duration, now: SystemTime) -> Vec<Line> {
    let url = &endpoint.url;
    let what = endpoint.what;
    let (Some(host), Some(port)) = (host(url), url.port_or_known_default()) else {
        return vec![Line::fail(
            AREA,
            what,
            format!("{url} names no host and port"),
            "fix the URL in the settings",
        )];
    };
    let connect_timeout = crate::http::CONNECT_TIMEOUT.min(timeout);
    let mut lines = Vec::new();
    let addresses = match resolve(&host, port, connect_timeout) {
        Ok(addresses) if !addresses.is_empty() => addresses,
        other => {
            let why = other.err().unwrap_or_else(|| "no address".into());
            lines.push(Line::fail(
                AREA,
                format!("{what} dns"),
                format!("cannot resolve {host}: {why}"),
                format!("check the network and /etc/resolv.conf, or the host in {what}"),
            ));
            return lines;
        }
    };
    let shown: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
    let resolved = match host.parse::<std::net::IpAddr>() {
        Ok(_) => format!("{host} is an address: nothing to resolve"),
        Err(_) => format!("{host} is {}", shown.join(", ")),
    };
    lines.push(Line::pass(AREA, format!("{what} dns"), resolved));
    let (stream, took) = match connect(&addresses, connect_timeout) {
        Ok(connected) => connected,
        Err(e) => {
            lines.push(Line::fail(
                AREA,
                format!("{what} tcp"),
                format!("cannot connect to {host} port {port}: {e}"),
                "is the server up, and is no firewall or proxy in the way?",
            ));
            return lines;
        }
    };
    lines.push(Line::pass(
        AREA,
        format!("{what} tcp"),
        format!(
            "connected to {} in {} ms",
            stream.peer_addr().map_or(String::new(), |a| a.to_string()),
            took.as_millis()
        ),
    ));
    match url.scheme() {
        "https" => lines.extend(tls(endpoint, &host, stream, timeout, now)),
        "http" => lines.push(plain_http(what, &host)),
        // nats://: the fleet CA comes with the provisioning answer.
        _ => {}
    }
    lines
}

fn connect(addresses: &[SocketAddr], timeout: Duration) -> Result<(TcpStream, Duration), String> {
    let started = Instant::now();
    let mut last = String::from("no address");
    for address in addresses {
        match TcpStream::connect_timeout(address, timeout) {
            Ok(stream) => return Ok((stream, started.elapsed())),
            Err(e) => last = format!("{address}: {e}"),
        }
    }
    Err(last)
}

fn plain_http(what: &str, host: &str) -> Line {
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Line::pass(
            AREA,
            format!("{what} tls"),
            "plain http on this machine: no TLS to check",
        )
    } else {
        Line::warn(
            AREA,
            format!("{what} tls"),
            "plain http: credentials and certificates cross the network unencrypted",
            "use an https:// URL",
        )
    }
}

/// The server's certificate as the handshake met it, whether or not it
/// was trusted: the verifier records it, then the agent's verifier decides.
#[derive(Debug)]
struct Recording {
    verifier: Arc<dyn ServerCertVerifier>,
    seen: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(end_entity.clone().into_owned());
        }
        self.verifier
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.supported_verify_schemes()
    }
}

/// The handshake with the registration's trust; its version, or why not.
fn handshake(
    endpoint: &Endpoint,
    host: &str,
    mut stream: TcpStream,
    timeout: Duration,
    recording: &mut Option<Arc<Recording>>,
) -> Result<String, String> {
    let roots = crate::tls::roots(endpoint.cacert.as_ref()).map_err(|e| e.to_string())?;
    // The verifier `client_config` makes from these roots, to record what
    // it is shown.
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots.clone()),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let mut config = crate::tls::client_config(roots, None).map_err(|e| e.to_string())?;
    let recorder = Arc::new(Recording {
        verifier,
        seen: Mutex::new(None),
    });
    config
        .dangerous()
        .set_certificate_verifier(recorder.clone());
    *recording = Some(recorder);
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let mut connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    while connection.is_handshaking() {
        connection
            .complete_io(&mut stream)
            .map_err(|e| e.to_string())?;
    }
    connection.send_close_notify();
    let _ = connection.complete_io(&mut stream);
    Ok(connection
        .protocol_version()
        .map_or("TLS".into(), |v| format!("{v:?}")))
}

fn tls(
    endpoint: &Endpoint,
    host: &str,
    stream: TcpStream,
    timeout: Duration,
    now: SystemTime,
) -> Vec<Line> {
    let what = endpoint.what;
    let trust = match &endpoint.cacert {
        Some(bundle) => format!("the CA certificates in {}", bundle.path.display()),
        None => "the system roots".to_string(),
    };
    let mut recording = None;
    let shaken = handshake(endpoint, host, stream, timeout, &mut recording);
    let seen = recording.and_then(|r| r.seen.lock().ok()?.clone());
    let mut lines = vec![match &shaken {
        Ok(version) => Line::pass(AREA, format!("{what} tls"), format!("{version} handshake with {host}, trusting {trust}")),
        Err(e) => Line::fail(AREA, format!("{what} tls"), format!("handshake with {host} failed, trusting {trust}: {e}"), "pass --cacert (or cacert in the profile's table) with the CA that issued the server's certificate; check the clock"),
    }];
    if let Some(der) = seen {
        lines.push(server_certificate(what, &der, now));
    }
    lines
}

fn server_certificate(what: &str, der: &[u8], now: SystemTime) -> Line {
    let check = format!("{what} server certificate");
    let summary = match crate::x509::summary(der) {
        Ok(summary) => summary,
        Err(e) => {
            return Line::fail(
                AREA,
                check,
                e,
                "the server sends a certificate that cannot be read",
            )
        }
    };
    let days = crate::status::days_until(summary.not_after, now);
    let detail = format!(
        "{}, issued by {}, valid until {} ({days} days left)",
        summary.subject,
        summary.issuer,
        httpdate::fmt_http_date(summary.not_after)
    );
    match days {
        i64::MIN..0 => Line::fail(
            AREA,
            check,
            detail,
            "the server's certificate has expired: its operator must renew it",
        ),
        0..30 => Line::warn(
            AREA,
            check,
            detail,
            "the server's certificate expires soon: tell its operator",
        ),
        _ => Line::pass(AREA, check, detail),
    }
}
