//! Checks of the Yocto recipe (`yocto-recipe/`): it builds this tree with
//! its defaults, fetches it from a named repository at a pinned commit, keeps
//! meta-lmp's factory settings working, passes oelint-adv, declares the
//! licenses of what the binary links, and lists every crate of `Cargo.lock`
//! as `bitbake -c update_crates` would; and the factory layer examples.
//!
//! The recipe is read by the Yocto world's own tools, from PyPI: oelint-parser
//! (through `tests/recipe_facts.py`) and the oelint-adv linter
//! (`yocto-recipe/lint.py`), pinned in `scripts/python-tools.txt` and
//! installed by `scripts/install-python-tools` (which `scripts/test` and CI
//! run). Without them these checks say so and pass; under `CI=1` they fail.
//!
//! Refresh the crates list with `python3 yocto-recipe/gen-crates-inc.py`.
//! Needs `python3` (3.11 or later, for tomllib) and `md5sum`.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const RECIPE: &str = "yocto-recipe/lmp-device-register-rs_git.bb";
const CRATES_INC: &str = "yocto-recipe/lmp-device-register-rs-crates.inc";
const LAYER: &str = "yocto-recipe/bbappend-examples/recipes-sota";
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

fn python3(args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("python3 (3.11 or later) runs")
}

/// Whether the pinned PyPI tools are installed, and installed from the
/// current list. Missing or stale: a note and `false` (a failure under CI,
/// whose `.ci/run` installs them).
fn python_tools_installed() -> bool {
    let dir = repo().join("target/python-tools");
    let stamp = std::fs::read(dir.join(".installed-from")).ok();
    if stamp.as_deref() == Some(read("scripts/python-tools.txt").as_bytes()) {
        return true;
    }
    let why = if stamp.is_some() {
        "target/python-tools is older than scripts/python-tools.txt"
    } else {
        "oelint-parser and oelint-adv are not installed"
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{why}: run scripts/install-python-tools"
    );
    println!("NOTICE: {why} (scripts/install-python-tools); skipping");
    false
}

