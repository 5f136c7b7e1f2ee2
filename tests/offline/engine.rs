//! The policy engine as pure functions: rules, field paths, messages, policy
//! combination, exemptions and mutation.

use std::collections::BTreeMap;

use distroless_guard::api::{Action, DistrolessPolicy, RuleId};
use distroless_guard::policy::{
    PolicySet, Scope, Subject, Verdict, Workload, evaluate, mutation_for, namespace_name_labels,
};
use jiff::Timestamp;
use serde_json::{Value, json};

fn now() -> Timestamp {
    "2026-11-22T12:00:00Z".parse().unwrap()
}

fn policies(yaml: &str) -> PolicySet {
    let docs: Vec<DistrolessPolicy> = serde_saphyr::from_multiple(yaml).unwrap();
    PolicySet::new(&docs).unwrap()
}

fn judge_in(set: &PolicySet, object: &Value, namespace: &str, ns_labels: &BTreeMap<String, String>) -> Verdict {
    let workload = Workload::from_value(object).unwrap().unwrap();
    let subject = Subject::new(&workload, namespace, ns_labels);
    evaluate(set, &subject, now())
}

fn judge(set: &PolicySet, object: &Value) -> Verdict {
    judge_in(set, object, "default", &namespace_name_labels("default"))
}

fn rules(v: &Verdict) -> Vec<(RuleId, Action)> {
    v.violations.iter().map(|v| (v.rule, v.action)).collect()
}

fn deployment(containers: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": containers}}}})
}

#[test]
fn exec_probe_is_reported_with_its_field_path_and_the_fix() {
    let d = deployment(
        json!([{"name": "app", "image": "app:1", "livenessProbe": {"exec": {"command": ["cat", "/tmp/ok"]}}}]),
    );
    let v = judge(&PolicySet::builtin_default(), &d);
    assert_eq!(rules(&v), [(RuleId::ExecProbe, Action::Deny)]);
    let violation = &v.violations[0];
    assert_eq!(violation.path, "spec.template.spec.containers[0].livenessProbe.exec");
    assert_eq!(violation.container.as_deref(), Some("app"));
    assert!(
        violation
            .message
            .starts_with("container \"app\" has an exec livenessProbe (exec: \"cat /tmp/ok\");"),
        "{}",
        violation.message
    );
    assert!(
        violation.message.contains("use httpGet, grpc or tcpSocket"),
        "{}",
        violation.message
    );
    assert!(violation.message.contains("no shell"), "{}", violation.message);
    assert!(!v.allowed());
}

#[test]
fn an_exec_probe_running_its_own_program_says_to_ship_it_not_that_tools_are_missing() {
    for program in ["/bin/grpc_health_probe", "/wait-shutdown", "pilot-agent"] {
        let d = deployment(json!([{"name": "app", "image": "app:1",
            "readinessProbe": {"exec": {"command": [program, "-addr=:5000"]}}}]));
        let v = judge(&PolicySet::builtin_default(), &d);
        assert_eq!(rules(&v), [(RuleId::ExecProbe, Action::Deny)], "{program}");
        let message = &v.violations[0].message;
        assert!(
            message.contains(&format!("copy {program} into the distroless image")),
            "{message}"
        );
        assert!(!message.contains("usually none of the tools"), "{message}");
    }
    for general in [["sh", "-c"], ["/usr/bin/curl", "-f"]] {
        let d = deployment(json!([{"name": "app", "image": "app:1",
            "readinessProbe": {"exec": {"command": general}}}]));
        let message = &judge(&PolicySet::builtin_default(), &d).violations[0].message;
        assert!(message.contains("usually none of the tools"), "{general:?}: {message}");
    }
}

#[test]
fn root_uid_on_pod_and_container_are_separate_violations() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"securityContext": {"runAsUser": 0},
                 "initContainers": [{"name": "init", "image": "i", "securityContext": {"runAsUser": 0}}],
                 "containers": [{"name": "app", "image": "a", "securityContext": {"runAsUser": 1000}}]}});
    let v = judge(&PolicySet::builtin_default(), &pod);
    let paths: Vec<&str> = v.violations.iter().map(|v| v.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.securityContext.runAsUser",
            "spec.initContainers[0].securityContext.runAsUser"
        ]
    );
    assert!(v.violations.iter().all(|v| v.rule == RuleId::RootUid));
    assert!(
        v.violations[1]
            .message
            .contains("set securityContext.runAsUser to 65532 or remove runAsUser: 0")
    );
    assert_eq!(v.violations[0].container, None);
}

