//! The canary: its size for a traffic weight, and its ReplicaSet (the
//! Deployment's pod template with the distroless images, a readiness gate,
//! and labels of its own so the Deployment never adopts it).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetCondition, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodReadinessGate, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::api::DistrolessRollout;

/// The readiness gate of canary pods: the rollout opens it to send traffic.
pub(crate) const SERVING_GATE: &str = "distrolessguard.dev/serving";
/// The label carrying the rollout's name on its canary ReplicaSet and pods.
pub(crate) const ROLLOUT_LABEL: &str = "distrolessguard.dev/rollout";
/// The annotation naming the Deployment a canary stands beside.
pub(crate) const CANARY_OF: &str = "distrolessguard.dev/canary-of";

/// Canary pods for `weight` percent next to a Deployment of `replicas` pods,
/// which keeps all of its own (the canary adds capacity, it never takes the
/// Deployment's): `round(replicas × weight / (100 − weight))`, at least 1.
/// 100% is the Deployment itself (promotion), not a canary size.
pub(crate) fn replicas_for(replicas: u32, weight: u32) -> u32 {
    if weight == 0 {
        return 0;
    }
    if weight >= 100 {
        return replicas.max(1);
    }
    let n = u64::from(replicas) * u64::from(weight);
    let d = u64::from(100 - weight);
    u32::try_from((2 * n + d) / (2 * d)).unwrap_or(u32::MAX).max(1)
}

/// Canary pods for `weight` percent of a Deployment of `replicas` pods that
/// gives up that many of its own (`canaryCapacity: FromDeployment`):
/// `round(replicas × weight / 100)`, at least 1, and at most `replicas − 1`
/// (the Deployment keeps a pod of its own; with one replica the canary's pod
/// is added, not taken).
pub(crate) fn replicas_taking(replicas: u32, weight: u32) -> u32 {
    if weight == 0 {
        return 0;
    }
    if weight >= 100 {
        return replicas.max(1);
    }
    let share = (2 * u64::from(replicas) * u64::from(weight) + 100) / 200;
    let most = u64::from(replicas.saturating_sub(1).max(1));
    u32::try_from(share.clamp(1, most)).unwrap_or(u32::MAX)
}

/// The weight `canary` pods next to `stable` ones make, in percent (rounded).
pub(crate) fn weight_of(canary: u32, stable: u32) -> u32 {
    let total = u64::from(canary) + u64::from(stable);
    if total == 0 {
        return 0;
    }
    u32::try_from((200 * u64::from(canary) + total) / (2 * total)).unwrap_or(100)
}

/// Whether `achieved` is too far from `desired` to call it that weight: off by
/// more than half of what was asked (1 replica cannot be split 10/90).
pub(crate) fn unachievable(desired: u32, achieved: u32) -> bool {
    desired > 0 && desired < 100 && 2 * desired.abs_diff(achieved) > desired
}

/// The pod template of the canary: the Deployment's with the distroless
/// images, the serving readiness gate and the rollout label.
pub(crate) fn template(deployment: &Deployment, images: &BTreeMap<String, String>, rollout: &str) -> PodTemplateSpec {
    let mut t = deployment.spec.template.clone();
    let meta = t.metadata.get_or_insert_with(ObjectMeta::default);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.remove("pod-template-hash");
    labels.insert(ROLLOUT_LABEL.into(), rollout.into());
    if let Some(spec) = t.spec.as_mut() {
        for c in spec.containers.iter_mut() {
            if let Some(image) = images.get(&c.name) {
                c.image = Some(image.clone());
            }
        }
        let gates = spec.readiness_gates.get_or_insert_with(Vec::new);
        if !gates.iter().any(|g| g.condition_type == SERVING_GATE) {
            gates.push(PodReadinessGate {
                condition_type: SERVING_GATE.into(),
            });
        }
    }
    t
}

/// The `pod-template-hash` of a pod kept for debugging (`keepFailedPod`):
/// no ReplicaSet selects it.
pub(crate) const KEPT: &str = "kept-for-debug";

/// Whether `keepFailedPod` took this pod out of its ReplicaSet.
pub(crate) fn is_kept(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .is_some_and(|h| h == KEPT)
}

