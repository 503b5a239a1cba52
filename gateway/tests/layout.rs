//! The shape of `gateway/src`, checked on the source tree itself: no file over 600 lines, every
//! file opens with a `//!` doc, the top-level parts import each other without circles, and no
//! stage (access, decode, consent, validate, dedup, publish) imports `config`, `http` or
//! `ingest`. Test code (`tests.rs`, `tests/` folders, an inline `mod tests`) is left out
//! of the import graph: tests may build a whole config.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;
const STAGES: &[&str] = &["access", "decode", "consent", "validate", "dedup", "publish", "import"];
const ABOVE_STAGES: &[&str] = &["config", "http", "ingest", "ops"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level part a file belongs to: `decode/body.rs` → `decode`, `error.rs` → `error`.
fn part_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

fn is_test_file(file: &Path) -> bool {
    let rel = file.strip_prefix(src()).unwrap();
    rel.file_name().is_some_and(|n| n == "tests.rs") || rel.components().any(|c| c.as_os_str() == "tests")
}

/// The parts a file's non-test code names as `crate::<part>`.
fn imports(text: &str) -> BTreeSet<String> {
    // An inline `mod tests { … }` ends the file's own code (it comes last, by convention);
    // other `#[cfg(test)]` items (a `mod tests;` line, a test-only helper) do not.
    let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or("");
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files.iter().filter(|f| !is_test_file(f)) {
        let part = part_of(f);
        if part == "lib" || part == "main" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let entry = g.entry(part.clone()).or_default();
        entry.extend(imports(&text).into_iter().filter(|p| *p != part));
    }
    g
}

#[test]
fn no_file_is_over_600_lines_and_each_opens_with_its_doc() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    assert!(files.len() > 20, "found only {} files under {}", files.len(), src().display());
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines = text.lines().count();
        if lines > MAX_LINES {
            problems.push(format!("{}: {lines} lines (at most {MAX_LINES})", f.display()));
        }
        if !text.trim_start().starts_with("//!") {
            problems.push(format!("{}: does not open with a //! doc", f.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn stages_import_neither_config_nor_what_calls_them() {
    let g = graph();
    let mut problems = Vec::new();
    for stage in STAGES {
        let deps = g.get(*stage).unwrap_or_else(|| panic!("no part named {stage} in {}", src().display()));
        for above in ABOVE_STAGES {
            if deps.contains(*above) {
                problems.push(format!("{stage} imports crate::{above}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}\n(graph: {g:#?})", problems.join("\n"));
}

#[test]
fn the_parts_import_each_other_without_circles() {
    let g = graph();
    // Depth-first search for a back edge; report the circle it closes.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut circle = stack[at..].to_vec();
            circle.push(n.to_string());
            return Some(circle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(circle) = visit(n, &g, &mut Vec::new(), &mut done) {
            panic!("import circle: {}\n(graph: {g:#?})", circle.join(" → "));
        }
    }
    // The graph is not empty by accident: the pipeline imports the stages.
    assert!(g.get("ingest").is_some_and(|d| d.contains("decode") && d.contains("publish")), "{g:#?}");
}