// ---------------------------------------------------------------------------
// The recipe as oelint-parser reads it
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct Assignment {
    file: String,
    name: String,
    op: String,
    value: String,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Include {
    statement: String,
    name: String,
    file: Option<String>,
}

/// What `tests/recipe_facts.py` prints: a recipe with what it includes and
/// the bbappends applied (see there for each field).
#[derive(Debug, Deserialize)]
struct Recipe {
    pn: String,
    values: BTreeMap<String, String>,
    assignments: Vec<Assignment>,
    exports: BTreeMap<String, String>,
    flags: BTreeMap<String, BTreeMap<String, String>>,
    inherits: Vec<String>,
    includes: Vec<Include>,
    functions: BTreeMap<String, String>,
    statements: Vec<String>,
}

impl Recipe {
    /// `files[0]` with the others (bbappends) applied; `None` when the tools
    /// are not installed.
    fn read(files: &[&Path]) -> Option<Recipe> {
        if !python_tools_installed() {
            return None;
        }
        let mut args = vec!["tests/recipe_facts.py"];
        args.extend(files.iter().map(|f| f.to_str().unwrap()));
        let output = python3(&args);
        assert!(
            output.status.success(),
            "recipe_facts.py {files:?}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(serde_json::from_slice(&output.stdout).expect("recipe_facts.py prints JSON"))
    }

    /// The recipe alone, read once for every test that asks.
    fn shipped() -> Option<&'static Recipe> {
        static RECIPE_FACTS: OnceLock<Option<Recipe>> = OnceLock::new();
        RECIPE_FACTS
            .get_or_init(|| Recipe::read(&[Path::new(RECIPE)]))
            .as_ref()
    }

    /// The recipe with a factory's bbappend holding `text`.
    fn with_bbappend(text: &str) -> Option<Recipe> {
        let layer = tempfile::tempdir().unwrap();
        let bbappend = layer.path().join("lmp-device-register-rs_%.bbappend");
        std::fs::write(&bbappend, text).unwrap();
        Recipe::read(&[Path::new(RECIPE), &bbappend])
    }

    /// The value after every operator of every file read.
    fn value(&self, var: &str) -> Option<&str> {
        self.values.get(var).map(String::as_str)
    }

    fn required(&self, var: &str) -> &str {
        self.value(var)
            .unwrap_or_else(|| panic!("the recipe does not set {var}"))
    }

    fn words(&self, var: &str) -> Vec<String> {
        self.required(var)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// `VAR:${PN}`, as the values name it.
    fn of_package(&self, var: &str) -> Vec<String> {
        self.words(&format!("{var}:{}", self.pn))
    }

    /// The assignments of `var` (with its overrides, as written) in `file`.
    fn assignments_in(&self, file: &str, var: &str) -> Vec<&Assignment> {
        self.assignments
            .iter()
            .filter(|a| a.file == file && a.name == var)
            .collect()
    }

    fn flags(&self, var: &str) -> BTreeMap<String, String> {
        self.flags.get(var).cloned().unwrap_or_default()
    }

    fn flag(&self, var: &str, flag: &str) -> Option<String> {
        self.flags(var).get(flag).cloned()
    }

    fn export(&self, var: &str) -> &str {
        self.exports
            .get(var)
            .unwrap_or_else(|| panic!("the recipe does not export {var}"))
    }

    fn function(&self, name: &str) -> &str {
        self.functions
            .get(name)
            .unwrap_or_else(|| panic!("the recipe has no {name}"))
    }

    fn inherits(&self, class: &str) -> bool {
        self.inherits.iter().any(|c| c == class)
    }
}

/// A shell body with its continuation lines joined and its white space
/// collapsed, so that a command reads as one line.
fn commands(body: &str) -> Vec<String> {
    body.replace("\\\n", " ")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn recipe_facts_read_operators_flags_exports_and_functions() {
    // What the checks below rely on, on a recipe of known content.
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("example_1.0.bb");
    std::fs::write(
        &recipe,
        r#"A = "one"
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
export F = "${@bb.utils.contains('PACKAGECONFIG', 'x', '1', '0', d)}"
PACKAGECONFIG[x] = "--features x,,"
L = " \
    a \
    b \
"
inherit cargo systemd
do_install:append() {
    install -m 0644 ${S}/x \
        ${D}/y
}
python h() {
    pass
}
addhandler h
h[eventmask] = "bb.event.RecipePreFinalise"
FILES:${PN} += "extra"
"#,
    )
    .unwrap();
    let bbappend = dir.path().join("example_%.bbappend");
    std::fs::write(&bbappend, "C = \"set\"\nA:append = \" four\"\n").unwrap();
    let Some(plain) = Recipe::read(&[&recipe]) else {
        return;
    };
    assert_eq!(plain.value("A"), Some("two three"));
    assert_eq!(plain.value("B"), Some("weak"));
    assert_eq!(plain.value("C"), Some("default"));
    assert_eq!(plain.value("D"), Some("w xy"));
    assert_eq!(plain.words("L"), ["a", "b"]);
    assert_eq!(plain.export("E"), "${MACHINE}");
    assert!(plain.export("F").contains("'x', '1', '0'"));
    assert_eq!(
        plain.flag("PACKAGECONFIG", "x").as_deref(),
        Some("--features x,,")
    );
    assert!(plain.inherits("cargo") && plain.inherits("systemd"));
    assert!(commands(plain.function("do_install:append"))
        .contains(&"install -m 0644 ${S}/x ${D}/y".to_string()));
    assert!(plain.function("h").contains("pass"));
    assert!(plain.statements.contains(&"addhandler h".to_string()));
    assert_eq!(
        plain.flag("h", "eventmask").as_deref(),
        Some("bb.event.RecipePreFinalise")
    );
    assert_eq!(plain.pn, "example");
    assert!(plain.of_package("FILES").contains(&"extra".to_string()));

    let appended = Recipe::read(&[&recipe, &bbappend]).unwrap();
    assert_eq!(appended.value("C"), Some("set"));
    assert_eq!(appended.value("A"), Some("two three four"));
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

/// The man page and completions under `docs/`, generated from the command
/// line (tests/packaging.rs keeps them current).
fn generated_docs() -> Vec<String> {
    let mut docs = vec!["docs/lmp-device-register.8".to_string()];
    for entry in std::fs::read_dir(repo().join("docs/completions")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        docs.push(format!("docs/completions/{name}"));
    }
    docs
}

#[test]
fn recipe_builds_this_tree_with_its_defaults() {
    let Some(recipe) = Recipe::shipped() else {
        return;
    };

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

    // Classes, and the crates list next to the recipe, found where BitBake
    // looks for it.
    for class in ["cargo", "cargo-update-recipe-crates", "systemd"] {
        assert!(recipe.inherits(class), "inherit {class}");
    }
    assert_eq!(recipe.pn, "lmp-device-register-rs");
    assert_eq!(
        recipe.includes,
        [Include {
            statement: "require".into(),
            name: "${BPN}-crates.inc".into(),
            file: Some(CRATES_INC.into()),
        }]
    );

    // The minimum Rust version stated in the recipe is Cargo.toml's.
    let rust_version = cargo_package_field("rust-version");
    assert!(
        read(RECIPE).contains(&format!("rust-version is {rust_version}")),
        "the recipe's comment on Rust releases must name rust-version {rust_version}"
    );

    // Build-time defaults: every option_env! of the agent reaches cargo.
    for name in build_time_variables() {
        // OE's bitbake.conf exports SOURCE_DATE_EPOCH to every task.
        if name == "SOURCE_DATE_EPOCH" {
            continue;
        }
        assert!(
            recipe.exports.contains_key(&name),
            "the recipe does not export {name}"
        );
    }
    assert_eq!(recipe.export("HARDWARE_ID"), "${MACHINE}");
    assert_eq!(recipe.required("PACKAGE_ARCH"), "${MACHINE_ARCH}");
    assert!(recipe.flag("PACKAGECONFIG", "production").is_some());
    let production = recipe.export("PRODUCTION");
    assert!(
        production.contains("'production', '1', '0'"),
        "PRODUCTION = {production}"
    );
    assert!(recipe.required("LMP_DEVICE_API").starts_with("https://"));
    assert_eq!(recipe.export("DEVICE_API"), "${LMP_DEVICE_API}");

    // Units, man page and completions installed from files that exist.
    let services = recipe.of_package("SYSTEMD_SERVICE");
    assert!(!services.is_empty());
    for unit in &services {
        assert!(
            repo().join("systemd").join(unit).is_file(),
            "systemd/{unit} is missing"
        );
    }
    let install = commands(recipe.function("do_install:append"));
    let installed: Vec<&str> = install
        .iter()
        .flat_map(|c| c.split_whitespace())
        .filter_map(|w| w.strip_prefix("${S}/"))
        .collect();
    for unit in &services {
        assert!(
            installed.contains(&format!("systemd/{unit}").as_str()),
            "{unit} not installed"
        );
    }
    for generated in generated_docs() {
        assert!(
            installed.contains(&generated.as_str()),
            "{generated} not installed"
        );
    }
    // Everything in systemd/ reaches the image, the tmpfiles entry where
    // systemd-tmpfiles reads it at boot.
    for entry in std::fs::read_dir(repo().join("systemd")).unwrap() {
        let file = format!("systemd/{}", entry.unwrap().file_name().to_string_lossy());
        assert!(installed.contains(&file.as_str()), "{file} not installed");
    }
    let tmpfiles = format!(
        "install -m 0644 ${{S}}/{TMPFILES} ${{D}}${{nonarch_libdir}}/tmpfiles.d/lmp-device-register.conf"
    );
    assert!(
        install.contains(&tmpfiles),
        "{TMPFILES} must become /usr/lib/tmpfiles.d/lmp-device-register.conf"
    );
    assert!(recipe
        .of_package("FILES")
        .contains(&"${nonarch_libdir}/tmpfiles.d/lmp-device-register.conf".to_string()));
    for file in installed {
        assert!(
            repo().join(file).is_file(),
            "do_install installs missing {file}"
        );
    }

    // One package replaces the C++ tool and the auto-register script.
    for var in ["RPROVIDES", "RREPLACES", "RCONFLICTS"] {
        let names = recipe.of_package(var);
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
    let Some(recipe) = Recipe::shipped() else {
        return;
    };
    const REPOSITORY: &str = "LMP_DEVICE_REGISTER_RS_GIT";

    // The recipe's git entry is the repository variable plus a branch,
    // nothing else; everything else it fetches is a crate of the .inc.
    let git_entry = format!("${{{REPOSITORY}}};branch=${{LMP_DEVICE_REGISTER_RS_BRANCH}}");
    let own: Vec<(&str, &str)> = recipe
        .assignments_in(RECIPE, "SRC_URI")
        .iter()
        .map(|a| (a.op.as_str(), a.value.as_str()))
        .collect();
    assert_eq!(own, [("=", git_entry.as_str())], "SRC_URI");
    let fetched = recipe.words("SRC_URI");
    assert_eq!(
        fetched[0], ";branch=main",
        "the git entry, its repository unset"
    );
    assert!(
        fetched[1..]
            .iter()
            .all(|u| u.starts_with("crate://crates.io/")),
        "SRC_URI beyond the git entry: {fetched:?}"
    );
    assert_eq!(recipe.value("LMP_DEVICE_REGISTER_RS_BRANCH"), Some("main"));

    // No repository is built in: not the C++ tool's, not any other. Parsing
    // stops, saying what to set, until a layer sets one (a skipped recipe
    // would let BitBake fall back to meta-lmp's C++ tool without a word).
    assert_eq!(recipe.value(REPOSITORY), Some(""));
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
    assert!(
        recipe.statements.contains(&format!("addhandler {check}")),
        "{:?}",
        recipe.statements
    );
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
    match git(&["cat-file", "-t", srcrev]) {
        Some(out) if out.status.success() => {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "commit");
            let ancestor = git(&["merge-base", "--is-ancestor", srcrev, "HEAD"]).unwrap();
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
    let Some(recipe) = Recipe::shipped() else {
        return;
    };
    assert_eq!(
        recipe.export("CARGO_PROFILE_RELEASE_STRIP"),
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
    // `example` is the profile of docs/adding-a-profile.md, which only its
    // test builds.
    let cargo_features: BTreeSet<String> = features
        .keys()
        .filter(|k| *k != "default" && *k != "example")
        .cloned()
        .collect();
    assert!(!cargo_features.is_empty());

    let Some(recipe) = Recipe::shipped() else {
        return;
    };
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

/// OE's invalid-packageconfig check: every word needs a PACKAGECONFIG[word].
fn assert_packageconfig_defined(built: &Recipe, defined: &BTreeMap<String, String>, what: &str) {
    for word in built.words("PACKAGECONFIG") {
        assert!(
            defined.contains_key(&word),
            "{what}: PACKAGECONFIG {word} is not defined"
        );
    }
}

#[test]
fn factory_settings_of_meta_lmp_keep_working() {
    let Some(recipe) = Recipe::shipped() else {
        return;
    };
    let defined = recipe.flags("PACKAGECONFIG");

    // meta-lmp's C++ recipe defaults to composeapp and factories append it.
    assert!(recipe
        .words("PACKAGECONFIG")
        .contains(&"composeapp".to_string()));
    assert_packageconfig_defined(recipe, &defined, "the default");
    for (line, composeapp) in [
        ("PACKAGECONFIG:append = \" composeapp\"", true),
        ("PACKAGECONFIG:append = \" production composeapp\"", true),
        ("PACKAGECONFIG = \"composeapp\"", true),
        ("PACKAGECONFIG:remove = \"composeapp\"", false),
    ] {
        let built = Recipe::with_bbappend(line).unwrap();
        assert_packageconfig_defined(&built, &defined, line);
        assert_eq!(
            built
                .words("PACKAGECONFIG")
                .contains(&"composeapp".to_string()),
            composeapp,
            "{line}"
        );
    }
    // composeapp reaches the agent as its build-time DOCKER_COMPOSE_APP.
    let compose = recipe.export("DOCKER_COMPOSE_APP");
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
    assert_eq!(recipe.value(NEW), Some(""));
    let set_new = Recipe::with_bbappend(&format!("{NEW} = \"1\"")).unwrap();
    assert_eq!(set_new.value(NEW), Some("1"));
    let both = Recipe::with_bbappend(&format!("{OLD} = \"1\"\n{NEW} = \"0\"")).unwrap();
    assert_eq!(both.value(NEW), Some("0"));
    // The old name alone: NEW's only assignment is a weak default that
    // refers to OLD, and OLD's a weak default too, so in BitBake a factory's
    // OLD = "1" is what NEW reads. (oelint-parser expands a reference with
    // the first assignment of the variable rather than its final value, so
    // it cannot show NEW = "1" itself; it shows the two halves.)
    let new_assigned: Vec<(&str, &str)> = recipe
        .assignments
        .iter()
        .filter(|a| a.name == NEW)
        .map(|a| (a.op.as_str(), a.value.as_str()))
        .collect();
    assert_eq!(new_assigned, [("??=", format!("${{{OLD}}}").as_str())]);
    let old_assigned: Vec<(&str, &str)> = recipe
        .assignments
        .iter()
        .filter(|a| a.name == OLD)
        .map(|a| (a.op.as_str(), a.value.as_str()))
        .collect();
    assert_eq!(old_assigned, [("??=", "")]);
    let set_old = Recipe::with_bbappend(&format!("{OLD} = \"1\"")).unwrap();
    assert_eq!(set_old.value(OLD), Some("1"));

    let install = commands(recipe.function("do_install:append"));
    let condition = install
        .iter()
        .find(|l| l.contains(NEW))
        .unwrap_or_else(|| panic!("do_install does not look at {NEW}"));
    assert!(
        condition.contains(&format!("bb.utils.to_boolean(d.getVar('{NEW}'), False)")),
        "{condition}"
    );
    assert!(install
        .iter()
        .any(|l| l.contains("Environment=USE_HOSTNAME=1")));
    let handler = recipe.function("lmp_device_register_rs_check_settings");
    for var in [NEW, OLD] {
        assert!(
            handler.contains(&format!("\"{var}\"")),
            "a bad {var} must be refused when the recipe is parsed"
        );
    }
}

#[test]
fn recipe_and_layer_examples_pass_oelint_adv() {
    if !python_tools_installed() {
        return;
    }
    let output = python3(&["yocto-recipe/lint.py"]);
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    assert!(
        output.status.success(),
        "oelint-adv:\n{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Both releases the recipe builds on were linted.
    for release in ["whinlatter", "wrynose"] {
        assert!(report.contains(&format!("release {release}:")), "{report}");
    }
    // Each finding left in the generated crates list is explained in the
    // recipe's README.
    let readme = read("yocto-recipe/README.md");
    for line in report.lines().filter(|l| l.contains(": justified: ")) {
        let rule = line.split(": ").nth(1).unwrap();
        assert!(
            readme.contains(rule),
            "yocto-recipe/README.md does not explain {rule}"
        );
    }
}

#[test]
fn factory_layer_examples_configure_the_recipe_and_install_valid_files() {
    let bbappend = repo().join(format!(
        "{LAYER}/lmp-device-register-rs/lmp-device-register-rs_%.bbappend"
    ));
    let (Some(recipe), Some(built)) = (
        Recipe::shipped(),
        Recipe::read(&[Path::new(RECIPE), &bbappend]),
    ) else {
        return;
    };
    assert!(built
        .words("PACKAGECONFIG")
        .contains(&"production".to_string()));
    let api = built.required("LMP_DEVICE_API");
    assert!(
        api.starts_with("http://") || api.starts_with("https://"),
        "{api}"
    );
    assert!(
        recipe.value("LMP_DEVICE_API").is_some_and(|own| own != api),
        "the bbappend sets a knob the recipe has"
    );
    // The repository the recipe needs, in the form its parse-time check takes.
    let repository = built.required("LMP_DEVICE_REGISTER_RS_GIT");
    assert!(
        repository.starts_with("git://") && !repository.contains(";branch="),
        "{repository}"
    );
    // With the bbappend applied, every PACKAGECONFIG is one the recipe
    // defines (OE's invalid-packageconfig check), and LmP is left alone.
    assert_packageconfig_defined(
        &built,
        &recipe.flags("PACKAGECONFIG"),
        "the example bbappend",
    );
    let words = built.words("PACKAGECONFIG");
    for profile in ["losant", "tii", "azure-dps"] {
        assert!(
            !words.contains(&profile.to_string()),
            "{profile} still built"
        );
    }

    let config_dir = format!("{LAYER}/lmp-device-register-config");
    let Some(config) =
        Recipe::read(&[&repo().join(format!("{config_dir}/lmp-device-register-config_1.0.bb"))])
    else {
        return;
    };
    // It depends on the agent, whose package is machine-specific: so is it.
    // (allarch with such a dependency gets another signature per machine and
    // is rebuilt for each.)
    assert_eq!(recipe.required("PACKAGE_ARCH"), "${MACHINE_ARCH}");
    assert!(config
        .of_package("RDEPENDS")
        .contains(&"lmp-device-register-rs".to_string()));
    assert!(
        !config.inherits("allarch"),
        "an allarch recipe must not depend on a machine-specific package"
    );
    assert_eq!(config.required("PACKAGE_ARCH"), "${MACHINE_ARCH}");
    let install = commands(config.function("do_install"));
    for uri in config.words("SRC_URI") {
        let file = uri.strip_prefix("file://").expect("only local files");
        assert!(
            repo().join(&config_dir).join("files").join(file).is_file(),
            "files/{file}"
        );
    }
    let conffiles = config.of_package("CONFFILES");
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
            .iter()
            .find(|l| l.contains(&format!("/{file} ")))
            .unwrap_or_else(|| panic!("do_install does not install {file}"));
        assert!(
            line.contains(&format!("-m {mode}")),
            "{file} must be installed {mode}: {line}"
        );
        assert!(line.ends_with(target), "{file} → {target}: {line}");
        // The device's own settings: an upgrade keeps a changed one.
        assert!(
            conffiles.contains(&target.to_string()),
            "{target} not a conffile"
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
    let Some(recipe) = Recipe::shipped() else {
        return;
    };
    let declared = license_clauses(recipe.required("LICENSE"));
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
    let inc_path = CRATES_INC;
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
    // And BitBake reads every crate with its checksum, through the recipe's
    // require.
    let Some(recipe) = Recipe::shipped() else {
        return;
    };
    let fetched: Vec<String> = recipe
        .words("SRC_URI")
        .into_iter()
        .filter(|u| u.starts_with("crate://"))
        .collect();
    assert_eq!(fetched.len(), uris.matches("crate://").count());
    let checksums = recipe.flags("SRC_URI");
    for uri in &fetched {
        let (name, version) = uri
            .strip_prefix("crate://crates.io/")
            .and_then(|rest| rest.split_once('/'))
            .unwrap_or_else(|| panic!("{uri}"));
        let flag = format!("{name}-{version}.sha256sum");
        // oelint-parser reads a flag name with a '+' (a version's build
        // metadata, e.g. toml's 0.9.12+spec-1.1.0) as a statement it does
        // not know, which BitBake reads as any other flag.
        let unread = recipe
            .statements
            .iter()
            .find_map(|s| s.strip_prefix(&format!("SRC_URI[{flag}] = \"")))
            .filter(|_| flag.contains('+'))
            .map(|rest| rest.trim_end_matches('"').to_string());
        let checksum = checksums.get(&flag).cloned().or(unread);
        assert!(
            checksum.is_some_and(|c| c.len() == 64),
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
