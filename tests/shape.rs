//! The shape of the code, checked: no function in `src/` is longer than 80
//! lines (from `fn` to its closing brace, comments included), and a profile
//! lives in its own folder, named elsewhere only by its registration line in
//! `src/profiles/mod.rs` (and its cargo feature in `Cargo.toml`), and no
//! shared code quiets dead code for builds without some profile.
//!
//! `scripts/fn-lengths` prints the table of the longest functions.

use std::path::{Path, PathBuf};

const LIMIT: usize = 80;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// Rust source with comments, strings and character literals blanked out
/// (newlines kept), so that braces and keywords are code.
fn code_only(text: &str) -> Vec<char> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = chars.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        let end = if rest.starts_with(&['/', '/']) {
            i + rest.iter().position(|&c| c == '\n').unwrap_or(rest.len())
        } else if rest.starts_with(&['/', '*']) {
            block_comment_end(&chars, i)
        } else if let Some(end) = string_end(&chars, i) {
            end
        } else if let Some(end) = char_literal_end(&chars, i) {
            end
        } else {
            i += 1;
            continue;
        };
        blank(&mut out, i, end);
        i = end;
    }
    out
}

/// The end of a (nested) block comment starting at `start`.
fn block_comment_end(chars: &[char], start: usize) -> usize {
    let (mut depth, mut i) = (0, start);
    while i < chars.len() {
        if chars[i..].starts_with(&['/', '*']) {
            depth += 1;
            i += 2;
        } else if chars[i..].starts_with(&['*', '/']) {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    chars.len()
}

/// The end of a string literal (`"…"`, `b"…"`, `r#"…"#`, `br"…"`) starting
/// at `start`, if one does.
fn string_end(chars: &[char], start: usize) -> Option<usize> {
    let ident_before = start > 0 && (chars[start - 1].is_alphanumeric() || chars[start - 1] == '_');
    let mut i = start;
    if chars[i] == 'b' && !ident_before {
        i += 1;
    }
    let raw = chars.get(i) == Some(&'r') && (i > start || !ident_before);
    if raw {
        i += 1;
        let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
        i += hashes;
        if chars.get(i) != Some(&'"') {
            return None;
        }
        let close: Vec<char> = std::iter::once('"')
            .chain(std::iter::repeat_n('#', hashes))
            .collect();
        let body = i + 1;
        return Some(
            (body..chars.len())
                .find(|&j| chars[j..].starts_with(&close))
                .map_or(chars.len(), |j| j + close.len()),
        );
    }
    if chars.get(i) != Some(&'"') || (i == start && ident_before && chars[start] != '"') {
        return None;
    }
    let mut j = i + 1;
    while j < chars.len() {
        match chars[j] {
            '\\' => j += 2,
            '"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    Some(chars.len())
}

/// The end of a character literal (`'x'`, `'\n'`, `b'{'`) starting at
/// `start`; a lifetime (`'a`) is none.
fn char_literal_end(chars: &[char], start: usize) -> Option<usize> {
    let quote = if chars[start] == 'b' {
        start + 1
    } else {
        start
    };
    if chars.get(quote) != Some(&'\'') {
        return None;
    }
    match chars.get(quote + 1) {
        Some('\\') => {
            let close = (quote + 2..chars.len()).find(|&j| chars[j] == '\'')?;
            Some(close + 1)
        }
        Some(_) if chars.get(quote + 2) == Some(&'\'') => Some(quote + 3),
        _ => None,
    }
}

struct Function {
    file: String,
    name: String,
    line: usize,
    lines: usize,
}

/// Every function with a body: its name, first line and length in lines.
fn functions(file: &str, text: &str) -> Vec<Function> {
    let code = code_only(text);
    let line_of = |at: usize| code[..at].iter().filter(|&&c| c == '\n').count() + 1;
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for at in 0..code.len().saturating_sub(3) {
        let keyword =
            code[at..].starts_with(&['f', 'n', ' ']) && (at == 0 || !is_ident(code[at - 1]));
        if !keyword {
            continue;
        }
        let name: String = code[at + 3..]
            .iter()
            .take_while(|&&c| is_ident(c))
            .collect();
        if name.is_empty() {
            continue; // a fn pointer type: `fn(...)`
        }
        let Some(body) = body_range(&code, at) else {
            continue; // a declaration without a body
        };
        found.push(Function {
            file: file.to_string(),
            name,
            line: line_of(at),
            lines: line_of(body.1) - line_of(at) + 1,
        });
    }
    found
}

/// The braces of the body of the function whose `fn` is at `at`, if it has
/// one (a trait method may end with `;`).
fn body_range(code: &[char], at: usize) -> Option<(usize, usize)> {
    let mut nesting = 0i32;
    let mut open = None;
    for (i, &c) in code.iter().enumerate().skip(at) {
        match c {
            '(' | '[' | '<' => nesting += 1,
            ')' | ']' | '>' if nesting > 0 => nesting -= 1,
            ';' if nesting == 0 => return None,
            '{' if nesting <= 0 => {
                open = Some(i);
                break;
            }
            _ => {}
        }
    }
    let open = open?;
    let mut depth = 0;
    for (i, &c) in code.iter().enumerate().skip(open) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((open, i));
                }
            }
            _ => {}
        }
    }
    None
}

