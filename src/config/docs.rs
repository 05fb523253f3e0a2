//! What the declarations say about the settings, in words: the `--help` line
//! of a flag and the tables of `docs/configuration.md`. Both are made here
//! from the same [`Source`]s the resolver walks, so they cannot disagree with
//! it (a test compares the checked-in tables with these).

use super::setting::{Declarations, Describe, Source};

/// The columns of a settings table, in the order of precedence.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Column {
    Flag,
    Environment,
    ConfigFile,
    DeviceFile,
    Default,
}

const COLUMNS: [Column; 5] = [
    Column::Flag,
    Column::Environment,
    Column::ConfigFile,
    Column::DeviceFile,
    Column::Default,
];

/// How a source reads in the docs (Markdown, `code` in backticks) and the
/// column it goes in.
fn describe(source: &Source, toml_type: &str) -> (Column, String) {
    match source {
        Source::Flag(flag) => (
            Column::Flag,
            match flag.short {
                Some(short) => format!("`-{short}`, `--{}`", flag.long),
                None => format!("`--{}`", flag.long),
            },
        ),
        Source::Env(var) => (Column::Environment, format!("`{var}`")),
        Source::Key(key) if toml_type == "string" => (Column::ConfigFile, format!("`{key}`")),
        Source::Key(key) => (Column::ConfigFile, format!("`{key}` ({toml_type})")),
        Source::TopKey(key) => (Column::ConfigFile, format!("`{key}` (top level)")),
        Source::OsRelease(var) => (Column::DeviceFile, format!("`{var}` in `/etc/os-release`")),
        Source::Line { path, .. } => (Column::DeviceFile, format!("`/{path}`")),
        Source::Device { doc, .. } | Source::Given(doc) => (Column::DeviceFile, doc.to_string()),
        Source::Build { var, .. } => (Column::Default, format!("`{var}` at build time")),
        Source::UnderRoot(path) => (Column::Default, format!("`/{path}`")),
        Source::Default(value) => (Column::Default, format!("`{value}`")),
    }
}

/// The sources of `setting`, described, in order of precedence.
fn described(setting: &dyn Describe) -> Vec<(Column, String)> {
    let sources = setting.sources().iter();
    sources
        .map(|source| describe(source, setting.toml_type()))
        .collect()
}

/// The cell of `column` for `setting`: its sources there, in order. A
/// source that comes after one of a later column (a build default before
/// a device file) says so, since the columns read as the order otherwise.
fn cell(setting: &dyn Describe, column: Column) -> String {
    let sources = described(setting);
    let mut parts = Vec::new();
    for (i, (c, text)) in sources.iter().enumerate() {
        if *c != column {
            continue;
        }
        match sources[..i].iter().find(|(earlier, _)| *earlier > column) {
            Some((_, earlier)) => parts.push(format!("{text} (after {earlier})")),
            None => parts.push(text.clone()),
        }
    }
    let mut cell = parts.join(", then ");
    if column == Column::Default && !setting.otherwise().is_empty() {
        let otherwise = setting.otherwise();
        cell = if cell.is_empty() {
            otherwise.to_string()
        } else {
            format!("{cell}, else {otherwise}")
        };
    }
    if cell.is_empty() {
        cell.push('—');
    }
    cell
}

/// A Markdown table of `settings`; `table` names the config-file table.
pub(crate) fn markdown_table(settings: Declarations, table: &str) -> String {
    let config = if table.is_empty() {
        "config file".to_string()
    } else {
        format!("config file `[{table}]`")
    };
    let mut out = format!(
        "| setting | flag | environment | {config} | device file | default |\n|---|---|---|---|---|---|\n"
    );
    for setting in settings {
        let mut name = format!("**{}**", setting.name());
        for (marked, mark) in [
            (setting.is_required(), "required"),
            (setting.is_secret(), "secret"),
        ] {
            if marked {
                name.push_str(&format!(" ({mark})"));
            }
        }
        let cells: Vec<String> = COLUMNS.iter().map(|&c| cell(*setting, c)).collect();
        out.push_str(&format!(
            "| {name}: {} | {} |\n",
            setting.help().trim_end_matches('.'),
            cells.join(" | ")
        ));
    }
    out
}

/// The `--help` line of a setting's flag: its help, then the sources after
/// the command line, as clap shows an `env` and a default.
pub(crate) fn help_text(setting: &dyn Describe) -> String {
    let sources = described(setting);
    let plain = |column: Column| -> Vec<String> {
        sources
            .iter()
            .filter(|(c, _)| *c == column)
            .map(|(_, text)| text.replace('`', ""))
            .collect()
    };
    let mut help = setting.help().to_string();
    for (label, column) in [("env", Column::Environment), ("config", Column::ConfigFile)] {
        let texts = plain(column);
        if !texts.is_empty() {
            help.push_str(&format!(" [{label}: {}]", texts.join(", ")));
        }
    }
    // In order of precedence, whatever their column.
    let mut fallback: Vec<String> = sources
        .iter()
        .filter(|(c, _)| *c >= Column::DeviceFile)
        .map(|(_, text)| text.replace('`', ""))
        .collect();
    if !setting.otherwise().is_empty() {
        fallback.push(setting.otherwise().replace('`', ""));
    }
    if !fallback.is_empty() {
        help.push_str(&format!(" [default: {}]", fallback.join(", else ")));
    }
    help
}
