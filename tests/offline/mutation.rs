//! Mutation: RFC 6902 patches that fill what is unset, idempotent, and never
//! in conflict with validation. Property tests over generated pod specs.

use crate::support::psa;
use distroless_guard::api::{FsGroupMode, RuleId, RunAsUserMode};
use distroless_guard::policy::{
    MutationSettings, PolicySet, Subject, Workload, evaluate, mutation_patch, namespace_name_labels,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn settings_all_on(uid: i64) -> MutationSettings {
    MutationSettings {
        uid,
        run_as_non_root: true,
        run_as_user: RunAsUserMode::IfUnset,
        fs_group: FsGroupMode::IfUnset,
        disallow_privilege_escalation: true,
        seccomp_runtime_default: true,
        drop_all_capabilities: true,
    }
}

fn patch_for(pod: &Value, m: &MutationSettings) -> Vec<json_patch::PatchOperation> {
    let w = Workload::from_value(pod).unwrap().unwrap();
    mutation_patch(&w.spec, w.kind.spec_pointer(), m)
}

fn apply(pod: &Value, m: &MutationSettings) -> Value {
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch_for(pod, m)).unwrap();
    out
}

#[test]
fn a_bare_pod_gets_the_non_root_user_in_one_operation() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "a"}]}});
    let m = MutationSettings {
        disallow_privilege_escalation: false,
        seccomp_runtime_default: false,
        drop_all_capabilities: false,
        ..settings_all_on(65532)
    };
    let ops = serde_json::to_value(patch_for(&pod, &m)).unwrap();
    assert_eq!(
        ops,
        json!([{"op": "add", "path": "/spec/securityContext",
        "value": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532}}])
    );
}

#[test]
fn explicit_values_are_kept_and_only_missing_fields_are_added() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"securityContext": {"fsGroup": 2000, "runAsNonRoot": false},
                 "containers": [{"name": "app", "image": "a", "securityContext": {"runAsUser": 1000, "allowPrivilegeEscalation": true,
                    "capabilities": {"drop": ["NET_RAW"]}}}]}});
    let out = apply(&pod, &settings_all_on(65532));
    let sc = &out["spec"]["securityContext"];
    assert_eq!(sc["fsGroup"], 2000);
    assert_eq!(sc["runAsNonRoot"], false);
    assert_eq!(
        sc["runAsUser"], 65532,
        "pod-level, for containers without their own; the container keeps 1000"
    );
    assert!(
        sc.get("runAsGroup").is_none(),
        "user 1000 has no group of its own, so none is added beside it"
    );
    assert_eq!(sc["seccompProfile"], json!({"type": "RuntimeDefault"}));
    let csc = &out["spec"]["containers"][0]["securityContext"];
    assert_eq!(csc["allowPrivilegeEscalation"], true);
    assert_eq!(csc["runAsUser"], 1000);
    assert_eq!(csc["capabilities"]["drop"], json!(["NET_RAW", "ALL"]));
}

#[test]
fn fs_group_override_replaces_a_different_value() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"securityContext": {"fsGroup": 2000}, "containers": []}});
    let m = MutationSettings {
        fs_group: FsGroupMode::Override,
        ..settings_all_on(65532)
    };
    assert_eq!(apply(&pod, &m)["spec"]["securityContext"]["fsGroup"], 65532);
}

#[test]
fn privileged_and_sys_admin_containers_do_not_get_allow_privilege_escalation_false_and_others_do() {
    // The API server rejects allowPrivilegeEscalation: false next to privileged: true
    // or an added SYS_ADMIN, however the capability is spelled.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "a", "image": "a", "securityContext": {"privileged": true}},
        {"name": "b", "image": "b", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}},
        {"name": "c", "image": "c", "securityContext": {"capabilities": {"add": ["CAP_SYS_ADMIN"]}}},
        {"name": "d", "image": "d", "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]}});
    let out = apply(&pod, &settings_all_on(65532));
    let set: Vec<(&str, Option<&Value>)> = out["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["securityContext"].get("allowPrivilegeEscalation"),
            )
        })
        .collect();
    assert_eq!(set, [("a", None), ("b", None), ("c", None), ("d", Some(&json!(false)))]);
}

