//! Every committed seed and regression input, through its target's
//! properties: what the fuzzers found stays fixed, in a plain `cargo test`.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} holds no seed", dir.display());
    for input in inputs {
        eprintln!("{}", input.display());
        check(&std::fs::read(&input).unwrap());
    }
}

macro_rules! targets {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target), lmp_device_register_fuzz::$target);
            }
        )*
    };
}

targets!(
    lmp_answer,
    dps_factory,
    dps_status,
    losant_credentials,
    losant_jwt,
    tii_provision,
    tii_nats,
    retry_after,
    server_message,
    sysfs_mac,
    device_files,
    journal,
    config_file,
);
