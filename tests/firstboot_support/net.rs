//! The test's own network: a namespace for the device (the container joins
//! it) and one for the registration API, joined by a veth pair. Nothing else
//! is reachable from either, and the same addresses serve every scenario.

use super::{run, run_ok, PREFIX};
use device_api::{DeviceApi, Options};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub const API_ADDR: Ipv4Addr = Ipv4Addr::new(10, 241, 0, 1);
pub const DEVICE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 241, 0, 2);
pub const API_PORT: u16 = 8080;
/// The API beyond a router: an address of the API's namespace in another
/// subnet, which the device reaches only once it has a route through
/// `API_ADDR` ([`Net::route_to_the_far_api`]).
pub const FAR_API_ADDR: Ipv4Addr = Ipv4Addr::new(10, 241, 1, 1);
/// The API's end of the veth pair (in the API namespace).
const API_LINK: &str = "vapi";
/// The device's end (in the device namespace), as nspawn would name it.
const DEVICE_LINK: &str = "host0";

pub struct Net {
    pub api_ns: String,
    pub device_ns: String,
}

fn ip(args: &[&str]) {
    run_ok(Duration::from_secs(30), "ip", args);
}

/// Namespaces of dead runs.
pub(super) fn sweep(dead: &dyn Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if dead(&name) {
            let _ = run(Duration::from_secs(30), "ip", &["netns", "delete", &name]);
        }
    }
}

impl Net {
    /// The two namespaces and the cable between them, plugged in or not.
    pub fn new(cable_plugged: bool) -> Net {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}-{}-{n}", std::process::id());
        let net = Net {
            api_ns: format!("{base}-api"),
            device_ns: format!("{base}-dev"),
        };
        ip(&["netns", "add", &net.api_ns]);
        ip(&["netns", "add", &net.device_ns]);
        ip(&[
            "link",
            "add",
            "name",
            API_LINK,
            "netns",
            &net.api_ns,
            "type",
            "veth",
            "peer",
            "name",
            DEVICE_LINK,
            "netns",
            &net.device_ns,
        ]);
        let api = &net.api_ns;
        ip(&["-n", api, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            api,
            "addr",
            "add",
            &format!("{API_ADDR}/24"),
            "dev",
            API_LINK,
        ]);
        net.plug(cable_plugged);
        net
    }

    /// Brings the API's end up or down: the device sees carrier or not.
    pub fn plug(&self, plugged: bool) {
        ip(&[
            "-n",
            &self.api_ns,
            "link",
            "set",
            API_LINK,
            if plugged { "up" } else { "down" },
        ]);
    }

    /// Configures the device's end as systemd-networkd does in a booted
    /// image, for tests that run the agent in the device's namespace
    /// without booting: `DEVICE_ADDR/24` on the link, the link up, and
    /// routes over a link without carrier ignored (networkd keeps a link
    /// without carrier unconfigured, so that the API is unreachable at once
    /// instead of after an ARP timeout).
    pub fn configure_device_end(&self) {
        let dev = &self.device_ns;
        ip(&[
            "-n",
            dev,
            "addr",
            "add",
            &format!("{DEVICE_ADDR}/24"),
            "dev",
            DEVICE_LINK,
        ]);
        ip(&["-n", dev, "link", "set", DEVICE_LINK, "up"]);
        run_ok(
            Duration::from_secs(30),
            "ip",
            &[
                "netns",
                "exec",
                dev,
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv4/conf/all/ignore_routes_with_linkdown",
            ],
        );
    }

    /// Runs `f` on a thread in the device's namespace: a process it starts
    /// is on the device's side of the cable.
    pub fn in_device_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.device_ns_path();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let ns = std::fs::File::open(&path).expect("the device namespace");
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("entering the device namespace");
                    f()
                })
                .join()
                .expect("the thread in the device namespace")
        })
    }

    pub fn device_ns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.device_ns)
    }

    /// The double at `API_ADDR:API_PORT` inside the API namespace.
    pub fn start_api(&self, options: Options) -> DeviceApi {
        self.start_api_at(API_ADDR, options)
    }

    /// The double at `FAR_API_ADDR:API_PORT`, which the device cannot reach
    /// until [`Net::route_to_the_far_api`].
    pub fn start_far_api(&self, options: Options) -> DeviceApi {
        ip(&[
            "-n",
            &self.api_ns,
            "addr",
            "add",
            &format!("{FAR_API_ADDR}/32"),
            "dev",
            "lo",
        ]);
        self.start_api_at(FAR_API_ADDR, options)
    }

    /// Gives the device its route to `FAR_API_ADDR`, through the API's end
    /// of the cable, as a router's advertisement or a DHCP lease would.
    pub fn route_to_the_far_api(&self) {
        ip(&[
            "-n",
            &self.device_ns,
            "route",
            "add",
            &format!("{FAR_API_ADDR}/32"),
            "via",
            &API_ADDR.to_string(),
        ]);
    }

    /// The double at `addr:API_PORT` inside the API namespace: a thread
    /// enters the namespace and starts it there, so its socket (and with
    /// it every connection) belongs to that namespace.
    fn start_api_at(&self, addr: Ipv4Addr, options: Options) -> DeviceApi {
        let path = PathBuf::from("/run/netns").join(&self.api_ns);
        let options = Options {
            listen: SocketAddr::from((addr, API_PORT)),
            ..options
        };
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("the API namespace");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("entering the API namespace");
            DeviceApi::start(options)
        })
        .join()
        .expect("starting the API double")
    }

    /// `http://10.241.0.1:8080/ota/devices/`
    pub fn device_api_url() -> String {
        format!("http://{API_ADDR}:{API_PORT}/ota/devices/")
    }

    /// `http://10.241.1.1:8080/ota/devices/`
    pub fn far_device_api_url() -> String {
        format!("http://{FAR_API_ADDR}:{API_PORT}/ota/devices/")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and its peer.
        for ns in [&self.api_ns, &self.device_ns] {
            let _ = run(Duration::from_secs(30), "ip", &["netns", "delete", ns]);
        }
    }
}