#[test]
fn windows_pods_however_they_say_so_are_left_untouched() {
    // runAsNonRoot on Windows refuses ContainerAdministrator; the UIDs are Linux-only.
    for spec in [
        json!({"os": {"name": "windows"}, "containers": [{"name": "a", "image": "a"}]}),
        json!({"nodeSelector": {"kubernetes.io/os": "windows"}, "containers": [{"name": "a", "image": "a"}]}),
        json!({"containers": [{"name": "a", "image": "a",
               "securityContext": {"windowsOptions": {"runAsUserName": "ContainerAdministrator"}}}]}),
        json!({"securityContext": {"windowsOptions": {"gmsaCredentialSpecName": "g"}},
               "containers": [{"name": "a", "image": "a"}]}),
    ] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec});
        assert_eq!(patch_for(&pod, &settings_all_on(65532)), Vec::new(), "{spec}");
    }
}

#[test]
fn a_deliberate_other_user_keeps_its_group_and_volume_ownership() {
    for spec in [
        json!({"securityContext": {"runAsUser": 999}, "containers": [{"name": "redis", "image": "redis"}]}),
        json!({"containers": [{"name": "app", "image": "a"},
                              {"name": "proxy", "image": "istio/proxyv2", "securityContext": {"runAsUser": 1337}}]}),
    ] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec});
        let out = apply(&pod, &settings_all_on(65532));
        let psc = &out["spec"]["securityContext"];
        assert!(
            psc.get("runAsGroup").is_none() && psc.get("fsGroup").is_none(),
            "{spec}: {psc}"
        );
        assert_eq!(psc["runAsNonRoot"], true, "{spec}: {psc}");
    }
    // A sidecar with its own user and group does not stop the group for the rest.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "a"},
                                {"name": "proxy", "image": "p", "securityContext": {"runAsUser": 1337, "runAsGroup": 1337}}]}});
    let psc = apply(&pod, &settings_all_on(65532))["spec"]["securityContext"].clone();
    assert_eq!(
        (psc["runAsUser"].clone(), psc["runAsGroup"].clone()),
        (json!(65532), json!(65532)),
        "{psc}"
    );
    assert!(psc.get("fsGroup").is_none(), "volumes shared with user 1337: {psc}");
}

