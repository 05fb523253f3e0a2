//! A software TPM 2.0 (swtpm) on loopback, and the tpm2-pkcs11 module that
//! reaches it: the environment a device with a TPM gives the agent.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// tpm2-pkcs11 as Debian installs it (libtpm2-pkcs11-1).
pub const TPM_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so";

/// Whether swtpm and tpm2-pkcs11 are installed; the tests say so and pass
/// when not, except under CI, which installs them.
pub fn swtpm_available() -> bool {
    let found = Path::new(TPM_MODULE).exists()
        && Command::new("swtpm")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "swtpm or tpm2-pkcs11 ({TPM_MODULE}) is not installed"
        );
        eprintln!(
            "swtpm or tpm2-pkcs11 is not installed: skipping (apt-get install swtpm swtpm-tools libtpm2-pkcs11-1)"
        );
    }
    found
}

/// A running swtpm with its state and tpm2-pkcs11's store in `dir`; stopped
/// when dropped.
pub struct Swtpm {
    child: Child,
    pub port: u16,
    pub store: PathBuf,
}

/// Two free consecutive loopback ports (swtpm's server and control
/// ports), as far as can be told before swtpm binds them.
fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
}

impl Swtpm {
    pub fn start(dir: &Path) -> Swtpm {
        let state = dir.join("swtpm-state");
        let store = dir.join("tpm2-pkcs11-store");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&store).unwrap();
        // Another test may take a port between the look and swtpm's bind:
        // then swtpm exits and another pair is tried.
        for _ in 0..5 {
            let port = free_port_pair();
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", state.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("swtpm runs");
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    return Swtpm { child, port, store };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("swtpm did not start");
    }

    /// What tpm2-pkcs11 needs to find its store and this TPM (TSS2_LOG
    /// keeps the TSS libraries' own logging quiet).
    pub fn module_env(&self) -> Vec<(String, String)> {
        vec![
            ("TPM2_PKCS11_STORE".into(), self.store.display().to_string()),
            (
                "TPM2_PKCS11_TCTI".into(),
                format!("swtpm:host=127.0.0.1,port={}", self.port),
            ),
            ("TSS2_LOG".into(), "all+NONE".into()),
        ]
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
