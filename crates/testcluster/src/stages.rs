//! kwok Stages: how the fake kubelet moves Nodes and Pods through their
//! lives. kwok runs no containers; these rules write the status a kubelet
//! would.
//!
//! The defaults below carry weight 0. Failure stages made by [`Failure`]
//! carry weight 1, and kwok picks only among the positive weights when any
//! stage with one matches, so a failure stage always wins over the defaults
//! for the pods it selects, and the defaults apply again once it is deleted.
//!
//! Unlike kwok's stock `pod-ready`, ours honours readiness gates as the
//! kubelet does: `Ready` is true only when the containers are ready and every
//! gate's condition (written by someone else) is `True`; the gate conditions
//! themselves are never written here. Status is patched as a strategic merge,
//! so conditions merge by type and a gate condition set by a controller stays.

use serde_json::{Value, json};

/// `Ready` as the kubelet computes it: containers ready and every readiness gate True.
/// Expects `$containersReady` to be set; defines `$ready`.
const READY_FROM_GATES: &str = r#"{{ $ready := $containersReady }}
{{ $conditions := .status.conditions }}
{{ range $gate := .spec.readinessGates }}
{{ $ok := false }}
{{ range $conditions }}{{ if and (eq .type $gate.conditionType) (eq .status "True") }}{{ $ok = true }}{{ end }}{{ end }}
{{ if not $ok }}{{ $ready = false }}{{ end }}
{{ end }}"#;

/// The pod IP lines of a status (once: a pod keeps the IPs it was given).
const POD_IPS: &str = r#"{{ if not .status.podIP }}
{{ with NodeIPsWith .spec.nodeName }}
hostIP: {{ index . 0 | Quote }}
hostIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ with PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ end }}"#;

fn stage(name: &str, kind: &str, expressions: Value, next: Value, extra: Value) -> Value {
    let mut spec = json!({
        "resourceRef": {"apiGroup": "v1", "kind": kind},
        "selector": {"matchExpressions": expressions},
        "next": next,
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name}, "spec": spec})
}

fn expr(key: &str, operator: &str, values: &[&str]) -> Value {
    if values.is_empty() {
        json!({"key": key, "operator": operator})
    } else {
        json!({"key": key, "operator": operator, "values": values})
    }
}

fn status_patch(template: String) -> Value {
    json!({"patches": [{"subresource": "status", "root": "status", "type": "strategic", "template": template}]})
}

const NOT_DELETING: (&str, &str) = (".metadata.deletionTimestamp", "DoesNotExist");