#[test]
fn one_container_with_its_own_user_does_not_leave_the_others_without_one() {
    // Without a pod-level runAsUser the sidecar would run as its image's
    // (root) user under the added runAsNonRoot, and not start.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "a", "securityContext": {"runAsUser": 65532}},
                                {"name": "sidecar", "image": "root-image"}]}});
    let out = apply(&pod, &settings_all_on(65532));
    assert_eq!(out["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(out["spec"]["securityContext"]["runAsUser"], 65532, "{out:#}");
}

#[test]
fn template_patches_point_into_the_template() {
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a"}]}}}});
    let ops = serde_json::to_value(patch_for(&d, &settings_all_on(65532))).unwrap();
    for op in ops.as_array().unwrap() {
        assert!(op["path"].as_str().unwrap().starts_with("/spec/template/spec/"), "{op}");
    }
}

// ---- property tests ----

fn opt<T: std::fmt::Debug + Clone + 'static>(values: Vec<T>) -> impl Strategy<Value = Option<T>> {
    prop_oneof![Just(None), proptest::sample::select(values).prop_map(Some)]
}

fn security_context(pod_level: bool) -> impl Strategy<Value = Option<Value>> {
    let uid = opt(vec![0i64, 1000, 65532]);
    let non_root = opt(vec![true, false]);
    let group = opt(vec![0i64, 3000]);
    let ape = opt(vec![true, false]);
    let privileged = opt(vec![true, false]);
    let caps = opt(vec![
        json!({}),
        json!({"drop": ["ALL"]}),
        json!({"drop": ["NET_RAW"]}),
        json!({"add": ["NET_BIND_SERVICE"]}),
        json!({"add": ["SYS_ADMIN"], "drop": ["CHOWN"]}),
    ]);
    let seccomp = opt(vec!["RuntimeDefault", "Unconfined", "Localhost"]);
    let fs_group = opt(vec![0i64, 2000, 65532]);
    (any::<bool>(), uid, non_root, group, ape, privileged, caps, seccomp, fs_group).prop_map(
        move |(present, uid, non_root, group, ape, privileged, caps, seccomp, fs_group)| {
            if !present {
                return None;
            }
            let mut sc = Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    sc.insert(k.to_string(), v);
                }
            };
            put("runAsUser", uid.map(Value::from));
            put("runAsNonRoot", non_root.map(Value::from));
            put("runAsGroup", group.map(Value::from));
            put("seccompProfile", seccomp.map(|t| json!({"type": t, "localhostProfile": if t == "Localhost" { json!("p.json") } else { Value::Null }})));
            if pod_level {
                put("fsGroup", fs_group.map(Value::from));
            } else {
                put("allowPrivilegeEscalation", ape.map(Value::from));
                put("privileged", privileged.map(Value::from));
                put("capabilities", caps);
            }
            Some(Value::Object(sc))
        },
    )
}

fn container(i: usize, prefix: &'static str) -> impl Strategy<Value = Value> {
    security_context(false).prop_map(move |sc| {
        let mut c = json!({"name": format!("{prefix}{i}"), "image": "registry.example.com/app:1"});
        if let Some(sc) = sc {
            c["securityContext"] = sc;
        }
        c
    })
}

fn containers(prefix: &'static str, max: usize) -> impl Strategy<Value = Vec<Value>> {
    (0..=max).prop_flat_map(move |n| (0..n).map(|i| container(i, prefix)).collect::<Vec<_>>())
}

fn pod() -> impl Strategy<Value = Value> {
    (
        security_context(true),
        containers("init", 2),
        containers("app", 3),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(sc, init, main, windows)| {
            let mut spec = json!({"containers": main});
            if !init.is_empty() {
                spec["initContainers"] = Value::Array(init);
            }
            if let Some(sc) = sc {
                spec["securityContext"] = sc;
            }
            if windows {
                spec["os"] = json!({"name": "windows"});
            }
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "generated"}, "spec": spec})
        })
}

fn settings() -> impl Strategy<Value = MutationSettings> {
    (
        any::<bool>(),
        prop_oneof![Just(RunAsUserMode::IfUnset), Just(RunAsUserMode::Never)],
        prop_oneof![
            Just(FsGroupMode::IfUnset),
            Just(FsGroupMode::Override),
            Just(FsGroupMode::Never)
        ],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(65532i64), Just(10001i64)],
    )
        .prop_map(|(non_root, user, fs, ape, seccomp, caps, uid)| MutationSettings {
            uid,
            run_as_non_root: non_root,
            run_as_user: user,
            fs_group: fs,
            disallow_privilege_escalation: ape,
            seccomp_runtime_default: seccomp,
            drop_all_capabilities: caps,
        })
}