#[test]
fn non_root_disabled_fires_only_when_explicitly_false() {
    let pod = |sc: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "a", "securityContext": sc}]}})
    };
    let set = PolicySet::builtin_default();
    assert_eq!(
        rules(&judge(&set, &pod(json!({"runAsNonRoot": false})))),
        [(RuleId::NonRootDisabled, Action::Deny)]
    );
    assert!(judge(&set, &pod(json!({}))).violations.is_empty());
    assert!(judge(&set, &pod(json!({"runAsNonRoot": true}))).violations.is_empty());
}

#[test]
fn exec_hooks_and_shell_commands_are_found_in_every_container_list() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {
        "initContainers": [{"name": "wait", "image": "busybox", "command": ["busybox", "sh", "-c", "sleep 1"]}],
        "containers": [{"name": "app", "image": "a", "lifecycle": {"postStart": {"exec": {"command": ["touch", "/x"]}}}}],
        "ephemeralContainers": [{"name": "debug", "image": "d", "command": ["/bin/bash"]}]}});
    let v = judge(&PolicySet::builtin_default(), &pod);
    let got: Vec<(RuleId, &str)> = v.violations.iter().map(|v| (v.rule, v.path.as_str())).collect();
    assert_eq!(
        got,
        [
            (RuleId::ShellCommand, "spec.initContainers[0].command[0]"),
            (RuleId::ExecHook, "spec.containers[0].lifecycle.postStart.exec"),
            (RuleId::ShellCommand, "spec.ephemeralContainers[0].command[0]"),
        ]
    );
}

#[test]
fn cron_job_paths_name_the_job_template() {
    let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"}, "spec": {"jobTemplate":
        {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x", "args": ["sh", "-c", "x"]}]}}}}}});
    let v = judge(&PolicySet::builtin_default(), &cj);
    assert_eq!(
        v.violations[0].path,
        "spec.jobTemplate.spec.template.spec.containers[0].args[0]"
    );
}

#[test]
fn new_ephemeral_container_scope_checks_only_containers_added_now() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {
        "securityContext": {"runAsUser": 0},
        "containers": [{"name": "app", "image": "a", "command": ["sh"]}],
        "ephemeralContainers": [
            {"name": "old", "image": "d", "command": ["sh"]},
            {"name": "new", "image": "d", "securityContext": {"runAsUser": 0}}]}});
    let workload = Workload::from_value(&pod).unwrap().unwrap();
    let existing = vec!["old".to_string()];
    let labels = namespace_name_labels("default");
    let subject = Subject {
        workload: &workload,
        namespace: "default",
        namespace_labels: &labels,
        scope: Scope::NewEphemeralContainers { existing: &existing },
        images: None,
    };
    let v = evaluate(&PolicySet::builtin_default(), &subject, now());
    let got: Vec<(RuleId, &str)> = v.violations.iter().map(|v| (v.rule, v.path.as_str())).collect();
    assert_eq!(
        got,
        [(RuleId::RootUid, "spec.ephemeralContainers[1].securityContext.runAsUser")]
    );
}

const TWO_POLICIES: &str = r#"
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata: {name: b-warn}
spec:
  action: Warn
  nonRootUser: 10001
---
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata: {name: a-audit}
spec:
  action: Audit
  rules: {exec-probe: Deny, shell-command: Ignore}
  nonRootUser: 20002
  mutation: {fsGroup: Override, dropAllCapabilities: true}
"#;

#[test]
fn a_long_script_is_quoted_on_one_line_and_cut_at_sixty_characters() {
    let script = format!("echo\n  {}", "x".repeat(100));
    let d = deployment(json!([{"name": "app", "image": "a", "command": ["sh", "-c", script]}]));
    let v = judge(&PolicySet::builtin_default(), &d);
    let message = &v.violations[0].message;
    let shown = format!("(sh -c \"echo {}\"...)", "x".repeat(55));
    assert!(message.contains(&shown), "{message}");
    // Sixty characters exactly are shown whole.
    let d =
        deployment(json!([{"name": "app", "image": "a", "command": ["sh", "-c", format!("echo {}", "x".repeat(55))]}]));
    let message = &judge(&PolicySet::builtin_default(), &d).violations[0].message;
    assert!(
        message.contains(&format!("(sh -c \"echo {}\")", "x".repeat(55))),
        "{message}"
    );
}