/// The defaults: nodes become Ready and keep a heartbeat; pods become Running
/// (Ready per their gates); Job pods complete; deleted pods go away.
pub fn defaults() -> Vec<Value> {
    let node_conditions = r#"{{ $now := Now }}
{{ $since := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- type: {{ .type | Quote }}
  status: {{ .status | Quote }}
  reason: {{ .reason | Quote }}
  message: {{ .message | Quote }}
  lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $since | Quote }}
{{ end }}"#;
    let node_ready = format!(
        r#"{node_conditions}
addresses:
{{{{ with NodeIP }}}}
- type: InternalIP
  address: {{{{ . | Quote }}}}
{{{{ end }}}}
{{{{ with NodeName }}}}
- type: Hostname
  address: {{{{ . | Quote }}}}
{{{{ end }}}}
{{{{ with NodePort }}}}
daemonEndpoints:
  kubeletEndpoint:
    Port: {{{{ . }}}}
{{{{ end }}}}
allocatable: {{{{ with .status.allocatable }}}}{{{{ toJson . }}}}{{{{ else }}}}{{cpu: "1k", memory: 1Ti, pods: 1M}}{{{{ end }}}}
capacity: {{{{ with .status.capacity }}}}{{{{ toJson . }}}}{{{{ else }}}}{{cpu: "1k", memory: 1Ti, pods: 1M}}{{{{ end }}}}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: fake
  kubeProxyVersion: fake
  containerRuntimeVersion: fake
  kernelVersion: fake
  osImage: kwok
  bootID: ""
  machineID: ""
  systemUUID: ""
phase: Running"#
    );
    let pod_running = format!(
        r#"{{{{ $now := Now }}}}
{{{{ $containersReady := true }}}}
{READY_FROM_GATES}
phase: Running
startTime: {{{{ or .status.startTime $now | Quote }}}}
conditions:
- type: Initialized
  status: "True"
  lastTransitionTime: {{{{ $now | Quote }}}}
- type: ContainersReady
  status: "True"
  lastTransitionTime: {{{{ $now | Quote }}}}
- type: Ready
  status: {{{{ if $ready }}}}"True"{{{{ else }}}}"False"{{{{ end }}}}
  {{{{ if not $ready }}}}reason: ReadinessGatesNotReady{{{{ end }}}}
  lastTransitionTime: {{{{ $now | Quote }}}}
{{{{ $statuses := .status.containerStatuses }}}}
containerStatuses:
{{{{ range $i, $c := .spec.containers }}}}
{{{{ $restarts := 0 }}}}
{{{{ if $statuses }}}}{{{{ if lt $i (len $statuses) }}}}{{{{ $restarts = (index $statuses $i).restartCount | int }}}}{{{{ end }}}}{{{{ end }}}}
- name: {{{{ $c.name | Quote }}}}
  image: {{{{ $c.image | Quote }}}}
  imageID: ""
  ready: true
  started: true
  restartCount: {{{{ $restarts }}}}
  state:
    running:
      startedAt: {{{{ $now | Quote }}}}
{{{{ end }}}}
initContainerStatuses:
{{{{ range .spec.initContainers }}}}
- name: {{{{ .name | Quote }}}}
  image: {{{{ .image | Quote }}}}
  imageID: ""
  ready: {{{{ if eq (or .restartPolicy "") "Always" }}}}true{{{{ else }}}}false{{{{ end }}}}
  restartCount: 0
  state:
    {{{{ if eq (or .restartPolicy "") "Always" }}}}
    running:
      startedAt: {{{{ $now | Quote }}}}
    {{{{ else }}}}
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{{{ $now | Quote }}}}
      finishedAt: {{{{ $now | Quote }}}}
    {{{{ end }}}}
{{{{ end }}}}
{POD_IPS}"#
    );
    // Re-evaluates Ready for running pods whose gates changed (what the kubelet's
    // status manager does when a gate condition is written).
    let pod_gates = format!(
        r#"{{{{ $now := Now }}}}
{{{{ $containersReady := true }}}}
{READY_FROM_GATES}
conditions:
- type: Ready
  status: {{{{ if $ready }}}}"True"{{{{ else }}}}"False"{{{{ end }}}}
  reason: {{{{ if $ready }}}}""{{{{ else }}}}ReadinessGatesNotReady{{{{ end }}}}
  lastTransitionTime: {{{{ $now | Quote }}}}"#
    );
    // jq: "yes" when Ready disagrees with the containers and gates of a running, healthy pod.
    let gates_disagree = r#"(.spec.readinessGates // []) as $g
| ([.status.conditions[]? | select(.status == "True") | .type]) as $true
| ([$g[] | select(.conditionType as $t | $true | index([$t]) | not)] | length == 0) as $gates
| ([.status.conditions[]? | select(.type == "ContainersReady") | .status] == ["True"]) as $containers
| ([.status.conditions[]? | select(.type == "Ready") | .status] == ["True"]) as $ready
| if ($containers and ($gates != $ready)) then "yes" else "no" end"#;
    vec![
        stage(
            "node-initialize",
            "Node",
            json!([expr(
                r#".status.conditions.[] | select( .type == "Ready" ) | .status"#,
                "NotIn",
                &["True"]
            )]),
            status_patch(node_ready),
            json!({}),
        ),
        stage(
            "node-heartbeat",
            "Node",
            json!([
                expr(".status.phase", "In", &["Running"]),
                expr(
                    r#".status.conditions.[] | select( .type == "Ready" ) | .status"#,
                    "In",
                    &["True"]
                ),
            ]),
            status_patch(node_conditions.to_string()),
            json!({"delay": {"durationMilliseconds": 20000, "jitterDurationMilliseconds": 25000}}),
        ),
        stage(
            "pod-running",
            "Pod",
            json!([
                expr(NOT_DELETING.0, NOT_DELETING.1, &[]),
                expr(".status.phase", "In", &["Pending"]),
                expr(".spec.nodeName", "Exists", &[]),
            ]),
            status_patch(pod_running.clone()),
            json!({}),
        ),
        // A running pod whose containers are not ready (after a failure stage is
        // removed) recovers, keeping its restart counts.
        stage(
            "pod-recover",
            "Pod",
            json!([
                expr(NOT_DELETING.0, NOT_DELETING.1, &[]),
                expr(".status.phase", "In", &["Running"]),
                expr(
                    r#".status.conditions.[] | select( .type == "ContainersReady" ) | .status"#,
                    "In",
                    &["False"]
                ),
            ]),
            status_patch(pod_running),
            json!({}),
        ),
        stage(
            "pod-readiness-gates",
            "Pod",
            json!([
                expr(NOT_DELETING.0, NOT_DELETING.1, &[]),
                expr(".status.phase", "In", &["Running"]),
                expr(gates_disagree, "In", &["yes"]),
            ]),
            status_patch(pod_gates),
            json!({}),
        ),
        stage(
            "pod-complete",
            "Pod",
            json!([
                expr(NOT_DELETING.0, NOT_DELETING.1, &[]),
                expr(".status.phase", "In", &["Running"]),
                expr(".metadata.ownerReferences.[].kind", "In", &["Job"]),
            ]),
            status_patch(
                r#"{{ $now := Now }}
phase: Succeeded
conditions:
- type: Ready
  status: "False"
  reason: PodCompleted
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "False"
  reason: PodCompleted
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  imageID: ""
  ready: false
  started: false
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}"#
                    .to_string(),
            ),
            json!({"delay": {"durationMilliseconds": 1000}}),
        ),
        stage(
            "pod-delete",
            "Pod",
            json!([expr(".metadata.deletionTimestamp", "Exists", &[])]),
            json!({"delete": true}),
            json!({}),
        ),
    ]
}

