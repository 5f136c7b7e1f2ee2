//! Mutation: fill in what is unset so a pod runs as the non-root user, as
//! RFC 6902 operations. Never silently overrides an explicit value (the one
//! exception is `fsGroup: Override`, which a policy must ask for). Idempotent:
//! applying the patch and mutating again yields no operations.

use super::model::{Container, PodSpec, SecurityContext};
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use jsonptr::PointerBuf;
use serde_json::{Map, Value, json};

use crate::api::{DistrolessPolicySpec, FsGroupMode, RunAsUserMode};

/// What mutation does for one pod, merged from every matching policy.
///
/// Merging is deterministic: a boolean hardening option is on when any
/// matching policy turns it on; `runAsUser: IfUnset` wins over `Never`;
/// `fsGroup` takes the strongest mode (`Override` > `IfUnset` > `Never`); the
/// UID comes from the matching policy whose name sorts first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutationSettings {
    pub uid: i64,
    pub run_as_non_root: bool,
    pub run_as_user: RunAsUserMode,
    pub fs_group: FsGroupMode,
    pub disallow_privilege_escalation: bool,
    pub seccomp_runtime_default: bool,
    pub drop_all_capabilities: bool,
}

impl MutationSettings {
    /// Merges the mutation of policies given in name order; `None` when none is given.
    pub fn merge<'a>(specs: impl IntoIterator<Item = &'a DistrolessPolicySpec>) -> Option<Self> {
        specs.into_iter().fold(None, |acc, spec| {
            let m = &spec.mutation;
            let own = MutationSettings {
                uid: spec.non_root_user,
                run_as_non_root: m.run_as_non_root,
                run_as_user: m.run_as_user,
                fs_group: m.fs_group,
                disallow_privilege_escalation: m.allow_privilege_escalation == Some(false),
                seccomp_runtime_default: m.seccomp_runtime_default,
                drop_all_capabilities: m.drop_all_capabilities,
            };
            Some(match acc {
                None => own,
                Some(a) => MutationSettings {
                    uid: a.uid,
                    run_as_non_root: a.run_as_non_root || own.run_as_non_root,
                    run_as_user: a.run_as_user.max(own.run_as_user),
                    fs_group: a.fs_group.max(own.fs_group),
                    disallow_privilege_escalation: a.disallow_privilege_escalation || own.disallow_privilege_escalation,
                    seccomp_runtime_default: a.seccomp_runtime_default || own.seccomp_runtime_default,
                    drop_all_capabilities: a.drop_all_capabilities || own.drop_all_capabilities,
                },
            })
        })
    }
}

