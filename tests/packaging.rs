//! Checks of what ships around the binary: the generated man page and shell
//! completions, the Yocto recipe and its crates list, the example device
//! files and the first-boot systemd unit.
//!
//! Refresh the generated files with `UPDATE_GENERATED=1 cargo test --test
//! packaging` and the crates list with `python3 yocto-recipe/gen-crates-inc.py`.
//!
//! Needs `python3` (3.11 or later, for tomllib) and `md5sum`; runs
//! `systemd-analyze` (Debian package `systemd`) when it is installed and says
//! so when it is not.

use clap::CommandFactory;
use lmp_device_register::cli::Cli;
use lmp_device_register::config::parse_hsm_file;
use lmp_device_register::config::parse_single_line;
use lmp_device_register::error::ErrorKind;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = "lmp-device-register";
const RECIPE: &str = "yocto-recipe/lmp-device-register-rs_git.bb";
const UNIT: &str = "systemd/lmp-device-register.service";
const TMPFILES: &str = "systemd/lmp-device-register.tmpfiles";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn cargo_manifest() -> toml::Table {
    read("Cargo.toml").parse().expect("Cargo.toml parses")
}

fn cargo_package_field(field: &str) -> String {
    cargo_manifest()["package"][field]
        .as_str()
        .unwrap_or_else(|| panic!("Cargo.toml has no package.{field}"))
        .to_string()
}

// ---------------------------------------------------------------------------
// Generated documentation: man page and completions
// ---------------------------------------------------------------------------

/// What the man page says beyond the options, in roff. Exit codes come from
/// `ErrorKind` so that the page cannot disagree with the program.
fn man_extra_sections() -> String {
    fn describe(kind: ErrorKind) -> &'static str {
        // Exhaustive on purpose: a new kind must be documented here.
        match kind {
            ErrorKind::Internal => "an unexpected local failure (I/O error or a bug)",
            ErrorKind::Config => "bad flags, environment or configuration files",
            ErrorKind::AlreadyRegistered => {
                "the device is already registered and \\-\\-force was not given (\\-\\-boot reports success instead)"
            }
            ErrorKind::Rejected => "the registration API refused the request (HTTP 4xx)",
            ErrorKind::Unavailable => {
                "the API could not be reached, or kept failing until the retry deadline"
            }
            ErrorKind::BadResponse => "the API accepted the device but its answer cannot be used",
            ErrorKind::Hsm => "the PKCS#11 module or token failed",
            ErrorKind::Busy => "another registration or aktualizr\\-lite holds the device",
            ErrorKind::Interrupted => "SIGINT or SIGTERM stopped the run cleanly",
        }
    }
    let mut roff = String::from(".SH \"EXIT STATUS\"\n.TP\n0\nthe device is registered\n");
    for kind in ErrorKind::ALL {
        roff.push_str(&format!(
            ".TP\n{}\n{} ({})\n",
            kind.exit_code(),
            describe(kind),
            kind.as_str().replace('-', "\\-")
        ));
    }
    roff.push_str(
        r#".SH ENVIRONMENT
Flags take precedence over the environment, the environment over files, files over the defaults built in.
.TP
DEVICE_API, OAUTH_BASE
registration endpoint and OAuth base URL
.TP
DEVICE_API_CACERT
CA bundle to trust for HTTPS instead of the system roots
.TP
DEVICE_FACTORY
factory name
.TP
PRODUCTION
1/true/yes/on or 0/false/no/off
.TP
TOKEN_FILE
file holding the API token
.TP
APPS
comma\-separated compose apps
.TP
USE_HOSTNAME
name the device after /etc/hostname
.SH FILES
.TP
/etc/lmp\-device\-register\-token
API token, one line (mode 0600)
.TP
/etc/sota/tag
tag to follow, one line
.TP
/etc/sota/hsm
HSM_MODULE, HSM_PIN and HSM_SOPIN of a PKCS#11 token (mode 0600)
.TP
/etc/os\-release
LMP_FACTORY and LMP_FACTORY_TAG
.TP
/var/sota
keys, certificates and sota.toml written by a registration (the directory is made at boot by /usr/lib/tmpfiles.d/lmp\-device\-register.conf)
.TP
/var/sota/compose\-apps
the compose apps preloaded in the image
.TP
/usr/lib/systemd/system/lmp\-device\-register.service
first\-boot registration (journalctl \-u lmp\-device\-register; the outcome of every run: journalctl MESSAGE_ID=a6b0462edfb34591aeeb05d885a78cfb, with the fields REGISTRATION_RESULT, DEVICE_UUID, FACTORY, PROFILE, ERROR_KIND and EXIT_CODE)
.SH "SEE ALSO"
\fBsystemctl\fR(1), \fBjournalctl\fR(1)
"#,
    );
    roff
}

fn man_page() -> Vec<u8> {
    let man = clap_mangen::Man::new(Cli::command()).section("8");
    let mut page = Vec::new();
    man.render(&mut page).expect("rendering to memory");
    let page = String::from_utf8(page).expect("the man page is UTF-8");
    // The extra sections go before VERSION, where man pages keep them.
    let at = page
        .find(".SH VERSION")
        .expect("clap_mangen renders a VERSION section");
    format!("{}{}{}", &page[..at], man_extra_sections(), &page[at..]).into_bytes()
}

fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut out);
    out
}

fn generated_files() -> Vec<(&'static str, Vec<u8>)> {
    use clap_complete::Shell;
    vec![
        ("docs/lmp-device-register.8", man_page()),
        (
            "docs/completions/lmp-device-register.bash",
            completion(Shell::Bash),
        ),
        (
            "docs/completions/_lmp-device-register",
            completion(Shell::Zsh),
        ),
        (
            "docs/completions/lmp-device-register.fish",
            completion(Shell::Fish),
        ),
    ]
}

#[test]
fn generated_docs_match_the_command_line() {
    let update = std::env::var_os("UPDATE_GENERATED").is_some_and(|v| !v.is_empty());
    let mut stale = Vec::new();
    for (relative, content) in generated_files() {
        let path = repo().join(relative);
        let current = std::fs::read(&path).unwrap_or_default();
        if current == content {
            continue;
        }
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &content).unwrap();
            println!("rewrote {relative}");
        } else {
            stale.push(relative);
        }
    }
    assert!(
        stale.is_empty(),
        "generated files are stale: {stale:?}\nrefresh them with: UPDATE_GENERATED=1 cargo test --test packaging"
    );
}

#[test]
fn man_page_documents_every_long_option_and_the_files() {
    let page = String::from_utf8(man_page()).unwrap();
    for arg in Cli::command().get_arguments() {
        if let Some(long) = arg.get_long() {
            let escaped = format!("\\-\\-{}", long.replace('-', "\\-"));
            assert!(
                page.contains(&escaped),
                "--{long} missing from the man page"
            );
        }
    }
    for needle in [
        ".SH \"EXIT STATUS\"",
        ".SH FILES",
        "/etc/sota/hsm",
        ".TH lmp-device-register 8",
    ] {
        assert!(
            page.contains(needle),
            "{needle:?} missing from the man page"
        );
    }
}

// ---------------------------------------------------------------------------
// BitBake: a small parser for the assignments of a recipe
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Statement {
    Assign {
        export: bool,
        /// Variable name with its overrides, e.g. `SYSTEMD_SERVICE:${PN}`.
        var: String,
        /// `SRC_URI[name.sha256sum]` → `name.sha256sum`.
        flag: Option<String>,
        op: &'static str,
        value: String,
    },
    Export(String),
    Inherit(Vec<String>),
    Require(String),
    Function {
        name: String,
        body: String,
    },
    Other(String),
}