/// Which pods a failure stage applies to.
#[derive(Clone, Debug)]
pub enum Target {
    /// Pods with a container running this exact image.
    Image(String),
    /// Pods with this label set to this value.
    Label(String, String),
}

impl Target {
    fn expression(&self) -> Value {
        match self {
            Target::Image(image) => expr(".spec.containers.[].image", "In", &[image]),
            Target::Label(k, v) => expr(&format!(".metadata.labels[\"{k}\"]"), "In", &[v]),
        }
    }
}

/// A failure a test injects into the pods it targets, as the kubelet would report it.
#[derive(Clone, Debug)]
pub enum Failure {
    /// The first container restarts every `every_ms` and waits in CrashLoopBackOff,
    /// its last termination carrying `exit_code` and `message`.
    CrashLoop {
        every_ms: u64,
        exit_code: i32,
        message: String,
    },
    /// The runtime cannot start the container's command (a shell in a
    /// distroless image): restarts every `every_ms`, its last termination
    /// `StartError`, exit code 128, with the runtime's `message`, as a real
    /// kubelet reports it ([`observed`]).
    StartError { every_ms: u64, message: String },
    /// Restarts as above but the container comes back Ready in between (a flapping pod).
    RestartsWhileReady { every_ms: u64 },
    /// The container never starts: `reason` is CreateContainerConfigError,
    /// CreateContainerError, RunContainerError, ErrImagePull, ImagePullBackOff or
    /// InvalidImageName, with the kubelet's `message`.
    Waiting { reason: String, message: String },
    /// Running but never Ready (a failing readiness probe).
    NotReady,
    /// The first container was OOM-killed (exit 137) and restarts.
    OomKilled { every_ms: u64 },
}

impl Failure {
    /// The Stage object for this failure on `target`, named `name`.
    pub fn stage(&self, name: &str, target: &Target) -> Value {
        let expressions = vec![
            expr(NOT_DELETING.0, NOT_DELETING.1, &[]),
            expr(".status.phase", "In", &["Pending", "Running"]),
            expr(".spec.nodeName", "Exists", &[]),
            target.expression(),
        ];
        let every = |ms: &u64| json!({"durationMilliseconds": ms});
        let (template, delay) = match self {
            Failure::CrashLoop {
                every_ms,
                exit_code,
                message,
            } => (restarting(*exit_code, "Error", message, false), every(every_ms)),
            Failure::StartError { every_ms, message } => {
                (restarting(128, "StartError", message, false), every(every_ms))
            }
            Failure::RestartsWhileReady { every_ms } => (restarting(1, "Error", "", true), every(every_ms)),
            Failure::OomKilled { every_ms } => (restarting(137, "OOMKilled", "", false), every(every_ms)),
            // These two hold their pods: the stage keeps matching, so it keeps
            // outweighing the defaults that would make the pod ready again. It
            // applies at once to a pod not yet held and then once per
            // HELD_PROBE, moving nothing but the probe time.
            Failure::Waiting { reason, message } => (waiting(reason, message), held_probe_delay()),
            Failure::NotReady => (not_ready(), held_probe_delay()),
        };
        let extra = json!({"weight": 1, "delay": delay});
        stage(name, "Pod", Value::Array(expressions), status_patch(template), extra)
    }
}

/// Failures as a real kubelet 1.37 with containerd 2 and runc reported them
/// on a real node (`tests/data/kubelet/`, recorded by the real-node tests), so
/// what kwok plays is what a cluster says.
pub mod observed {
    use super::Failure;
    use serde_json::Value;

    fn recording(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_default()
    }

