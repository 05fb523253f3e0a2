//! The device's file system: a Debian tree made once by debootstrap and
//! kept under target/, and per scenario an overlay on it holding what an LmP
//! image adds: the agent and its unit, the factory's files, stand-ins for
//! fioconfig and aktualizr-lite with LmP's unit conditions, and networkd.

use super::{run, run_ok, work_dir, PREFIX};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// What the tree is made of: systemd as PID 1 with journald and networkd,
/// and SoftHSM2 for the PKCS#11 scenario.
const PACKAGES: &[&str] = &["systemd", "systemd-sysv", "dbus", "softhsm2"];
const MIRROR: &str = "http://deb.debian.org/debian";
/// Bumped when the way the base tree is made changes.
const RECIPE_VERSION: u32 = 1;

pub const FACTORY: &str = "boot-factory";
pub const MACHINE: &str = "intel-corei7-64";
pub const TAG: &str = "devel";
/// The API token; it must never reach the journal.
pub const TOKEN: &str = "tok-3f9c1e7a5b2d4c68";
pub const HSM_PIN: &str = "87654321";
pub const HSM_SO_PIN: &str = "12345678";
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The host's Debian release, so that the agent built here finds the glibc
/// it was linked against; bookworm elsewhere.
fn suite() -> String {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let value = |key: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_string())
    };
    match (value("ID").as_deref(), value("VERSION_CODENAME")) {
        (Some("debian"), Some(codename)) if !codename.is_empty() => codename,
        _ => "bookworm".into(),
    }
}

/// The cached base tree, made on first use (about a minute and a half with
/// a good mirror). One process makes it while the others wait on a lock.
pub fn base_tree() -> PathBuf {
    static TREE: OnceLock<PathBuf> = OnceLock::new();
    TREE.get_or_init(make_base_tree).clone()
}

fn make_base_tree() -> PathBuf {
    let suite = suite();
    let recipe = format!("{suite} minbase {} v{RECIPE_VERSION}", PACKAGES.join(","));
    // FNV-1a: a stable name for the recipe.
    let hash = recipe.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    let cache = work_dir();
    std::fs::create_dir_all(&cache).unwrap();
    let tree = cache.join(format!("{suite}-{hash:016x}"));
    let done = tree.join(".complete");
    let lock = File::create(cache.join(".tree.lock")).unwrap();
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("locking the tree cache: {e}"));
    if done.exists() {
        return tree;
    }
    let partial = cache.join(format!("{suite}-{hash:016x}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).unwrap();
    }
    if tree.exists() {
        std::fs::remove_dir_all(&tree).unwrap();
    }
    println!(
        "making the base tree {} (debootstrap {suite})",
        tree.display()
    );
    run_ok(
        Duration::from_secs(900),
        "debootstrap",
        &[
            "--variant=minbase",
            &format!("--include={}", PACKAGES.join(",")),
            &suite,
            partial.to_str().unwrap(),
            MIRROR,
        ],
    );
    // The downloaded packages are not part of the device.
    for entry in std::fs::read_dir(partial.join("var/cache/apt/archives")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "deb") {
            std::fs::remove_file(path).unwrap();
        }
    }
    // A bare image has no sota directory; the scenarios that want one
    // make it in their overlay.
    assert!(!partial.join("var/sota").exists());
    std::fs::rename(&partial, &tree).unwrap();
    std::fs::write(&done, recipe).unwrap();
    tree
}

/// How the image around the agent looks.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The registration endpoint, as the factory's config file gives it.
    pub device_api: String,
    /// An LmP image ships /var/sota; a bare one does not.
    pub with_sota_dir: bool,
    /// `/etc/sota/hsm` pointing at SoftHSM2.
    pub hsm: bool,
    /// A drop-in for the agent's unit (test timings, never its logic).
    pub drop_in: Option<String>,
}

impl Layout {
    pub fn lmp(device_api: &str) -> Layout {
        Layout {
            device_api: device_api.into(),
            with_sota_dir: true,
            hsm: false,
            drop_in: None,
        }
    }
}

/// One scenario's device: an overlay on the base tree, mounted at `root`.
pub struct Image {
    dir: PathBuf,
    pub root: PathBuf,
    pub name: String,
}

fn runs_dir() -> PathBuf {
    work_dir().join("runs")
}

fn mounted(path: &Path) -> bool {
    let target = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*target))
}