fn violations(pod: &Value) -> Vec<(RuleId, String)> {
    let w = Workload::from_value(pod).unwrap().unwrap();
    let labels = namespace_name_labels("default");
    let subject = Subject::new(&w, "default", &labels);
    evaluate(&PolicySet::builtin_default(), &subject, jiff::Timestamp::now())
        .violations
        .into_iter()
        .map(|v| (v.rule, v.path))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutating_twice_gives_an_empty_second_patch(pod in pod(), m in settings()) {
        let once = apply(&pod, &m);
        let second = patch_for(&once, &m);
        prop_assert!(second.is_empty(), "second patch: {:?}\nafter first: {:#}", second, once);
    }

    #[test]
    fn mutation_never_adds_or_hides_a_violation(pod in pod(), m in settings()) {
        let mutated = apply(&pod, &m);
        prop_assert_eq!(violations(&pod), violations(&mutated));
    }

    #[test]
    fn a_mutated_pod_passes_what_mutation_can_fix(pod in pod(), m in settings()) {
        let mutated = apply(&pod, &m);
        let root_rules = violations(&pod).iter().any(|(r, _)| matches!(r, RuleId::RootUid | RuleId::NonRootDisabled));
        // With runAsNonRoot mutation on, every Linux pod either breaks a root rule or runs as non-root.
        // (Windows pods are left alone: runAsNonRoot means a user name there.)
        let windows = pod["spec"]["os"]["name"] == "windows";
        if m.run_as_non_root && !root_rules && !windows {
            prop_assert!(psa::run_as_non_root(&mutated) && psa::run_as_user(&mutated), "{:#}", mutated);
        }
        // A control that passed before mutation still passes.
        for (name, passes) in psa::CONTROLS {
            if passes(&pod) {
                prop_assert!(passes(&mutated), "mutation broke {}: {:#}", name, mutated);
            }
        }
    }

    #[test]
    fn mutation_never_makes_a_pod_the_kubelet_refuses_for_root_under_run_as_non_root(pod in pod(), m in settings()) {
        // Per container, the kubelet refuses runAsNonRoot: true with runAsUser: 0
        // (each taken from the container, else the pod).
        fn refused(pod: &Value) -> Vec<String> {
            let spec = &pod["spec"];
            let psc = &spec["securityContext"];
            ["initContainers", "containers"]
                .iter()
                .flat_map(|list| spec[*list].as_array().cloned().unwrap_or_default())
                .filter(|c| {
                    let sc = &c["securityContext"];
                    let pick = |k: &str| if sc[k].is_null() { psc[k].clone() } else { sc[k].clone() };
                    pick("runAsNonRoot") == json!(true) && pick("runAsUser") == json!(0)
                })
                .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                .collect()
        }
        let mutated = apply(&pod, &m);
        prop_assert_eq!(refused(&pod), refused(&mutated), "{:#}", mutated);
    }

    #[test]
    fn mutation_keeps_every_explicit_value(pod in pod(), m in settings()) {
        let mutated = apply(&pod, &m);
        fn walk(before: &Value, after: &Value, path: &str, fs_override: bool) -> Result<(), String> {
            match (before, after) {
                (Value::Object(b), Value::Object(a)) => b.iter().try_for_each(|(k, v)| {
                    let p = format!("{path}/{k}");
                    match a.get(k) {
                        Some(av) => walk(v, av, &p, fs_override),
                        None => Err(format!("{p} was removed")),
                    }
                }),
                (Value::Array(b), Value::Array(a)) if path.ends_with("/drop") => {
                    // Appending ALL to a drop list keeps every entry that was there.
                    if b.iter().all(|x| a.contains(x)) { Ok(()) } else { Err(format!("{path} lost entries")) }
                }
                (Value::Array(b), Value::Array(a)) if b.len() != a.len() => {
                    Err(format!("{path} went from {} to {} entries", b.len(), a.len()))
                }
                (Value::Array(b), Value::Array(a)) => b.iter().zip(a).enumerate()
                    .try_for_each(|(i, (bv, av))| walk(bv, av, &format!("{path}/{i}"), fs_override)),
                _ if path == "/spec/securityContext/fsGroup" && fs_override => Ok(()),
                _ if before == after => Ok(()),
                _ => Err(format!("{path} changed from {before} to {after}")),
            }
        }
        let result = walk(&pod, &mutated, "", m.fs_group == FsGroupMode::Override);
        prop_assert!(result.is_ok(), "{:?}", result);
    }
}
