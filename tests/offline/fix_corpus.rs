//! `check --fix` over the corpus in tests/data/fix-corpus (its README says
//! which case each file reproduces), with the default policy and with every
//! hardening mutation: only securityContext lines change, the result reads as
//! the objects the engine fixed, a second `--fix` changes nothing, and what
//! needs no fix (or must not be fixed) is printed byte for byte.

use std::path::Path;
use std::process::Command;

use crate::support::corpus::{CORPUS, HARDENING, fix, manifests, objects_in, pod_spec, root};
use crate::support::psa;
use distroless_guard::manifest::{self, verdicts};
use serde_json::Value;

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches([' ', '-']).len()
}

/// Whether line `i` of `lines` is a securityContext key or inside one, by
/// the block structure's indentation.
fn in_security_context(lines: &[&str], i: usize) -> bool {
    let key = |l: &str| {
        l.trim_start_matches([' ', '-'])
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    if key(lines[i]) == "securityContext" {
        return true;
    }
    let mut depth = indent(lines[i]);
    for l in lines[..i].iter().rev() {
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        // A `- key:` line's key sits at the column after its dash.
        if indent(l) < depth || (l.trim_start().starts_with("- ") && indent(l) <= depth) {
            if key(l) == "securityContext" {
                return true;
            }
            depth = l.len() - l.trim_start().len();
            if depth == 0 {
                return false;
            }
        }
    }
    false
}

/// Every line `--fix` added or removed, with whether it is a securityContext line.
fn changed_lines(before: &str, after: &str) -> Vec<(String, bool)> {
    let old: Vec<&str> = before.lines().collect();
    let new: Vec<&str> = after.lines().collect();
    let diff = similar::TextDiff::from_lines(before, after);
    let mut changed = Vec::new();
    for op in diff.ops() {
        for change in diff.iter_changes(op) {
            let (lines, at) = match (change.tag(), change.old_index(), change.new_index()) {
                (similar::ChangeTag::Delete, Some(i), _) => (&old, i),
                (similar::ChangeTag::Insert, _, Some(i)) => (&new, i),
                _ => continue,
            };
            changed.push((lines[at].to_string(), in_security_context(lines, at)));
        }
    }
    changed
}

/// The objects `check` reads from a file, after the engine's own fix.
fn fixed_objects(file: &Path, policy: Option<&str>) -> Vec<Value> {
    let set = manifest::load_policies(&policy.map(|p| root().join(p)).into_iter().collect::<Vec<_>>()).unwrap();
    let mut docs = manifest::read(&[file.to_path_buf()]).unwrap().docs;
    verdicts::check(&mut docs, &set, jiff::Timestamp::now(), true, None);
    docs.into_iter().map(|d| d.value).collect()
}

#[test]
fn fix_changes_only_security_context_lines_in_every_corpus_file_with_and_without_hardening() {
    for policy in [None, Some(HARDENING)] {
        for file in manifests() {
            let before = std::fs::read_to_string(&file).unwrap();
            let after = fix(&file, policy);
            let outside: Vec<String> = changed_lines(&before, &after)
                .into_iter()
                .filter(|(_, ok)| !ok)
                .map(|(l, _)| l)
                .collect();
            assert!(
                outside.is_empty(),
                "{} (policy {policy:?}): lines changed outside a securityContext: {outside:#?}\n{after}",
                file.display()
            );
        }
    }
}

#[test]
fn fixed_files_read_as_the_objects_the_engine_fixed_with_none_lost_and_a_second_fix_changes_nothing() {
    for policy in [None, Some(HARDENING)] {
        for file in manifests() {
            let after = fix(&file, policy);
            let name = file.display();
            assert_eq!(
                objects_in(&after),
                fixed_objects(&file, policy),
                "{name} (policy {policy:?}): what --fix printed is not what the engine fixed"
            );
            let dir = tempfile::tempdir().unwrap();
            let again = dir.path().join(file.file_name().unwrap());
            std::fs::write(&again, &after).unwrap();
            assert_eq!(
                fix(&again, policy),
                after,
                "{name} (policy {policy:?}): fix twice != fix once"
            );
        }
    }
}

#[test]
fn what_must_not_be_fixed_is_printed_byte_for_byte_and_unparseable_documents_are_kept() {
    for policy in [None, Some(HARDENING)] {
        for file in ["compliant.yaml", "windows.yaml"] {
            let path = root().join(CORPUS).join(file);
            assert_eq!(
                fix(&path, policy),
                std::fs::read_to_string(&path).unwrap(),
                "{file} (policy {policy:?})"
            );
        }
    }
    let kustomize = root().join(CORPUS).join("kustomize.yaml");
    let before = std::fs::read_to_string(&kustomize).unwrap();
    let after = fix(&kustomize, None);
    for kept in [
        "metadata:\n  name: api\nspec:\n  replicas: 5\n",
        "# (this document is only comments)\n",
        "kind: Service\nmetadata:\n  name: api\n namespace: shop\n",
        "          value: >\n            folded text\n            on two lines\n",
    ] {
        assert!(
            before.contains(kept) && after.contains(kept),
            "{kept:?} kept in:\n{after}"
        );
    }
}

#[test]
fn explicit_root_is_reported_and_never_given_run_as_non_root() {
    let path = root().join(CORPUS).join("explicit-root.yaml");
    for policy in [None, Some(HARDENING)] {
        for object in objects_in(&fix(&path, policy)) {
            let text = object.to_string();
            assert!(
                !text.contains("runAsNonRoot"),
                "policy {policy:?}: runAsNonRoot beside runAsUser 0: {text}"
            );
            assert!(text.contains("\"runAsUser\":0"), "the explicit root is kept: {text}");
        }
    }
    let mut check = Command::new(env!("CARGO_BIN_EXE_distroless-guard"));
    check.args(["check", "-o", "json", "-f"]).arg(&path);
    let out = crate::command::output(check);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rules: Vec<(&str, &str)> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["violations"].as_array().unwrap())
        .map(|v| (v["rule"].as_str().unwrap(), v["path"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rules,
        [
            ("root-uid", "spec.template.spec.securityContext.runAsUser"),
            (
                "root-uid",
                "spec.template.spec.initContainers[0].securityContext.runAsUser"
            ),
        ]
    );
}

#[test]
fn every_pod_the_hardening_fix_writes_passes_the_restricted_controls_but_windows_and_explicit_root_pods() {
    // The real API server's verdict is in tests/cluster/fix_corpus.rs; this is
    // the vendored oracle's, for every pod spec the fix touched or kept.
    let mut passed = Vec::new();
    for file in manifests() {
        for object in objects_in(&fix(&file, Some(HARDENING))) {
            let Some(spec) = pod_spec(&object) else { continue };
            let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "spec": spec});
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            let windows = file.ends_with("windows.yaml");
            let root = file.ends_with("explicit-root.yaml");
            let passes = psa::CONTROLS.iter().all(|(_, control)| control(&pod));
            assert_eq!(passes, !windows && !root, "{name} in {}: {pod}", file.display());
            if passes {
                passed.push(name);
            }
        }
    }
    passed.sort();
    assert_eq!(
        passed,
        [
            "api",
            "cache",
            "checkout",
            "debug-shell",
            "guestbook",
            "nightly-report",
            "orders",
            "payments",
            "web"
        ]
    );
}