const OPERATORS: [&str; 8] = ["??=", "?=", ":=", "+=", "=+", ".=", "=.", "="];

fn unquote_bitbake(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let quote = raw.chars().next().ok_or("missing value")?;
    if !matches!(quote, '"' | '\'') || raw.len() < 2 || !raw.ends_with(quote) {
        return Err(format!("value must be quoted: {raw}"));
    }
    Ok(raw[1..raw.len() - 1].to_string())
}

fn parse_assignment(line: &str) -> Result<Option<Statement>, String> {
    let (export, rest) = match line.strip_prefix("export ") {
        Some(rest) => (true, rest.trim_start()),
        None => (false, line),
    };
    // The first '=' outside a [flag] belongs to the operator.
    let mut depth = 0;
    let mut eq = None;
    for (i, c) in rest.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '"' | '\'' => break,
            '=' if depth == 0 => {
                eq = Some(i);
                break;
            }
            _ => {}
        }
    }
    let Some(eq) = eq else {
        return Ok(if export && !rest.contains(char::is_whitespace) {
            Some(Statement::Export(rest.to_string()))
        } else {
            None
        });
    };
    let (left, right) = (&rest[..eq], &rest[eq + 1..]);
    let (op, key, value) = if let Some(key) = left.strip_suffix("??") {
        ("??=", key, right)
    } else if let Some(key) = left.strip_suffix('?') {
        ("?=", key, right)
    } else if let Some(key) = left.strip_suffix(':') {
        (":=", key, right)
    } else if let Some(key) = left.strip_suffix('+') {
        ("+=", key, right)
    } else if let Some(key) = left.strip_suffix('.') {
        (".=", key, right)
    } else if let Some(value) = right.strip_prefix('+') {
        ("=+", left, value)
    } else if let Some(value) = right.strip_prefix('.') {
        ("=.", left, value)
    } else {
        ("=", left, right)
    };
    let op = OPERATORS.iter().find(|o| **o == op).copied().unwrap();
    let key = key.trim();
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-${}:./+%@".contains(c))
    };
    let (var, flag) = match key.split_once('[') {
        Some((var, flag)) => {
            let flag = flag.strip_suffix(']').ok_or(format!("bad flag in {key}"))?;
            (var, Some(flag.to_string()))
        }
        None => (key, None),
    };
    if !valid(var) {
        return Err(format!("bad variable name {var:?}"));
    }
    Ok(Some(Statement::Assign {
        export,
        var: var.to_string(),
        flag,
        op,
        value: unquote_bitbake(value)?,
    }))
}

/// Parses the statements of a recipe, bbappend or include file: assignments
/// with every operator, flags, overrides, `export`, line continuations,
/// `inherit`, `require`/`include`, and shell or python functions (kept whole).
fn parse_bitbake(text: &str) -> Result<Vec<Statement>, String> {
    let mut statements = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, first)) = lines.next() {
        let at = |e: String| format!("line {}: {e}", index + 1);
        let trimmed = first.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed.ends_with('{') && trimmed.contains("()") {
            let name = trimmed.split("()").next().unwrap().trim();
            let name = name
                .strip_prefix("python ")
                .unwrap_or(name)
                .trim()
                .to_string();
            let mut body = String::new();
            loop {
                let (_, line) = lines
                    .next()
                    .ok_or_else(|| at(format!("{name}: no closing brace")))?;
                if line.trim_end() == "}" {
                    break;
                }
                body.push_str(line);
                body.push('\n');
            }
            statements.push(Statement::Function { name, body });
            continue;
        }
        let mut logical = first.to_string();
        while logical.ends_with('\\') {
            logical.pop();
            let (_, next) = lines
                .next()
                .ok_or_else(|| at("continuation at end of file".into()))?;
            logical.push_str(next);
        }
        let logical = logical.trim();
        if let Some(classes) = logical.strip_prefix("inherit ") {
            statements.push(Statement::Inherit(
                classes.split_whitespace().map(str::to_string).collect(),
            ));
        } else if let Some(file) = logical
            .strip_prefix("require ")
            .or_else(|| logical.strip_prefix("include "))
        {
            statements.push(Statement::Require(file.trim().to_string()));
        } else if let Some(assign) = parse_assignment(logical).map_err(at)? {
            statements.push(assign);
        } else if ["addtask ", "addhandler ", "EXPORT_FUNCTIONS "]
            .iter()
            .any(|keyword| logical.starts_with(keyword))
        {
            statements.push(Statement::Other(logical.to_string()));
        } else {
            return Err(at(format!("not understood: {logical}")));
        }
    }
    Ok(statements)
}

struct Recipe {
    statements: Vec<Statement>,
}

