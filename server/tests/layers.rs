//! The server's layers, checked from its source: arrows point one way (grpc → service → db /
//! objects; jobs → service; model at the bottom) and no two sibling modules import each other in a
//! circle. A new import that breaks either fails this test with the files that hold it.
//!
//! The check reads `use` trees and `crate::` / `super::` / `self::` paths as text (comments and
//! `#[cfg(test)]` modules left out), resolves each to the deepest module of `src/` it names, and
//! looks at the pair of modules the import joins:
//! - between two top-level modules (`db`, `service`, …) it must be in [`ALLOWED`];
//! - between two children of the same module (`service::alerts` → `service::scheduler`) it is an
//!   edge of that module's sibling graph, which must have no cycle;
//! - a module and one of its ancestors may name each other (a `mod.rs` holds what its children
//!   share, such as `service::Context`).
//!
//! See docs/architecture.md for the layers and why.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Which top-level modules each top-level module may import. Everything not listed is refused.
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("telemetry", &[]),
    ("objects", &["model", "telemetry"]),
    ("config", &["objects", "model"]),
    ("db", &["config", "model", "telemetry"]),
    ("service", &["db", "objects", "config", "model", "telemetry"]),
    ("jobs", &["service", "config", "model", "telemetry"]),
    ("grpc", &["service", "config", "model", "telemetry"]),
];

type Module = Vec<String>;

#[test]
fn layers_point_one_way_and_siblings_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = library_files(&src);
    assert!(files.len() > 20, "found only {} files under {}", files.len(), src.display());
    let modules: BTreeSet<Module> = files.keys().cloned().collect();
    let mut wrong_layer = Vec::new();
    // Per parent module: sibling → sibling → the files that import so.
    let mut siblings: BTreeMap<Module, BTreeMap<String, BTreeMap<String, BTreeSet<String>>>> = BTreeMap::new();
    for (module, file) in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(&src).unwrap().display().to_string();
        for target in references(&code_of(&text), module) {
            let Some(target) = deepest_module(&modules, &target) else { continue };
            let common = module.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == module.len() || common == target.len() {
                continue; // the same module, or a module and its ancestor
            }
            let (from, to) = (&module[common], &target[common]);
            if common == 0 {
                let ok = ALLOWED.iter().any(|(m, may)| m == from && may.contains(&to.as_str()));
                if !ok {
                    wrong_layer.push(format!("{shown}: {from} → {to} ({})", target.join("::")));
                }
            }
            siblings
                .entry(module[..common].to_vec())
                .or_default()
                .entry(from.clone())
                .or_default()
                .entry(to.clone())
                .or_default()
                .insert(shown.clone());
        }
    }
    assert!(wrong_layer.is_empty(), "imports against the layers:\n{}", wrong_layer.join("\n"));
    let mut cycles = Vec::new();
    for (parent, graph) in &siblings {
        if let Some(cycle) = find_cycle(graph) {
            let edges: Vec<String> =
                cycle.windows(2).map(|w| format!("  {} → {} in {:?}", w[0], w[1], graph[&w[0]][&w[1]])).collect();
            cycles.push(format!(
                "under crate{}:\n{}",
                parent.iter().map(|p| format!("::{p}")).collect::<String>(),
                edges.join("\n")
            ));
        }
    }
    assert!(cycles.is_empty(), "modules that import each other in a circle:\n{}", cycles.join("\n"));
}

/// The checker itself: a known cycle and a known upward import are found.
#[test]
fn the_checker_finds_a_cycle_and_an_upward_import() {
    let mut g: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (a, b) in [("alerts", "scheduler"), ("scheduler", "archive"), ("archive", "alerts"), ("files", "archive")] {
        g.entry(a.into()).or_default().entry(b.into()).or_default();
    }
    let cycle = find_cycle(&g).expect("a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    g.get_mut("archive").unwrap().remove("alerts");
    assert_eq!(find_cycle(&g), None);

    let db_file = "use crate::{config::Config, service::{self, Context}};\nfn f() { crate::grpc::serve(); }";
    let refs = references(db_file, &["db".to_string(), "files".to_string()]);
    let tops: BTreeSet<&str> = refs.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(tops, BTreeSet::from(["config", "service", "grpc"]));
    let rel = references("use super::{Context, scheduler::list_jobs as jobs};", &["service".into(), "alerts".into()]);
    assert!(rel.contains(&vec!["service".to_string(), "scheduler".into(), "list_jobs".into()]), "{rel:?}");
}

/// Every file of the library crate (the modules `lib.rs` declares) by module path.
fn library_files(src: &Path) -> BTreeMap<Module, PathBuf> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut out = BTreeMap::new();
    for top in declared_modules(&lib) {
        collect(src, vec![top], &mut out);
    }
    out
}