fn all_functions() -> Vec<Function> {
    let mut files = Vec::new();
    rust_files(&repo().join("src"), &mut files);
    let mut all = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let relative = path.strip_prefix(repo()).unwrap().display().to_string();
        all.extend(functions(&relative, &text));
    }
    all.sort_by(|a, b| b.lines.cmp(&a.lines).then(a.file.cmp(&b.file)));
    all
}

#[test]
fn no_function_is_longer_than_80_lines() {
    let all = all_functions();
    // FN_LENGTHS_TOP=all (or a number) prints more of the table.
    let top = match std::env::var("FN_LENGTHS_TOP").as_deref() {
        Ok("all") => all.len(),
        Ok(n) => n.parse().unwrap_or(15),
        Err(_) => 15,
    };
    println!("longest functions of src/ (from fn to its closing brace):");
    for f in all.iter().take(top) {
        println!("{:5}  {}:{} {}", f.lines, f.file, f.line, f.name);
    }
    let wrong = over_the_limit(&all);
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Each function of `all` over the limit, with where it is.
fn over_the_limit(all: &[Function]) -> Vec<String> {
    all.iter()
        .filter(|f| f.lines > LIMIT)
        .map(|f| {
            format!(
                "{}:{} {} is {} lines, over {LIMIT}",
                f.file, f.line, f.name, f.lines
            )
        })
        .collect()
}

#[test]
fn a_function_of_81_lines_is_over_the_limit() {
    let function = |name: &str, lines| Function {
        file: "src/x.rs".into(),
        name: name.into(),
        line: 1,
        lines,
    };
    let all = [function("long", 81), function("short", 80)];
    assert_eq!(
        over_the_limit(&all),
        ["src/x.rs:1 long is 81 lines, over 80"]
    );
}

#[test]
fn the_counter_counts_from_fn_to_the_closing_brace() {
    let text = r##"
/// doc
fn short() { let s = "}"; let c = '}'; /* } */ }

impl X {
    fn method(&self, f: fn(u8) -> u8) -> Vec<u8>
    where
        Self: Sized,
    {
        // }
        let raw = r#"}"#;
        vec![]
    }
    fn declared(&self);
}
fn generic<'a, T: Fn() -> &'a str>(t: T) -> &'a str { t() }
"##;
    let found = functions("x.rs", text);
    let summary: Vec<(&str, usize, usize)> = found
        .iter()
        .map(|f| (f.name.as_str(), f.line, f.lines))
        .collect();
    assert_eq!(
        summary,
        [("short", 3, 1), ("method", 6, 8), ("generic", 16, 1)]
    );
}

/// The lines outside a profile's folder that name it: its module path or
/// its feature.
fn mentions(text: &str, module: &str, feature: &str) -> Vec<String> {
    let code: String = code_only(text).into_iter().collect();
    let feature = format!("feature = \"{feature}\"");
    let module = format!("{module}::");
    code.lines()
        .zip(text.lines())
        .filter(|(code, line)| code.contains(&module) || line.contains(&feature))
        .map(|(_, line)| line.trim().to_string())
        .collect()
}

/// Quieting dead code is how a shared module used to put up with a build
/// that lacks the profile using it; a capability feature the profile turns
/// on (`mutual-tls`, `two-stage`) leaves the code out of such builds instead.
#[test]
fn no_dead_code_is_quieted() {
    let mut files = Vec::new();
    rust_files(&repo().join("src"), &mut files);
    let mut quieted = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let code: String = code_only(&text).into_iter().collect();
        for (n, line) in code.lines().enumerate() {
            if line.contains("dead_code") {
                let relative = path.strip_prefix(repo()).unwrap().display();
                quieted.push(format!("{relative}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(quieted.is_empty(), "{quieted:#?}");
}

#[test]
fn a_profile_is_its_folder_and_one_registration_line() {
    let mut files = Vec::new();
    rust_files(&repo().join("src"), &mut files);
    let registry = repo().join("src/profiles/mod.rs");
    let mut wrong = Vec::new();
    for (module, feature) in [
        ("losant", "losant"),
        ("tii", "tii"),
        ("azure_dps", "azure-dps"),
        ("example", "example"),
    ] {
        let own = repo().join("src/profiles").join(module);
        let line_of_it = format!(
            "#[cfg(feature = \"{feature}\")] \"{feature}\" => {module}::{}",
            type_name(module)
        );
        for path in files.iter().filter(|p| !p.starts_with(&own)) {
            let text = std::fs::read_to_string(path).unwrap();
            let relative = path.strip_prefix(repo()).unwrap().display().to_string();
            for line in mentions(&text, module, feature) {
                let registration = *path == registry
                    && [",", " in tests,"]
                        .iter()
                        .any(|end| line == format!("{line_of_it}{end}"));
                if !registration {
                    wrong.push(format!(
                        "{relative} names the {feature} profile outside src/profiles/{module}/ and its registration line: {line}"
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The type a profile module registers, by the project's naming.
fn type_name(module: &str) -> String {
    module
        .split('_')
        .map(|part| part[..1].to_uppercase() + &part[1..])
        .collect()
}
