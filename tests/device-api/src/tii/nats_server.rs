//! A real `nats-server` (Debian package `nats-server`) on 127.0.0.1 with
//! TLS that requires client certificates signed by the fleet's root
//! (`verify_and_map`): each certificate's subject is a user, and a device's
//! user may publish only `device_actions.<its id>.register` and subscribe
//! only `device_results.<its id>.register`. So a registration for id X
//! reaches the fleet manager only from a connection whose verified client
//! certificate is the one issued for X. Devices are added (and the server
//! reloaded, SIGHUP) as the provisioning double issues their certificates.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NATS_SERVER: &str = "nats-server";

/// The user the fleet manager double connects as.
pub const FLEET_MANAGER_USER: &str = "CN=fleet-manager";

/// Whether `nats-server` can be run; CI installs it, so there a missing
/// binary is a failure.
pub fn available() -> bool {
    let found = Command::new(NATS_SERVER)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "nats-server is not installed (apt-get install nats-server)"
        );
        eprintln!("nats-server is not installed: skipping (apt-get install nats-server)");
    }
    found
}

/// The configuration and the files it names, in a directory of its own.
pub(crate) struct NatsConfig {
    pub dir: PathBuf,
    pub port: u16,
    /// The monitoring endpoint (http, 127.0.0.1), where the fleet manager
    /// double looks up who subscribed to a device's results.
    pub monitor_port: u16,
    /// (certificate subject, device id) of every device allowed in.
    pub devices: Vec<(String, String)>,
}

impl NatsConfig {
    pub(crate) fn new(
        dir: PathBuf,
        port: u16,
        monitor_port: u16,
        pki: &super::pki::FleetPki,
    ) -> NatsConfig {
        std::fs::create_dir_all(&dir).expect("tii double: nats dir");
        std::fs::write(dir.join("server.crt"), &pki.server_cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), &pki.server_key_pem).unwrap();
        std::fs::write(dir.join("ca.crt"), pki.root_pem()).unwrap();
        let config = NatsConfig {
            dir,
            port,
            monitor_port,
            devices: Vec::new(),
        };
        config.write();
        config
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join("nats.conf")
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.dir.join("nats.log")
    }

    /// Writes the configuration for the devices known so far.
    pub(crate) fn write(&self) {
        let quote = |s: &str| serde_json::to_string(s).expect("JSON string");
        let path = |name: &str| quote(&self.dir.join(name).display().to_string());
        let mut users = String::new();
        writeln!(
            users,
            "    {{ user: {}, permissions: {{ publish: \">\", subscribe: \">\" }} }}",
            quote(FLEET_MANAGER_USER)
        )
        .unwrap();
        for (subject, id) in &self.devices {
            writeln!(
                users,
                "    {{ user: {}, permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }} }}",
                quote(subject),
                quote(&format!("device_actions.{id}.register")),
                quote(&format!("device_results.{id}.register")),
            )
            .unwrap();
        }
        let text = format!(
            "listen: \"127.0.0.1:{port}\"\n\
             http: \"127.0.0.1:{monitor}\"\n\
             log_file: {log}\n\
             tls {{\n  cert_file: {cert}\n  key_file: {key}\n  ca_file: {ca}\n  verify_and_map: true\n  timeout: 5\n}}\n\
             authorization {{\n  users = [\n{users}  ]\n}}\n",
            port = self.port,
            monitor = self.monitor_port,
            log = path("nats.log"),
            cert = path("server.crt"),
            key = path("server.key"),
            ca = path("ca.crt"),
        );
        let temp = self.dir.join("nats.conf.tmp");
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, self.path()).unwrap();
    }
}

fn count_in_log(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .map(|text| text.matches(needle).count())
        .unwrap_or(0)
}

/// A running nats-server; killed when dropped.
pub(crate) struct NatsProcess {
    child: Child,
    log: PathBuf,
}

impl NatsProcess {
    pub(crate) fn start(config: &NatsConfig) -> NatsProcess {
        let log = config.log();
        let ready_before = count_in_log(&log, "Server is ready");
        let child = Command::new(NATS_SERVER)
            .arg("-c")
            .arg(config.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tii double: start nats-server");
        let mut process = NatsProcess { child, log };
        process.wait_for_log("Server is ready", ready_before);
        process
    }

    /// Reloads the configuration and waits until the server says it did.
    pub(crate) fn reload(&mut self) {
        let before = count_in_log(&self.log, "Reloaded server configuration");
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)
            .expect("tii double: SIGHUP nats-server");
        self.wait_for_log("Reloaded server configuration", before);
    }

    fn wait_for_log(&mut self, needle: &str, before: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while count_in_log(&self.log, needle) <= before {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "nats-server exited ({status}):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not log {needle:?}:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET on the monitoring endpoint, as JSON.
pub(crate) async fn monitor(port: u16, path_and_query: &str) -> Result<serde_json::Value, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("monitoring endpoint: {e}"))?;
    tcp.write_all(format!("GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("monitoring endpoint: {e}"))?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response)
        .await
        .map_err(|e| format!("monitoring endpoint: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or("monitoring endpoint: no body")?;
    serde_json::from_str(body).map_err(|e| format!("monitoring endpoint: {e}: {body}"))
}
