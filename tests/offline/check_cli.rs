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
    let mut cmd = bin();
    cmd.args(args);
    crate::command::output(cmd)
}

fn run_stdin(args: &[&str], input: &str) -> Output {
    let mut cmd = bin();
    cmd.args(args);
    crate::command::output_with_input(cmd, input)
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

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What the JSON report lists as unreadable: (path, line, kind).
fn unreadable(out: &Output) -> Vec<(String, Option<u64>, String)> {
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["unreadable"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["path"].as_str().unwrap().to_string(),
                        p["line"].as_u64(),
                        p["kind"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

const ROOT_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: root}\nspec:\n  securityContext: {runAsUser: 0}\n  containers:\n  - {name: c, image: gcr.io/distroless/static:nonroot}\n";

#[test]
fn parse_errors_are_reported_once_with_file_and_line_and_strict_makes_them_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: first}\nspec: {containers: [{name: c, image: gcr.io/distroless/static:nonroot}]}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [oops\n",
    )
    .unwrap();
    let out = run(&["check", "-f", bad.to_str().unwrap(), "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "by the verdicts of what was read: {}",
        stderr(&out)
    );
    assert_eq!(
        json_results(&out).len(),
        1,
        "the document before the broken one is still read"
    );
    let err = stderr(&out);
    let line: usize = err
        .split(&format!("{}:", bad.display()))
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no file:line in {err}"));
    assert!((9..=10).contains(&line), "line of the broken document: {err}");
    assert_eq!(err.matches("bad.yaml").count(), 1, "{err}");
    let strict = run(&["check", "-f", bad.to_str().unwrap(), "--strict"]);
    assert_eq!(strict.status.code(), Some(2), "{}", stderr(&strict));

    let wrong_type = dir.path().join("wrong.yaml");
    std::fs::write(
        &wrong_type,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n",
    )
    .unwrap();
    let out = run(&["check", "-f", wrong_type.to_str().unwrap(), "--strict"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("wrong.yaml:1: cannot read Pod p"),
        "{}",
        stderr(&out)
    );
}

/// What a new user meets running `check -f .` in a repository: Helm charts,
/// a file broken by template actions, CI workflows, values files, a
/// kustomization, beside the manifests.
#[test]
fn a_repository_is_checked_by_what_reads_and_each_unreadable_file_is_named_once() {
    let repo = tempfile::tempdir().unwrap();
    let w = |path: &str, text: &str| {
        let p = repo.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("deploy/root.yaml", ROOT_POD);
    w("chart/Chart.yaml", "apiVersion: v2\nname: app\nversion: 0.1.0\n");
    w(
        "chart/values.yaml",
        "image: {repository: app, tag: latest}\nreplicas: 2\n",
    );
    w(
        "chart/templates/deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\n",
    );
    w(
        "chart/templates/nested/service.yaml",
        "kind: Service\nmetadata: {name: '{{ .Release.Name }}'}\n",
    );
    w(
        "ops/job-template.yaml",
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\nspec:\n  template:\n    spec:\n      containers:\n      - image: {{ .Image }}\n",
    );
    w(
        ".github/workflows/ci.yml",
        "name: CI\non: [push]\njobs:\n  test: {runs-on: ubuntu-latest}\n",
    );
    w("config/settings.json", "[1, 2, 3]\n");
    w(
        "base/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [pod.yaml]\n",
    );
    w("base/patch.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p\n");
    // Beside the kustomization, a template keeps its own hint; a broken file
    // elsewhere gets no kustomization hint.
    w(
        "base/job-template.yaml",
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\nspec:\n  template:\n    spec:\n      containers:\n      - image: {{ .Image }}\n",
    );
    w("deploy/broken.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p\n");

    let out = run(&["check", "-f", repo.path().to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "the root Pod is denied: {}", stderr(&out));
    let results = json_results(&out);
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["name"], "root");
    let root = repo.path().display().to_string();
    let mut problems = unreadable(&out);
    problems.sort();
    assert_eq!(
        problems,
        [
            (
                format!("{root}/base/job-template.yaml"),
                Some(9),
                "template".to_string()
            ),
            (format!("{root}/base/patch.yaml"), Some(3), "syntax".to_string()),
            (format!("{root}/chart"), None, "template".to_string()),
            (format!("{root}/deploy/broken.yaml"), Some(3), "syntax".to_string()),
            (format!("{root}/ops/job-template.yaml"), Some(9), "template".to_string()),
        ]
    );
    let err = stderr(&out);
    assert!(err.contains("a Helm chart; its 2 template files"), "{err}");
    assert!(err.contains("check --helm"), "{err}");
    let kustomize: Vec<&str> = err.lines().filter(|l| l.contains("kustomize build")).collect();
    assert_eq!(kustomize.len(), 1, "{err}");
    assert!(kustomize[0].contains("base/patch.yaml"), "{err}");
    assert!(
        !err.contains("ci.yml") && !err.contains("values.yaml") && !err.contains("settings.json"),
        "{err}"
    );

    let strict = run(&["check", "-f", repo.path().to_str().unwrap(), "--strict"]);
    assert_eq!(strict.status.code(), Some(2));
    assert!(stderr(&strict).contains("5 of 5 unreadable"), "{}", stderr(&strict));
}

/// Each hostile file is an error (exit 2) naming the file and line, found in
/// bounded time and memory, and the good file beside them is still checked.
#[test]
fn hostile_files_are_errors_with_file_and_line_and_the_others_are_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
    w("a-root.yaml", ROOT_POD.as_bytes());
    w(
        "flow.yaml",
        format!("a: {}{}\n", "[".repeat(200_000), "]".repeat(200_000)).as_bytes(),
    );
    w(
        "deep.json",
        format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000)).as_bytes(),
    );
    let mut laughs = vec!["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]".to_string()];
    for i in 1..10 {
        laughs.push(format!("a{i}: &a{i} [{}]", vec![format!("*a{}", i - 1); 9].join(", ")));
    }
    w(
        "laughs.yaml",
        format!("apiVersion: v1\nkind: ConfigMap\n{}\n", laughs.join("\n")).as_bytes(),
    );
    w("huge.yaml", &vec![b'#'; 33 * 1024 * 1024]);
    w("binary.yaml", b"apiVersion: v1\n\x00\x01\x02\x03");
    w(
        "latin1.yaml",
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: caf\xe9\n",
    );
    std::fs::create_dir_all(dir.path().join("loop")).unwrap();
    std::os::unix::fs::symlink("..", dir.path().join("loop/up")).unwrap();

    let out = run(&["check", "-f", dir.path().to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let results = json_results(&out);
    assert_eq!(
        results.len(),
        1,
        "the root Pod is read once, not once per loop: {results:?}"
    );
    assert_eq!(results[0]["allowed"], false);
    let d = dir.path().display().to_string();
    let mut problems = unreadable(&out);
    problems.sort();
    let want = [
        (format!("{d}/binary.yaml"), Some(2), "binary"),
        (format!("{d}/deep.json"), Some(1), "limit"),
        (format!("{d}/flow.yaml"), Some(1), "limit"),
        (format!("{d}/huge.yaml"), None, "limit"),
        (format!("{d}/latin1.yaml"), Some(4), "binary"),
        (format!("{d}/laughs.yaml"), Some(5), "limit"),
        (format!("{d}/loop/up"), None, "loop"),
    ]
    .map(|(p, l, k)| (p, l, k.to_string()));
    let got: Vec<_> = problems.iter().map(|(p, l, k)| (p.clone(), *l, k.clone())).collect();
    // The alias bomb is caught where the expansion passes the node limit, a line or two on.
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((&g.0, &g.2), (&w.0, &w.2), "{got:?}");
        if w.0.ends_with("laughs.yaml") {
            assert!(g.1.is_some_and(|l| (4..=10).contains(&l)), "{g:?}");
        } else {
            assert_eq!(g.1, w.1, "{g:?}");
        }
    }
    let err = stderr(&out);
    assert!(err.contains("billion laughs"), "{err}");
    assert!(err.contains("nested more than 64 deep"), "{err}");
    assert!(err.contains("larger than 32 MiB"), "{err}");
}

#[test]
fn standard_input_past_the_size_limit_is_reported_as_too_large_and_not_judged() {
    // A pod first, so a reader that cut the input at the limit would judge it.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: x, command: [sh, -c, x]}]}\n";
    let mut input = pod.as_bytes().to_vec();
    input.resize(33 * 1024 * 1024, b'#');
    let mut cmd = bin();
    cmd.args(["check", "-f", "-", "-o", "json"]);
    let out = crate::command::output_with_input(cmd, input);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        out.stdout.is_empty(),
        "nothing judged: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("-: larger than 32 MiB"), "{err}");
    assert!(err.contains("nothing to check"), "{err}");
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

#[test]
fn fix_prints_what_it_does_not_change_byte_for_byte_and_keeps_octal_modes_meaning_what_they_meant() {
    let unchanged =
        "# kept: a comment, an anchor, a kustomize patch without kind\nmetadata: {name: web}\nspec: &s {replicas: 3}\n";
    let fixed_pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: x}]\n  volumes: [{name: s, secret: {secretName: s, defaultMode: 0400}}]\n";
    let done = "# already non-root\napiVersion: v1\nkind: Pod\nmetadata: {name: q}\nspec:\n  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: {type: RuntimeDefault}}\n  containers:\n  - name: c\n    image: x\n    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}\n    args: [\"--mode=0755\"]\n";
    let broken = "kind: [unclosed\n";
    let input = format!("{unchanged}---\n{fixed_pod}---\n{done}---\n{broken}");
    let out = run_stdin(&["check", "-f", "-", "--fix"], &input);
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<&str> = yaml.split("---\n").collect();
    assert_eq!(
        docs.len(),
        4,
        "every document is printed, even the unreadable one: {yaml}"
    );
    assert_eq!(docs[0], unchanged);
    assert_eq!(
        docs[2], done,
        "a document the fix does not change is printed as written"
    );
    assert_eq!(docs[3], broken);
    // The changed one: only the securityContext lines are new; the rest, the
    // flow mappings and `0400` (octal to kubectl, YAML 1.1) among it, is as written.
    assert_eq!(
        docs[1],
        fixed_pod.replace(
            "spec:\n",
            "spec:\n  securityContext:\n    runAsNonRoot: true\n    runAsUser: 65532\n    runAsGroup: 65532\n    fsGroup: 65532\n"
        )
    );
    let again = run_stdin(&["check", "-f", "-", "-o", "json"], docs[1]);
    let pod: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        pod["results"][0]["mutations"],
        serde_json::json!([]),
        "the fixed pod needs no more fixing"
    );
    // The unreadable document is still reported (exit 2 only with --strict).
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_reader_that_stops_early_ends_check_quietly_not_with_a_panic() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: x}]}\n";
    let input: String = (0..3000).map(|_| format!("{pod}---\n")).collect();
    let mut child = bin()
        .args(["check", "-f", "-", "--fix"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    // `| head -c 16`: read a little, then go away.
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // Bounded: a check that blocks on its closed output is killed and fails here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("check still running 60 s after its reader went away");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
    assert!(
        out.status.signal() == Some(13) || out.status.success(),
        "ended by SIGPIPE as `cat` would, or done: {:?}",
        out.status
    );
}

#[test]
fn old_api_groups_and_lists_inside_lists_are_checked_not_skipped() {
    // kubernetes/examples still ships extensions/v1beta1 Deployments; kubectl
    // get -o yaml of several kinds gives a List of Lists.
    let input = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items:\n  - apiVersion: extensions/v1beta1\n    kind: Deployment\n    metadata: {name: old}\n    spec: {template: {spec: {containers: [{name: c, image: x, command: [bash, -c, x]}]}}}\n- apiVersion: v1\n  kind: PodList\n  items:\n  - apiVersion: v1\n    kind: Pod\n    metadata: {name: inner}\n    spec: {containers: [{name: c, image: x}]}\n";
    let out = run_stdin(&["check", "-f", "-", "-o", "json"], input);
    let results = json_results(&out);
    let names: Vec<&str> = results.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["old", "inner"], "{results:#?}");
    let old = find(&results, "old");
    assert_eq!(old["allowed"], false);
    assert!(old["violations"].to_string().contains("shell"), "{old}");
    // --fix puts the fixed objects back where they were.
    let fixed = run_stdin(&["check", "-f", "-", "--fix"], input);
    let yaml = String::from_utf8(fixed.stdout).unwrap();
    let again = json_results(&run_stdin(&["check", "-f", "-", "-o", "json"], &yaml));
    assert_eq!(again.len(), 2, "{yaml}");
    assert!(again.iter().all(|r| r["mutations"] == serde_json::json!([])), "{yaml}");
    assert!(
        yaml.contains("kind: PodList") && yaml.contains("extensions/v1beta1"),
        "{yaml}"
    );
}