    fn text(v: &Value) -> String {
        v.as_str().unwrap_or_default().to_string()
    }

    /// `command: [sh, -c, ...]` in a distroless image.
    pub fn shell_in_distroless(every_ms: u64) -> Failure {
        let r = recording(include_str!("../../../tests/data/kubelet/sh-c-in-distroless.json"));
        Failure::StartError {
            every_ms,
            message: text(&r["terminated"]["message"]),
        }
    }

    /// A root image under `runAsNonRoot: true`.
    pub fn root_image() -> Failure {
        let r = recording(include_str!(
            "../../../tests/data/kubelet/root-image-run-as-non-root.json"
        ));
        Failure::Waiting {
            reason: text(&r["waiting"]["reason"]),
            message: text(&r["waiting"]["message"]),
        }
    }
}

/// How often a held pod's probe time is written.
pub const HELD_PROBE: &str = "2s";

/// No delay for a pod whose containers are not yet held not-ready; [`HELD_PROBE`]
/// for one already held.
fn held_probe_delay() -> Value {
    let held = format!(
        r#"if ([.status.conditions[]? | select(.type == "ContainersReady") | .status] == ["False"]) then "{HELD_PROBE}" else "0s" end"#
    );
    json!({"durationFrom": {"jq": {"expression": held}}})
}

fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Each match adds one restart to the first container, as a crashing container does.
fn restarting(exit_code: i32, reason: &str, message: &str, ready: bool) -> String {
    let (state, ready_s) = if ready {
        ("running:\n      startedAt: {{ $now | Quote }}".to_string(), "True")
    } else {
        (
            "waiting:\n      reason: CrashLoopBackOff\n      message: \"back-off restarting failed container\""
                .to_string(),
            "False",
        )
    };
    let message = yaml_string(message);
    format!(
        r#"{{{{ $now := Now }}}}
{{{{ $restarts := 0 }}}}
{{{{ with .status.containerStatuses }}}}{{{{ $restarts = (index . 0).restartCount | int }}}}{{{{ end }}}}
{{{{ $containersReady := {ready} }}}}
{READY_FROM_GATES}
phase: Running
startTime: {{{{ or .status.startTime $now | Quote }}}}
conditions:
- type: Initialized
  status: "True"
  lastTransitionTime: {{{{ $now | Quote }}}}
- type: ContainersReady
  status: "{ready_s}"
  lastTransitionTime: {{{{ $now | Quote }}}}
- type: Ready
  status: {{{{ if $ready }}}}"True"{{{{ else }}}}"False"{{{{ end }}}}
  lastTransitionTime: {{{{ $now | Quote }}}}
containerStatuses:
{{{{ range $i, $c := .spec.containers }}}}
- name: {{{{ $c.name | Quote }}}}
  image: {{{{ $c.image | Quote }}}}
  imageID: ""
  {{{{ if eq $i 0 }}}}
  ready: {ready}
  started: {ready}
  restartCount: {{{{ add $restarts 1 }}}}
  lastState:
    terminated:
      exitCode: {exit_code}
      reason: {reason}
      message: {message}
      startedAt: {{{{ $now | Quote }}}}
      finishedAt: {{{{ $now | Quote }}}}
  state:
    {state}
  {{{{ else }}}}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{{{ $now | Quote }}}}
  {{{{ end }}}}
{{{{ end }}}}
{POD_IPS}"#
    )
}

/// Initialized, and neither the containers nor the pod ready, since `$since`:
/// when the containers stopped being ready, or now. Only `lastProbeTime`
/// moves: it is the probe a kubelet keeps running, written every
/// [`HELD_PROBE`] (see [`Failure::stage`]), so a pod whose stage was deleted
/// is seen by the defaults at its next probe.
const NOT_READY_CONDITIONS: &str = r#"{{ $since := Now }}
{{ range .status.conditions }}{{ if and (eq .type "ContainersReady") (eq .status "False") }}{{ $since = .lastTransitionTime }}{{ end }}{{ end }}
conditions:
- type: Initialized
  status: "True"
  lastTransitionTime: {{ $since | Quote }}
- type: ContainersReady
  status: "False"
  reason: ContainersNotReady
  lastTransitionTime: {{ $since | Quote }}
- type: Ready
  status: "False"
  reason: ContainersNotReady
  lastProbeTime: {{ Now | Quote }}
  lastTransitionTime: {{ $since | Quote }}"#;

