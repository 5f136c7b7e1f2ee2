//! The Pod Security Admission "restricted" controls that touch what
//! distroless-guard checks or mutates, written from the PSA documentation so
//! tests can ask "does this pod pass PSA's control X?". A test oracle, not
//! part of the product.

use serde_json::Value;

fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| spec.get(*list).and_then(Value::as_array).into_iter().flatten())
        .collect()
}

fn spec(pod: &Value) -> &Value {
    &pod["spec"]
}

fn windows(pod: &Value) -> bool {
    spec(pod).pointer("/os/name").and_then(Value::as_str) == Some("windows")
}

fn sc<'a>(v: &'a Value, field: &str) -> Option<&'a Value> {
    v.get("securityContext")
        .and_then(|s| s.get(field))
        .filter(|f| !f.is_null())
}

/// runAsNonRoot: true on the pod (and no container false), or on every container.
pub fn run_as_non_root(pod: &Value) -> bool {
    let s = spec(pod);
    let pod_level = sc(s, "runAsNonRoot").and_then(Value::as_bool);
    if pod_level == Some(false) {
        return false;
    }
    containers(s)
        .iter()
        .all(|c| match sc(c, "runAsNonRoot").and_then(Value::as_bool) {
            Some(v) => v,
            None => pod_level == Some(true),
        })
}

/// No runAsUser: 0 on the pod or any container.
pub fn run_as_user(pod: &Value) -> bool {
    let s = spec(pod);
    let zero = |v: &Value| sc(v, "runAsUser").and_then(Value::as_i64) == Some(0);
    !zero(s) && !containers(s).iter().any(|c| zero(c))
}

/// Every container sets allowPrivilegeEscalation: false.
pub fn allow_privilege_escalation(pod: &Value) -> bool {
    windows(pod)
        || containers(spec(pod))
            .iter()
            .all(|c| sc(c, "allowPrivilegeEscalation").and_then(Value::as_bool) == Some(false))
}

/// Every container drops ALL and adds nothing but NET_BIND_SERVICE.
pub fn capabilities_restricted(pod: &Value) -> bool {
    windows(pod)
        || containers(spec(pod)).iter().all(|c| {
            let caps = sc(c, "capabilities");
            let list = |k: &str| -> Vec<&str> {
                caps.and_then(|c| c.get(k))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect()
            };
            list("drop").contains(&"ALL") && list("add").iter().all(|a| *a == "NET_BIND_SERVICE")
        })
}

/// seccompProfile RuntimeDefault or Localhost on the pod or on every container, Unconfined nowhere.
pub fn seccomp_restricted(pod: &Value) -> bool {
    if windows(pod) {
        return true;
    }
    let s = spec(pod);
    let profile = |v: &Value| {
        sc(v, "seccompProfile")
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let ok = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let pod_level = profile(s);
    if pod_level.as_deref().is_some_and(|t| !ok(t)) {
        return false;
    }
    containers(s).iter().all(|c| match profile(c) {
        Some(t) => ok(&t),
        None => pod_level.is_some(),
    })
}

/// The control a PSA fixture file exercises, from its name.
pub fn control_for(file_name: &str) -> Option<Control> {
    let control: Control = match file_name {
        n if n.starts_with("runasnonroot") => run_as_non_root,
        n if n.starts_with("runasuser") => run_as_user,
        n if n.starts_with("allowprivilegeescalation") => allow_privilege_escalation,
        n if n.starts_with("capabilities_restricted") => capabilities_restricted,
        n if n.starts_with("seccompprofile_restricted") => seccomp_restricted,
        _ => return None,
    };
    Some(control)
}

/// A PSA control: does the pod pass it?
pub type Control = fn(&Value) -> bool;

/// Every control above.
pub const CONTROLS: [(&str, Control); 5] = [
    ("runAsNonRoot", run_as_non_root),
    ("runAsUser", run_as_user),
    ("allowPrivilegeEscalation", allow_privilege_escalation),
    ("capabilities", capabilities_restricted),
    ("seccompProfile", seccomp_restricted),
];
