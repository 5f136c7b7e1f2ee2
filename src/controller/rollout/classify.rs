//! Is a canary failing, and why? Read from what Kubernetes already reports:
//! container waiting reasons, last terminations, restart counts, readiness
//! against a timeout, and the ReplicaSet's `FailedCreate`. Each failure gets
//! a hint for the distroless case.

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{FailurePolicy, FailureReason, RolloutFailure};

/// Waiting reasons that never fix themselves.
const FATAL_WAITING: &[&str] = &[
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "InvalidImageName",
];
/// Waiting reasons tolerated for `imagePullGraceSeconds`.
const PULL_WAITING: &[&str] = &["ErrImagePull", "ImagePullBackOff"];

fn condition_true(pod: &Pod, kind: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

/// Whether a pod's containers are all ready (its gates aside).
pub(crate) fn containers_ready(pod: &Pod) -> bool {
    condition_true(pod, "ContainersReady")
}

/// Whether a pod is Ready (containers and readiness gates).
pub(crate) fn ready(pod: &Pod) -> bool {
    condition_true(pod, "Ready")
}

/// When a pod was created, for its grace periods: the end of the second its
/// `creationTimestamp` names (the API server truncates it to the second, so
/// the pod may be up to a second younger; counting from the second's start
/// cut `readyTimeoutSeconds` short by up to a second, measured by the rollout
/// bench).
pub(crate) fn created(pod: &Pod) -> Option<Timestamp> {
    pod.metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| t.0.checked_add(jiff::SignedDuration::from_secs(1)).ok())
}

fn statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    pod.status.as_ref().into_iter().flat_map(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
    })
}

fn failure(
    pod: &Pod,
    c: &ContainerStatus,
    reason: FailureReason,
    exit_code: Option<i32>,
    message: String,
    now: Timestamp,
) -> RolloutFailure {
    let hint = hint(&reason, exit_code, &message);
    RolloutFailure {
        pod: pod.metadata.name.clone(),
        container: Some(c.name.clone()),
        reason,
        exit_code,
        message,
        hint,
        detected_at: Some(Time(now)),
    }
}

/// The first failure among the canary's pods and its ReplicaSet, if any.
pub(crate) fn classify(
    pods: &[Pod],
    rs: Option<&ReplicaSet>,
    policy: &FailurePolicy,
    now: Timestamp,
) -> Option<RolloutFailure> {
    for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        if let Some(f) = classify_pod(pod, policy, now) {
            return Some(f);
        }
    }
    let c = rs.and_then(super::canary::replica_failure)?;
    let message = c.message.clone().unwrap_or_default();
    // A refusal (Pod Security, a webhook's denial, quota) is final; an
    // unreachable webhook or an overloaded API server is not, and the
    // ReplicaSet controller retries: it fails only when it lasts the ready timeout.
    if transient_create_error(&message) {
        let since = c.last_transition_time.as_ref().map_or(now, |t| t.0);
        if now.duration_since(since).as_secs() < i64::from(policy.ready_timeout_seconds) {
            return None;
        }
    }
    Some(RolloutFailure {
        pod: None,
        container: None,
        reason: c.reason.as_deref().unwrap_or("FailedCreate").into(),
        exit_code: None,
        hint: hint(&FailureReason::FailedCreate, None, &message),
        message,
        detected_at: Some(Time(now)),
    })
}

/// Whether a pod creation error is the API server's or a webhook's
/// availability rather than a refusal of the pod.
pub(crate) fn transient_create_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    let refused = [
        "forbidden",
        "denied the request",
        "violates podsecurity",
        "exceeded quota",
        "is invalid",
    ];
    let unavailable = [
        "failed calling webhook",
        "internal error",
        "service unavailable",
        "timeout",
        "deadline exceeded",
        "connection refused",
        "too many requests",
        "the server is currently unable",
    ];
    !refused.iter().any(|r| m.contains(r)) && unavailable.iter().any(|u| m.contains(u))
}