#[test]
fn the_strictest_action_of_all_matching_policies_wins() {
    let set = policies(TWO_POLICIES);
    let d = deployment(json!([{"name": "app", "image": "a", "command": ["sh", "-c", "x"],
        "readinessProbe": {"exec": {"command": ["true"]}}, "securityContext": {"runAsUser": 0}}]));
    let v = judge(&set, &d);
    let got: Vec<(RuleId, Action, &str)> = v
        .violations
        .iter()
        .map(|v| (v.rule, v.action, v.policy.as_str()))
        .collect();
    // exec-probe: Deny (a-audit's override) beats Warn; shell-command: a-audit ignores it, b-warn warns;
    // root-uid: b-warn's Warn beats the Audit of a-audit, the first by name.
    assert_eq!(
        got,
        [
            (RuleId::RootUid, Action::Warn, "b-warn"),
            (RuleId::ExecProbe, Action::Deny, "a-audit"),
            (RuleId::ShellCommand, Action::Warn, "b-warn")
        ]
    );
    assert_eq!(v.matched, ["a-audit", "b-warn"]);
}

#[test]
fn mutation_settings_merge_deterministically() {
    let set = policies(TWO_POLICIES);
    let m = judge(&set, &deployment(json!([]))).mutation.unwrap();
    assert_eq!(m.uid, 20002, "the UID of the policy whose name sorts first");
    assert_eq!(m.fs_group, distroless_guard::api::FsGroupMode::Override);
    assert!(m.drop_all_capabilities && m.run_as_non_root);
}

#[test]
fn selectors_and_excluded_namespaces_decide_which_policies_match() {
    let set = policies(
        r#"
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata: {name: enforce}
spec:
  match:
    namespaceSelector: {matchLabels: {enforce: "true"}}
    objectSelector: {matchExpressions: [{key: legacy, operator: DoesNotExist}]}
    excludeNamespaces: [kube-system]
"#,
    );
    let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "a", "command": ["sh"]}]}});
    let mut labelled = namespace_name_labels("shop");
    labelled.insert("enforce".into(), "true".into());
    assert!(!judge_in(&set, &bad, "shop", &labelled).allowed());
    assert!(
        judge_in(&set, &bad, "shop", &namespace_name_labels("shop"))
            .violations
            .is_empty()
    );
    let mut system = namespace_name_labels("kube-system");
    system.insert("enforce".into(), "true".into());
    assert!(judge_in(&set, &bad, "kube-system", &system).violations.is_empty());
    let mut legacy = bad.clone();
    legacy["metadata"]["labels"] = json!({"legacy": "yes"});
    assert!(judge_in(&set, &legacy, "shop", &labelled).violations.is_empty());
}

/// The mutating webhook asks `mutation_for` alone; it must say what
/// `evaluate` says, matched or not, for one policy or several merged.
#[test]
fn mutation_for_gives_the_settings_evaluate_gives_with_one_policy_several_or_none() {
    let set = policies(&format!(
        r#"{TWO_POLICIES}---
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata: {{name: c-shop}}
spec:
  match: {{namespaceSelector: {{matchLabels: {{team: shop}}}}}}
  mutation: {{seccompRuntimeDefault: true}}
"#
    ));
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "a"}]}});
    let workload = Workload::from_value(&pod).unwrap().unwrap();
    let mut shop = namespace_name_labels("shop");
    shop.insert("team".into(), "shop".into());
    let mut seen = Vec::new();
    for (namespace, labels) in [("default", namespace_name_labels("default")), ("shop", shop)] {
        let subject = Subject::new(&workload, namespace, &labels);
        let settings = mutation_for(&set, &subject);
        assert_eq!(settings, evaluate(&set, &subject, now()).mutation, "{namespace}");
        seen.push(settings.expect("the two unselective policies match everywhere"));
    }
    // Merged: a-audit's uid (first by name) and dropAllCapabilities, and in
    // shop c-shop's seccompRuntimeDefault on top.
    assert_eq!((seen[0].uid, seen[1].uid), (20002, 20002));
    assert!(seen[0].drop_all_capabilities && seen[1].drop_all_capabilities);
    assert_eq!(
        (seen[0].seccomp_runtime_default, seen[1].seccomp_runtime_default),
        (false, true)
    );

    // One policy (the built-in default) in `default`: its own settings.
    let builtin = PolicySet::builtin_default();
    let labels = namespace_name_labels("default");
    let subject = Subject::new(&workload, "default", &labels);
    let one = mutation_for(&builtin, &subject);
    assert_eq!(one, evaluate(&builtin, &subject, now()).mutation);
    assert_eq!(one.expect("the default matches `default`").uid, 65532);

    // No policy matches: none, as evaluate says.
    let labels = namespace_name_labels("kube-system");
    let subject = Subject::new(&workload, "kube-system", &labels);
    assert_eq!(mutation_for(&builtin, &subject), None);
    assert_eq!(evaluate(&builtin, &subject, now()).mutation, None);
}

