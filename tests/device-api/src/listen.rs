//! What every double does with its sockets: accept connections, complete the
//! TLS handshake when it serves HTTPS, and run on a tokio runtime of its own
//! thread, so that synchronous tests (which spawn the agent with
//! `std::process::Command`) can use it, until the handle is dropped.

use std::future::Future;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::header::{HeaderMap, CONTENT_TYPE};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

/// A connection after the handshake: plain TCP or TLS.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// One accepted connection.
pub(crate) struct Connection {
    pub stream: Box<dyn Stream>,
    /// The certificate the client presented in the TLS handshake, if any.
    pub client_certificate: Option<CertificateDer<'static>>,
}

/// Returned by a double's service to make hyper drop the connection
/// without answering.
#[derive(Debug)]
pub(crate) struct HangUp;

impl std::fmt::Display for HangUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted hang-up")
    }
}

impl std::error::Error for HangUp {}

/// Whether the request says its body is JSON (parameters such as
/// `charset` aside).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Headers as recorded for the tests: lower-case names, values decoded
/// lossily as UTF-8.
pub(crate) fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect()
}

/// The first value of header `name` (case-insensitive) among `headers`.
pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A runtime for a double, named after it (the name shows in panics).
pub(crate) fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{name}: tokio runtime: {e}"))
}

/// Accepts connections for as long as the future runs, handing each to
/// `serve` on a task of its own. A client that fails the TLS handshake (as
/// one without an acceptable certificate does) is dropped there.
pub(crate) async fn accept<S, F>(listener: TcpListener, tls: Option<TlsAcceptor>, serve: S)
where
    S: Fn(Connection) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // e.g. EMFILE: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Without it the TLS handshake's flights wait for delayed ACKs
        // (40 ms each), which would show up as the agent's wall time.
        let _ = tcp.set_nodelay(true);
        let (tls, serve) = (tls.clone(), serve.clone());
        tokio::spawn(async move {
            let connection = match tls {
                None => Connection {
                    stream: Box::new(tcp),
                    client_certificate: None,
                },
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client_certificate = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| leaf.clone().into_owned());
                    Connection {
                        stream: Box::new(stream),
                        client_certificate,
                    }
                }
            };
            serve(connection).await;
        });
    }
}

/// A double's server running on its own thread. Dropping it stops the
/// server and closes every connection.
pub(crate) struct Background {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Runs `server` on `runtime` in a thread named `name`.
    pub(crate) fn run(
        name: &str,
        runtime: Runtime,
        server: impl Future<Output = ()> + Send + 'static,
    ) -> Background {
        let (shutdown, stop) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stop => {}
                        _ = server => {}
                    }
                });
                // Connections still open (e.g. a scripted hang) are
                // cancelled here.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .unwrap_or_else(|e| panic!("{name}: thread: {e}"));
        Background {
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic in the server thread must not turn into a double panic here.
            let _ = thread.join();
        }
    }
}
