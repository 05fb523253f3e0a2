//! Hostile or broken device files, one case per row: the agent exits 2 with
//! a message naming the file and the problem, prints nothing of the content,
//! and creates nothing.

mod common;

use common::*;
use device_api::{DeviceApi, Options};

#[derive(Debug)]
enum Bad {
    Oversized,
    Binary,
    NotUtf8,
    Directory,
    SymlinkElsewhere,
    Empty,
}

fn make(device: &Device, rel: &str, bad: &Bad) {
    let path = device.path(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    match bad {
        Bad::Oversized => std::fs::write(&path, "A=secretvalue\n".repeat(6000)).unwrap(),
        Bad::Binary => std::fs::write(&path, b"A=secret\0value\n").unwrap(),
        Bad::NotUtf8 => std::fs::write(&path, b"A=secret\xe9value\n").unwrap(),
        Bad::Directory => std::fs::create_dir(&path).unwrap(),
        Bad::SymlinkElsewhere => {
            let target = device.path("elsewhere");
            std::fs::write(&target, "A=secretvalue\n").unwrap();
            std::os::unix::fs::symlink(&target, &path).unwrap();
        }
        Bad::Empty => std::fs::write(&path, "").unwrap(),
    }
}

#[test]
fn every_broken_device_file_is_a_clear_error_that_writes_nothing() {
    let api = DeviceApi::start(Options::default());
    // (file, what is wrong with it, extra flags so that the file is read, expected message)
    let cases: Vec<(&str, Bad, &[&str], &str)> = vec![
        ("etc/sota/hsm", Bad::Oversized, &[], "larger than"),
        ("etc/sota/hsm", Bad::Binary, &[], "NUL bytes"),
        ("etc/sota/hsm", Bad::NotUtf8, &[], "not valid UTF-8"),
        ("etc/sota/hsm", Bad::Directory, &[], "not a regular file"),
        ("etc/sota/hsm", Bad::SymlinkElsewhere, &[], "symbolic link"),
        (
            "etc/sota/hsm",
            Bad::Empty,
            &[],
            "missing HSM_MODULE, HSM_PIN, HSM_SOPIN",
        ),
        (
            "etc/lmp-device-register-token",
            Bad::Oversized,
            &[],
            "larger than",
        ),
        (
            "etc/lmp-device-register-token",
            Bad::Binary,
            &[],
            "NUL bytes",
        ),
        (
            "etc/lmp-device-register-token",
            Bad::NotUtf8,
            &[],
            "not valid UTF-8",
        ),
        (
            "etc/lmp-device-register-token",
            Bad::Directory,
            &[],
            "not a regular file",
        ),
        (
            "etc/lmp-device-register-token",
            Bad::SymlinkElsewhere,
            &[],
            "symbolic link",
        ),
        (
            "etc/lmp-device-register-token",
            Bad::Empty,
            &[],
            "token file is empty",
        ),
        ("etc/sota/tag", Bad::Oversized, &["-t", ""], "larger than"),
        ("etc/sota/tag", Bad::Binary, &["-t", ""], "NUL bytes"),
        ("etc/sota/tag", Bad::NotUtf8, &["-t", ""], "not valid UTF-8"),
        (
            "etc/sota/tag",
            Bad::Directory,
            &["-t", ""],
            "not a regular file",
        ),
        ("etc/sota/tag", Bad::Empty, &["-t", ""], "tag file is empty"),
        ("etc/os-release", Bad::Oversized, &[], "larger than"),
        ("etc/os-release", Bad::Binary, &[], "NUL bytes"),
        ("etc/os-release", Bad::NotUtf8, &[], "not valid UTF-8"),
        ("etc/os-release", Bad::Directory, &[], "not a regular file"),
    ];
    for (rel, bad, extra, expected) in &cases {
        let device = Device::new();
        make(&device, rel, bad);
        let mut args: Vec<&str> = extra.to_vec();
        // An empty -t means "not given": drop the harness's "-t main".
        let run = if args.first() == Some(&"-t") {
            args.drain(..2);
            let mut cmd = device.bare_command();
            cmd.args(["--device-api", &api.url(), "-f", FACTORY, "-i", HWID]);
            Device::output(cmd)
        } else {
            device.run(&api, &args)
        };
        let context = format!("{rel} {bad:?}: {}", run.stderr);
        assert_eq!(run.code, 2, "{context}");
        assert!(run.stderr.contains(expected), "{context}");
        assert!(
            run.stderr.contains(rel),
            "the message names the file: {context}"
        );
        assert!(
            !run.output().contains("secretvalue"),
            "content echoed: {context}"
        );
        assert!(!device.sota().exists(), "{context}");
    }
    assert!(api.requests().is_empty(), "nothing reached the server");
}

#[test]
fn os_release_may_be_a_symlink_as_on_every_lmp_image() {
    let api = DeviceApi::start(Options::default());
    let device = Device::new();
    let real = device.path("usr/lib/os-release");
    write_file(&real, "ID=lmp\nLMP_FACTORY=demo-factory\n", 0o644);
    std::os::unix::fs::symlink("../usr/lib/os-release", device.path("etc/os-release")).unwrap();
    let mut cmd = device.bare_command();
    cmd.args(["--device-api", &api.url(), "-t", "main", "-i", HWID]);
    let run = Device::output(cmd);
    run.assert_code(0).assert_says("factory read from");
    assert_eq!(api.registrations()[0].factory, FACTORY);
}