#[test]
fn the_builtin_default_leaves_system_namespaces_alone() {
    let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"securityContext": {"runAsUser": 0}, "containers": []}});
    let set = PolicySet::builtin_default();
    for ns in ["kube-system", "kube-node-lease", "kube-public"] {
        assert!(
            judge_in(&set, &bad, ns, &namespace_name_labels(ns))
                .violations
                .is_empty(),
            "{ns}"
        );
    }
    assert!(!judge_in(&set, &bad, "apps", &namespace_name_labels("apps")).allowed());
}

fn exemption_policy(expires: &str) -> PolicySet {
    policies(&format!(
        r#"
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata: {{name: p}}
spec:
  exemptions:
  - reason: vendor image, TICKET-123
    namespaces: [legacy]
    images: ["registry.example.com/vendor/*"]
    rules: [exec-probe]
    expires: "{expires}"
"#
    ))
}

fn vendor_pod(image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "v", "namespace": "legacy"}, "spec": {"containers": [
        {"name": "v", "image": image, "readinessProbe": {"exec": {"command": ["check"]}}, "command": ["sh", "-c", "run"]}]}})
}

#[test]
fn an_exemption_covers_only_its_rules_namespaces_and_images() {
    let set = exemption_policy("2027-03-31");
    let ns = namespace_name_labels("legacy");
    let v = judge_in(&set, &vendor_pod("registry.example.com/vendor/db:7"), "legacy", &ns);
    assert_eq!(
        rules(&v),
        [(RuleId::ShellCommand, Action::Deny)],
        "exec-probe exempted, shell-command not"
    );
    let v = judge_in(&set, &vendor_pod("registry.example.com/ours/db:7"), "legacy", &ns);
    assert_eq!(rules(&v).len(), 2, "another image is not exempt");
    let other = namespace_name_labels("prod");
    assert_eq!(
        rules(&judge_in(
            &set,
            &vendor_pod("registry.example.com/vendor/db:7"),
            "prod",
            &other
        ))
        .len(),
        2
    );
}

#[test]
fn an_exemption_by_image_covers_a_pod_level_finding_only_when_every_container_image_matches() {
    let set = policies(
        r#"
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata: {name: p}
spec:
  exemptions:
  - reason: vendor pods run as root, TICKET-9
    images: ["registry.example.com/vendor/*"]
    rules: [root-uid]
"#,
    );
    let pod = |images: &[&str]| {
        let containers: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
            .collect();
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "v"},
            "spec": {"securityContext": {"runAsUser": 0}, "containers": containers}})
    };
    let vendor = judge(
        &set,
        &pod(&[
            "registry.example.com/vendor/db:7",
            "registry.example.com/vendor/agent:1",
        ]),
    );
    assert_eq!(rules(&vendor), [], "every image is the vendor's");
    let mixed = judge(
        &set,
        &pod(&["registry.example.com/vendor/db:7", "registry.example.com/ours/app:1"]),
    );
    let got: Vec<(RuleId, &str)> = mixed.violations.iter().map(|v| (v.rule, v.path.as_str())).collect();
    assert_eq!(got, [(RuleId::RootUid, "spec.securityContext.runAsUser")]);
}