fn pointer(base: &str, rest: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(base.split('/').skip(1).chain(rest.iter().copied()))
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// Adds `fields` under `base/securityContext`: one operation for the whole
/// object when it is absent, else one per field.
fn add_fields(ops: &mut Vec<PatchOperation>, base: &str, exists: bool, fields: Map<String, Value>) {
    if fields.is_empty() {
        return;
    }
    if !exists {
        ops.push(add(pointer(base, &["securityContext"]), Value::Object(fields)));
        return;
    }
    for (key, value) in fields {
        ops.push(add(pointer(base, &["securityContext", &key]), value));
    }
}

/// The patch that mutates the pod spec found at `spec_pointer` in its object.
pub fn mutation_patch(spec: &PodSpec, spec_pointer: &str, m: &MutationSettings) -> Vec<PatchOperation> {
    let mut ops = Vec::new();
    let windows = spec.is_windows();
    let psc = spec.security_context.as_ref();
    let mut pod = Map::new();

    // Never beside an explicit root UID: the kubelet would refuse the pod
    // ("container's runAsUser breaks non-root policy"); the root-uid rule
    // reports it instead.
    let explicit_root = psc.and_then(|s| s.run_as_user) == Some(0)
        || spec
            .init_containers()
            .iter()
            .chain(spec.containers())
            .any(|c| c.security_context.as_ref().and_then(|s| s.run_as_user) == Some(0));
    // Windows pods: runAsNonRoot there checks the user name
    // (ContainerAdministrator fails it) and the UIDs are Linux-only.
    if windows {
        return ops;
    }
    if m.run_as_non_root && !explicit_root && psc.and_then(|s| s.run_as_non_root).is_none() {
        pod.insert("runAsNonRoot".into(), json!(true));
    }
    {
        let containers = || spec.init_containers().iter().chain(spec.containers());
        let pod_user = psc.and_then(|s| s.run_as_user);
        let foreign = |uid: Option<i64>| uid.is_some_and(|u| u != m.uid);
        // A deliberate other user (redis 999, Istio 1337, ...) keeps its own
        // group and volume ownership: no 65532 group is added beside it.
        let foreign_user =
            foreign(pod_user) || containers().any(|c| foreign(c.security_context.as_ref().and_then(|s| s.run_as_user)));
        let foreign_user_without_group = foreign(pod_user)
            || containers().any(|c| {
                let sc = c.security_context.as_ref();
                foreign(sc.and_then(|s| s.run_as_user)) && sc.and_then(|s| s.run_as_group).is_none()
            });
        if m.run_as_user == RunAsUserMode::IfUnset {
            // Pod-level, so every container without a user of its own gets
            // it (a container's own runAsUser still wins for that container).
            if pod_user.is_none() {
                pod.insert("runAsUser".into(), json!(m.uid));
            }
            if psc.and_then(|s| s.run_as_group).is_none() && !foreign_user_without_group {
                pod.insert("runAsGroup".into(), json!(m.uid));
            }
        }
        match (m.fs_group, psc.and_then(|s| s.fs_group)) {
            (FsGroupMode::IfUnset, None) if !foreign_user => {
                pod.insert("fsGroup".into(), json!(m.uid));
            }
            (FsGroupMode::Override, None) => {
                pod.insert("fsGroup".into(), json!(m.uid));
            }
            (FsGroupMode::Override, Some(current)) if current != m.uid => {
                ops.push(PatchOperation::Replace(ReplaceOperation {
                    path: pointer(spec_pointer, &["securityContext", "fsGroup"]),
                    value: json!(m.uid),
                }));
            }
            _ => {}
        }
        if m.seccomp_runtime_default && psc.and_then(|s| s.seccomp_profile.as_ref()).is_none() {
            pod.insert("seccompProfile".into(), json!({"type": "RuntimeDefault"}));
        }
    }
    add_fields(&mut ops, spec_pointer, psc.is_some(), pod);

    let lists: [(&str, &[Container]); 2] = [
        ("initContainers", spec.init_containers()),
        ("containers", spec.containers()),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            let base = format!("{spec_pointer}/{list}/{i}");
            mutate_container(&mut ops, &base, c.security_context.as_ref(), m);
        }
    }
    ops
}