fn waiting(reason: &str, message: &str) -> String {
    let reason = yaml_string(reason);
    let message = yaml_string(message);
    format!(
        r#"phase: Pending
{NOT_READY_CONDITIONS}
containerStatuses:
{{{{ range .spec.containers }}}}
- name: {{{{ .name | Quote }}}}
  image: {{{{ .image | Quote }}}}
  imageID: ""
  ready: false
  started: false
  restartCount: 0
  state:
    waiting:
      reason: {reason}
      message: {message}
{{{{ end }}}}
{POD_IPS}"#
    )
}

fn not_ready() -> String {
    format!(
        r#"{{{{ $now := Now }}}}
phase: Running
startTime: {{{{ or .status.startTime $now | Quote }}}}
{NOT_READY_CONDITIONS}
{{{{ $statuses := .status.containerStatuses }}}}
containerStatuses:
{{{{ range $i, $c := .spec.containers }}}}
{{{{ $restarts := 0 }}}}
{{{{ $started := $since }}}}
{{{{ if $statuses }}}}{{{{ if lt $i (len $statuses) }}}}{{{{ with index $statuses $i }}}}
{{{{ $restarts = .restartCount | int }}}}
{{{{ with .state.running }}}}{{{{ $started = .startedAt }}}}{{{{ end }}}}
{{{{ end }}}}{{{{ end }}}}{{{{ end }}}}
- name: {{{{ $c.name | Quote }}}}
  image: {{{{ $c.image | Quote }}}}
  imageID: ""
  ready: false
  started: true
  restartCount: {{{{ $restarts }}}}
  state:
    running:
      startedAt: {{{{ $started | Quote }}}}
{{{{ end }}}}
{POD_IPS}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_stages_outweigh_the_defaults_and_select_their_target() {
        let s = Failure::NotReady.stage("x", &Target::Image("reg/app:2".into()));
        assert_eq!(s["spec"]["weight"], 1);
        let exprs = s["spec"]["selector"]["matchExpressions"].as_array().unwrap();
        assert!(
            exprs
                .iter()
                .any(|e| e["key"] == ".spec.containers.[].image" && e["values"][0] == "reg/app:2")
        );
        for d in defaults() {
            assert!(d["spec"].get("weight").is_none(), "{}", d["metadata"]["name"]);
        }
    }

    #[test]
    fn the_observed_failures_carry_the_real_kubelets_reason_exit_code_and_message() {
        let stage = observed::shell_in_distroless(100).stage("x", &Target::Image("reg/app:2".into()));
        let patch = stage.to_string();
        assert!(
            patch.contains("StartError") && patch.contains("exitCode: 128"),
            "{patch}"
        );
        assert!(
            patch.contains(r#"error during container init: exec: \\\"sh\\\": executable file not found in $PATH"#),
            "{patch}"
        );
        let Failure::Waiting { reason, message } = observed::root_image() else {
            panic!("the root image is refused before the container starts");
        };
        assert_eq!(reason, "CreateContainerConfigError");
        assert!(
            message.starts_with("container has runAsNonRoot and image will run as root (pod: "),
            "{message}"
        );
    }

    #[test]
    fn held_failures_go_on_selecting_the_pods_they_hold() {
        // A held pod left unselected would be made ready again by `pod-recover`
        // or `pod-running`, then held again: a flapping endpoint.
        let waiting = Failure::Waiting {
            reason: "ErrImagePull".into(),
            message: "x".into(),
        };
        for f in [Failure::NotReady, waiting] {
            let s = f.stage("x", &Target::Image("reg/app:2".into()));
            let selector = s["spec"]["selector"].to_string();
            assert!(!selector.contains("ContainersReady"), "{selector}");
            assert!(!selector.contains("state.waiting"), "{selector}");
            let delay = s["spec"]["delay"]["durationFrom"]["jq"]["expression"].as_str().unwrap();
            assert!(delay.contains(HELD_PROBE), "{delay}");
        }
    }

    #[test]
    fn templates_balance_their_braces() {
        let mut all: Vec<Value> = defaults();
        let t = Target::Label("a".into(), "b".into());
        for f in [
            Failure::CrashLoop {
                every_ms: 1,
                exit_code: 2,
                message: "m \"q\"".into(),
            },
            Failure::RestartsWhileReady { every_ms: 1 },
            Failure::Waiting {
                reason: "ErrImagePull".into(),
                message: "x".into(),
            },
            Failure::NotReady,
            Failure::OomKilled { every_ms: 1 },
        ] {
            all.push(f.stage("f", &t));
        }
        for s in all {
            for p in s["spec"]["next"]["patches"].as_array().into_iter().flatten() {
                let t = p["template"].as_str().unwrap();
                assert_eq!(t.matches("{{").count(), t.matches("}}").count(), "{t}");
                assert!(!t.contains("{{{"), "{t}");
            }
        }
    }
}