#[test]
fn an_exemption_applies_through_its_expiry_day_and_not_after() {
    let ns = namespace_name_labels("legacy");
    let pod = vendor_pod("registry.example.com/vendor/db:7");
    let on_the_day = judge_in(&exemption_policy("2026-11-22"), &pod, "legacy", &ns);
    assert_eq!(rules(&on_the_day).len(), 1);
    let expired = judge_in(&exemption_policy("2026-11-21"), &pod, "legacy", &ns);
    assert_eq!(rules(&expired).len(), 2);
}

#[test]
fn invalid_policies_are_rejected_with_the_reason() {
    let bad_date = DistrolessPolicy::new(
        "x",
        serde_json::from_value(json!({
        "exemptions": [{"reason": "r", "expires": "2027-02-30"}]}))
        .unwrap(),
    );
    let err = PolicySet::new(&[bad_date]).unwrap_err().to_string();
    assert!(err.contains("not a date"), "{err}");
    let empty_reason = DistrolessPolicy::new(
        "y",
        serde_json::from_value(json!({"exemptions": [{"reason": " "}]})).unwrap(),
    );
    assert!(
        PolicySet::new(&[empty_reason])
            .unwrap_err()
            .to_string()
            .contains("empty reason")
    );
    let unknown_rule = serde_json::from_value::<distroless_guard::api::DistrolessPolicySpec>(
        json!({"rules": {"no-such-rule": "Deny"}}),
    );
    assert!(unknown_rule.unwrap_err().to_string().contains("no-such-rule"));
    let bad_selector = DistrolessPolicy::new(
        "z",
        serde_json::from_value(json!({
        "match": {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}}))
        .unwrap(),
    );
    assert!(
        PolicySet::new(&[bad_selector])
            .unwrap_err()
            .to_string()
            .contains("operator")
    );
}

// ---- image rules: what inspection found, as plain data ----

use distroless_guard::image::{Evidence, ImageReport};
use distroless_guard::policy::{ImageFacts, ImageStatus, inspection_plan};
use std::sync::Arc;

fn report(image: &str, shells: &[&str], pms: &[&str], user: &str, uid: Option<u32>) -> ImageStatus {
    let evidence = shells
        .iter()
        .map(|s| Evidence {
            path: s.to_string(),
            layer: "sha256:1111111111111111111111".into(),
        })
        .chain(pms.iter().map(|p| Evidence {
            path: format!("/usr/bin/{p}"),
            layer: "sha256:2222".into(),
        }))
        .collect();
    ImageStatus::Inspected(Arc::new(vec![Arc::new(ImageReport {
        image: image.into(),
        digest: "sha256:abc".into(),
        platform: "linux/amd64".into(),
        user: user.into(),
        uid,
        shells: shells.iter().map(|s| s.to_string()).collect(),
        package_managers: pms.iter().map(|s| s.to_string()).collect(),
        package_databases: vec![],
        distroless: shells.is_empty() && pms.is_empty(),
        evidence,
        entrypoint: vec![],
        cmd: vec![],
        base_image: None,
    })]))
}

fn judge_images(set: &PolicySet, object: &Value, facts: &ImageFacts) -> Verdict {
    let workload = Workload::from_value(object).unwrap().unwrap();
    let labels = namespace_name_labels("default");
    let subject = Subject::new(&workload, "default", &labels).with_images(Some(facts));
    evaluate(set, &subject, now())
}

fn pod_with(image: &str, sc: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"securityContext": sc, "containers": [{"name": "app", "image": image}]}})
}

#[test]
fn an_image_with_a_shell_and_apt_is_denied_with_evidence() {
    let facts = ImageFacts::from([(
        "debian:12".to_string(),
        report("debian:12", &["/usr/bin/bash"], &["apt"], "", Some(0)),
    )]);
    let v = judge_images(
        &PolicySet::builtin_default(),
        &pod_with("debian:12", json!({"runAsUser": 65532})),
        &facts,
    );
    assert_eq!(
        rules(&v),
        [
            (RuleId::ImageHasShell, Action::Deny),
            (RuleId::ImageHasPackageManager, Action::Deny)
        ]
    );
    assert_eq!(v.violations[0].path, "spec.containers[0].image");
    assert!(
        v.violations[0]
            .message
            .contains("/usr/bin/bash in layer sha256:1111111111"),
        "{}",
        v.violations[0].message
    );
    assert!(v.violations[1].message.contains("apt"));
}