fn collect(dir: &Path, module: Module, out: &mut BTreeMap<Module, PathBuf>) {
    let name = module.last().unwrap();
    let (file, children_dir) = if dir.join(format!("{name}.rs")).is_file() {
        (dir.join(format!("{name}.rs")), dir.join(name))
    } else {
        (dir.join(name).join("mod.rs"), dir.join(name))
    };
    let Ok(text) = std::fs::read_to_string(&file) else { return };
    for child in declared_modules(&text) {
        let mut m = module.clone();
        m.push(child);
        collect(&children_dir, m, out);
    }
    out.insert(module, file);
}

/// `mod x;` / `pub mod x;` / `pub(crate) mod x;` declarations of files (not inline modules).
fn declared_modules(text: &str) -> Vec<String> {
    code_of(text)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("pub ").or_else(|| l.strip_prefix("pub(crate) ")).unwrap_or(l);
            let name = rest.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

/// The code of a file without comments and without its `#[cfg(test)]` modules (test code may
/// reach anywhere; these modules sit at the end of a file by the house's convention).
fn code_of(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod ").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|l| match l.find("//") {
            // `//` after `:` is a URL in a string ("postgres://"), not a comment.
            Some(i) if i == 0 || !l[..i].ends_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module path a file's code names, made absolute (`crate::`, `super::`, `self::`).
fn references(code: &str, module: &[String]) -> Vec<Module> {
    let mut out = Vec::new();
    // `use` trees, braces expanded.
    let mut rest = code;
    while let Some(i) = find_word(rest, "use") {
        let after = &rest[i + 3..];
        let Some(end) = after.find(';') else { break };
        let mut tree = after[..end].split_whitespace().collect::<Vec<_>>().join(" ");
        for (spaced, tight) in
            [(" ::", "::"), (":: ", "::"), (" {", "{"), ("{ ", "{"), (" }", "}"), ("} ", "}"), (" ,", ","), (", ", ",")]
        {
            tree = tree.replace(spaced, tight);
        }
        for path in expand(&tree) {
            if let Some(abs) = absolute(&path, module) {
                out.push(abs);
            }
        }
        rest = &after[end..];
    }
    // Paths in code: `crate::a::b`, `$crate::a`, `super::x`, `self::x`.
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start).map(|i| i + from) {
            from = i + start.len();
            let before = if i == 0 { b' ' } else { bytes[i - 1] };
            if before.is_ascii_alphanumeric() || before == b'_' || (before == b':' && start != "crate::") {
                continue;
            }
            let len = code[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(code.len() - i);
            let path: Vec<String> =
                code[i..i + len].split("::").filter(|s| !s.is_empty()).map(str::to_string).collect();
            if let Some(abs) = absolute(&path, module) {
                out.push(abs);
            }
        }
    }
    out
}

fn find_word(s: &str, word: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(i) = s[from..].find(word).map(|i| i + from) {
        let before_ok = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let after = b.get(i + word.len()).copied().unwrap_or(b' ');
        if before_ok && after.is_ascii_whitespace() {
            return Some(i);
        }
        from = i + word.len();
    }
    None
}

/// Expands a `use` tree (`a::{b, c::{d, self}}`) into paths.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim_start_matches("::");
    let Some(open) = tree.find('{') else {
        let tree = tree.split(" as ").next().unwrap_or(tree);
        return vec![tree.split("::").filter(|s| !s.is_empty() && *s != "*").map(str::to_string).collect()];
    };
    let prefix: Vec<String> = tree[..open].split("::").filter(|s| !s.is_empty()).map(str::to_string).collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut last) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[last..i]);
                last = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[last..]);
    let mut out = Vec::new();
    for p in parts.into_iter().filter(|p| !p.is_empty()) {
        for sub in expand(p) {
            let mut full = prefix.clone();
            full.extend(sub.into_iter().filter(|s| s != "self"));
            out.push(full);
        }
    }
    out
}

/// `path` as seen from `module`, absolute from the crate root; None for other crates.
fn absolute(path: &[String], module: &[String]) -> Option<Module> {
    let first = path.first()?;
    let (mut base, rest): (Module, &[String]) = match first.as_str() {
        "crate" | "$crate" => (Vec::new(), &path[1..]),
        "self" => (module.to_vec(), &path[1..]),
        "super" => (module.to_vec(), path),
        _ => return None,
    };
    let mut rest = rest;
    while rest.first().is_some_and(|s| s == "super") {
        base.pop()?;
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    (!base.is_empty()).then_some(base)
}

/// The longest prefix of `path` that is a module of the crate.
fn deepest_module(modules: &BTreeSet<Module>, path: &[String]) -> Option<Module> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p))
}

/// A cycle in a directed graph, as its nodes with the first repeated at the end.
fn find_cycle(graph: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for next in graph.get(n).into_iter().flat_map(|m| m.keys()) {
            match marks.get(next.as_str()) {
                Some(Mark::Open) => {
                    let at = stack.iter().position(|s| s == next).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(c) = visit(next, graph, marks, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in graph.keys() {
        if !marks.contains_key(n.as_str()) {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, graph, &mut marks, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}