/// A short, stable hash of a pod template (what `pod-template-hash` is for).
pub(crate) fn template_hash(template: &PodTemplateSpec) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    let digest = Sha256::digest(&json);
    hex::encode(&digest[..5])
}

/// The canary ReplicaSet for a template, owned by the rollout.
pub(crate) fn replica_set(
    rollout: &DistrolessRollout,
    deployment: &Deployment,
    mut template: PodTemplateSpec,
    replicas: u32,
) -> ReplicaSet {
    let name = rollout.metadata.name.clone().unwrap_or_default();
    let deployment_name = deployment.metadata.name.clone().unwrap_or_default();
    let hash = template_hash(&template);
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert("pod-template-hash".into(), hash.clone());
    let labels = meta.labels.clone().unwrap_or_default();
    let mut selector = deployment.spec.selector.match_labels.clone().unwrap_or_default();
    selector.insert(ROLLOUT_LABEL.into(), name.clone());
    selector.insert("pod-template-hash".into(), hash.clone());
    let owner = OwnerReference {
        api_version: DistrolessRollout::api_version(&()).into_owned(),
        kind: DistrolessRollout::kind(&()).into_owned(),
        name: name.clone(),
        uid: rollout.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(canary_name(&deployment_name, &hash)),
            namespace: rollout.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(CANARY_OF.to_string(), deployment_name)])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            },
            template: Some(template),
            min_ready_seconds: None,
        },
        status: None,
    }
}

/// `<deployment>-distroless-<hash>`, within the 63 characters of a label value.
pub(crate) fn canary_name(deployment: &str, hash: &str) -> String {
    let suffix = format!("-distroless-{hash}");
    let keep = 63usize.saturating_sub(suffix.len());
    let base: String = deployment.chars().take(keep).collect();
    format!("{}{suffix}", base.trim_end_matches('-'))
}

/// The template hash a canary ReplicaSet was made from.
pub(crate) fn hash_of(rs: &ReplicaSet) -> Option<&str> {
    rs.metadata
        .labels
        .as_ref()?
        .get("pod-template-hash")
        .map(String::as_str)
}

/// The ReplicaSet controller's report that it cannot create pods: its
/// `ReplicaFailure` condition, when `True`.
pub(crate) fn replica_failure(rs: &ReplicaSet) -> Option<&ReplicaSetCondition> {
    rs.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_.as_deref() == Some("ReplicaFailure") && c.status.as_deref() == Some("True"))
}

/// Whether the ReplicaSet controller reports that it cannot create pods.
pub(crate) fn failing_to_create(rs: &ReplicaSet) -> bool {
    replica_failure(rs).is_some()
}

/// Whether our field manager applied the container images of the Deployment
/// (a promotion patch, or a restore).
pub(crate) fn images_applied_by_us(d: &Deployment) -> bool {
    d.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(crate::controller::FIELD_MANAGER)
            && m.operation.as_deref() == Some("Apply")
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.to_string().contains("\"f:image\""))
    })
}

