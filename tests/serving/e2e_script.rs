//! The kind end-to-end script cannot run here (no Docker engine); what can be
//! checked without a cluster is checked: shellcheck over the scripts, the
//! workflows that run them, the object names the script relies on against the
//! chart as rendered by the real Helm engine, and that it checks each thing a
//! user sees.

use std::process::Command;

use crate::support::chart::{render_one, root, shellcheck};
use serde_json::json;

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_scripts_pass_shellcheck() {
    for script in ["e2e/run.sh", ".ci/run", "plugins/render-krew.sh"] {
        let mut cmd = Command::new(shellcheck());
        cmd.arg("--severity=style").arg(root().join(script));
        let out = crate::command::output(cmd);
        assert!(
            out.status.success(),
            "shellcheck {script}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn the_workflows_run_the_scripts() {
    let e2e = read(".github/workflows/e2e.yml");
    assert!(e2e.contains("run: bash e2e/run.sh"), "{e2e}");
    assert!(e2e.contains("kind") && e2e.contains("setup-helm"));
    let ci = read(".github/workflows/ci.yml");
    assert!(ci.contains(" bash .ci/run"), "{ci}");
    assert!(ci.contains("cargo clippy --workspace --all-targets -- -D warnings") && ci.contains("cargo fmt --check"));
}

#[test]
fn the_ci_workflow_checks_out_the_commit_before_which_the_mutation_run_diffs_against() {
    // actions/checkout fetches one commit unless told; `cargo xtask test`
    // runs `cargo xtask mutants --in-diff HEAD~1`.
    let ci = read(".github/workflows/ci.yml");
    let checkout = ci
        .split("- uses: actions/checkout@v4")
        .nth(1)
        .and_then(|rest| rest.split("\n      - ").next())
        .expect("ci.yml checks out the repository");
    assert!(checkout.contains("fetch-depth: 2"), "{checkout}");
    let test = read("xtask/src/test.rs");
    assert!(
        test.contains("const MUTANTS_SINCE: &str = \"HEAD~1\";"),
        "the test command diffs against another revision"
    );
}

#[test]
fn the_script_uses_the_names_the_chart_gives_its_objects() {
    let script = read("e2e/run.sh");
    assert!(script.contains("helm install distroless-guard charts/distroless-guard -n \"$NS\""));
    assert!(script.contains("NS=distroless-guard"));
    let rendered = render_one(json!({}));
    for (kind, used_as) in [
        ("Deployment", "deployment/distroless-guard"),
        ("Secret", "distroless-guard-webhook-tls"),
        ("ValidatingWebhookConfiguration", "validatingwebhookconfiguration"),
        ("MutatingWebhookConfiguration", "mutatingwebhookconfiguration"),
    ] {
        assert!(script.contains(used_as), "the script never uses {used_as}");
        assert!(!rendered.all(kind).is_empty(), "the chart renders no {kind}");
    }
    assert_eq!(
        rendered.one("Secret")["metadata"]["name"],
        "distroless-guard-webhook-tls"
    );
    assert_eq!(rendered.one("Deployment")["metadata"]["name"], "distroless-guard");
    let metrics = rendered
        .all("Service")
        .into_iter()
        .find(|s| s["spec"]["ports"][0]["name"] == "metrics")
        .unwrap();
    let proxy = format!(
        "{}:{}/proxy/metrics",
        metrics["metadata"]["name"].as_str().unwrap(),
        metrics["spec"]["ports"][0]["port"]
    );
    assert!(script.contains(&proxy), "the script scrapes {proxy}");
    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"] {
        assert_eq!(rendered.one(kind)["metadata"]["name"], "distroless-guard");
    }
}

#[test]
fn the_script_checks_what_users_see() {
    let script = read("e2e/run.sh");
    for (check, evidence) in [
        ("a root pod is denied with the rule id", "\"[root-uid]\" root_pod"),
        ("an exec-probe Deployment is denied at apply time", "\"[exec-probe]\""),
        ("a bare pod is mutated", "fsGroup: 65532"),
        ("warn mode prints Warning:", "'^Warning: .*\\[exec-probe\\]'"),
        (
            "the Audit policy counts violating workloads",
            "{.status.audit.violating}",
        ),
        (
            "kube-system is never intercepted",
            "root_pod kube-system --dry-run=server",
        ),
        ("the caBundle is written", "clientConfig.caBundle"),
        ("uninstall leaves nothing behind", "helm uninstall distroless-guard"),
        (
            "the image is built from the Dockerfile and loaded",
            "kind load docker-image",
        ),
    ] {
        assert!(
            script.contains(evidence),
            "e2e/run.sh does not check that {check} ({evidence})"
        );
    }
}

#[test]
fn the_krew_manifest_rendered_for_a_release_installs_the_plugin_from_its_archive() {
    let sum = "a".repeat(64);
    let render = |args: &[&str]| {
        let mut cmd = Command::new("bash");
        cmd.arg(root().join("plugins/render-krew.sh")).args(args);
        crate::command::output(cmd)
    };
    let out = render(&["1.2.3", "example/distroless-guard", &sum, &"b".repeat(64)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains('@'), "a placeholder is left: {text}");
    let m: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(m["apiVersion"], "krew.googlecontainertools.github.com/v1alpha2");
    assert_eq!(
        (m["kind"].clone(), m["metadata"]["name"].clone()),
        (json!("Plugin"), json!("distroless"))
    );
    assert_eq!(m["spec"]["version"], "v1.2.3");
    // The binaries the crate declares, in the archive the release workflow makes.
    let cargo = read("Cargo.toml");
    let release = read(".github/workflows/release.yml");
    assert!(
        release.contains("dir=distroless-guard-$version-${{ matrix.target }}")
            && release.contains("bash plugins/render-krew.sh")
    );
    let platforms = m["spec"]["platforms"].as_array().unwrap();
    assert_eq!(platforms.len(), 2);
    for (p, target) in platforms
        .iter()
        .zip(["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"])
    {
        assert!(release.contains(target), "{target} is not built");
        let dir = format!("distroless-guard-1.2.3-{target}");
        assert_eq!(
            p["uri"],
            format!("https://github.com/example/distroless-guard/releases/download/v1.2.3/{dir}.tar.gz")
        );
        assert_eq!(p["bin"], "kubectl-distroless");
        assert_eq!(p["sha256"].as_str().unwrap().len(), 64);
        for f in p["files"].as_array().unwrap() {
            let from = f["from"].as_str().unwrap();
            let file = from
                .strip_prefix(&format!("{dir}/"))
                .unwrap_or_else(|| panic!("{from} is outside {dir}"));
            assert!(
                file == "README.md" || cargo.contains(&format!("name = \"{file}\"")),
                "{file} is not a [[bin]]"
            );
        }
    }
    let bad = render(&["1.2.3", "example/x", "nope", &sum]);
    assert_eq!(bad.status.code(), Some(2));
}
