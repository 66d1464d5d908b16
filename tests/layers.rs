//! The crate's layers, checked on its source so they cannot erode unnoticed:
//!
//! ```text
//! 5  main.rs, bin/*.rs                wiring only (the binaries; not part of the library)
//! 4  cli                              terminal views
//! 3  operator                         the controllers
//! 2  sidecar · rebalance              the data path: the proxy and the rebalance Job
//! 1  redis · http · shutdown · telemetry   talking to Redis; process plumbing
//! 0  api · routing                    the contract: custom resources, the routing table
//! ```
//!
//! 1. A module names only modules of layers *below* its own (`crate::…`, or `super::…` that
//!    climbs out of it): never one above, never a neighbour on its own layer.
//! 2. The modules of one parent never import each other in a circle (`context` → `sampling`
//!    → `context`, say); a parent and its own children are one unit and may.
//!
//! The module tree is read from `src/lib.rs` by following `mod` declarations, so a file that
//! is not part of the crate is not checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of each top-level module of the library.
const LAYERS: &[(&str, u8)] = &[
    ("api", 0),
    ("routing", 0),
    ("redis", 1),
    ("http", 1),
    ("kube_client", 1),
    ("shutdown", 1),
    ("telemetry", 1),
    ("sidecar", 2),
    ("rebalance", 2),
    ("operator", 3),
    ("cli", 4),
];

/// One source file of the crate: its module path (`["operator", "cache_policy"]`) and its
/// code with comments removed.
struct Module {
    file: PathBuf,
    path: Vec<String>,
    code: String,
}

fn layer(top: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == top)
        .map(|(_, l)| *l)
}

/// The code without `//` comments (doc comments included: their links are not imports).
fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut in_string = false;
        let mut prev = ' ';
        let mut cut = line.len();
        for (i, c) in line.char_indices() {
            if c == '"' && prev != '\\' {
                in_string = !in_string;
            }
            if !in_string && c == '/' && prev == '/' {
                cut = i - 1;
                break;
            }
            prev = c;
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// The `mod name;` declarations of a file (inline `mod name { … }` blocks are part of it).
fn declared_modules(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub(crate) mod ")
                .or_else(|| line.strip_prefix("pub(super) mod "))
                .or_else(|| line.strip_prefix("pub mod "))
                .or_else(|| line.strip_prefix("mod "))?;
            let name = rest.strip_suffix(';')?;
            Some(name.trim().to_owned())
        })
        .collect()
}

/// Every file of the crate reachable from `src/lib.rs`.
fn modules(src: &Path) -> Vec<Module> {
    let mut out = Vec::new();
    let mut todo = vec![(src.join("lib.rs"), Vec::<String>::new())];
    while let Some((file, path)) = todo.pop() {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let code = strip_comments(&text);
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // Children of `lib.rs` and `x/mod.rs` live beside them; those of `x.rs` in `x/`.
        let dir = if name == "lib.rs" || name == "mod.rs" {
            file.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            file.with_extension("")
        };
        for child in declared_modules(&code) {
            let flat = dir.join(format!("{child}.rs"));
            let nested = dir.join(&child).join("mod.rs");
            let child_file = if flat.exists() { flat } else { nested };
            let mut child_path = path.clone();
            child_path.push(child);
            todo.push((child_file, child_path));
        }
        out.push(Module { file, path, code });
    }
    out
}

