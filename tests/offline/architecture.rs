//! The shape of the crate, checked: the module dependency direction of the
//! README's Layout, no cycles between modules or between the files of a
//! module, and clap only in the CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `src/image/layer.rs` -> ["image", "layer"]; `src/image/mod.rs` -> ["image"].
fn module_path(path: &Path) -> Vec<String> {
    let rel = path.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

/// Every `crate::a::b` path a file names, as ["a", "b"] (identifiers only).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let tail = &rest[i + "crate::".len()..];
        let path: Vec<String> = tail
            .split("::")
            .map_while(|seg| {
                let ident: String = seg.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                (!ident.is_empty() && ident.chars().next().is_some_and(char::is_lowercase) && ident.len() == seg.len())
                    .then_some(ident)
                    .or_else(|| {
                        let ident: String = seg.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                        (!ident.is_empty()).then_some(ident)
                    })
            })
            .take(2)
            .collect();
        if !path.is_empty() {
            out.push(path);
        }
        rest = tail;
    }
    out
}

/// Top-level module -> the top-level modules it names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let tops: BTreeSet<String> = files.iter().filter_map(|f| module_path(f).first().cloned()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(me) = module_path(f).first().cloned() else {
            continue; // lib.rs, main.rs
        };
        let deps = graph.entry(me.clone()).or_default();
        for p in crate_paths(&code(f)) {
            if p[0] != me && tops.contains(&p[0]) {
                deps.insert(p[0].clone());
            }
        }
    }
    graph
}

fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn modules_depend_one_way_and_nothing_imports_the_cli() {
    let graph = module_graph();
    assert_eq!(cycle(&graph), None, "a cycle between modules; the graph: {graph:#?}");
    for (module, deps) in &graph {
        assert!(
            module == "cli" || !deps.contains("cli"),
            "{module} imports cli; the CLI is a leaf"
        );
    }
    // The layers of the README's Layout.
    let below = |module: &str, forbidden: &[&str]| {
        let deps = graph.get(module).cloned().unwrap_or_default();
        for f in forbidden {
            assert!(!deps.contains(*f), "{module} must not depend on {f}: {deps:?}");
        }
    };
    below(
        "api",
        &[
            "policy",
            "image",
            "admission",
            "webhook",
            "controller",
            "operator",
            "cli",
        ],
    );
    below(
        "policy",
        &["admission", "webhook", "controller", "operator", "cli", "manifest"],
    );
    below(
        "image",
        &["policy", "admission", "webhook", "controller", "operator", "cli"],
    );
    below("admission", &["webhook", "controller", "operator", "cli"]);
    below("webhook", &["controller", "operator", "cli"]);
    below("controller", &["webhook", "operator", "cli"]);
    below("operator", &["cli"]);
    // The kubectl plugin's library: the engine, images and rollout hints, never the server side.
    below("kubectl", &["webhook", "operator", "cli"]);
    // The inventory is pure: the engine and image reports in, a report out.
    below(
        "inventory",
        &["admission", "webhook", "controller", "operator", "cli", "kubectl"],
    );
}

#[test]
fn the_files_of_a_module_do_not_import_each_other_in_a_circle() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    // Per directory module: sibling file -> siblings it names (super::x or crate::m::x).
    let mut by_module: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for f in &files {
        let path = module_path(f);
        if path.len() != 2 {
            continue;
        }
        let (module, file) = (path[0].clone(), path[1].clone());
        let code = code(f);
        let mut deps = BTreeSet::new();
        for seg in code.split("super::").skip(1) {
            let ident: String = seg.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            deps.insert(ident);
        }
        for p in crate_paths(&code) {
            if p.len() == 2 && p[0] == module {
                deps.insert(p[1].clone());
            }
        }
        deps.remove(&file);
        by_module.entry(module).or_default().insert(file, deps);
    }
    for (module, graph) in by_module {
        let siblings: BTreeSet<String> = graph.keys().cloned().collect();
        let graph: BTreeMap<String, BTreeSet<String>> = graph
            .into_iter()
            .map(|(f, d)| (f, d.intersection(&siblings).cloned().collect()))
            .collect();
        assert_eq!(
            cycle(&graph),
            None,
            "files of {module} import each other in a circle: {graph:#?}"
        );
    }
}

#[test]
fn clap_lives_only_in_the_cli() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for f in files {
        let path = module_path(&f);
        if path.first().is_some_and(|m| m == "cli") {
            continue;
        }
        let code = code(&f);
        assert!(
            !code.contains("clap::") && !code.contains("use clap"),
            "{} uses clap; arguments belong to src/cli",
            f.display()
        );
    }
}

#[test]
fn the_checker_finds_a_cycle_when_there_is_one() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(
        cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        crate_paths("use crate::image::report::Platform; x(crate::policy::evaluate)"),
        vec![
            vec!["image".to_string(), "report".to_string()],
            vec!["policy".to_string(), "evaluate".to_string()]
        ]
    );
}
