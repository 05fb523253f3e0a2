//! The default manufacturer id: the MAC address of a network interface, read
//! from sysfs (`/sys/class/net/<interface>/address`).
//!
//! Losant refuses a manufacturer id it has seen before, forever, so the id
//! must be unique to the device and the same on every boot. The address a
//! network card was made with is both. Which interface: the first (lowest
//! `ifindex`) that is not the loopback and is not virtual, i.e. one with a
//! `device` link (a NIC on a bus: PCI, USB, SDIO, platform). Bridges, veth,
//! tun, docker and wireguard interfaces have no `device` link and addresses
//! that are random or copied from another interface.
//!
//! The kernel says where the current address came from in
//! `addr_assign_type`: 0 = the card's own (permanent), 1 = random, 2 =
//! stolen from another device, 3 = set from user space. A random address
//! would give the device a new id on every boot and is refused; an address
//! set from user space is used with a warning (it may not be the card's).

use std::path::{Path, PathBuf};

/// An interface chosen for its address, and what to warn about.
#[derive(Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub interface: String,
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub warning: Option<String>,
}

/// A sysfs attribute, trimmed; `None` when it cannot be read.
fn attribute(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|text| text.trim().to_string())
}

/// The first non-loopback, non-virtual interface in `net_dir`.
pub fn default_interface(net_dir: &Path) -> Result<String, String> {
    let entries = std::fs::read_dir(net_dir).map_err(|e| format!("{}: {e}", net_dir.display()))?;
    let mut candidates: Vec<(u64, String)> = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let dir = entry.path();
        // ARPHRD_LOOPBACK is 772; `lo` has no device link either, but say so.
        let loopback = attribute(&dir, "type").as_deref() == Some("772");
        if loopback || !dir.join("device").exists() {
            continue;
        }
        let index = attribute(&dir, "ifindex")
            .and_then(|i| i.parse().ok())
            .unwrap_or(u64::MAX);
        candidates.push((index, name));
    }
    candidates.sort();
    candidates
        .into_iter()
        .next()
        .map(|(_, name)| name)
        .ok_or_else(|| {
            format!(
                "{} lists no physical network interface (one with a device link)",
                net_dir.display()
            )
        })
}

/// The address of `interface` in `net_dir`, checked to be a usable id.
pub fn interface_address(net_dir: &Path, interface: &str) -> Result<InterfaceAddress, String> {
    if interface.is_empty() || interface.contains('/') || interface.starts_with('.') {
        return Err(format!("{interface:?} is not a network interface name"));
    }
    let dir: PathBuf = net_dir.join(interface);
    let path = dir.join("address");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "no network interface {interface} ({} does not exist)",
                path.display()
            )
        } else {
            format!("{}: {e}", path.display())
        }
    })?;
    let assign_type = attribute(&dir, "addr_assign_type");
    checked_address(interface, &path, &text, assign_type.as_deref())
}

/// What the sysfs files of `interface` say, checked: `text` is its
/// `address` file (read from `path`), `assign_type` its `addr_assign_type`
/// (trimmed; `None` when it cannot be read).
pub fn checked_address(
    interface: &str,
    path: &Path,
    text: &str,
    assign_type: Option<&str>,
) -> Result<InterfaceAddress, String> {
    let mac = parse_mac(text.trim())
        .ok_or_else(|| format!("{}: not an Ethernet MAC address", path.display()))?;
    if mac == "00:00:00:00:00:00" {
        return Err(format!("{}: the address is all zeros", path.display()));
    }
    let warning = match assign_type {
        Some("1") => {
            return Err(format!(
                "the address of {interface} is random (addr_assign_type 1) and would change on the next boot"
            ))
        }
        Some(assigned @ ("2" | "3")) => Some(format!(
            "the address of {interface} was not assigned by its network card (addr_assign_type {assigned}); it is the manufacturer id from now on"
        )),
        _ => None,
    };
    Ok(InterfaceAddress {
        interface: interface.to_string(),
        mac,
        warning,
    })
}

/// Six hex octets separated by colons, in lower case.
fn parse_mac(text: &str) -> Option<String> {
    let octets: Vec<&str> = text.split(':').collect();
    let valid = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    valid.then(|| text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interface as sysfs shows it; `physical` adds the `device` link.
    fn interface(net: &Path, name: &str, index: u32, address: &str, physical: bool) {
        let dir = net.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("address"), format!("{address}\n")).unwrap();
        std::fs::write(dir.join("ifindex"), format!("{index}\n")).unwrap();
        std::fs::write(dir.join("type"), if name == "lo" { "772\n" } else { "1\n" }).unwrap();
        if physical {
            std::fs::create_dir_all(net.join("bus").join(name)).unwrap();
            std::os::unix::fs::symlink(net.join("bus").join(name), dir.join("device")).unwrap();
        }
    }

    #[test]
    fn the_first_physical_interface_by_index_is_chosen() {
        let root = tempfile::tempdir().unwrap();
        let net = root.path().join("net");
        interface(&net, "lo", 1, "00:00:00:00:00:00", false);
        interface(&net, "docker0", 2, "02:42:ac:11:00:01", false);
        interface(&net, "wlan0", 4, "AA:BB:CC:00:00:04", true);
        interface(&net, "eth1", 3, "AA:BB:CC:00:00:03", true);
        assert_eq!(default_interface(&net).unwrap(), "eth1");
        let address = interface_address(&net, "eth1").unwrap();
        assert_eq!(address.mac, "aa:bb:cc:00:00:03");
        assert_eq!(address.warning, None);
    }

    #[test]
    fn no_physical_interface_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let net = root.path().join("net");
        interface(&net, "lo", 1, "00:00:00:00:00:00", false);
        interface(&net, "br0", 2, "02:00:00:00:00:01", false);
        let err = default_interface(&net).unwrap_err();
        assert!(err.contains("no physical network interface"), "{err}");
        let err = default_interface(&root.path().join("absent")).unwrap_err();
        assert!(err.contains("absent"), "{err}");
    }

    #[test]
    fn unusable_addresses_are_refused_and_odd_ones_warned_about() {
        let root = tempfile::tempdir().unwrap();
        let net = root.path().join("net");
        interface(&net, "eth0", 2, "aa:bb:cc:dd:ee:ff", true);
        interface(&net, "ib0", 3, "80:00:02:08:fe:80:00:00:00:00:00:00", true);
        interface(&net, "zero", 4, "00:00:00:00:00:00", true);
        for (name, expected) in [
            ("ib0", "not an Ethernet MAC address"),
            ("zero", "all zeros"),
            ("nope", "no network interface nope"),
            ("../etc", "not a network interface name"),
        ] {
            let err = interface_address(&net, name).unwrap_err();
            assert!(err.contains(expected), "{name}: {err}");
        }
        std::fs::write(net.join("eth0/addr_assign_type"), "1\n").unwrap();
        let err = interface_address(&net, "eth0").unwrap_err();
        assert!(err.contains("random"), "{err}");
        std::fs::write(net.join("eth0/addr_assign_type"), "3\n").unwrap();
        let address = interface_address(&net, "eth0").unwrap();
        assert!(address.warning.unwrap().contains("addr_assign_type 3"));
        std::fs::write(net.join("eth0/addr_assign_type"), "0\n").unwrap();
        assert_eq!(interface_address(&net, "eth0").unwrap().warning, None);
    }
}