fn mutate_container(ops: &mut Vec<PatchOperation>, base: &str, sc: Option<&SecurityContext>, m: &MutationSettings) {
    let mut fields = Map::new();
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    // The API server rejects allowPrivilegeEscalation: false next to
    // privileged: true or an added CAP_SYS_ADMIN, so those are left alone.
    let privileged = sc.and_then(|s| s.privileged) == Some(true)
        || caps
            .and_then(|c| c.add.as_ref())
            .is_some_and(|add| add.iter().any(|c| c == "SYS_ADMIN" || c == "CAP_SYS_ADMIN"));
    if m.disallow_privilege_escalation && !privileged && sc.and_then(|s| s.allow_privilege_escalation).is_none() {
        fields.insert("allowPrivilegeEscalation".into(), json!(false));
    }
    if m.drop_all_capabilities {
        match caps.map(|c| c.drop.as_deref()) {
            None => {
                fields.insert("capabilities".into(), json!({"drop": ["ALL"]}));
            }
            Some(None) => ops.push(add(
                pointer(base, &["securityContext", "capabilities", "drop"]),
                json!(["ALL"]),
            )),
            Some(Some(drop)) if !drop.iter().any(|d| d == "ALL") => ops.push(add(
                pointer(base, &["securityContext", "capabilities", "drop", "-"]),
                json!("ALL"),
            )),
            Some(Some(_)) => {}
        }
    }
    add_fields(ops, base, sc.is_some(), fields);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uid: i64, mutation: crate::api::Mutation) -> DistrolessPolicySpec {
        DistrolessPolicySpec {
            non_root_user: uid,
            mutation,
            ..DistrolessPolicySpec::default()
        }
    }

    #[test]
    fn merging_turns_each_hardening_on_when_any_policy_asks_and_takes_the_first_policys_uid() {
        let off = crate::api::Mutation {
            run_as_non_root: false,
            ..Default::default()
        };
        // Each option asked for by one policy only, first or second by name.
        let asks = [
            crate::api::Mutation {
                run_as_non_root: true,
                ..off.clone()
            },
            crate::api::Mutation {
                allow_privilege_escalation: Some(false),
                ..off.clone()
            },
            crate::api::Mutation {
                seccomp_runtime_default: true,
                ..off.clone()
            },
            crate::api::Mutation {
                drop_all_capabilities: true,
                ..off.clone()
            },
        ];
        let on = |m: &MutationSettings| {
            [
                m.run_as_non_root,
                m.disallow_privilege_escalation,
                m.seccomp_runtime_default,
                m.drop_all_capabilities,
            ]
        };
        for (i, ask) in asks.iter().enumerate() {
            let mut expected = [false; 4];
            expected[i] = true;
            let first = [spec(1000, ask.clone()), spec(2000, off.clone())];
            let second = [spec(1000, off.clone()), spec(2000, ask.clone())];
            for specs in [first, second] {
                let merged = MutationSettings::merge(&specs).unwrap();
                assert_eq!((on(&merged), merged.uid), (expected, 1000), "option {i}");
            }
        }
        let none = MutationSettings::merge(&[spec(1000, off.clone()), spec(2000, off)]).unwrap();
        assert_eq!(on(&none), [false; 4]);
        assert_eq!(MutationSettings::merge(&[]), None);
    }

    fn settings(fs_group: FsGroupMode) -> MutationSettings {
        MutationSettings {
            uid: 65532,
            run_as_non_root: false,
            run_as_user: RunAsUserMode::Never,
            fs_group,
            disallow_privilege_escalation: false,
            seccomp_runtime_default: false,
            drop_all_capabilities: false,
        }
    }

    /// The fsGroup operations of the patch, as (op, value).
    fn fs_group_ops(pod_security_context: Value, fs_group: FsGroupMode) -> Vec<(String, Value)> {
        let spec: PodSpec =
            serde_json::from_value(json!({"securityContext": pod_security_context, "containers": [{"name": "a"}]}))
                .unwrap();
        let patch = serde_json::to_value(mutation_patch(&spec, "/spec", &settings(fs_group))).unwrap();
        patch
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|op| {
                let value = match op["path"].as_str()? {
                    "/spec/securityContext/fsGroup" => op["value"].clone(),
                    "/spec/securityContext" => op["value"].get("fsGroup")?.clone(),
                    _ => return None,
                };
                Some((op["op"].as_str()?.to_string(), value))
            })
            .collect()
    }

    #[test]
    fn fs_group_override_sets_or_replaces_it_even_beside_another_user_and_if_unset_leaves_that_user_alone() {
        let add = |v: i64| vec![("add".to_string(), json!(v))];
        assert_eq!(
            fs_group_ops(json!({"runAsUser": 999}), FsGroupMode::Override),
            add(65532)
        );
        assert_eq!(fs_group_ops(json!({}), FsGroupMode::Override), add(65532));
        assert_eq!(
            fs_group_ops(json!({"fsGroup": 2000}), FsGroupMode::Override),
            vec![("replace".to_string(), json!(65532))]
        );
        assert_eq!(fs_group_ops(json!({"fsGroup": 65532}), FsGroupMode::Override), vec![]);
        assert_eq!(fs_group_ops(json!({}), FsGroupMode::IfUnset), add(65532));
        assert_eq!(fs_group_ops(json!({"runAsUser": 999}), FsGroupMode::IfUnset), vec![]);
        assert_eq!(fs_group_ops(json!({"fsGroup": 2000}), FsGroupMode::IfUnset), vec![]);
        assert_eq!(fs_group_ops(json!({}), FsGroupMode::Never), vec![]);
    }
}
