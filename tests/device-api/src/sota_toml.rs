//! `sota.toml` as the factory servers build it: a base configuration for the
//! device's sota directory, then the request's overrides.

use toml::{Table, Value};

/// `section → [(key, TOML literal)]`, in request order. An empty literal
/// means "unset".
pub(crate) type Overrides = Vec<(String, Vec<(String, String)>)>;

/// Renders `sota.toml`; the error names the override that is not a TOML literal.
///
/// `gateway` stands in for the device gateway; it is the double's own origin
/// so nothing a test runs can ever reach beyond the loopback.
pub(crate) fn render(
    sota_dir: &str,
    hardware_id: &str,
    gateway: &str,
    overrides: &Overrides,
) -> Result<String, String> {
    let mut config = base(sota_dir, hardware_id, gateway);
    for (section, entries) in overrides {
        let table = config
            .entry(section.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(table) = table else {
            unreachable!("every top-level entry of the base is a table")
        };
        for (key, literal) in entries {
            if literal.is_empty() {
                table.remove(key);
            } else {
                let value = parse_literal(literal).ok_or_else(|| {
                    format!("overrides: {section}.{key} is not a TOML value: {literal}")
                })?;
                table.insert(key.clone(), value);
            }
        }
    }
    toml::to_string(&config).map_err(|e| format!("cannot render sota.toml: {e}"))
}

fn base(sota_dir: &str, hardware_id: &str, gateway: &str) -> Table {
    let dir = sota_dir.trim_end_matches('/');
    let file = |name: &str| format!("{dir}/{name}");
    let mut config = Table::new();
    let mut section = |name: &str, entries: &[(&str, String)]| {
        let table = entries
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
            .collect();
        config.insert(name.into(), Value::Table(table));
    };
    section(
        "tls",
        &[
            ("server", gateway.into()),
            ("ca_source", "file".into()),
            ("pkey_source", "file".into()),
            ("cert_source", "file".into()),
        ],
    );
    section(
        "provision",
        &[
            ("server", gateway.into()),
            ("primary_ecu_hardware_id", hardware_id.into()),
        ],
    );
    section(
        "uptane",
        &[
            ("repo_server", format!("{gateway}/repo")),
            ("key_source", "file".into()),
        ],
    );
    section(
        "pacman",
        &[
            ("type", "ostree+compose_apps".into()),
            ("ostree_server", format!("{gateway}/treehub")),
            ("compose_apps_root", file("compose-apps")),
        ],
    );
    // aktualizr resolves the storage.tls_* names relative to storage.path.
    section(
        "storage",
        &[
            ("type", "sqlite".into()),
            ("path", sota_dir.into()),
            ("tls_cacert_path", "root.crt".into()),
            ("tls_pkey_path", "pkey.pem".into()),
            ("tls_clientcert_path", "client.pem".into()),
        ],
    );
    section(
        "import",
        &[
            ("base_path", sota_dir.into()),
            ("tls_cacert_path", file("root.crt")),
            ("tls_pkey_path", file("pkey.pem")),
            ("tls_clientcert_path", file("client.pem")),
        ],
    );
    config
}

/// Parses one TOML value. Parsing it as the value of a one-key document
/// rejects literals that smuggle in further keys or tables.
fn parse_literal(literal: &str) -> Option<Value> {
    let mut doc: Table = format!("v = {literal}").parse().ok()?;
    if doc.len() != 1 {
        return None;
    }
    doc.remove("v")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(list: &[(&str, &str, &str)]) -> Overrides {
        list.iter()
            .map(|(s, k, v)| (s.to_string(), vec![(k.to_string(), v.to_string())]))
            .collect()
    }

    #[test]
    fn base_points_at_the_sota_dir() {
        let doc: Table = render("/var/sota", "intel-corei7-64", "https://gw", &vec![])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(doc["storage"]["path"].as_str(), Some("/var/sota"));
        assert_eq!(
            doc["import"]["tls_cacert_path"].as_str(),
            Some("/var/sota/root.crt")
        );
        assert_eq!(
            doc["provision"]["primary_ecu_hardware_id"].as_str(),
            Some("intel-corei7-64")
        );
        assert_eq!(doc["pacman"]["type"].as_str(), Some("ostree+compose_apps"));
    }

    #[test]
    fn overrides_set_unset_and_add_sections() {
        let ov = overrides(&[
            ("pacman", "tags", "\"main\""),
            ("storage", "tls_pkey_path", ""),
            ("p11", "label", "\"aktualizr\""),
            ("uptane", "polling_sec", "300"),
            ("tls", "pkey_source", "\"pkcs11\""),
        ]);
        let doc: Table = render("/var/sota", "hw", "https://gw", &ov)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(doc["pacman"]["tags"].as_str(), Some("main"));
        assert!(doc["storage"].get("tls_pkey_path").is_none());
        assert_eq!(doc["p11"]["label"].as_str(), Some("aktualizr"));
        assert_eq!(doc["uptane"]["polling_sec"].as_integer(), Some(300));
        assert_eq!(doc["tls"]["pkey_source"].as_str(), Some("pkcs11"));
    }

    #[test]
    fn values_are_escaped_not_concatenated() {
        let doc: Table = render("/var/so\"ta", "h\"w\n[x]", "https://gw", &vec![])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(doc["storage"]["path"].as_str(), Some("/var/so\"ta"));
        assert_eq!(
            doc["provision"]["primary_ecu_hardware_id"].as_str(),
            Some("h\"w\n[x]")
        );
        assert!(doc.get("x").is_none());
    }

    #[test]
    fn bad_literals_are_rejected() {
        for bad in [
            "main",
            "\"a\"\nx = 1",
            "\"a\"\n[evil]",
            "[1,",
            "\"unterminated",
        ] {
            let err = render(
                "/var/sota",
                "hw",
                "gw",
                &overrides(&[("pacman", "tags", bad)]),
            )
            .unwrap_err();
            assert!(err.contains("pacman.tags"), "{bad:?}: {err}");
        }
    }
}