fn unmount(root: &Path) {
    for _ in 0..20 {
        if !mounted(root) {
            return;
        }
        let _ = run(Duration::from_secs(30), "umount", &[root.to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(250));
    }
    // Still busy after 5 s: detach it, so that nothing stays mounted.
    let _ = run(
        Duration::from_secs(30),
        "umount",
        &["--lazy", root.to_str().unwrap()],
    );
}

/// Overlays of dead runs.
pub(super) fn sweep(dead: &dyn Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(runs_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if dead(&name) {
            unmount(&entry.path().join("root"));
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn write(path: &Path, contents: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Replaces a symlink (os-release) instead of writing through it.
    let _ = std::fs::remove_file(path);
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Image {
    /// A fresh copy of the base tree with the agent installed as `layout` says.
    pub fn new(scenario: &str, layout: &Layout) -> Image {
        let image = Image::bare(scenario);
        image.install(layout);
        image
    }

    /// A fresh copy of the base tree with nothing added, for installing the
    /// agent another way (tests/deb_package.rs: its Debian package).
    pub fn bare(scenario: &str) -> Image {
        let base = base_tree();
        let name = format!("{PREFIX}-{}-{scenario}", std::process::id());
        let dir = runs_dir().join(&name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        for sub in ["upper", "work", "root"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let image = Image {
            root: dir.join("root"),
            dir,
            name,
        };
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            base.display(),
            image.dir.join("upper").display(),
            image.dir.join("work").display()
        );
        run_ok(
            Duration::from_secs(30),
            "mount",
            &[
                "-t",
                "overlay",
                "overlay",
                "-o",
                &options,
                image.root.to_str().unwrap(),
            ],
        );
        image
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    pub fn write(&self, relative: &str, contents: &str, mode: u32) {
        write(&self.path(relative), contents, mode);
    }

    fn install(&self, layout: &Layout) {
        let repo = super::repo();
        let agent = std::fs::read(super::agent_binary()).expect("the agent binary");
        let bin = self.path("usr/bin/lmp-device-register");
        std::fs::write(&bin, agent).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let unit =
            std::fs::read_to_string(repo.join("systemd/lmp-device-register.service")).unwrap();
        self.write(
            "usr/lib/systemd/system/lmp-device-register.service",
            &unit,
            0o644,
        );
        let tmpfiles =
            std::fs::read_to_string(repo.join("systemd/lmp-device-register.tmpfiles")).unwrap();
        self.write(
            "usr/lib/tmpfiles.d/lmp-device-register.conf",
            &tmpfiles,
            0o644,
        );
        if let Some(drop_in) = &layout.drop_in {
            self.write(
                "etc/systemd/system/lmp-device-register.service.d/boot-test.conf",
                drop_in,
                0o644,
            );
        }

        // The factory's files.
        self.write(
            "etc/lmp-device-register.toml",
            &format!("[lmp]\ndevice_api = \"{}\"\n", layout.device_api),
            0o644,
        );
        self.write(
            "etc/lmp-device-register-token",
            &format!("{TOKEN}\n"),
            0o600,
        );
        self.write("etc/sota/tag", &format!("{TAG}\n"), 0o644);
        let os_release = std::fs::read_to_string(self.path("usr/lib/os-release")).unwrap();
        self.write(
            "etc/os-release",
            &format!("{os_release}LMP_FACTORY=\"{FACTORY}\"\nLMP_MACHINE=\"{MACHINE}\"\n"),
            0o644,
        );
        if layout.with_sota_dir {
            std::fs::create_dir_all(self.path("var/sota")).unwrap();
        }
        if layout.hsm {
            self.write(
                "etc/sota/hsm",
                &format!(
                    "HSM_MODULE=\"{SOFTHSM_MODULE}\"\nHSM_PIN=\"{HSM_PIN}\"\nHSM_SOPIN=\"{HSM_SO_PIN}\"\n"
                ),
                0o600,
            );
        }

        // Stand-ins for fioconfig and aktualizr-lite, started under the same
        // conditions as LmP's units: fioconfig.path when sota.toml appears,
        // aktualizr-lite only once sota.toml exists.
        self.write(
            "usr/bin/fioconfig",
            "#!/bin/sh\n# Stand-in: the first check-in succeeds at once; the daemon idles.\ncase \"$1\" in\n  check-in) echo \"checked in (SOTA_DIR=$SOTA_DIR)\"; exit 0 ;;\n  daemon) exec sleep infinity ;;\nesac\nexit 1\n",
            0o755,
        );
        self.write(
            "usr/bin/aktualizr-lite",
            "#!/bin/sh\n# Stand-in: idles like the daemon.\nexec sleep infinity\n",
            0o755,
        );
        self.write(
            "usr/lib/systemd/system/fioconfig.path",
            "[Unit]\nDescription=fioconfig stand-in: start once registered\n\n[Path]\nPathExists=/var/sota/sota.toml\n\n[Install]\nWantedBy=multi-user.target\n",
            0o644,
        );
        self.write(
            "usr/lib/systemd/system/fioconfig.service",
            "[Unit]\nDescription=fioconfig stand-in\nConditionPathExists=/var/sota/sota.toml\n\n[Service]\nExecStart=/usr/bin/fioconfig daemon\n\n[Install]\nWantedBy=multi-user.target\n",
            0o644,
        );
        self.write(
            "usr/lib/systemd/system/aktualizr-lite.service",
            "[Unit]\nDescription=aktualizr-lite stand-in\nConditionPathExists=|/var/sota/sota.toml\n\n[Service]\nExecStart=/usr/bin/aktualizr-lite\n\n[Install]\nWantedBy=multi-user.target\n",
            0o644,
        );

        // The device's end of the cable, configured by networkd. No IPv6:
        // router solicitations would keep the link "configuring".
        self.write(
            "etc/systemd/network/50-host0.network",
            &format!(
                "[Match]\nName=host0\n\n[Network]\nAddress={}/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
                super::net::DEVICE_ADDR
            ),
            0o644,
        );
        std::fs::create_dir_all(self.path("var/log/journal")).unwrap();
        run_ok(
            Duration::from_secs(60),
            "systemctl",
            &[
                &format!("--root={}", self.root.display()),
                "enable",
                "lmp-device-register.service",
                "systemd-networkd.service",
                "fioconfig.path",
                "fioconfig.service",
                "aktualizr-lite.service",
            ],
        );
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        unmount(&self.root);
        if !mounted(&self.root) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