#[test]
fn a_root_image_is_fine_once_the_pod_sets_a_non_root_user() {
    let facts = ImageFacts::from([("app:1".to_string(), report("app:1", &[], &[], "", Some(0)))]);
    let set = PolicySet::builtin_default();
    let v = judge_images(&set, &pod_with("app:1", json!({})), &facts);
    assert_eq!(rules(&v), [(RuleId::ImageRootUser, Action::Deny)]);
    assert!(v.violations[0].message.contains("runAsUser to 65532"));
    assert!(
        judge_images(&set, &pod_with("app:1", json!({"runAsUser": 65532})), &facts)
            .violations
            .is_empty()
    );
    assert!(!judge_images(&set, &pod_with("app:1", json!({"runAsUser": 0})), &facts).allowed());
    // Mutation fixes it: the mutated pod sets runAsUser.
    let pod = pod_with("app:1", json!({}));
    let w = Workload::from_value(&pod).unwrap().unwrap();
    let mut mutated = pod.clone();
    json_patch::patch(&mut mutated, &v.mutation_patch(&w)).unwrap();
    assert!(judge_images(&set, &mutated, &facts).violations.is_empty(), "{mutated}");
    let named = ImageFacts::from([("app:1".to_string(), report("app:1", &[], &[], "nonroot", Some(65532)))]);
    assert!(
        judge_images(&set, &pod_with("app:1", json!({})), &named)
            .violations
            .is_empty()
    );
}

#[test]
fn an_unverified_image_follows_on_error_unless_a_rule_override_says_otherwise() {
    let facts = ImageFacts::from([(
        "app:1".to_string(),
        ImageStatus::Failed("image app:1 was not inspected within 3s".into()),
    )]);
    let pod = pod_with("app:1", json!({"runAsUser": 1000}));
    let with = |extra: &str| {
        policies(&format!(
            "apiVersion: distrolessguard.dev/v1alpha1\nkind: DistrolessPolicy\nmetadata: {{name: p}}\nspec: {{{extra}}}\n"
        ))
    };
    let v = judge_images(&with(""), &pod, &facts);
    assert_eq!(
        rules(&v),
        [(RuleId::ImageUnverified, Action::Warn)],
        "onError defaults to Warn"
    );
    assert!(v.violations[0].message.contains("not inspected within 3s"));
    assert_eq!(
        rules(&judge_images(&with("onError: Deny"), &pod, &facts)),
        [(RuleId::ImageUnverified, Action::Deny)]
    );
    assert!(
        judge_images(&with("onError: Allow"), &pod, &facts)
            .violations
            .is_empty()
    );
    let overridden = with("onError: Allow, rules: {image-unverified: Audit}");
    assert_eq!(
        rules(&judge_images(&overridden, &pod, &facts)),
        [(RuleId::ImageUnverified, Action::Audit)]
    );
}

#[test]
fn inspection_plans_take_the_shortest_timeout_all_platforms_only_when_asked_and_none_without_an_image_policy() {
    let pod = pod_with("b:1", json!({}));
    let mut two = pod.clone();
    two["spec"]["initContainers"] = json!([{"name": "i", "image": "a:1"}, {"name": "j", "image": "b:1"}]);
    let w = Workload::from_value(&two).unwrap().unwrap();
    let labels = namespace_name_labels("default");
    let subject = Subject::new(&w, "default", &labels);
    let set = policies(
        r#"
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata: {name: a}
spec: {timeoutSeconds: 5}
---
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata: {name: b}
spec: {timeoutSeconds: 2, platform: all}
"#,
    );
    let plan = inspection_plan(&set, &subject).unwrap();
    assert_eq!(plan.images, ["a:1", "b:1"]);
    assert_eq!((plan.platform.to_string().as_str(), plan.timeout.as_secs()), ("all", 2));
    // No policy asks for all: the first policy's platform.
    let one_platform = policies(
        r#"
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata: {name: arm}
spec: {platform: linux/arm64}
"#,
    );
    let plan = inspection_plan(&one_platform, &subject).unwrap();
    assert_eq!(plan.platform.to_string(), "linux/arm64");
    let no_images = policies(
        r#"
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata: {name: c}
spec: {onError: Allow, rules: {image-has-shell: Ignore, image-has-package-manager: Ignore, image-root-user: Ignore}}
"#,
    );
    assert_eq!(inspection_plan(&no_images, &subject), None);
}