impl Recipe {
    fn parse(relative: &str) -> Recipe {
        let statements =
            parse_bitbake(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"));
        Recipe { statements }
    }

    /// The value of a plain variable after every operator of this file, then
    /// `:append`, `:prepend` and `:remove` (what BitBake does within one file).
    fn value(&self, var: &str) -> Option<String> {
        let mut value: Option<String> = None;
        let mut weak: Option<String> = None;
        let (mut appends, mut prepends, mut removes) = (Vec::new(), Vec::new(), Vec::new());
        for statement in &self.statements {
            let Statement::Assign {
                var: v,
                flag: None,
                op,
                value: new,
                ..
            } = statement
            else {
                continue;
            };
            if v == var {
                let joined = |a: &str, b: &str, sep: &str| format!("{a}{sep}{b}");
                let old = value.clone();
                value = Some(match (*op, old) {
                    ("=" | ":=", _) => new.clone(),
                    ("?=", Some(old)) => old,
                    ("?=", None) => new.clone(),
                    ("??=", old) => {
                        weak = Some(new.clone());
                        match old {
                            Some(old) => old,
                            None => continue,
                        }
                    }
                    ("+=", old) => joined(&old.unwrap_or_default(), new, " "),
                    ("=+", old) => joined(new, &old.unwrap_or_default(), " "),
                    (".=", old) => joined(&old.unwrap_or_default(), new, ""),
                    ("=.", old) => joined(new, &old.unwrap_or_default(), ""),
                    (other, _) => unreachable!("{other}"),
                });
            } else if v.strip_suffix(":append") == Some(var) {
                appends.push(new.clone());
            } else if v.strip_suffix(":prepend") == Some(var) {
                prepends.push(new.clone());
            } else if v.strip_suffix(":remove") == Some(var) {
                removes.push(new.clone());
            }
        }
        let edited = !(appends.is_empty() && prepends.is_empty());
        let mut value = value.or(weak).or_else(|| edited.then(String::new))?;
        for p in prepends {
            value = p + &value;
        }
        for a in appends {
            value.push_str(&a);
        }
        for r in removes {
            let gone: BTreeSet<&str> = r.split_whitespace().collect();
            value = value
                .split_whitespace()
                .filter(|w| !gone.contains(w))
                .collect::<Vec<_>>()
                .join(" ");
        }
        Some(value)
    }

    /// `value`, with `${VAR}` references to variables of this file expanded
    /// (as BitBake does when the value is used); `${@...}` and variables set
    /// elsewhere stay as they are.
    fn expanded(&self, var: &str) -> Option<String> {
        let mut value = self.value(var)?;
        for _ in 0..16 {
            let mut out = String::new();
            let mut rest = value.as_str();
            while let Some(at) = rest.find("${") {
                out.push_str(&rest[..at]);
                let reference = &rest[at..];
                let end = reference.find('}').map_or(reference.len(), |e| e + 1);
                let name = &reference[2..end.saturating_sub(1)];
                match (name.starts_with('@'), self.value(name)) {
                    (false, Some(inner)) => out.push_str(&inner),
                    _ => out.push_str(&reference[..end]),
                }
                rest = &reference[end..];
            }
            out.push_str(rest);
            if out == value {
                return Some(value);
            }
            value = out;
        }
        panic!("{var}: references nest too deep: {value}")
    }

    /// Every `VAR[flag]` of this file, the last assignment of each flag.
    fn flags(&self, var: &str) -> std::collections::BTreeMap<String, String> {
        self.statements
            .iter()
            .filter_map(|s| match s {
                Statement::Assign {
                    var: v,
                    flag: Some(f),
                    value,
                    ..
                } if v == var => Some((f.clone(), value.clone())),
                _ => None,
            })
            .collect()
    }

    /// This file followed by `other` (a bbappend, or a factory's settings).
    fn then(&self, other: &Recipe) -> Recipe {
        Recipe {
            statements: self
                .statements
                .iter()
                .chain(&other.statements)
                .cloned()
                .collect(),
        }
    }

    fn required(&self, var: &str) -> String {
        self.value(var)
            .unwrap_or_else(|| panic!("the recipe does not set {var}"))
    }

    fn words(&self, var: &str) -> Vec<String> {
        self.required(var)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    fn flag(&self, var: &str, flag: &str) -> Option<String> {
        self.statements.iter().rev().find_map(|s| match s {
            Statement::Assign {
                var: v,
                flag: Some(f),
                value,
                ..
            } if v == var && f == flag => Some(value.clone()),
            _ => None,
        })
    }

    fn exported(&self) -> BTreeSet<String> {
        self.statements
            .iter()
            .filter_map(|s| match s {
                Statement::Assign {
                    export: true, var, ..
                }
                | Statement::Export(var) => Some(var.clone()),
                _ => None,
            })
            .collect()
    }

    fn inherits(&self) -> BTreeSet<String> {
        self.statements
            .iter()
            .filter_map(|s| match s {
                Statement::Inherit(classes) => Some(classes.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn requires(&self) -> Vec<String> {
        self.statements
            .iter()
            .filter_map(|s| match s {
                Statement::Require(file) => Some(file.clone()),
                _ => None,
            })
            .collect()
    }

    fn function(&self, name: &str) -> String {
        self.statements
            .iter()
            .find_map(|s| match s {
                Statement::Function { name: n, body } if n == name => Some(body.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("the recipe has no {name}"))
    }
}

#[test]
fn bitbake_parser_understands_operators_flags_and_continuations() {
    let text = r#"
# comment
A = "one"
A += "two"
A:append = " three"
A:remove = "one"
B ?= "weak"
B ?= "ignored"
C ??= "default"
D = "x"
D =+ "w"
D .= "y"
export E = "${MACHINE}"
export F
SRC_URI[foo-1.0.sha256sum] = "abc"
L = " \
    a \
    b \
"
inherit cargo systemd
require ${BPN}-crates.inc
do_install:append() {
	install -m 0644 ${S}/x ${D}/y
}
"#;
    let recipe = Recipe {
        statements: parse_bitbake(text).unwrap(),
    };
    assert_eq!(recipe.value("A").unwrap(), "two three");
    assert_eq!(recipe.value("B").unwrap(), "weak");
    assert_eq!(recipe.value("C").unwrap(), "default");
    assert_eq!(recipe.value("D").unwrap(), "w xy");
    assert_eq!(recipe.words("L"), ["a", "b"]);
    assert_eq!(recipe.flag("SRC_URI", "foo-1.0.sha256sum").unwrap(), "abc");
    assert_eq!(
        recipe.exported(),
        BTreeSet::from(["E".to_string(), "F".to_string()])
    );
    assert_eq!(
        recipe.inherits(),
        BTreeSet::from(["cargo".to_string(), "systemd".to_string()])
    );
    assert_eq!(recipe.requires(), ["${BPN}-crates.inc"]);
    assert!(recipe.function("do_install:append").contains("${S}/x"));
    assert_eq!(recipe.flags("SRC_URI").len(), 1);

    let expanding = Recipe {
        statements: parse_bitbake(
            "A ??= \"${B}\"\nB ??= \"\"\nC = \"${A}-${@d.getVar('A')}-${UNSET}\"\n",
        )
        .unwrap(),
    };
    assert_eq!(expanding.expanded("A").unwrap(), "");
    let set_later = expanding.then(&Recipe {
        statements: parse_bitbake("B = \"1\"\n").unwrap(),
    });
    assert_eq!(set_later.expanded("A").unwrap(), "1");
    assert_eq!(
        set_later.expanded("C").unwrap(),
        "1-${@d.getVar('A')}-${UNSET}"
    );
    assert!(
        parse_bitbake("python h() {\n    pass\n}\naddhandler h\nh[eventmask] = \"x\"\n").is_ok()
    );
    assert!(parse_bitbake("A = unquoted\n").is_err());
    assert!(parse_bitbake("what is this\n").is_err());
}

fn md5_hex(path: &Path) -> String {
    let output = Command::new("md5sum")
        .arg(path)
        .output()
        .expect("md5sum (coreutils) runs");
    assert!(output.status.success(), "md5sum {} failed", path.display());
    String::from_utf8(output.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Names the agent reads with option_env! at build time.
fn build_time_variables() -> BTreeSet<String> {
    fn scan(dir: &Path, names: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                scan(&path, names);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for piece in text.split("option_env!(\"").skip(1) {
                names.insert(piece.split('"').next().unwrap().to_string());
            }
        }
    }
    let mut names = BTreeSet::new();
    scan(&repo().join("src"), &mut names);
    names
}

#[test]
fn recipe_builds_this_tree_with_its_defaults() {
    let recipe = Recipe::parse(RECIPE);

    // Licence file: a checksum of the file that is here.
    let chksums = recipe.words("LIC_FILES_CHKSUM");
    assert!(!chksums.is_empty());
    for entry in chksums {
        let (file, params) = entry
            .strip_prefix("file://")
            .and_then(|e| e.split_once(';'))
            .unwrap_or_else(|| panic!("unexpected LIC_FILES_CHKSUM entry {entry}"));
        let md5 = params
            .split(';')
            .find_map(|p| p.strip_prefix("md5="))
            .expect("an md5= parameter");
        assert_eq!(
            md5,
            md5_hex(&repo().join(file)),
            "md5 of {file} in LIC_FILES_CHKSUM"
        );
    }

    let s = recipe.required("S");
    assert!(s.starts_with("${UNPACKDIR}/"), "S = {s}");
    let pv = recipe.required("PV");
    assert!(
        pv.starts_with(&format!("{}+git", cargo_package_field("version"))),
        "PV {pv} does not follow Cargo.toml's version"
    );

    // Classes, and the crates list next to the recipe.
    let inherits = recipe.inherits();
    for class in ["cargo", "cargo-update-recipe-crates", "systemd"] {
        assert!(inherits.contains(class), "inherit {class}");
    }
    let recipe_name = Path::new(RECIPE)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .split('_')
        .next()
        .unwrap()
        .to_string();
    let requires = recipe.requires();
    assert_eq!(requires, ["${BPN}-crates.inc"]);
    let inc = Path::new(RECIPE)
        .parent()
        .unwrap()
        .join(format!("{recipe_name}-crates.inc"));
    assert!(repo().join(&inc).is_file(), "{} is missing", inc.display());

    // The minimum Rust version stated in the recipe is Cargo.toml's.
    let rust_version = cargo_package_field("rust-version");
    assert!(
        read(RECIPE).contains(&format!("rust-version is {rust_version}")),
        "the recipe's comment on Rust releases must name rust-version {rust_version}"
    );

    // Build-time defaults: every option_env! of the agent reaches cargo.
    let exported = recipe.exported();
    for name in build_time_variables() {
        // OE's bitbake.conf exports SOURCE_DATE_EPOCH to every task.
        if name == "SOURCE_DATE_EPOCH" {
            continue;
        }
        assert!(
            exported.contains(&name),
            "the recipe does not export {name}"
        );
    }
    assert_eq!(recipe.required("HARDWARE_ID"), "${MACHINE}");
    assert_eq!(recipe.required("PACKAGE_ARCH"), "${MACHINE_ARCH}");
    assert!(recipe.flag("PACKAGECONFIG", "production").is_some());
    let production = recipe.required("PRODUCTION");
    assert!(
        production.contains("'production', '1', '0'"),
        "PRODUCTION = {production}"
    );
    assert!(recipe
        .value("LMP_DEVICE_API")
        .unwrap()
        .starts_with("https://"));
    assert_eq!(recipe.required("DEVICE_API"), "${LMP_DEVICE_API}");

    // Units, man page and completions installed from files that exist.
    let services = recipe.words("SYSTEMD_SERVICE:${PN}");
    assert!(!services.is_empty());
    for unit in &services {
        assert!(
            repo().join("systemd").join(unit).is_file(),
            "systemd/{unit} is missing"
        );
    }
    let install = recipe.function("do_install:append");
    let installed: Vec<&str> = install
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("${S}/"))
        .collect();
    for unit in &services {
        assert!(
            installed.contains(&format!("systemd/{unit}").as_str()),
            "{unit} not installed"
        );
    }
    for (generated, _) in generated_files() {
        assert!(installed.contains(&generated), "{generated} not installed");
    }
    // Everything in systemd/ reaches the image, the tmpfiles entry where
    // systemd-tmpfiles reads it at boot.
    for entry in std::fs::read_dir(repo().join("systemd")).unwrap() {
        let file = format!("systemd/{}", entry.unwrap().file_name().to_string_lossy());
        assert!(installed.contains(&file.as_str()), "{file} not installed");
    }
    assert!(
        install.contains(&format!(
            "${{S}}/{TMPFILES} \\\n\t\t${{D}}${{nonarch_libdir}}/tmpfiles.d/lmp-device-register.conf"
        )),
        "{TMPFILES} must become /usr/lib/tmpfiles.d/lmp-device-register.conf"
    );
    assert!(recipe
        .words("FILES:${PN}")
        .contains(&"${nonarch_libdir}/tmpfiles.d/lmp-device-register.conf".to_string()));
    for file in installed {
        assert!(
            repo().join(file).is_file(),
            "do_install installs missing {file}"
        );
    }

    // One package replaces the C++ tool and the auto-register script.
    for var in ["RPROVIDES:${PN}", "RREPLACES:${PN}", "RCONFLICTS:${PN}"] {
        let names = recipe.words(var);
        for old in ["lmp-device-register", "lmp-device-auto-register"] {
            assert!(names.iter().any(|n| n == old), "{var} lacks {old}");
        }
    }
}

/// Runs git in this checkout; `None` when git or the history is not there.
fn git(args: &[&str]) -> Option<std::process::Output> {
    Command::new("git")
        .args(args)
        .current_dir(repo())
        .output()
        .ok()
        .filter(|o| o.status.success() || o.status.code() == Some(1))
}

#[test]
fn recipe_fetches_this_project_from_a_named_repository_at_a_pinned_commit() {
    let recipe = Recipe::parse(RECIPE);
    const REPOSITORY: &str = "LMP_DEVICE_REGISTER_RS_GIT";

    // The git entry is the repository variable plus a branch, nothing else.
    let src_uri = recipe.words("SRC_URI");
    let git_entry = format!("${{{REPOSITORY}}};branch=${{LMP_DEVICE_REGISTER_RS_BRANCH}}");
    assert_eq!(src_uri, [git_entry.as_str()], "SRC_URI");
    assert_eq!(
        recipe.expanded("LMP_DEVICE_REGISTER_RS_BRANCH").as_deref(),
        Some("main")
    );

    // No repository is built in: not the C++ tool's, not any other. Parsing
    // stops, saying what to set, until a layer sets one (a skipped recipe
    // would let BitBake fall back to meta-lmp's C++ tool without a word).
    assert_eq!(recipe.value(REPOSITORY).as_deref(), Some(""));
    let text = read(RECIPE);
    for cxx in [
        "github.com/foundriesio/lmp-device-register",
        "foundriesio/lmp-device-register.git",
    ] {
        assert!(!text.contains(cxx), "the recipe names the C++ repository");
    }
    let check = "lmp_device_register_rs_check_settings";
    let handler = recipe.function(check);
    assert!(
        handler.contains(&format!("d.getVar(\"{REPOSITORY}\")"))
            && handler.contains("bb.fatal(")
            && !handler.contains("SkipRecipe")
            && handler.contains(&format!("\"{REPOSITORY} is not set")),
        "the parse-time check must stop the parse, naming {REPOSITORY}:\n{handler}"
    );
    assert!(recipe
        .statements
        .contains(&Statement::Other(format!("addhandler {check}"))));
    // Before the classes' anonymous functions read SRC_URI.
    assert_eq!(
        recipe.flag(check, "eventmask").as_deref(),
        Some("bb.event.RecipePreFinalise")
    );

    // Pinned: parsing needs no network and a build is reproducible.
    let srcrev = recipe.required("SRCREV");
    assert!(
        srcrev.len() == 40 && srcrev.chars().all(|c| c.is_ascii_hexdigit()),
        "SRCREV must be a pinned commit, not {srcrev}"
    );
    match git(&["cat-file", "-t", &srcrev]) {
        Some(out) if out.status.success() => {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "commit");
            let ancestor = git(&["merge-base", "--is-ancestor", &srcrev, "HEAD"]).unwrap();
            assert!(
                ancestor.status.success(),
                "SRCREV {srcrev} is not in this branch's history"
            );
        }
        _ => println!("NOTICE: SRCREV {srcrev} is not in this checkout's history (shallow clone?); not checked against it"),
    }
}

#[test]
fn release_binary_is_stripped_alone_and_left_to_oe_in_the_recipe() {
    let manifest = cargo_manifest();
    assert_eq!(
        manifest["profile"]["release"].get("strip"),
        Some(&toml::Value::Boolean(true)),
        "the stand-alone release build strips the binary"
    );
    // OE strips and splits debug symbols itself; a binary that arrives
    // stripped fails its already-stripped QA check at do_package.
    let recipe = Recipe::parse(RECIPE);
    assert!(recipe.exported().contains("CARGO_PROFILE_RELEASE_STRIP"));
    assert_eq!(
        recipe.required("CARGO_PROFILE_RELEASE_STRIP"),
        "false",
        "cargo must leave the binary unstripped under BitBake"
    );
}

/// One `PACKAGECONFIG[name]` flag: enable, disable, depends, rdepends, ...
fn packageconfig_fields(value: &str) -> Vec<String> {
    value.split(',').map(|f| f.trim().to_string()).collect()
}

#[test]
fn packageconfig_turns_on_exactly_the_cargo_features() {
    let manifest = cargo_manifest();
    let features = manifest["features"]
        .as_table()
        .expect("Cargo.toml has [features]");
    let default: BTreeSet<String> = features["default"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    let cargo_features: BTreeSet<String> = features
        .keys()
        .filter(|k| *k != "default")
        .cloned()
        .collect();
    assert!(!cargo_features.is_empty());

    let recipe = Recipe::parse(RECIPE);
    let flags = recipe.flags("PACKAGECONFIG");
    // Each feature: a PACKAGECONFIG of its name that turns it on, and only it.
    for feature in &cargo_features {
        let value = flags
            .get(feature)
            .unwrap_or_else(|| panic!("no PACKAGECONFIG[{feature}] for cargo feature {feature}"));
        let fields = packageconfig_fields(value);
        assert_eq!(
            fields[0],
            format!("--features {feature}"),
            "PACKAGECONFIG[{feature}] must turn the feature on"
        );
        assert!(
            fields[1..].iter().all(String::is_empty),
            "PACKAGECONFIG[{feature}] = {value:?}"
        );
    }
    // And vice versa: every flag that passes --features names its own feature;
    // the others are build-time settings and give cargo nothing.
    for (name, value) in &flags {
        let fields = packageconfig_fields(value);
        if cargo_features.contains(name) {
            continue;
        }
        assert!(
            !value.contains("--features"),
            "PACKAGECONFIG[{name}] turns on a feature of another name: {value:?}"
        );
        assert!(
            fields.iter().all(String::is_empty),
            "PACKAGECONFIG[{name}] = {value:?}: not a cargo feature, so no arguments"
        );
    }
    // Only what PACKAGECONFIG turns on is built.
    assert!(recipe
        .words("CARGO_BUILD_FLAGS")
        .contains(&"--no-default-features".to_string()));
    // By default the recipe builds what a stand-alone build does.
    let packageconfig: BTreeSet<String> = recipe.words("PACKAGECONFIG").into_iter().collect();
    let on: BTreeSet<String> = packageconfig
        .intersection(&cargo_features)
        .cloned()
        .collect();
    assert_eq!(
        on, default,
        "default PACKAGECONFIG vs Cargo.toml's default features"
    );
}

#[test]
fn factory_settings_of_meta_lmp_keep_working() {
    let recipe = Recipe::parse(RECIPE);
    let factory = |text: &str| {
        recipe.then(&Recipe {
            statements: parse_bitbake(text).unwrap(),
        })
    };
    let defined = recipe.flags("PACKAGECONFIG");
    // OE's invalid-packageconfig check: every word needs a PACKAGECONFIG[word].
    let assert_valid = |built: &Recipe, what: &str| {
        for word in built.words("PACKAGECONFIG") {
            assert!(
                defined.contains_key(&word),
                "{what}: PACKAGECONFIG {word} is not defined"
            );
        }
    };

    // meta-lmp's C++ recipe defaults to composeapp and factories append it.
    assert!(recipe
        .words("PACKAGECONFIG")
        .contains(&"composeapp".to_string()));
    assert_valid(&recipe, "the default");
    for line in [
        "PACKAGECONFIG:append = \" composeapp\"",
        "PACKAGECONFIG:append = \" production composeapp\"",
        "PACKAGECONFIG = \"composeapp\"",
        "PACKAGECONFIG:remove = \"composeapp\"",
    ] {
        assert_valid(&factory(line), line);
    }
    // composeapp reaches the agent as its build-time DOCKER_COMPOSE_APP.
    assert!(recipe.exported().contains("DOCKER_COMPOSE_APP"));
    let compose = recipe.required("DOCKER_COMPOSE_APP");
    assert!(
        compose.contains("bb.utils.contains('PACKAGECONFIG', 'composeapp', '1', '0', d)"),
        "DOCKER_COMPOSE_APP = {compose}"
    );
    assert!(
        build_time_variables().contains("DOCKER_COMPOSE_APP"),
        "the agent reads DOCKER_COMPOSE_APP at build time"
    );

    // Hostname as the device name: meta-lmp's lmp-device-auto-register
    // variable and this recipe's own; the latter wins when both are set.
    const NEW: &str = "LMP_DEVICE_REGISTER_USE_HOSTNAME";
    const OLD: &str = "LMP_AUTO_REGISTER_USE_HOSTNAME";
    assert_eq!(recipe.expanded(NEW).as_deref(), Some(""));
    assert_eq!(
        factory(&format!("{OLD} = \"1\"")).expanded(NEW).as_deref(),
        Some("1")
    );
    assert_eq!(
        factory(&format!("{NEW} = \"1\"")).expanded(NEW).as_deref(),
        Some("1")
    );
    assert_eq!(
        factory(&format!("{OLD} = \"1\"\n{NEW} = \"0\""))
            .expanded(NEW)
            .as_deref(),
        Some("0")
    );
    let install = recipe.function("do_install:append");
    let condition = install
        .lines()
        .find(|l| l.contains(NEW))
        .unwrap_or_else(|| panic!("do_install does not look at {NEW}"));
    assert!(
        condition.contains(&format!("bb.utils.to_boolean(d.getVar('{NEW}'), False)")),
        "{condition}"
    );
    assert!(install.contains("Environment=USE_HOSTNAME=1"));
    let handler = recipe.function("lmp_device_register_rs_check_settings");
    for var in [NEW, OLD] {
        assert!(
            handler.contains(&format!("\"{var}\"")),
            "a bad {var} must be refused when the recipe is parsed"
        );
    }
}

// ---------------------------------------------------------------------------
// The recipe's LICENSE: what the binary links
// ---------------------------------------------------------------------------

/// A license expression as an AND of OR-clauses (conjunctive normal form),
/// each name in OE's spelling. Reads SPDX (`AND`, `OR`, `WITH`, the old
/// `MIT/Apache-2.0`) and OE (`&`, `|`) syntax alike.
type Clauses = BTreeSet<BTreeSet<String>>;

fn license_clauses(expression: &str) -> Clauses {
    let spaced = expression
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace('&', " AND ")
        .replace(['|', '/'], " OR ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();

    fn or(tokens: &[&str], at: &mut usize, whole: &str) -> Clauses {
        let mut clauses = and(tokens, at, whole);
        while tokens.get(*at) == Some(&"OR") {
            *at += 1;
            let right = and(tokens, at, whole);
            clauses = clauses
                .iter()
                .flat_map(|l| right.iter().map(move |r| l.union(r).cloned().collect()))
                .collect();
        }
        clauses
    }
    fn and(tokens: &[&str], at: &mut usize, whole: &str) -> Clauses {
        let mut clauses = one(tokens, at, whole);
        while tokens.get(*at) == Some(&"AND") {
            *at += 1;
            clauses.extend(one(tokens, at, whole));
        }
        clauses
    }
    fn one(tokens: &[&str], at: &mut usize, whole: &str) -> Clauses {
        let token = *tokens
            .get(*at)
            .unwrap_or_else(|| panic!("license expression ends early: {whole}"));
        *at += 1;
        if token == "(" {
            let inner = or(tokens, at, whole);
            assert_eq!(tokens.get(*at), Some(&")"), "unbalanced: {whole}");
            *at += 1;
            return inner;
        }
        assert!(
            !matches!(token, ")" | "AND" | "OR" | "WITH"),
            "unexpected {token} in {whole}"
        );
        let mut name = token.to_string();
        if tokens.get(*at) == Some(&"WITH") {
            // OE's common-licenses spell "A WITH B" as "A-with-B".
            name = format!("{name}-with-{}", tokens[*at + 1]);
            *at += 2;
        }
        BTreeSet::from([BTreeSet::from([name])])
    }

    let mut at = 0;
    let clauses = or(&tokens, &mut at, expression);
    assert_eq!(at, tokens.len(), "trailing tokens in {expression}");
    clauses
}

/// The clauses as a recipe's LICENSE value: this project's license first,
/// then single licenses, then the choices.
fn oe_license(clauses: &Clauses, project: &str) -> String {
    let mut ordered: Vec<&BTreeSet<String>> = clauses.iter().collect();
    ordered.sort_by_key(|c| (!c.contains(project) || c.len() > 1, c.len(), (*c).clone()));
    ordered
        .iter()
        .map(|c| {
            let names: Vec<&str> = c.iter().map(String::as_str).collect();
            match names.as_slice() {
                [one] => one.to_string(),
                many => format!("({})", many.join(" | ")),
            }
        })
        .collect::<Vec<_>>()
        .join(" & ")
}

/// The packages linked into the binary on the Linux targets LmP builds for,
/// with every profile on (what any PACKAGECONFIG can build): the root and
/// its normal dependencies, not build scripts' or proc-macros' (those run on
/// the build host), nor dev-dependencies.
fn linked_packages() -> Vec<(String, String, Option<String>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .arg("--all-features")
        .current_dir(repo());
    for target in [
        "x86_64-unknown-linux-gnu",
        "aarch64-unknown-linux-gnu",
        "armv7-unknown-linux-gnueabihf",
        "riscv64gc-unknown-linux-gnu",
    ] {
        command.args(["--filter-platform", target]);
    }
    let output = command.output().expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed (run `cargo fetch --locked` first):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages: std::collections::HashMap<&str, &serde_json::Value> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let nodes: std::collections::HashMap<&str, &serde_json::Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let is_proc_macro = |id: &str| {
        packages[id]["targets"].as_array().unwrap().iter().any(|t| {
            t["kind"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k == "proc-macro")
        })
    };
    let mut seen = BTreeSet::new();
    let mut todo = vec![metadata["resolve"]["root"].as_str().unwrap()];
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            let dep_id = dep["pkg"].as_str().unwrap();
            if normal && !is_proc_macro(dep_id) {
                todo.push(dep_id);
            }
        }
    }
    seen.into_iter()
        .map(|id| {
            let p = packages[id];
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
                p["license"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[test]
fn recipe_license_covers_every_crate_the_binary_links() {
    let packages = linked_packages();
    assert!(
        packages.iter().any(|(name, ..)| name == "ring")
            && !packages.iter().any(|(name, ..)| name == "serde_derive"),
        "the linked set must hold ring and not the serde_derive proc-macro"
    );
    let mut expected = Clauses::new();
    for (name, version, license) in &packages {
        let license = license
            .as_deref()
            .unwrap_or_else(|| panic!("{name} {version} declares no SPDX license"));
        expected.extend(license_clauses(license));
    }
    let project = cargo_package_field("license");
    let recipe = Recipe::parse(RECIPE);
    let declared = license_clauses(&recipe.required("LICENSE"));
    assert!(
        declared == expected,
        "the recipe's LICENSE does not match the {} linked packages.\n\
         missing: {:?}\nnot linked: {:?}\nuse:\nLICENSE = \"{}\"",
        packages.len(),
        expected.difference(&declared).collect::<Vec<_>>(),
        declared.difference(&expected).collect::<Vec<_>>(),
        oe_license(&expected, &project)
    );
    assert!(
        declared.contains(&BTreeSet::from([project.clone()])),
        "LICENSE lacks this project's own {project}"
    );

    // cargo-deny admits a package when one license of each clause is in
    // deny.toml's allow list: so must every clause here.
    let deny: toml::Table = read("deny.toml").parse().unwrap();
    let allowed: BTreeSet<String> = deny["licenses"]["allow"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| license_clauses(l.as_str().unwrap()))
        .flatten()
        .collect();
    for clause in &declared {
        assert!(
            clause.iter().any(|name| allowed.contains(name)),
            "no license of {clause:?} is allowed by deny.toml"
        );
    }
}

#[test]
fn license_expressions_become_clauses() {
    let set = |clauses: &[&[&str]]| -> Clauses {
        clauses
            .iter()
            .map(|c| c.iter().map(|n| n.to_string()).collect())
            .collect()
    };
    assert_eq!(
        license_clauses("MIT OR Apache-2.0"),
        set(&[&["Apache-2.0", "MIT"]])
    );
    assert_eq!(
        license_clauses("MIT/Apache-2.0"),
        license_clauses("Apache-2.0 | MIT")
    );
    assert_eq!(
        license_clauses("(MIT OR Apache-2.0) AND Unicode-3.0"),
        set(&[&["Apache-2.0", "MIT"], &["Unicode-3.0"]])
    );
    assert_eq!(
        license_clauses("Apache-2.0 WITH LLVM-exception OR MIT"),
        set(&[&["Apache-2.0-with-LLVM-exception", "MIT"]])
    );
    assert_eq!(
        license_clauses("(A & B) | C"),
        set(&[&["A", "C"], &["B", "C"]])
    );
    assert_eq!(
        oe_license(
            &license_clauses("MIT & (ISC | MIT) & BSD-3-Clause & Zlib"),
            "BSD-3-Clause"
        ),
        "BSD-3-Clause & MIT & Zlib & (ISC | MIT)"
    );
}

// ---------------------------------------------------------------------------
// The crates list
// ---------------------------------------------------------------------------

fn python3(args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("python3 (3.11 or later) is needed to check the crates list")
}

#[test]
fn crates_inc_is_generated_from_cargo_lock() {
    let output = python3(&["yocto-recipe/gen-crates-inc.py", "--check"]);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every `Cargo.lock` under `dir`, build output and hidden directories aside.
fn lock_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                lock_files(&path, found);
            }
        } else if name == "Cargo.lock" {
            found.push(path);
        }
    }
}

#[test]
fn crates_inc_is_what_update_crates_writes() {
    // oe-core's do_update_crates (cargo-update-recipe-crates.bbclass, the
    // same on whinlatter, wrynose and master) lists the crates.io packages of
    // every Cargo.lock under S, in lock order, as "crate://crates.io/NAME/VER \"
    // lines (no ;name=: the crate fetcher names each NAME-VER itself), then
    // their checksums. Built here from Cargo.lock, independently of the
    // generator, and compared byte for byte.
    let mut locks = Vec::new();
    lock_files(&repo(), &mut locks);
    assert_eq!(
        locks,
        [repo().join("Cargo.lock")],
        "update_crates would list the crates of every Cargo.lock in the tree"
    );
    let lock: toml::Table = read("Cargo.lock").parse().unwrap();
    let mut uris = String::new();
    let mut checksums = String::new();
    for package in lock["package"].as_array().unwrap() {
        let Some(source) = package.get("source").and_then(|s| s.as_str()) else {
            continue;
        };
        assert!(
            source.starts_with("registry+") && source.contains("crates.io"),
            "{package:?}: not from crates.io"
        );
        let name = package["name"].as_str().unwrap();
        let version = package["version"].as_str().unwrap();
        let checksum = package["checksum"].as_str().unwrap();
        uris.push_str(&format!("\n    crate://crates.io/{name}/{version} \\"));
        checksums.push_str(&format!(
            "\nSRC_URI[{name}-{version}.sha256sum] = \"{checksum}\""
        ));
    }
    let expected = format!(
        "# Autogenerated with 'bitbake -c update_crates lmp-device-register-rs'\n\n\
         # from Cargo.lock\nSRC_URI += \" \\{uris}\n\"\n{checksums}\n"
    );
    let inc_path = "yocto-recipe/lmp-device-register-rs-crates.inc";
    let current = read(inc_path);
    if current != expected {
        let first = current
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(current.lines().count().min(expected.lines().count()));
        panic!(
            "{inc_path} is not in update_crates' form from Cargo.lock; first difference at line {}:\n  have: {:?}\n  want: {:?}",
            first + 1,
            current.lines().nth(first),
            expected.lines().nth(first)
        );
    }
    // And BitBake reads every crate with its checksum.
    let inc = Recipe::parse(inc_path);
    let fetched = inc.words("SRC_URI");
    assert!(!fetched.is_empty());
    for uri in &fetched {
        let (name, version) = uri
            .strip_prefix("crate://crates.io/")
            .and_then(|rest| rest.split_once('/'))
            .unwrap_or_else(|| panic!("{uri}"));
        assert!(
            inc.flag("SRC_URI", &format!("{name}-{version}.sha256sum"))
                .is_some_and(|c| c.len() == 64),
            "{uri} has no sha256sum"
        );
    }
}

#[test]
fn crates_inc_check_fails_when_stale() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.inc");
    let current = read("yocto-recipe/lmp-device-register-rs-crates.inc");
    let dropped: String = current
        .lines()
        .filter(|l| !l.contains("crate://crates.io/serde/"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(dropped, current);
    std::fs::write(&stale, dropped).unwrap();
    let output = python3(&[
        "yocto-recipe/gen-crates-inc.py",
        "--check",
        "--output",
        stale.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("+    crate://crates.io/serde/"), "{stderr}");
    assert!(stderr.contains("is stale"), "{stderr}");

    // Without --check the generator writes the same bytes that are checked in.
    let fresh = dir.path().join("fresh.inc");
    let output = python3(&[
        "yocto-recipe/gen-crates-inc.py",
        "--output",
        fresh.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    assert_eq!(std::fs::read_to_string(fresh).unwrap(), current);
}

// ---------------------------------------------------------------------------
// Example device files and the factory layer examples
// ---------------------------------------------------------------------------

fn check_single_line(relative: &str, what: &str) -> String {
    parse_single_line(&read(relative), what).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn check_hsm(relative: &str, module: &str) {
    let hsm = parse_hsm_file(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"));
    assert_eq!(hsm.module.as_deref(), Some(Path::new(module)), "{relative}");
    for (name, pin) in [("HSM_PIN", &hsm.pin), ("HSM_SOPIN", &hsm.so_pin)] {
        let pin = pin
            .as_ref()
            .unwrap_or_else(|| panic!("{relative}: no {name}"));
        // PKCS#11 PINs of OP-TEE and SoftHSM2 are 4 to 128 bytes.
        assert!(
            (4..=128).contains(&pin.expose().len()),
            "{relative}: {name} length"
        );
    }
}

#[test]
fn etc_sota_examples_parse_with_the_agents_parsers() {
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(repo().join("etc-sota-examples")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let relative = format!("etc-sota-examples/{name}");
        match name.as_str() {
            "README.md" => {}
            "tag" => {
                check_single_line(&relative, "the tag file");
            }
            "lmp-device-register-token" => {
                check_single_line(&relative, "the token file");
            }
            "hsm.se050" => check_hsm(&relative, "/usr/lib/libckteec.so.0"),
            "hsm.softhsm" => check_hsm(&relative, "/usr/lib/softhsm/libsofthsm2.so"),
            other => panic!("etc-sota-examples/{other} has no check here"),
        }
        seen.insert(name);
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
}

#[test]
fn factory_layer_examples_configure_the_recipe_and_install_valid_files() {
    let base = "yocto-recipe/bbappend-examples/recipes-sota";
    let recipe = Recipe::parse(RECIPE);

    let bbappend = Recipe::parse(&format!(
        "{base}/lmp-device-register-rs/lmp-device-register-rs_%.bbappend"
    ));
    assert!(bbappend
        .words("PACKAGECONFIG")
        .contains(&"production".to_string()));
    let api = bbappend.required("LMP_DEVICE_API");
    assert!(
        api.starts_with("http://") || api.starts_with("https://"),
        "{api}"
    );
    assert!(
        recipe.value("LMP_DEVICE_API").is_some(),
        "the bbappend sets a knob the recipe has"
    );
    // The repository the recipe needs, in the form its parse-time check takes.
    let repository = bbappend.required("LMP_DEVICE_REGISTER_RS_GIT");
    assert!(
        repository.starts_with("git://") && !repository.contains(";branch="),
        "{repository}"
    );
    // With the bbappend applied, every PACKAGECONFIG is one the recipe
    // defines (OE's invalid-packageconfig check), and LmP is left alone.
    let built = recipe.then(&bbappend);
    let defined = recipe.flags("PACKAGECONFIG");
    let words = built.words("PACKAGECONFIG");
    for word in &words {
        assert!(
            defined.contains_key(word),
            "PACKAGECONFIG {word} is not defined"
        );
    }
    for profile in ["losant", "tii", "azure-dps"] {
        assert!(
            !words.contains(&profile.to_string()),
            "{profile} still built"
        );
    }

    let config_dir = format!("{base}/lmp-device-register-config");
    let config = Recipe::parse(&format!("{config_dir}/lmp-device-register-config.bb"));
    // It depends on the agent, whose package is machine-specific: so is it.
    // (allarch with such a dependency gets another signature per machine and
    // is rebuilt for each.)
    assert_eq!(recipe.required("PACKAGE_ARCH"), "${MACHINE_ARCH}");
    assert!(config
        .words("RDEPENDS:${PN}")
        .contains(&"lmp-device-register-rs".to_string()));
    assert!(
        !config.inherits().contains("allarch"),
        "an allarch recipe must not depend on a machine-specific package"
    );
    assert_eq!(config.required("PACKAGE_ARCH"), "${MACHINE_ARCH}");
    let install = config.function("do_install");
    for uri in config.words("SRC_URI") {
        let file = uri.strip_prefix("file://").expect("only local files");
        assert!(
            repo().join(&config_dir).join("files").join(file).is_file(),
            "files/{file}"
        );
    }
    for (file, mode, target) in [
        (
            "api-token",
            "0600",
            "${sysconfdir}/lmp-device-register-token",
        ),
        ("hsm", "0600", "${sysconfdir}/sota/hsm"),
        ("tag", "0644", "${sysconfdir}/sota/tag"),
    ] {
        let line = install
            .lines()
            .find(|l| l.contains(&format!("/{file} ")))
            .unwrap_or_else(|| panic!("do_install does not install {file}"));
        assert!(
            line.contains(&format!("-m {mode}")),
            "{file} must be installed {mode}: {line}"
        );
        assert!(
            line.trim_end().ends_with(target),
            "{file} → {target}: {line}"
        );
    }
    // The layer's files are the documented examples.
    for (file, example) in [
        ("api-token", "lmp-device-register-token"),
        ("tag", "tag"),
        ("hsm", "hsm.se050"),
    ] {
        assert_eq!(
            read(&format!("{config_dir}/files/{file}")),
            read(&format!("etc-sota-examples/{example}")),
            "files/{file} differs from etc-sota-examples/{example}"
        );
    }
}

// ---------------------------------------------------------------------------
// The first-boot unit
// ---------------------------------------------------------------------------

/// `[Section]` → key → values, in order (systemd allows repeated keys).
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut entries = Vec::new();
    let mut section = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let mut line = line.trim().to_string();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        while line.ends_with('\\') {
            line.pop();
            line.push(' ');
            line.push_str(lines.next().expect("continuation").trim());
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        assert!(!section.is_empty(), "{key} outside a section");
        entries.push((
            section.clone(),
            key.trim().to_string(),
            value.trim().to_string(),
        ));
    }
    entries
}

fn unit_values(entries: &[(String, String, String)], section: &str, key: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|(s, k, _)| s == section && k == key)
        .flat_map(|(_, _, v)| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

fn unit_value(entries: &[(String, String, String)], section: &str, key: &str) -> Option<String> {
    entries
        .iter()
        .rev()
        .find(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.clone())
}

fn is_yes(value: Option<String>) -> bool {
    matches!(value.as_deref(), Some("yes" | "true" | "1" | "on"))
}

#[test]
fn unit_runs_boot_mode_once_without_secrets_on_its_command_line() {
    let entries = parse_unit(&read(UNIT));
    let get = |section: &str, key: &str| unit_value(&entries, section, key);
    let list = |section: &str, key: &str| unit_values(&entries, section, key);

    // The boot goes on while the agent retries (a oneshot would hold
    // multi-user.target for up to 45 minutes); a success stays "active".
    assert_eq!(get("Service", "Type").as_deref(), Some("exec"));
    assert!(is_yes(get("Service", "RemainAfterExit")));
    assert_eq!(
        get("Unit", "ConditionPathExists").as_deref(),
        Some("!/var/sota/sql.db")
    );
    // Waiting for network-online.target would hold the boot for as long as
    // the wait-online service allows; the agent retries on its own.
    for key in ["After", "Wants", "Requires"] {
        assert!(
            !list("Unit", key).contains(&"network-online.target".to_string()),
            "{key}=network-online.target holds the boot while the network is down"
        );
    }
    assert!(list("Unit", "After").contains(&"network.target".to_string()));
    for key in ["Requires", "Wants", "Requisite", "BindsTo"] {
        assert!(
            !list("Unit", key).contains(&"systemd-time-wait-sync.service".to_string()),
            "{key}=systemd-time-wait-sync.service can hang forever without NTP"
        );
    }
    // Ordering against the units that need the registration would only wait
    // for the agent to start, not for it to finish.
    for unit in ["aktualizr-lite.service", "fioconfig.service"] {
        assert!(!list("Unit", "Before").contains(&unit.to_string()));
    }
    for key in ["RuntimeMaxSec", "TimeoutStopSec"] {
        let limit = get("Service", key).unwrap_or_else(|| panic!("a finite {key}"));
        assert!(!matches!(limit.as_str(), "infinity" | "0"), "{key}={limit}");
    }
    assert_eq!(list("Install", "WantedBy"), ["multi-user.target"]);

    // Restarted after failures that may pass; never when the same request
    // would get the same answer.
    assert_eq!(get("Service", "Restart").as_deref(), Some("on-failure"));
    let mut final_codes: Vec<u8> = [
        ErrorKind::Config,
        ErrorKind::AlreadyRegistered,
        ErrorKind::Rejected,
        ErrorKind::BadResponse,
    ]
    .map(ErrorKind::exit_code)
    .to_vec();
    final_codes.sort();
    let mut prevented: Vec<u8> = list("Service", "RestartPreventExitStatus")
        .iter()
        .map(|c| c.parse().expect("numeric exit codes"))
        .collect();
    prevented.sort();
    assert_eq!(prevented, final_codes);
    let pause = get("Service", "RestartSec").expect("RestartSec");
    assert!(
        pause.ends_with("min") && pause.trim_end_matches("min").parse::<u32>().unwrap() >= 5,
        "RestartSec={pause}: a fleet must not retry a down server every few seconds"
    );

    // Hardening that would lock out /dev/tee0 (SE050 through OP-TEE).
    assert!(!is_yes(get("Service", "PrivateDevices")));
    assert!(!is_yes(get("Service", "ProtectClock")));
    assert!(get("Service", "DevicePolicy").is_none());
    let writable = list("Service", "ReadWritePaths");
    for path in ["/var/sota", "/run", "/etc"] {
        assert!(
            writable.contains(&path.to_string()) || writable.contains(&format!("-{path}")),
            "ReadWritePaths lacks {path}"
        );
    }
    assert_eq!(get("Service", "ProtectSystem").as_deref(), Some("strict"));
    // The other profiles' default state dirs (under /var/lib, read-only
    // with ProtectSystem=strict): made private and writable by systemd.
    let state_dirs = list("Service", "StateDirectory");
    for dir in ["losant", "fleet-registration", "azure-dps"] {
        assert!(
            state_dirs.contains(&dir.to_string()),
            "StateDirectory lacks {dir}"
        );
    }
    assert_eq!(
        get("Service", "StateDirectoryMode").as_deref(),
        Some("0700")
    );

    // ExecStart: the agent in boot mode, nothing secret, and flags the agent
    // itself accepts.
    let exec = get("Service", "ExecStart").expect("ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(argv[0], format!("/usr/bin/{BIN}"));
    for arg in &argv[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(
            !matches!(
                flag,
                "-T" | "-P" | "-S" | "--api-token" | "--hsm-pin" | "--hsm-so-pin"
            ) && !arg.starts_with("-T")
                && !arg.starts_with("-P")
                && !arg.starts_with("-S"),
            "secret on ExecStart: {arg}"
        );
    }
    let cli =
        <Cli as clap::Parser>::try_parse_from(argv.iter().copied()).expect("ExecStart parses");
    assert!(cli.boot, "ExecStart must use --boot");
    assert!(cli.api_token.is_none() && cli.hsm_pin.is_none() && cli.hsm_so_pin.is_none());
}

/// With ProtectSystem=strict the agent cannot make /var/sota itself (and
/// systemd cannot bind a missing one): tmpfiles.d makes it at boot.
#[test]
fn tmpfiles_makes_the_sota_dir_private() {
    let text = read(TMPFILES);
    let entries: Vec<Vec<&str>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(entries, [["d", "/var/sota", "0700", "root", "root", "-"]]);
    if Command::new("systemd-tmpfiles")
        .arg("--version")
        .output()
        .is_err()
    {
        println!(
            "NOTICE: systemd-tmpfiles not installed (Debian package: systemd); not applying it"
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("var")).unwrap();
    let output = Command::new("systemd-tmpfiles")
        .arg("--create")
        .arg(format!("--root={}", root.path().display()))
        .arg(repo().join(TMPFILES))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "systemd-tmpfiles: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let sota = std::fs::metadata(root.path().join("var/sota")).unwrap();
    assert!(sota.is_dir());
    assert_eq!(sota.permissions().mode() & 0o7777, 0o700);
}

/// A root for `systemd-analyze --root`: the host's unit files (for
/// multi-user.target and friends), this unit, and a stand-in binary so that
/// the ExecStart check passes.
fn analyze_root() -> Option<tempfile::TempDir> {
    let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("multi-user.target").exists())?;
    let root = tempfile::tempdir().unwrap();
    let units = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", host_units.display()))
        .arg(&units)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(repo().join(UNIT), units.join("lmp-device-register.service")).unwrap();
    let bin = root.path().join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join(BIN), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join(BIN), std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(root)
}

fn systemd_analyze_available() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        println!("NOTICE: systemd-analyze not installed (Debian package: systemd); skipping");
    }
    found
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    if !systemd_analyze_available() {
        return;
    }
    let Some(root) = analyze_root() else {
        println!("NOTICE: no systemd unit directory on this host; skipping verify");
        return;
    };
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .arg("lmp-device-register.service")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("lmp-device-register"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify warns:\n{}",
        ours.join("\n")
    );
}

#[test]
fn unit_exposure_stays_ok() {
    if !systemd_analyze_available() {
        return;
    }
    let Some(root) = analyze_root() else {
        println!("NOTICE: no systemd unit directory on this host; skipping security");
        return;
    };
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--root={}", root.path().display()))
        .arg("lmp-device-register.service")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // Before systemd 250 "security" needs a running manager.
        println!(
            "NOTICE: systemd-analyze security --offline did not run: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return;
    }
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .expect("an overall exposure line");
    println!("{}", line.trim());
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a numeric exposure level");
    // 3.7 with systemd 252; anything from 5.0 up is "MEDIUM" or worse.
    assert!(score < 5.0, "exposure rose to {score}:\n{stdout}");
}