/// One pod's failure, if it has one.
pub(crate) fn classify_pod(pod: &Pod, policy: &FailurePolicy, now: Timestamp) -> Option<RolloutFailure> {
    let age = created(pod).map(|t| now.duration_since(t).as_secs()).unwrap_or(0);
    for c in statuses(pod) {
        let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        let exit_code = last.map(|t| t.exit_code);
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.clone().unwrap_or_default();
            let mut message = w.message.clone().unwrap_or_default();
            if let Some(t) = last.and_then(|t| t.message.clone()).filter(|m| !m.is_empty()) {
                message = if message.is_empty() {
                    t
                } else {
                    format!("{message}; last exit: {t}")
                };
            }
            if reason == "CrashLoopBackOff"
                && let Some(t) = last.filter(|t| t.reason.as_deref() == Some("OOMKilled"))
            {
                // Back-off after an OOM kill: the kill is the cause.
                return Some(failure(
                    pod,
                    c,
                    FailureReason::OOMKilled,
                    Some(t.exit_code),
                    message,
                    now,
                ));
            }
            if FATAL_WAITING.contains(&reason.as_str()) {
                return Some(failure(pod, c, reason.as_str().into(), exit_code, message, now));
            }
            if PULL_WAITING.contains(&reason.as_str()) && age >= i64::from(policy.image_pull_grace_seconds) {
                return Some(failure(pod, c, reason.as_str().into(), None, message, now));
            }
        }
        let terminated_oom = c
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| t.reason.as_deref() == Some("OOMKilled"))
            .or(last.filter(|t| t.reason.as_deref() == Some("OOMKilled")));
        if let Some(t) = terminated_oom {
            return Some(failure(
                pod,
                c,
                FailureReason::OOMKilled,
                Some(t.exit_code),
                t.message.clone().unwrap_or_default(),
                now,
            ));
        }
        if c.restart_count > i32::try_from(policy.max_restarts).unwrap_or(i32::MAX) {
            let message = format!(
                "{} restarts (allowed: {}){}",
                c.restart_count,
                policy.max_restarts,
                last.map(|t| format!("; last exit code {}", t.exit_code))
                    .unwrap_or_default()
            );
            return Some(failure(pod, c, FailureReason::Restarts, exit_code, message, now));
        }
    }
    if !containers_ready(pod) && age >= i64::from(policy.ready_timeout_seconds) {
        // Never scheduled: a capacity problem, not the image's.
        let unschedulable = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled" && c.status == "False"));
        if let Some(c) = unschedulable {
            let reason = c.reason.as_deref().unwrap_or("Unschedulable").into();
            let message = format!(
                "not scheduled {age} s after the pod was created: {}",
                c.message.as_deref().unwrap_or("no node fits")
            );
            return Some(RolloutFailure {
                pod: pod.metadata.name.clone(),
                container: None,
                hint: hint(&FailureReason::Unschedulable, None, &message),
                reason,
                exit_code: None,
                message,
                detected_at: Some(Time(now)),
            });
        }
        let name = statuses(pod).find(|c| !c.ready).map(|c| c.name.clone());
        let message = format!(
            "containers not ready {age} s after the pod was created (readyTimeoutSeconds {})",
            policy.ready_timeout_seconds
        );
        return Some(RolloutFailure {
            pod: pod.metadata.name.clone(),
            container: name,
            reason: FailureReason::ReadyTimeout,
            exit_code: None,
            hint: hint(&FailureReason::ReadyTimeout, None, &message),
            message,
            detected_at: Some(Time(now)),
        });
    }
    None
}

