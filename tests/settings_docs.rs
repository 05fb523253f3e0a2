//! The settings tables of the docs are made from the settings' declarations
//! (`src/config/`, `src/profiles/*/config.rs`), like the man page and the
//! completions: a table that differs from its declarations fails here, and
//! `UPDATE_GENERATED=1 cargo test --test settings_docs` rewrites it.
//!
//! A table sits in a Markdown file between `<!-- BEGIN settings NAME -->`
//! and `<!-- END settings NAME -->`; NAME is a profile, `shared` or `hsm`.

use std::path::PathBuf;

/// Where the tables live.
const DOC: &str = "docs/configuration.md";

fn begin(name: &str) -> String {
    format!("<!-- BEGIN settings {name} (made from the declarations: UPDATE_GENERATED=1 cargo test --test settings_docs) -->\n")
}

fn end(name: &str) -> String {
    format!("<!-- END settings {name} -->\n")
}

/// `text` with the block `name` holding `table`; `None` when it has no such
/// block.
fn with_block(text: &str, name: &str, table: &str) -> Option<String> {
    let (begin, end) = (begin(name), end(name));
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    Some(format!("{}\n{table}\n{}", &text[..start], &text[stop..]))
}

#[test]
fn the_settings_tables_are_made_from_the_declarations() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DOC);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut updated = text.clone();
    let mut missing = Vec::new();
    for (name, table) in lmp_device_register::profiles::settings_tables() {
        match with_block(&updated, &name, &table) {
            Some(new) => updated = new,
            None => missing.push(name),
        }
    }
    assert!(
        missing.is_empty(),
        "{DOC} has no block for {missing:?}: add\n{}{}for each",
        begin("NAME"),
        end("NAME")
    );
    if updated == text {
        return;
    }
    if std::env::var_os("UPDATE_GENERATED").is_some_and(|v| !v.is_empty()) {
        std::fs::write(&path, updated).unwrap();
        println!("rewrote the settings tables of {DOC}");
    } else {
        panic!(
            "the settings tables of {DOC} differ from the declarations; refresh them with: UPDATE_GENERATED=1 cargo test --test settings_docs"
        );
    }
}