/// Whether our field manager set the Deployment's `spec.replicas` (a
/// `canaryCapacity: FromDeployment` scale, or its restore) and nobody has
/// set them since: another writer (`kubectl scale`, an HPA, a GitOps sync)
/// takes the field's ownership.
pub(crate) fn replicas_set_by_us(d: &Deployment) -> bool {
    d.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(crate::controller::FIELD_MANAGER)
            && m.operation.as_deref() == Some("Update")
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_for_the_usual_steps() {
        // (Deployment replicas, weight) -> canary pods.
        for (n, w, c) in [
            (9, 10, 1),
            (10, 10, 1),
            (20, 10, 2),
            (1, 10, 1),
            (4, 50, 4),
            (10, 50, 10),
            (3, 25, 1),
            (0, 10, 1),
        ] {
            assert_eq!(replicas_for(n, w), c, "{n} replicas at {w}%");
        }
        assert_eq!(replicas_for(5, 100), 5);
        assert_eq!(replicas_for(5, 0), 0);
    }

    #[test]
    fn a_canary_taking_from_the_deployment_is_its_share_and_leaves_it_a_pod() {
        // (Deployment replicas, weight) -> canary pods taken out of them.
        for (n, w, c) in [
            (10, 10, 1),
            (10, 50, 5),
            (4, 50, 2),
            (4, 25, 1),
            (9, 10, 1),
            (20, 10, 2),
            (4, 90, 3),
            (2, 50, 1),
            (1, 50, 1),
            (0, 10, 1),
        ] {
            assert_eq!(replicas_taking(n, w), c, "{n} replicas at {w}%");
        }
        assert_eq!(replicas_taking(5, 0), 0);
        assert_eq!(replicas_taking(5, 100), 5);
    }

    #[test]
    fn one_replica_cannot_be_split_ten_ninety() {
        let c = replicas_for(1, 10);
        let achieved = weight_of(c, 1);
        assert_eq!(achieved, 50);
        assert!(unachievable(10, achieved));
        assert!(!unachievable(10, weight_of(replicas_for(9, 10), 9)));
        assert!(!unachievable(50, weight_of(replicas_for(3, 50), 3)));
    }

    fn deployment() -> Deployment {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "5d8f"}},
                                  "spec": {"containers": [{"name": "app", "image": "reg/app:1.0"}, {"name": "proxy", "image": "reg/proxy:2"}],
                                           "readinessGates": [{"conditionType": "example.com/lb"}]}}}}))
        .unwrap()
    }

    fn distroless() -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_string(), "reg/app:1.0-distroless".to_string())])
    }

    #[test]
    fn the_canary_template_swaps_the_named_images_adds_the_gate_once_and_drops_the_deployments_hash() {
        let t = template(&deployment(), &distroless(), "web-distroless");
        let labels = t.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(
            labels,
            &BTreeMap::from([
                ("app".into(), "web".into()),
                (ROLLOUT_LABEL.into(), "web-distroless".into())
            ])
        );
        let spec = t.spec.as_ref().unwrap();
        let images: Vec<_> = spec.containers.iter().map(|c| c.image.as_deref().unwrap()).collect();
        assert_eq!(images, ["reg/app:1.0-distroless", "reg/proxy:2"]);
        let gates: Vec<_> = spec
            .readiness_gates
            .iter()
            .flatten()
            .map(|g| g.condition_type.as_str())
            .collect();
        assert_eq!(gates, ["example.com/lb", SERVING_GATE]);
        // A template that has the gate already (a canary's own) keeps one.
        let mut again = deployment();
        again.spec.template = t.clone();
        let twice = template(&again, &distroless(), "web-distroless");
        assert_eq!(twice.spec.unwrap().readiness_gates.unwrap().len(), 2);
    }

    #[test]
    fn the_canary_replica_set_is_the_rollouts_selects_only_its_own_pods_and_names_its_deployment() {
        let spec: crate::api::DistrolessRolloutSpec = serde_json::from_value(serde_json::json!({
            "targetRef": {"name": "web"}, "containers": [{"name": "app", "image": "reg/app:1.0-distroless"}]}))
        .unwrap();
        let mut rollout = DistrolessRollout::new("web-distroless", spec);
        rollout.metadata.namespace = Some("shop".into());
        rollout.metadata.uid = Some("r-uid".into());
        let d = deployment();
        let t = template(&d, &distroless(), "web-distroless");
        let hash = template_hash(&t);
        let rs = replica_set(&rollout, &d, t, 3);
        let meta = &rs.metadata;
        assert_eq!(meta.name.as_deref(), Some(format!("web-distroless-{hash}").as_str()));
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
        assert_eq!(hash_of(&rs), Some(hash.as_str()));
        assert_eq!(meta.labels.as_ref().unwrap()[ROLLOUT_LABEL], "web-distroless");
        assert_eq!(meta.annotations.as_ref().unwrap()[CANARY_OF], "web");
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str(),
                owner.controller
            ),
            ("DistrolessRollout", "web-distroless", "r-uid", Some(true))
        );
        let spec = rs.spec;
        assert_eq!(spec.replicas, Some(3));
        let selector = spec.selector.match_labels.unwrap();
        assert_eq!(
            selector,
            BTreeMap::from([
                ("app".into(), "web".into()),
                (ROLLOUT_LABEL.into(), "web-distroless".into()),
                ("pod-template-hash".into(), hash.clone()),
            ])
        );
        // Its pods carry every label it selects on.
        let pod_labels = spec.template.unwrap().metadata.unwrap().labels.unwrap();
        assert!(
            selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{pod_labels:?}"
        );
    }

    #[test]
    fn template_hashes_are_ten_hex_digits_and_differ_with_the_template() {
        let t = template(&deployment(), &distroless(), "web-distroless");
        let h = template_hash(&t);
        assert_eq!(h.len(), 10);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()), "{h}");
        assert_eq!(template_hash(&t), h);
        let other = template(&deployment(), &BTreeMap::new(), "web-distroless");
        assert_ne!(template_hash(&other), h);
    }

    #[test]
    fn a_replica_set_fails_to_create_only_with_a_true_replica_failure_condition() {
        let rs = |type_: &str, status: &str| -> ReplicaSet {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "c"},
                "status": {"replicas": 0, "conditions": [{"type": type_, "status": status}]}}))
            .unwrap()
        };
        assert!(failing_to_create(&rs("ReplicaFailure", "True")));
        assert!(!failing_to_create(&rs("ReplicaFailure", "False")));
        assert!(!failing_to_create(&rs("Available", "True")));
        assert!(!failing_to_create(&ReplicaSet::default()));
    }

    #[test]
    fn a_pod_is_kept_for_debugging_only_with_the_kept_hash() {
        let pod = |hash: &str| -> Pod {
            serde_json::from_value(serde_json::json!({"metadata": {"labels": {"pod-template-hash": hash}}})).unwrap()
        };
        assert!(is_kept(&pod(KEPT)));
        assert!(!is_kept(&pod("5d8f")));
        assert!(!is_kept(&Pod::default()));
    }

    #[test]
    fn a_weight_is_unachievable_when_off_by_more_than_half_and_never_at_0_or_100() {
        assert!(!unachievable(10, 15), "off by exactly half");
        assert!(unachievable(10, 16));
        assert!(unachievable(10, 4));
        assert!(!unachievable(10, 5));
        assert!(!unachievable(0, 50), "no canary asked for");
        assert!(!unachievable(100, 0), "promotion is the Deployment's own");
        assert!(unachievable(99, 0));
    }

    #[test]
    fn canary_names_fit_a_label_value() {
        let long = "a".repeat(80);
        assert!(canary_name(&long, "0123456789").len() <= 63);
        assert_eq!(canary_name("web", "0123456789"), "web-distroless-0123456789");
    }

    proptest! {
        /// For every size and weight: at least one canary pod, and the weight it
        /// makes is the closest a whole number of pods gets (or flagged).
        #[test]
        fn the_canary_is_the_closest_whole_number_of_pods(n in 1u32..=100, w in 1u32..=99) {
            let c = replicas_for(n, w);
            prop_assert!(c >= 1);
            let achieved = weight_of(c, n);
            if c > 1 {
                let fewer = weight_of(c - 1, n);
                prop_assert!(achieved.abs_diff(w) <= fewer.abs_diff(w) + 1, "{n} {w}: {c} makes {achieved}, {} makes {fewer}", c - 1);
            }
            let more = weight_of(c + 1, n);
            prop_assert!(achieved.abs_diff(w) <= more.abs_diff(w) + 1, "{n} {w}: {c} makes {achieved}, {} makes {more}", c + 1);
            if !unachievable(w, achieved) {
                prop_assert!(2 * achieved.abs_diff(w) <= w);
            }
        }
    }

    #[test]
    fn our_image_patch_is_recognised_from_the_managed_fields() {
        let d = |manager: &str, operation: &str| -> Deployment {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "web", "managedFields": [{
                "manager": manager, "operation": operation, "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}}}]},
                "spec": {"selector": {}, "template": {}}}))
            .unwrap()
        };
        assert!(images_applied_by_us(&d("distroless-guard", "Apply")));
        assert!(!images_applied_by_us(&d("argocd-controller", "Apply")));
        assert!(!images_applied_by_us(&d("distroless-guard", "Update")));
    }

    #[test]
    fn our_replicas_are_recognised_until_another_manager_sets_them() {
        let d = |manager: &str| -> Deployment {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "web", "managedFields": [{
                "manager": manager, "operation": "Update", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
                "spec": {"selector": {}, "template": {}}}))
            .unwrap()
        };
        assert!(replicas_set_by_us(&d("distroless-guard")));
        assert!(!replicas_set_by_us(&d("kubectl")));
        assert!(!replicas_set_by_us(&d("kube-controller-manager")));
    }
}