/// What a failure most likely means for a distroless image, and the fix.
pub(crate) fn hint(reason: &FailureReason, exit_code: Option<i32>, message: &str) -> String {
    use FailureReason as R;
    // Failures the operator finds itself: their message is not the kubelet's.
    match reason {
        R::MetricGate => {
            return "the canary made a metric worse than the threshold allows: compare its logs and errors with the standard pods".into();
        }
        R::MetricUnavailable => {
            return "a gate that cannot be read cannot vouch for the canary: check the Prometheus address and the query (no sample and NaN count as unreadable)".into();
        }
        R::ProgressDeadlineExceeded => {
            return "the pods did not become ready in time though none failed outright: look for pods Pending (capacity, quota, a volume) or slow to start, then raise failure.progressDeadlineSeconds if the application needs longer".into();
        }
        R::GitOpsDeadlineExceeded => {
            return "the Git change that moves the Deployment to the distroless images did not arrive in time: merge and sync it, then `kubectl distroless rollout retry`".into();
        }
        _ => {}
    }
    let m = message.to_ascii_lowercase();
    let shell = ["\"sh\"", "\"bash\"", "/bin/sh", "/bin/bash", "\"ash\""]
        .iter()
        .any(|s| m.contains(s));
    if (m.contains("executable file not found") || m.contains("no such file or directory")) && shell {
        return "the command or args start a shell, and a distroless image has none: run the binary directly in exec form (command: [\"/app\", ...])".into();
    }
    if m.contains("executable file not found") || m.contains("no such file or directory") {
        return "a program the command names is not in the distroless image (only the application and its runtime are): call the binary by its path in the image, or copy the tool into the image".into();
    }
    if m.contains("image will run as root") {
        return "the image's user is root and runAsNonRoot is set: use the image's :nonroot tag (UID 65532), or set runAsUser: 65532".into();
    }
    if m.contains("non-numeric user") {
        return "the image's USER is a name (e.g. nonroot) the kubelet cannot check against runAsNonRoot: set runAsUser: 65532 (numeric) in the pod".into();
    }
    match (reason, exit_code) {
        (R::CrashLoopBackOff | R::Restarts, Some(127)) => {
            "exit 127 (command not found): the entrypoint or a script calls a program the distroless image does not have; run the binary directly".into()
        }
        (R::CrashLoopBackOff | R::Restarts, Some(126)) => {
            "exit 126 (cannot execute): the file is not executable for UID 65532, or it is a script without an interpreter in the image".into()
        }
        (R::CrashLoopBackOff | R::Restarts, _) => {
            "the container keeps exiting: compare `kubectl logs --previous` of a canary pod with the standard one; distroless lacks a shell, package manager and most tools, and runs as UID 65532 (files it writes need a writable volume)".into()
        }
        (R::OOMKilled, _) => "the container exceeded its memory limit: the canary's limits are the Deployment's; compare its usage with the standard image".into(),
        (R::Other(r), _) if r == "ErrImagePull" || r == "ImagePullBackOff" => {
            "the image cannot be pulled: check the distroless tag exists (e.g. :nonroot) and that the pods' imagePullSecrets reach its registry".into()
        }
        (R::Other(r), _) if r == "InvalidImageName" => "the distroless image reference is not valid: fix spec.containers[].image of the rollout".into(),
        (R::CreateContainerConfigError, _) => "the kubelet cannot create the container from this spec and image (user, volumes, secrets): see the message".into(),
        (R::ReadyTimeout, _) => {
            "the containers never became ready: an exec readiness probe cannot run without a shell (use httpGet, grpc or tcpSocket), or the application fails to start as UID 65532".into()
        }
        (R::Unschedulable, _) => {
            "no node has room for the canary's pods, which come on top of the Deployment's: free capacity, lower the step's weight, or check the pods' requests, node selectors and taints; the image is not at fault".into()
        }
        (R::FailedCreate, _) => "the API server refused the canary's pods (Pod Security Admission or an admission webhook): fix the pod template or the policy, as the message says".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value, age_s: i64, now: Timestamp) -> Pod {
        let created = (now - jiff::SignedDuration::from_secs(age_s)).to_string();
        serde_json::from_value(
            json!({"metadata": {"name": "canary-1", "creationTimestamp": created}, "status": status}),
        )
        .unwrap()
    }

    fn now() -> Timestamp {
        "2026-11-24T12:00:00Z".parse().unwrap()
    }

    fn waiting(reason: &str, message: &str) -> serde_json::Value {
        json!({"containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}}]})
    }

    #[test]
    fn fatal_waiting_reasons_fail_at_once_with_a_distroless_hint() {
        let p = pod(
            waiting(
                "CreateContainerConfigError",
                "container has runAsNonRoot and image will run as root",
            ),
            1,
            now(),
        );
        let f = classify_pod(&p, &FailurePolicy::default(), now()).unwrap();
        assert_eq!(f.reason, "CreateContainerConfigError");
        assert!(f.hint.contains(":nonroot"), "{}", f.hint);
        let p = pod(
            json!({"containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                "lastState": {"terminated": {"exitCode": 127, "reason": "Error", "message": "exec: \"sh\": executable file not found in $PATH"}},
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}}]}),
            1,
            now(),
        );
        let f = classify_pod(&p, &FailurePolicy::default(), now()).unwrap();
        assert_eq!((f.reason.as_str(), f.exit_code), ("CrashLoopBackOff", Some(127)));
        assert!(f.hint.contains("shell"), "{}", f.hint);
    }

    /// What a real kubelet 1.37 with containerd 2 reported (recorded by the
    /// real-node tests in tests/cluster/real_node.rs).
    fn observed(name: &str) -> serde_json::Value {
        let text = match name {
            "sh-c" => include_str!("../../../tests/data/kubelet/sh-c-in-distroless.json"),
            "root" => include_str!("../../../tests/data/kubelet/root-image-run-as-non-root.json"),
            "exec-probe" => include_str!("../../../tests/data/kubelet/exec-probe-in-distroless.json"),
            _ => unreachable!("no recording {name}"),
        };
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_real_kubelets_report_of_sh_c_in_a_distroless_image_fails_at_once_with_the_shell_hint() {
        let last = &observed("sh-c")["terminated"];
        // The kubelet reports RunContainerError first, then CrashLoopBackOff.
        for waiting in ["RunContainerError", "CrashLoopBackOff"] {
            let p = pod(
                json!({"containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 1, "lastState": {"terminated": last},
                    "state": {"waiting": {"reason": waiting, "message": last["message"]}}}]}),
                1,
                now(),
            );
            let f = classify_pod(&p, &FailurePolicy::default(), now()).unwrap();
            assert_eq!((f.reason.as_str(), f.exit_code), (waiting, Some(128)));
            assert!(f.hint.contains("shell"), "{waiting}: {}", f.hint);
        }
    }

    #[test]
    fn the_real_kubelets_refusal_of_a_root_image_fails_at_once_with_the_nonroot_hint() {
        let state = observed("root");
        let p = pod(
            json!({"containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": state}]}),
            1,
            now(),
        );
        let f = classify_pod(&p, &FailurePolicy::default(), now()).unwrap();
        assert_eq!(f.reason, "CreateContainerConfigError");
        assert!(f.hint.contains(":nonroot"), "{}", f.hint);
    }

    #[test]
    fn the_real_kubelets_errored_exec_probes_fail_only_as_a_ready_timeout_with_the_probe_hint() {
        let o = observed("exec-probe");
        // An errored liveness probe restarts nothing: the pod runs, unready.
        assert_eq!(
            (o["restartCount"].clone(), o["ready"].clone()),
            (json!(0), json!(false))
        );
        let policy = FailurePolicy::default();
        let running = |age| {
            pod(
                json!({"conditions": [{"type": "ContainersReady", "status": "False"}],
                    "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": o["ready"],
                        "restartCount": o["restartCount"], "state": {"running": {}}}]}),
                age,
                now(),
            )
        };
        assert!(classify_pod(&running(5), &policy, now()).is_none());
        // Created in the second the timeout's count starts from: it may be
        // up to a second younger than its whole-second creationTimestamp says,
        // so it still has its grace.
        let exact = i64::from(policy.ready_timeout_seconds);
        assert!(classify_pod(&running(exact), &policy, now()).is_none());
        let late = i64::from(policy.ready_timeout_seconds) + 1;
        let f = classify_pod(&running(late), &policy, now()).unwrap();
        assert_eq!(f.reason, "ReadyTimeout");
        assert!(f.hint.contains("exec readiness probe"), "{}", f.hint);
    }

    #[test]
    fn a_canary_pod_no_node_can_take_fails_as_unschedulable_with_a_capacity_hint() {
        let policy = FailurePolicy::default();
        let pending = |age| {
            pod(
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                    "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient cpu."}]}),
                age,
                now(),
            )
        };
        assert!(
            classify_pod(&pending(5), &policy, now()).is_none(),
            "a scheduler retry is not a failure yet"
        );
        let f = classify_pod(&pending(i64::from(policy.ready_timeout_seconds) + 1), &policy, now()).unwrap();
        assert_eq!(f.reason, "Unschedulable");
        assert!(f.message.contains("Insufficient cpu"), "{}", f.message);
        assert!(f.hint.contains("capacity") && !f.hint.contains("exec"), "{}", f.hint);
    }

    #[test]
    fn image_pulls_get_their_grace_and_readiness_its_timeout() {
        let policy = FailurePolicy {
            image_pull_grace_seconds: 30,
            ready_timeout_seconds: 120,
            max_restarts: 0,
            ..FailurePolicy::default()
        };
        let pulling = |age| pod(waiting("ImagePullBackOff", "Back-off pulling image"), age, now());
        assert!(classify_pod(&pulling(10), &policy, now()).is_none());
        assert_eq!(
            classify_pod(&pulling(31), &policy, now()).unwrap().reason,
            "ImagePullBackOff"
        );
        let not_ready = |age| {
            pod(
                json!({"conditions": [{"type": "ContainersReady", "status": "False"}],
                       "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": {"running": {}}}]}),
                age,
                now(),
            )
        };
        assert!(classify_pod(&not_ready(60), &policy, now()).is_none());
        let f = classify_pod(&not_ready(121), &policy, now()).unwrap();
        assert_eq!(
            (f.reason.as_str(), f.container.as_deref()),
            ("ReadyTimeout", Some("app"))
        );
    }

    #[test]
    fn restarts_above_the_allowance_fail_even_when_ready_again() {
        let p = pod(
            json!({"conditions": [{"type": "ContainersReady", "status": "True"}],
                   "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": true, "restartCount": 2,
                   "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}, "state": {"running": {}}}]}),
            5,
            now(),
        );
        let lenient = FailurePolicy {
            max_restarts: 2,
            ..FailurePolicy::default()
        };
        assert!(classify_pod(&p, &lenient, now()).is_none());
        let f = classify_pod(&p, &FailurePolicy::default(), now()).unwrap();
        assert_eq!((f.reason.as_str(), f.exit_code), ("Restarts", Some(1)));
    }

    #[test]
    fn oom_kills_and_failed_creates_are_failures() {
        let p = pod(
            json!({"containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                   "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}, "state": {"running": {}}}]}),
            5,
            now(),
        );
        assert_eq!(
            classify_pod(&p, &FailurePolicy::default(), now()).unwrap().reason,
            "OOMKilled"
        );
        let rs: ReplicaSet = serde_json::from_value(
            json!({"metadata": {"name": "c"}, "status": {"replicas": 0, "conditions": [
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
             "message": "pods \"c-x\" is forbidden: violates PodSecurity \"restricted:latest\""}]}}),
        )
        .unwrap();
        let f = classify(&[], Some(&rs), &FailurePolicy::default(), now()).unwrap();
        assert_eq!(f.reason, "FailedCreate");
        assert!(
            f.message.contains("PodSecurity") && f.hint.contains("Pod Security"),
            "{f:?}"
        );
        assert!(classify(&[], None, &FailurePolicy::default(), now()).is_none());
        let backoff = pod(
            json!({"containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                   "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                   "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}}]}),
            5,
            now(),
        );
        let f = classify_pod(&backoff, &FailurePolicy::default(), now()).unwrap();
        assert_eq!(
            (f.reason.as_str(), f.exit_code),
            ("OOMKilled", Some(137)),
            "the kill, not the back-off"
        );
    }

    #[test]
    fn failures_the_operator_finds_itself_get_their_own_hint_whatever_the_message_says() {
        let shell = "exec: \"sh\": executable file not found in $PATH";
        for (reason, words) in [
            (FailureReason::MetricGate, "metric worse than the threshold"),
            (FailureReason::MetricUnavailable, "Prometheus address and the query"),
            (
                FailureReason::ProgressDeadlineExceeded,
                "failure.progressDeadlineSeconds",
            ),
            (FailureReason::GitOpsDeadlineExceeded, "rollout retry"),
        ] {
            let h = hint(&reason, None, shell);
            assert!(h.contains(words), "{reason:?}: {h}");
        }
    }

    #[test]
    fn each_kubelet_failure_gets_the_hint_for_its_reason_exit_code_and_message() {
        use FailureReason as R;
        let other = |r: &str| R::Other(r.into());
        for (reason, exit_code, message, words) in [
            (
                R::CrashLoopBackOff,
                None,
                "exec: \"/bin/bash\": no such file or directory",
                "start a shell",
            ),
            (
                R::CrashLoopBackOff,
                None,
                "exec: \"curl\": executable file not found",
                "not in the distroless image",
            ),
            (
                R::CrashLoopBackOff,
                None,
                "open /etc/app.conf: no such file or directory",
                "not in the distroless image",
            ),
            (
                R::CreateContainerConfigError,
                None,
                "container has runAsNonRoot and image will run as root",
                ":nonroot tag",
            ),
            (
                R::CreateContainerConfigError,
                None,
                "image has non-numeric user (nonroot)",
                "runAsUser: 65532 (numeric)",
            ),
            (R::CrashLoopBackOff, Some(127), "", "exit 127"),
            (R::Restarts, Some(127), "", "exit 127"),
            (R::CrashLoopBackOff, Some(126), "", "exit 126"),
            (R::Restarts, Some(126), "", "exit 126"),
            (R::CrashLoopBackOff, Some(1), "", "keeps exiting"),
            (R::Restarts, None, "", "keeps exiting"),
            (R::OOMKilled, Some(137), "", "memory limit"),
            (other("ErrImagePull"), None, "", "cannot be pulled"),
            (other("ImagePullBackOff"), None, "", "cannot be pulled"),
            (other("InvalidImageName"), None, "", "not valid"),
            (
                R::CreateContainerConfigError,
                None,
                "secret \"db\" not found",
                "cannot create the container",
            ),
            (R::ReadyTimeout, None, "", "exec readiness probe"),
            (R::Unschedulable, None, "", "no node has room"),
            (R::FailedCreate, None, "", "refused the canary's pods"),
            (other("RunContainerError"), None, "", ""),
        ] {
            let h = hint(&reason, exit_code, message);
            if words.is_empty() {
                assert_eq!(h, "", "{reason:?}");
            } else {
                assert!(h.contains(words), "{reason:?} {exit_code:?} {message:?}: {h}");
            }
        }
    }

    #[test]
    fn an_oom_kill_in_the_current_state_is_a_failure_and_another_exit_is_not() {
        let terminated = |reason: &str, code: i32| {
            pod(
                json!({"containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                       "state": {"terminated": {"exitCode": code, "reason": reason}}}]}),
                5,
                now(),
            )
        };
        let f = classify_pod(&terminated("OOMKilled", 137), &FailurePolicy::default(), now()).unwrap();
        assert_eq!((f.reason.as_str(), f.exit_code), ("OOMKilled", Some(137)));
        assert!(classify_pod(&terminated("Completed", 0), &FailurePolicy::default(), now()).is_none());
        assert!(classify_pod(&terminated("Error", 1), &FailurePolicy::default(), now()).is_none());
    }

    #[test]
    fn an_unreachable_webhook_is_tolerated_for_the_ready_timeout_a_refusal_is_not() {
        let rs = |message: &str, age_s: i64| -> ReplicaSet { replica_failure("True", message, age_s) };
        let policy = FailurePolicy {
            ready_timeout_seconds: 60,
            ..FailurePolicy::default()
        };
        let down =
            "Internal error occurred: failed calling webhook \"mutate.distrolessguard.dev\": 503 Service Unavailable";
        assert!(classify(&[], Some(&rs(down, 5)), &policy, now()).is_none());
        assert!(classify(&[], Some(&rs(down, 59)), &policy, now()).is_none());
        assert_eq!(
            classify(&[], Some(&rs(down, 60)), &policy, now()).unwrap().reason,
            "FailedCreate",
            "the ready timeout is reached"
        );
        let denied = "admission webhook \"validate.distrolessguard.dev\" denied the request: [root-uid]";
        assert!(classify(&[], Some(&rs(denied, 0)), &policy, now()).is_some());
    }

    fn replica_failure(status: &str, message: &str, age_s: i64) -> ReplicaSet {
        let since = (now() - jiff::SignedDuration::from_secs(age_s)).to_string();
        serde_json::from_value(
            json!({"metadata": {"name": "c"}, "status": {"replicas": 0, "conditions": [
            {"type": "ReplicaFailure", "status": status, "reason": "FailedCreate", "message": message,
             "lastTransitionTime": since}]}}),
        )
        .unwrap()
    }

    #[test]
    fn a_create_error_is_transient_only_when_it_names_unavailability_and_no_refusal() {
        for transient in [
            "Internal error occurred: failed calling webhook \"mutate.distrolessguard.dev\": context deadline exceeded",
            "the server is currently unable to handle the request",
            "Too Many Requests",
        ] {
            assert!(transient_create_error(transient), "{transient}");
        }
        for not in [
            // A refusal that also names a timeout is a refusal.
            "admission webhook \"validate.distrolessguard.dev\" denied the request: [exec-probe] timeoutSeconds",
            "pods \"web-1\" is forbidden: violates PodSecurity \"restricted:latest\"",
            // Neither: not known to pass, so not waited out.
            "pods \"web-1\" already exists",
            "",
        ] {
            assert!(!transient_create_error(not), "{not}");
        }
    }

    #[test]
    fn a_replica_failure_condition_that_is_not_true_is_no_failure() {
        let denied = "admission webhook \"validate.distrolessguard.dev\" denied the request: [root-uid]";
        let policy = FailurePolicy::default();
        assert!(classify(&[], Some(&replica_failure("False", denied, 0)), &policy, now()).is_none());
        assert!(classify(&[], Some(&replica_failure("True", denied, 0)), &policy, now()).is_some());
    }
}
