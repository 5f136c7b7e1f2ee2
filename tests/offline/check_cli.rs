//! `distroless-guard check`, run as the binary a developer or CI job runs.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distroless-guard"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).env("NO_COLOR", "1");
    cmd
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn run_stdin(args: &[&str], input: &str) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn json_results(out: &Output) -> Vec<Value> {
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    v["results"].as_array().unwrap().clone()
}

fn find<'a>(results: &'a [Value], name: &str) -> &'a Value {
    results
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no result for {name}"))
}

#[test]
fn examples_give_a_denial_per_non_compliant_workload_and_exit_1() {
    let out = run(&["check", "-f", "examples/manifests", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let results = json_results(&out);
    assert_eq!(results.len(), 5, "Namespaces and Services are skipped");
    let web = find(&results, "web");
    assert_eq!(web["allowed"], true);
    assert_eq!(web["violations"].as_array().unwrap().len(), 0);
    let legacy = find(&results, "legacy-api");
    assert_eq!(legacy["allowed"], false);
    assert_eq!(legacy["apiVersion"], "apps/v1");
    assert_eq!(legacy["namespace"], "shop");
    let rules: Vec<&str> = legacy["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        ["shell-command", "root-uid", "exec-probe", "exec-hook", "shell-command"]
    );
    let probe = &legacy["violations"][2];
    assert_eq!(probe["action"], "Deny");
    assert_eq!(probe["container"], "api");
    assert_eq!(probe["path"], "spec.template.spec.containers[0].livenessProbe.exec");
    let worker = find(&results, "checkout-worker");
    assert_eq!(worker["allowed"], true);
    assert_eq!(worker["mutations"][0]["op"], "add");
    assert_eq!(worker["mutations"][0]["path"], "/spec/template/spec/securityContext");
}

#[test]
fn policies_from_files_change_the_verdict() {
    let out = run(&[
        "check",
        "-f",
        "examples/manifests",
        "--policy",
        "examples/policies/enforce.yaml",
        "-o",
        "json",
    ]);
    let results = json_results(&out);
    // The vendor image's exec probe is exempt in namespace payments until 2027-03-31.
    assert_eq!(find(&results, "fraud-scoring")["allowed"], true);
    // exec-hook is only a warning in this policy; the shell still denies.
    let legacy = find(&results, "legacy-api");
    let hook = legacy["violations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["rule"] == "exec-hook")
        .unwrap();
    assert_eq!(hook["action"], "Warn");
    assert_eq!(legacy["allowed"], false);

    let audit = run(&[
        "check",
        "-f",
        "examples/manifests",
        "--policy",
        "examples/policies/audit.yaml",
    ]);
    assert_eq!(audit.status.code(), Some(0), "Audit never denies");
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(text.contains("AUDIT [root-uid]"), "{text}");
}

#[test]
fn text_output_groups_by_object_and_ends_with_a_summary() {
    let out = run(&["check", "-f", "examples/manifests"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("✗ Deployment shop/legacy-api  (examples/manifests/legacy-api.yaml:2)"),
        "{text}"
    );
    assert!(text.contains("✓ Deployment shop/web"), "{text}");
    assert!(!text.contains("\x1b["), "no colour when not a terminal");
    let last = text.trim_end().lines().last().unwrap();
    assert_eq!(
        last,
        "5 objects checked: 2 allowed, 3 denied; 8 violations (8 Deny, 0 Warn, 0 Audit)"
    );
}

#[test]
fn fix_writes_manifests_that_then_pass_the_rules_mutation_can_fix() {
    let fixed = run(&["check", "-f", "examples/manifests/checkout-worker.yaml", "--fix"]);
    assert_eq!(fixed.status.code(), Some(0));
    let yaml = String::from_utf8(fixed.stdout).unwrap();
    assert!(
        yaml.contains("runAsUser: 65532") && yaml.contains("fsGroup: 65532"),
        "{yaml}"
    );
    // Key order of the input is kept, so the diff is only what mutation added.
    assert!(yaml.find("serviceName").unwrap() < yaml.find("template").unwrap());
    let again = run_stdin(&["check", "-f", "-", "-o", "json"], &yaml);
    let results = json_results(&again);
    assert_eq!(
        results[0]["mutations"],
        serde_json::json!([]),
        "fixing twice changes nothing"
    );
}

#[test]
fn stdin_lists_and_multi_document_yaml_are_read() {
    let input = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: a}\n  spec: {containers: [{name: c, image: x, command: [sh, -c, x]}]}\n---\napiVersion: batch/v1\nkind: Job\nmetadata: {name: b}\nspec: {template: {spec: {containers: [{name: c, image: x}]}}}\n";
    let out = run_stdin(&["check", "-f", "-", "-o", "json"], input);
    assert_eq!(out.status.code(), Some(1));
    let results = json_results(&out);
    assert_eq!(
        (results[0]["kind"].as_str(), results[0]["allowed"].as_bool()),
        (Some("Pod"), Some(false))
    );
    assert_eq!(
        (results[1]["kind"].as_str(), results[1]["allowed"].as_bool()),
        (Some("Job"), Some(true))
    );
    assert_eq!(results[0]["source"], "-:1");
}

#[test]
fn parse_errors_exit_2_and_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [oops\n",
    )
    .unwrap();
    let out = run(&["check", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:", bad.display())), "{err}");
    assert!(
        err.contains(":7:") || err.contains(":8:"),
        "line of the broken document: {err}"
    );

    let wrong_type = dir.path().join("wrong.yaml");
    std::fs::write(
        &wrong_type,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n",
    )
    .unwrap();
    let out = run(&["check", "-f", wrong_type.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong.yaml:1: cannot read Pod p"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&["check"]).status.code(), Some(2), "-f is required");
    assert_eq!(run(&["check", "-f", "no/such/dir"]).status.code(), Some(2));
    let out = run(&[
        "check",
        "-f",
        "examples/manifests",
        "--policy",
        "examples/manifests/web-distroless.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no DistrolessPolicy found"));
}

#[test]
fn other_kinds_are_skipped_silently() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/manifests/namespaces.yaml");
    let out = run(&["check", "-f", dir.to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(json_results(&out).is_empty());
}

#[test]
fn crd_subcommand_prints_the_checked_in_crd() {
    let out = run(&["crd"]);
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let expected: Vec<String> = [
        "distrolessguard.dev_distrolesspolicies.yaml",
        "distrolessguard.dev_distrolessrollouts.yaml",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(crds.join(f)).unwrap())
    .collect();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected.join("---\n"));
}