/// The module paths a file names: `crate::a::b` and `crate::{a, b::c}` from the crate root,
/// `super::…` and `self::…` from the file's own module. Only the leading identifiers of each
/// path are kept; the caller decides which of them are modules.
fn references(module: &Module) -> Vec<Vec<String>> {
    let code = &module.code;
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let ident = |at: usize| -> (String, usize) {
        let end = code[at..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(code.len(), |n| at + n);
        (code[at..end].to_owned(), end)
    };
    let mut i = 0;
    while i < code.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let (word, end) = ident(i);
        if word.is_empty() || !boundary {
            i += code[i..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        let base: Option<Vec<String>> = match word.as_str() {
            "crate" => Some(Vec::new()),
            "self" => Some(module.path.clone()),
            "super" => Some(module.path[..module.path.len().saturating_sub(1)].to_vec()),
            _ => None,
        };
        let Some(mut base) = base.filter(|_| code[end..].starts_with("::")) else {
            i = end;
            continue;
        };
        // Follow `::name` segments (and more `super`s); a `{` opens a group of paths.
        let mut at = end;
        while code[at..].starts_with("::") {
            at += 2;
            if code[at..].starts_with('{') {
                let close = code[at..].find('}').map_or(code.len(), |n| at + n);
                for item in code[at + 1..close].split(',') {
                    let first = item.trim().split("::").next().unwrap_or_default().trim();
                    if !first.is_empty() && first != "self" {
                        let mut p = base.clone();
                        p.push(first.to_owned());
                        out.push(p);
                    } else if first == "self" {
                        out.push(base.clone());
                    }
                }
                at = close;
                break;
            }
            let (segment, next) = ident(at);
            if segment == "super" {
                base.pop();
            } else if !segment.is_empty() {
                base.push(segment);
            }
            at = next;
        }
        out.push(base);
        i = at.max(end);
    }
    out
}

#[test]
fn no_module_imports_from_its_own_layer_or_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    for module in modules(&src) {
        let Some(own) = module.path.first() else {
            continue; // lib.rs declares the modules
        };
        let Some(own_layer) = layer(own) else {
            problems.push(format!(
                "{}: `{own}` has no layer: add it to LAYERS in tests/layers.rs",
                module.file.display()
            ));
            continue;
        };
        let named: BTreeSet<String> = references(&module)
            .into_iter()
            .filter_map(|p| p.first().cloned())
            .filter(|top| top != own && layer(top).is_some())
            .collect();
        for top in named {
            let their_layer = layer(&top).unwrap_or(u8::MAX);
            if their_layer >= own_layer {
                problems.push(format!(
                    "{}: `{own}` (layer {own_layer}) names `crate::{top}` (layer {their_layer})",
                    module.file.display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn sibling_modules_never_import_each_other_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let all = modules(&src);
    let paths: BTreeSet<Vec<String>> = all.iter().map(|m| m.path.clone()).collect();
    // Edges between siblings: a file under parent/a names parent/b.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<(String, String)>> = BTreeMap::new();
    for module in &all {
        for reference in references(module) {
            let common = module
                .path
                .iter()
                .zip(&reference)
                .take_while(|(a, b)| a == b)
                .count();
            let (Some(from), Some(to)) = (module.path.get(common), reference.get(common)) else {
                continue; // a parent naming its own item, or a child its parent's
            };
            let parent = module.path[..common].to_vec();
            let mut sibling = parent.clone();
            sibling.push(to.clone());
            if paths.contains(&sibling) {
                edges
                    .entry(parent)
                    .or_default()
                    .insert((from.clone(), to.clone()));
            }
        }
    }
    let mut problems = Vec::new();
    for (parent, edges) in &edges {
        for (from, to) in edges {
            if let Some(route) = path_between(edges, to, from) {
                let parent = if parent.is_empty() {
                    "crate".to_owned()
                } else {
                    parent.join("::")
                };
                problems.push(format!("{parent}: {from} → {}", route.join(" → ")));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "import circles:\n{}",
        problems.join("\n")
    );
}

/// A route `from` → … → `to` along `edges`, if there is one.
fn path_between(edges: &BTreeSet<(String, String)>, from: &str, to: &str) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![vec![from.to_owned()]];
    while let Some(route) = stack.pop() {
        let last = route.last().cloned().unwrap_or_default();
        if last == to {
            return Some(route);
        }
        if !seen.insert(last.clone()) {
            continue;
        }
        for (a, b) in edges {
            if *a == last {
                let mut next = route.clone();
                next.push(b.clone());
                stack.push(next);
            }
        }
    }
    None
}

#[test]
fn the_checks_see_what_they_check() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let all = modules(&src);
    let names = |path: &[&str], target: &[&str]| {
        let module = all
            .iter()
            .find(|m| m.path == path)
            .unwrap_or_else(|| panic!("module {path:?} not found"));
        references(module)
            .iter()
            .any(|r| r.len() >= target.len() && r[..target.len()] == *target)
    };
    // The tree walk finds nested modules, and the reader their `super::` and `crate::` paths.
    assert!(names(
        &["operator", "cache_policy"],
        &["operator", "context"]
    ));
    assert!(names(
        &["operator", "cache_policy"],
        &["api", "cache_policy"]
    ));
    assert!(names(
        &["sidecar", "session", "keyed"],
        &["sidecar", "command"]
    ));
    // Upward paths are seen however they are spelled.
    let upward = |path: &[&str], code: &str| {
        let module = Module {
            file: PathBuf::from("example.rs"),
            path: path.iter().map(|s| s.to_string()).collect(),
            code: strip_comments(code),
        };
        references(&module)
            .into_iter()
            .filter_map(|r| r.first().cloned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        upward(&["sidecar"], "use crate::operator::context::Context;"),
        ["operator"]
    );
    assert_eq!(
        upward(&["sidecar"], "use crate::{api, operator::leader};"),
        ["api", "operator"]
    );
    assert_eq!(
        upward(
            &["sidecar", "session", "keyed"],
            "let x = super::super::super::cli::status::DEFAULT_WIDTH;"
        ),
        ["cli"]
    );
    assert!(upward(&["sidecar"], "// see crate::operator").is_empty());
    assert_eq!(
        declared_modules("pub mod a;\n#[cfg(test)]\nmod tests;\nmod inline {}\n"),
        ["a", "tests"]
    );
}
