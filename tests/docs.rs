//! Checks of the documentation as a reader meets it: the README stays short
//! enough to read in minutes, every relative link and `#anchor` in the
//! repository's Markdown leads somewhere, and the README's exit codes are the
//! program's.

use lmp_device_register::error::ErrorKind;
use pulldown_cmark::{Event, Parser, Tag, TagEnd};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

const README_MAX_LINES: usize = 250;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every Markdown file of the project: the README, `docs/` and the READMEs
/// beside the recipe and the examples. Build output and VCS data are not
/// the project's text.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !(name.starts_with('.') || name == "target") {
                    walk(&path, found);
                }
            } else if name.ends_with(".md") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&repo(), &mut found);
    found.sort();
    found
}

/// The anchor GitHub gives a heading: lower case, letters, digits, `-` and
/// `_` kept, spaces made `-`, everything else dropped; a repeated heading
/// gets `-1`, `-2`, ...
fn slug(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

struct Document {
    anchors: BTreeSet<String>,
    /// Link destinations, with the line they are on.
    links: Vec<(usize, String)>,
}

fn read_document(path: &Path) -> Document {
    let text = std::fs::read_to_string(path).unwrap();
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut anchors = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut links = Vec::new();
    let mut heading: Option<String> = None;
    for (event, range) in Parser::new(&text).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let base = slug(&heading.take().unwrap());
                let count = seen.entry(base.clone()).or_insert(0);
                let anchor = match *count {
                    0 => base,
                    n => format!("{base}-{n}"),
                };
                *count += 1;
                anchors.insert(anchor);
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                links.push((line_of(range.start), dest_url.into_string()));
            }
            _ => {}
        }
    }
    Document { anchors, links }
}

/// `path` as the repository sees it, `..` resolved, or `None` when it
/// leaves the repository.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

fn is_external(dest: &str) -> bool {
    ["http://", "https://", "mailto:"]
        .iter()
        .any(|scheme| dest.starts_with(scheme))
}

#[test]
fn the_readme_is_short() {
    let lines = std::fs::read_to_string(repo().join("README.md"))
        .unwrap()
        .lines()
        .count();
    println!("README.md: {lines} lines (at most {README_MAX_LINES})");
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines; move detail to docs/ (at most {README_MAX_LINES})"
    );
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let root = repo();
    let files = markdown_files();
    assert!(files.iter().any(|f| f.ends_with("README.md")));
    assert!(files.iter().any(|f| f.ends_with("docs/configuration.md")));
    let documents: BTreeMap<PathBuf, Document> = files
        .iter()
        .map(|f| {
            (
                f.strip_prefix(&root).unwrap().to_path_buf(),
                read_document(f),
            )
        })
        .collect();

    let mut broken = Vec::new();
    let mut checked = 0;
    for (file, document) in &documents {
        for (line, dest) in &document.links {
            if is_external(dest) {
                continue;
            }
            checked += 1;
            let (path, anchor) = match dest.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (dest.as_str(), None),
            };
            let target = if path.is_empty() {
                Some(file.clone())
            } else if path.starts_with('/') {
                None
            } else {
                normalise(&file.parent().unwrap().join(path))
            };
            let problem = match (&target, anchor) {
                (None, _) => Some("leaves the repository or is absolute".to_string()),
                (Some(t), _) if !root.join(t).exists() => {
                    Some(format!("{} does not exist", t.display()))
                }
                (Some(_), None) => None,
                (Some(t), Some(anchor)) => match documents.get(t) {
                    None => Some(format!(
                        "#{anchor} into {}, which is not Markdown",
                        t.display()
                    )),
                    Some(d) if !d.anchors.contains(anchor) => {
                        Some(format!("{} has no heading #{anchor}", t.display()))
                    }
                    Some(_) => None,
                },
            };
            if let Some(problem) = problem {
                broken.push(format!("{}:{line}: ({dest}) {problem}", file.display()));
            }
        }
    }
    println!(
        "{checked} relative links in {} Markdown files",
        documents.len()
    );
    assert!(checked > 50, "only {checked} relative links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_slugs_are_githubs() {
    assert_eq!(slug("Exit codes"), "exit-codes");
    assert_eq!(slug("`--json`"), "--json");
    assert_eq!(
        slug("Porting an existing lmp-device-register_%.bbappend"),
        "porting-an-existing-lmp-device-register_bbappend"
    );
    assert_eq!(
        slug("Settings ([tii] in /etc/lmp-device-register.toml)"),
        "settings-tii-in-etclmp-device-registertoml"
    );
}

/// The README's exit-code table is the program's: every kind, its code and
/// its `--json` name, in order.
#[test]
fn the_readme_exit_codes_are_the_programs() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split_once("## Exit codes")
        .expect("README.md has an Exit codes section")
        .1;
    let rows: Vec<(u8, String)> = section
        .lines()
        .skip_while(|l| !l.starts_with("| code"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (
                cells[1].parse().unwrap(),
                cells[2].trim_matches('`').to_string(),
            )
        })
        .collect();
    let mut expected = vec![(0, String::new())];
    expected.extend(
        ErrorKind::ALL
            .iter()
            .map(|k| (k.exit_code(), k.as_str().to_string())),
    );
    assert_eq!(rows, expected);
}
