//! Pod templates inside custom resources (Argo Rollouts, Ray, ECK, JobSet):
//! found by `check` wherever they sit, judged as pods, fixed in place.

use std::process::{Command, Output};

use serde_json::Value;

const CORPUS: &str = "tests/data/custom-resources/workloads.yaml";

fn check(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distroless-guard"));
    cmd.arg("check")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1");
    crate::command::output(cmd)
}

fn results(out: &Output) -> Vec<Value> {
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    v["results"].as_array().unwrap().clone()
}

#[test]
fn every_pod_spec_inside_a_custom_resource_is_judged_where_it_sits_and_other_resources_are_skipped() {
    let out = check(&["-f", CORPUS, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let found: Vec<(String, String, String, bool)> = results(&out)
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["name"].as_str().unwrap().to_string(),
                r["podSpecPath"].as_str().unwrap().to_string(),
                r["allowed"].as_bool().unwrap(),
            )
        })
        .collect();
    let want = [
        ("Rollout", "web", "spec.template.spec", false),
        ("RayCluster", "ray", "spec.headGroupSpec.template.spec", false),
        ("RayCluster", "ray", "spec.workerGroupSpecs[0].template.spec", true),
        ("Elasticsearch", "logs", "spec.nodeSets[0].podTemplate.spec", false),
        (
            "JobSet",
            "train",
            "spec.replicatedJobs[0].template.spec.template.spec",
            true,
        ),
    ]
    .map(|(k, n, p, a)| (k.to_string(), n.to_string(), p.to_string(), a));
    assert_eq!(found, want, "the Certificate has no pod spec and is skipped");
    let violations: Vec<(String, String)> = results(&out)
        .iter()
        .flat_map(|r| r["violations"].as_array().unwrap().clone())
        .map(|v| {
            (
                v["rule"].as_str().unwrap().to_string(),
                v["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        violations,
        [
            ("exec-probe", "spec.template.spec.containers[0].livenessProbe.exec"),
            (
                "root-uid",
                "spec.headGroupSpec.template.spec.containers[0].securityContext.runAsUser"
            ),
            (
                "root-uid",
                "spec.nodeSets[0].podTemplate.spec.initContainers[0].securityContext.runAsUser"
            ),
            (
                "shell-command",
                "spec.nodeSets[0].podTemplate.spec.initContainers[0].command[0]"
            ),
        ]
        .map(|(r, p)| (r.to_string(), p.to_string()))
    );
    let rollout = &results(&out)[0];
    assert_eq!(rollout["mutations"][0]["path"], "/spec/template/spec/securityContext");
    assert_eq!(rollout["namespace"], "shop");
}

#[test]
fn fix_writes_the_security_context_into_each_found_pod_spec_and_a_second_fix_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(&["-f", CORPUS, "--fix"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let fixed = dir.path().join("fixed.yaml");
    std::fs::write(&fixed, &out.stdout).unwrap();
    let docs: Vec<Value> = String::from_utf8(out.stdout.clone())
        .unwrap()
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    assert_eq!(
        docs[0].pointer("/spec/template/spec/securityContext/runAsNonRoot"),
        Some(&Value::Bool(true)),
        "{}",
        docs[0]
    );
    assert_eq!(
        docs[0].pointer("/spec/template/spec/securityContext/runAsUser"),
        Some(&Value::from(65532))
    );
    assert!(
        docs[0].pointer("/spec/securityContext").is_none(),
        "not at the Rollout's own spec"
    );
    let certificate = std::fs::read_to_string(CORPUS).unwrap();
    let certificate = &certificate[certificate.rfind("# Not a pod").unwrap()..];
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with(certificate),
        "the resource without a pod spec is printed byte for byte"
    );
    let again = check(&["-f", fixed.to_str().unwrap(), "--fix"]);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&out.stdout),
        "fix twice equals fix once"
    );
}
