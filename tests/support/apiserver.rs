//! An in-memory Kubernetes API server. **A test double**, not Kubernetes: no
//! Kubernetes API server can be installed on the development machines, so the
//! controller tests talk to this one through the real `kube::Client`.
//!
//! What it does: discovery (`/version`, `/api`, `/apis`, group versions), get,
//! list (label and field selectors, `resourceVersion`), watch streams (replay
//! from a resourceVersion, `410 Gone` when it is too old), create (with
//! `generateName`), replace with optimistic concurrency (409 on a stale
//! `resourceVersion`), merge, strategic-merge (treated as merge), JSON and
//! apply patches (server-side apply is approximated as a merge that may
//! create, without field ownership), delete, the `status` subresource,
//! `generation` bumps on spec changes, CRDs registered on create (their custom
//! resources checked against the CRD's OpenAPI schema for types, enums and
//! required fields; CEL rules are not evaluated), and fault injection (fail
//! requests, drop watches, delay responses).
//!
//! What it does not: authentication, authorization, admission, defaulting,
//! namespace lifecycle, garbage collection, field ownership.

#![allow(clippy::result_large_err)] // handlers answer errors as HTTP responses

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

/// A kind of resource the double serves.
#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    pub status: bool,
    pub short_names: Vec<String>,
    /// The CRD's OpenAPI schema for this version, when it is a custom resource.
    pub schema: Option<Value>,
}

const BUILTIN: &[(&str, &str, &str, &str, bool, bool)] = &[
    ("", "v1", "namespaces", "Namespace", false, true),
    ("", "v1", "pods", "Pod", true, true),
    ("", "v1", "secrets", "Secret", true, false),
    ("", "v1", "configmaps", "ConfigMap", true, false),
    ("", "v1", "events", "Event", true, false),
    ("", "v1", "services", "Service", true, true),
    ("", "v1", "serviceaccounts", "ServiceAccount", true, false),
    ("", "v1", "replicationcontrollers", "ReplicationController", true, true),
    ("apps", "v1", "deployments", "Deployment", true, true),
    ("apps", "v1", "statefulsets", "StatefulSet", true, true),
    ("apps", "v1", "daemonsets", "DaemonSet", true, true),
    ("apps", "v1", "replicasets", "ReplicaSet", true, true),
    ("batch", "v1", "jobs", "Job", true, true),
    ("batch", "v1", "cronjobs", "CronJob", true, true),
    ("coordination.k8s.io", "v1", "leases", "Lease", true, false),
    ("events.k8s.io", "v1", "events", "Event", true, false),
    (
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        true,
    ),
    (
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        false,
    ),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", true, false),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        false,
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        false,
        false,
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        true,
    ),
];

/// (group, plural, namespace, name)
type Key = (String, String, String, String);

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: &'static str,
    group: String,
    plural: String,
    namespace: String,
    object: Value,
}

#[derive(Clone, Debug)]
enum Broadcast {
    Change(Change),
    DropWatches,
}

#[derive(Default)]
struct Faults {
    /// (path fragment, status, remaining count)
    fail: Vec<(String, u16, usize)>,
    delay: Duration,
}

struct Store {
    rv: u64,
    types: Vec<ResourceType>,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    uid: u64,
}

/// How many changes are kept for watch replay; older resourceVersions get 410 Gone.
const LOG_LIMIT: usize = 20_000;

pub struct Inner {
    store: Mutex<Store>,
    changes: broadcast::Sender<Broadcast>,
    faults: Mutex<Faults>,
    /// Every request seen, as `METHOD path?query` (for tests that count writes).
    pub requests: Mutex<Vec<String>>,
    /// Every request seen with the client's User-Agent (kubectl sends one; kube-rs does not).
    pub calls: Mutex<Vec<Call>>,
    /// Where webhook Services are reachable: (namespace, name) -> address.
    services: Mutex<BTreeMap<(String, String), SocketAddr>>,
}

/// One request as the double saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub agent: String,
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
}

/// A running in-memory API server (test double) on 127.0.0.1.
pub struct ApiServer {
    pub addr: SocketAddr,
    pub inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

impl ApiServer {
    /// Starts on a free port on 127.0.0.1 (or `port`, when given).
    pub async fn start_on(port: u16) -> Self {
        let types = BUILTIN
            .iter()
            .map(|&(group, version, plural, kind, namespaced, status)| ResourceType {
                group: group.into(),
                version: version.into(),
                plural: plural.into(),
                kind: kind.into(),
                namespaced,
                status,
                short_names: Vec::new(),
                schema: None,
            })
            .collect();
        let (changes, _) = broadcast::channel(65536);
        let inner = Arc::new(Inner {
            store: Mutex::new(Store {
                rv: 1,
                types,
                objects: BTreeMap::new(),
                log: Vec::new(),
                uid: 0,
            }),
            changes,
            faults: Mutex::new(Faults::default()),
            requests: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            services: Mutex::new(BTreeMap::new()),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ApiServer { addr, inner, task }
    }

    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server (for `kubectl` and `kube::Config`).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: double\n    namespace: default\ncurrent-context: double\nusers:\n- name: double\n  user:\n    token: test-double\n",
            self.url()
        )
    }

    /// A real `kube::Client` for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Registers a CRD as if created through the API (e.g. from `crds/`).
    pub fn install_crd(&self, crd: Value) -> Result<(), String> {
        let mut store = lock(&self.inner.store);
        register_crd(&mut store, &crd)?;
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let key = (
            "apiextensions.k8s.io".to_string(),
            "customresourcedefinitions".to_string(),
            String::new(),
            name,
        );
        let mut crd = crd;
        store.rv += 1;
        let rv = store.rv;
        stamp_new(&mut crd, rv, &mut store.uid, "");
        store.objects.insert(key, crd);
        Ok(())
    }

    /// The next `count` requests whose path contains `fragment` fail with `code`.
    pub fn fail_requests(&self, fragment: &str, code: u16, count: usize) {
        lock(&self.inner.faults).fail.push((fragment.to_string(), code, count));
    }

    /// Makes the Service `namespace/name` reachable at `addr` for webhook calls
    /// (the double has no cluster DNS). Pod creates are then sent to the
    /// registered admission webhooks whose Service is routed.
    pub fn route_service(&self, namespace: &str, name: &str, addr: SocketAddr) {
        lock(&self.inner.services).insert((namespace.to_string(), name.to_string()), addr);
    }

    /// Ends every open watch stream (clients must re-watch).
    pub fn drop_watches(&self) {
        let _ = self.inner.changes.send(Broadcast::DropWatches);
    }

    /// Delays every response.
    pub fn delay(&self, by: Duration) {
        lock(&self.inner.faults).delay = by;
    }

    /// The stored object, if any (`namespace` empty for cluster-scoped).
    pub fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = lock(&self.inner.store);
        store
            .objects
            .get(&(group.into(), plural.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// Every stored object of a type.
    pub fn list(&self, group: &str, plural: &str) -> Vec<Value> {
        let store = lock(&self.inner.store);
        store
            .objects
            .iter()
            .filter(|((g, p, _, _), _)| g == group && p == plural)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every request seen so far, with its User-Agent.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.inner.calls).clone()
    }

    /// Requests seen so far that match a method and a path fragment.
    pub fn count_requests(&self, method: &str, fragment: &str) -> usize {
        lock(&self.inner.requests)
            .iter()
            .filter(|r| r.starts_with(method) && r.contains(fragment))
            .count()
    }
}

fn register_crd(store: &mut Store, crd: &Value) -> Result<(), String> {
    let spec = crd.get("spec").ok_or("a CRD needs spec")?;
    let group = spec
        .get("group")
        .and_then(Value::as_str)
        .ok_or("a CRD needs spec.group")?;
    let names = spec.get("names").ok_or("a CRD needs spec.names")?;
    let plural = names
        .get("plural")
        .and_then(Value::as_str)
        .ok_or("a CRD needs spec.names.plural")?;
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("a CRD needs spec.names.kind")?;
    let namespaced = match spec.get("scope").and_then(Value::as_str) {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => return Err(format!("spec.scope must be Namespaced or Cluster, not {other:?}")),
    };
    let short_names: Vec<String> = names
        .get("shortNames")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .ok_or("a CRD needs spec.versions")?;
    store.types.retain(|t| !(t.group == group && t.plural == plural));
    for v in versions {
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a CRD version needs a name")?;
        let schema = v.pointer("/schema/openAPIV3Schema").cloned();
        if schema.as_ref().is_none_or(|s| s.get("type").is_none()) {
            return Err(format!(
                "version {name}: schema.openAPIV3Schema must have a type (structural schema)"
            ));
        }
        store.types.push(ResourceType {
            group: group.into(),
            version: name.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status: v.pointer("/subresources/status").is_some(),
            short_names: short_names.clone(),
            schema,
        });
    }
    Ok(())
}

/// Checks a value against an OpenAPI v3 schema: types, enums, required fields,
/// unknown fields of objects without `additionalProperties` or
/// `x-kubernetes-preserve-unknown-fields` are pruned as the API server does.
fn validate(schema: &Value, value: &mut Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            errors.push(format!("{path}: must not be null"));
        }
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let ok = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !ok {
        errors.push(format!("{path}: must be of type {ty}"));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: Unsupported value: {value}"));
    }
    match value {
        Value::Object(map) => {
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(req) {
                    errors.push(format!("{path}.{req}: Required value"));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let preserve = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let child = format!("{path}.{k}");
                if let Some(s) = props.and_then(|p| p.get(&k)) {
                    if let Some(v) = map.get_mut(&k) {
                        validate(s, v, &child, errors);
                    }
                } else if let Some(s) = additional.filter(|a| a.is_object()) {
                    if let Some(v) = map.get_mut(&k) {
                        validate(s, v, &child, errors);
                    }
                } else if !(preserve || path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata")) {
                    map.remove(&k);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter_mut().enumerate() {
                    validate(s, v, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn stamp_new(obj: &mut Value, rv: u64, uid: &mut u64, namespace: &str) {
    *uid += 1;
    let meta = obj
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})));
    if let Some(Value::Object(meta)) = meta {
        if !namespace.is_empty() {
            meta.insert("namespace".into(), json!(namespace));
        }
        meta.insert("uid".into(), json!(format!("00000000-0000-4000-8000-{:012}", *uid)));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
    }
}

fn name_of(obj: &Value) -> String {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn rv_of(obj: &Value) -> Option<String> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The object without metadata and status: what bumps `generation` when it changes.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// Label selector matching for `labelSelector=` (equality and set-based forms).
fn selector_matches(selector: &str, labels: &Map<String, Value>) -> bool {
    let mut reqs = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                reqs.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    reqs.push(&selector[start..]);
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    reqs.iter().map(|r| r.trim()).filter(|r| !r.is_empty()).all(|r| {
        let set = |rest: &str| -> Vec<String> {
            rest.trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .split(',')
                .map(|s| s.trim().to_string())
                .collect()
        };
        if let Some((k, v)) = r.split_once("!=") {
            get(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
            get(k.trim()) == Some(v.trim())
        } else if let Some((k, rest)) = r.split_once(" notin ") {
            get(k.trim()).is_none_or(|v| !set(rest).iter().any(|s| s == v))
        } else if let Some((k, rest)) = r.split_once(" in ") {
            get(k.trim()).is_some_and(|v| set(rest).iter().any(|s| s == v))
        } else if let Some(k) = r.strip_prefix('!') {
            get(k.trim()).is_none()
        } else {
            get(r).is_some()
        }
    })
}

fn field_matches(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|req| {
        let (path, want, negate) = match req.split_once("!=") {
            Some((p, v)) => (p, v, true),
            None => match req.split_once("==").or_else(|| req.split_once('=')) {
                Some((p, v)) => (p, v, false),
                None => return true,
            },
        };
        let pointer = format!("/{}", path.trim().replace('.', "/"));
        let have = obj.pointer(&pointer).and_then(Value::as_str).unwrap_or_default();
        (have == want.trim()) != negate
    })
}

/// The path of a resource request, parsed.
struct Target {
    rt: ResourceType,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
}

fn discovery(store: &Store, segments: &[&str]) -> Option<Value> {
    let list_for = |group: &str, version: &str| {
        let resources: Vec<Value> = store
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .flat_map(|t| {
                let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
                let mut out = vec![
                    json!({"name": t.plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced,
                    "kind": t.kind, "verbs": verbs, "shortNames": t.short_names}),
                ];
                if t.status {
                    out.push(
                        json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                        "kind": t.kind, "verbs": ["get", "patch", "update"]}),
                    );
                }
                out
            })
            .collect();
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version(group, version), "resources": resources})
    };
    match segments {
        ["version"] => Some(json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0-inmemory-double",
            "platform": "linux/amd64", "goVersion": "none", "compiler": "none", "buildDate": "2026-11-01T00:00:00Z",
            "gitCommit": "0000000", "gitTreeState": "clean"})),
        ["api"] => Some(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
        ["api", "v1"] => Some(list_for("", "v1")),
        ["apis"] => {
            let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for t in store.types.iter().filter(|t| !t.group.is_empty()) {
                let versions = groups.entry(t.group.as_str()).or_default();
                if !versions.contains(&t.version.as_str()) {
                    versions.push(t.version.as_str());
                }
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(g, vs)| {
                    let versions: Vec<Value> =
                        vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
                    json!({"name": g, "versions": versions.clone(), "preferredVersion": versions[0]})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["apis", group] => store.types.iter().find(|t| t.group == *group).map(|t| {
            let v = json!({"groupVersion": format!("{group}/{}", t.version), "version": t.version});
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [v.clone()], "preferredVersion": v})
        }),
        ["apis", group, version] => {
            store.types.iter().any(|t| t.group == *group && t.version == *version).then(|| list_for(group, version))
        }
        _ => None,
    }
}

fn target(store: &Store, segments: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segments {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let find = |plural: &str| {
        store
            .types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    };
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 2 && find(plural).is_some_and(|t| t.namespaced) => (
            ns.to_string(),
            *plural,
            tail.first().map(|s| s.to_string()),
            tail.get(1).map(|s| s.to_string()),
        ),
        [plural, tail @ ..] if tail.len() <= 2 => (
            String::new(),
            *plural,
            tail.first().map(|s| s.to_string()),
            tail.get(1).map(|s| s.to_string()),
        ),
        _ => return None,
    };
    let rt = find(plural)?.clone();
    Some(Target {
        rt,
        namespace,
        name,
        sub,
    })
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = parse_query(uri.query().unwrap_or_default());
    lock(&inner.requests).push(format!("{method} {}", uri));
    lock(&inner.calls).push(Call {
        agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
    });
    let (fail, delay) = {
        let mut faults = lock(&inner.faults);
        let mut fail = None;
        for f in faults.fail.iter_mut() {
            if f.2 > 0 && path.contains(&f.0) {
                f.2 -= 1;
                fail = Some(f.1);
                break;
            }
        }
        faults.fail.retain(|f| f.2 > 0);
        (fail, faults.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = fail {
        return status(code, "InternalError", format!("injected failure for {path}"));
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if method == Method::GET
        && let Some(doc) = discovery(&lock(&inner.store), &segments)
    {
        return axum::Json(doc).into_response();
    }
    if segments.first() == Some(&"openapi") {
        return status(
            404,
            "NotFound",
            "the in-memory API server serves no OpenAPI documents".into(),
        );
    }
    let Some(t) = target(&lock(&inner.store), &segments) else {
        return status(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        );
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    match (method, t.name.is_some()) {
        (Method::GET, false) if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) => {
            watch(inner, t, &query)
        }
        (Method::GET, false) => list(&inner, &t, &query),
        (Method::GET, true) => get(&inner, &t),
        (Method::POST, false) => match parse_body(&body, &content_type) {
            Ok(obj) if t.rt.group.is_empty() && t.rt.plural == "pods" => match admit(&inner, &t, obj).await {
                Ok((obj, warnings)) => {
                    let mut response = create(&inner, &t, obj);
                    for w in warnings {
                        if let Ok(v) = header::HeaderValue::from_str(&format!("299 - {:?}", w)) {
                            response.headers_mut().append(header::WARNING, v);
                        }
                    }
                    response
                }
                Err(r) => r,
            },
            Ok(obj) => create(&inner, &t, obj),
            Err(r) => r,
        },
        (Method::PUT, true) => match parse_body(&body, &content_type) {
            Ok(obj) => replace(&inner, &t, obj),
            Err(r) => r,
        },
        (Method::PATCH, true) => patch(&inner, &t, &body, &content_type),
        (Method::DELETE, true) => delete(&inner, &t),
        (m, _) => status(405, "MethodNotAllowed", format!("{m} is not supported on {path}")),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn parse_body(body: &[u8], content_type: &str) -> Result<Value, Response> {
    let parsed = if content_type.contains("yaml") {
        serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| status(400, "BadRequest", format!("cannot read the body: {e}")))
}

fn key(t: &Target, name: &str) -> Key {
    (
        t.rt.group.clone(),
        t.rt.plural.clone(),
        t.namespace.clone(),
        name.to_string(),
    )
}

fn with_version(t: &Target, mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(api_version(&t.rt.group, &t.rt.version)));
        m.insert("kind".into(), json!(t.rt.kind));
    }
    obj
}

fn record(inner: &Inner, store: &mut Store, kind: &'static str, t: &Target, object: Value) {
    let change = Change {
        rv: store.rv,
        kind,
        group: t.rt.group.clone(),
        plural: t.rt.plural.clone(),
        namespace: t.namespace.clone(),
        object,
    };
    store.log.push(change.clone());
    if store.log.len() > LOG_LIMIT {
        let excess = store.log.len() - LOG_LIMIT;
        store.log.drain(..excess);
    }
    let _ = inner.changes.send(Broadcast::Change(change));
}

fn get(inner: &Inner, t: &Target) -> Response {
    let store = lock(&inner.store);
    let name = t.name.clone().unwrap_or_default();
    match store.objects.get(&key(t, &name)) {
        Some(obj) if t.sub.as_deref().is_none_or(|s| s == "status") => {
            axum::Json(with_version(t, obj.clone())).into_response()
        }
        Some(_) => status(404, "NotFound", format!("subresource {:?} is not served", t.sub)),
        None => status(
            404,
            "NotFound",
            format!("{}.{} {name:?} not found", t.rt.plural, t.rt.group),
        ),
    }
}

fn selected<'a>(store: &'a Store, t: &Target, query: &BTreeMap<String, String>) -> Vec<&'a Value> {
    let labels = query.get("labelSelector").cloned().unwrap_or_default();
    let fields = query.get("fieldSelector").cloned().unwrap_or_default();
    store
        .objects
        .iter()
        .filter(|((g, p, ns, _), _)| {
            g == &t.rt.group && p == &t.rt.plural && (t.namespace.is_empty() || ns == &t.namespace)
        })
        .map(|(_, v)| v)
        .filter(|v| {
            let empty = Map::new();
            let l = v
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            selector_matches(&labels, l) && field_matches(&fields, v)
        })
        .collect()
}

fn list(inner: &Inner, t: &Target, query: &BTreeMap<String, String>) -> Response {
    let store = lock(&inner.store);
    let items: Vec<Value> = selected(&store, t, query)
        .into_iter()
        .map(|v| with_version(t, v.clone()))
        .collect();
    axum::Json(
        json!({"apiVersion": api_version(&t.rt.group, &t.rt.version), "kind": format!("{}List", t.rt.kind),
        "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
    )
    .into_response()
}

fn watch(inner: Arc<Inner>, t: Target, query: &BTreeMap<String, String>) -> Response {
    let since: Option<u64> = query
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .and_then(|v| v.parse().ok());
    let labels = query.get("labelSelector").cloned().unwrap_or_default();
    let fields = query.get("fieldSelector").cloned().unwrap_or_default();
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let (initial, mut rx, current_rv) = {
        let store = lock(&inner.store);
        let rx = inner.changes.subscribe();
        let initial: Result<Vec<Value>, ()> = match since {
            None => Ok(selected(&store, &t, query)
                .into_iter()
                .map(|v| json!({"type": "ADDED", "object": with_version(&t, v.clone())}))
                .collect()),
            Some(rv) if store.log.first().is_some_and(|c| c.rv > rv + 1) && rv < store.rv => Err(()),
            Some(rv) => Ok(store
                .log
                .iter()
                .filter(|c| c.rv > rv && c.group == t.rt.group && c.plural == t.rt.plural)
                .filter(|c| t.namespace.is_empty() || c.namespace == t.namespace)
                .map(|c| json!({"type": c.kind, "object": with_version(&t, c.object.clone())}))
                .collect()),
        };
        (initial, rx, store.rv)
    };
    let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410}});
    let stream = async_stream_lines(initial.map_err(|_| gone), move |tx| async move {
        let deadline = timeout.map(|d| tokio::time::Instant::now() + d);
        let mut last_bookmark = tokio::time::Instant::now();
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                    Ok(n) => n,
                    Err(_) => return,
                },
                None => match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                    Ok(n) => n,
                    Err(_) => {
                        if bookmarks && last_bookmark.elapsed() > Duration::from_secs(1) {
                            last_bookmark = tokio::time::Instant::now();
                            let bm = json!({"type": "BOOKMARK", "object": {"kind": t.rt.kind, "apiVersion": api_version(&t.rt.group, &t.rt.version),
                                "metadata": {"resourceVersion": current_rv.to_string()}}});
                            if tx.send(bm).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                },
            };
            match next {
                Ok(Broadcast::Change(c)) => {
                    if c.group != t.rt.group || c.plural != t.rt.plural {
                        continue;
                    }
                    if !t.namespace.is_empty() && c.namespace != t.namespace {
                        continue;
                    }
                    let empty = Map::new();
                    let l = c
                        .object
                        .pointer("/metadata/labels")
                        .and_then(Value::as_object)
                        .unwrap_or(&empty);
                    if !selector_matches(&labels, l) || !field_matches(&fields, &c.object) {
                        continue;
                    }
                    if tx
                        .send(json!({"type": c.kind, "object": with_version(&t, c.object)}))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(Broadcast::DropWatches) | Err(broadcast::error::RecvError::Closed) => return,
                Err(broadcast::error::RecvError::Lagged(_)) => return,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(stream)
        .unwrap_or_else(|_| status(500, "InternalError", "cannot build the watch response".into()))
}

/// A streaming body of newline-delimited JSON: `initial` first, then what `more` sends.
fn async_stream_lines<F, Fut>(initial: Result<Vec<Value>, Value>, more: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Value>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Value>(256);
    tokio::spawn(async move {
        match initial {
            Ok(events) => {
                for e in events {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                more(tx).await;
            }
            Err(gone) => {
                let _ = tx.send(gone).await;
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| {
            o.map(|v| {
                let mut line = serde_json::to_vec(&v).unwrap_or_default();
                line.push(b'\n');
                Ok::<Bytes, std::io::Error>(Bytes::from(line))
            })
        })
    });
    Body::from_stream(stream)
}

fn check_schema(t: &Target, obj: &mut Value) -> Result<(), Response> {
    let Some(schema) = &t.rt.schema else { return Ok(()) };
    let mut errors = Vec::new();
    validate(schema, obj, "", &mut errors);
    if errors.is_empty() {
        return Ok(());
    }
    let message = format!("{} {:?} is invalid: {}", t.rt.kind, name_of(obj), errors.join(", "));
    Err(status(422, "Invalid", message))
}

fn create(inner: &Inner, t: &Target, mut obj: Value) -> Response {
    if t.sub.is_some() {
        return status(405, "MethodNotAllowed", "create on a subresource".into());
    }
    if let Err(r) = check_schema(t, &mut obj) {
        return r;
    }
    let mut store = lock(&inner.store);
    let mut name = name_of(&obj);
    if name.is_empty() {
        let Some(prefix) = obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return status(422, "Invalid", "metadata.name: Required value".into());
        };
        store.uid += 1;
        name = format!("{prefix}{:05x}", store.uid * 7919 % 0xfffff);
        obj["metadata"]["name"] = json!(name);
    }
    if store.objects.contains_key(&key(t, &name)) {
        return status(
            409,
            "AlreadyExists",
            format!("{}.{} {name:?} already exists", t.rt.plural, t.rt.group),
        );
    }
    if t.rt.plural == "customresourcedefinitions"
        && let Err(e) = register_crd(&mut store, &obj)
    {
        return status(
            422,
            "Invalid",
            format!("CustomResourceDefinition {name:?} is invalid: {e}"),
        );
    }
    store.rv += 1;
    let rv = store.rv;
    let mut uid = store.uid;
    stamp_new(&mut obj, rv, &mut uid, &t.namespace);
    store.uid = uid;
    let obj = with_version(t, obj);
    store.objects.insert(key(t, &name), obj.clone());
    record(inner, &mut store, "ADDED", t, obj.clone());
    (StatusCode::CREATED, axum::Json(obj)).into_response()
}

/// Stores `new` in place of `old` as a write to the object or to its status.
fn commit(inner: &Inner, store: &mut Store, t: &Target, old: &Value, mut new: Value) -> Response {
    let name = name_of(old);
    let status_only = t.sub.as_deref() == Some("status");
    if t.rt.status {
        if status_only {
            let status_value = new.get("status").cloned();
            new = old.clone();
            match status_value {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        } else {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
    }
    if let Err(r) = check_schema(t, &mut new) {
        return r;
    }
    // Immutable identity fields come from the stored object.
    for field in ["uid", "creationTimestamp", "namespace", "name"] {
        if let Some(v) = old.pointer(&format!("/metadata/{field}")) {
            new["metadata"][field] = v.clone();
        }
    }
    let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
    let bumped = if spec_part(old) != spec_part(&new) {
        generation + 1
    } else {
        generation
    };
    new["metadata"]["generation"] = json!(bumped);
    if new == *old || (with_rv(old, "") == with_rv(&new, "")) {
        return axum::Json(with_version(t, old.clone())).into_response();
    }
    store.rv += 1;
    let rv = store.rv;
    new["metadata"]["resourceVersion"] = json!(rv.to_string());
    let new = with_version(t, new);
    store.objects.insert(key(t, &name), new.clone());
    record(inner, store, "MODIFIED", t, new.clone());
    axum::Json(new).into_response()
}

fn with_rv(obj: &Value, rv: &str) -> Value {
    let mut o = obj.clone();
    o["metadata"]["resourceVersion"] = json!(rv);
    o
}

fn replace(inner: &Inner, t: &Target, obj: Value) -> Response {
    let mut store = lock(&inner.store);
    let name = t.name.clone().unwrap_or_default();
    let Some(old) = store.objects.get(&key(t, &name)).cloned() else {
        return status(
            404,
            "NotFound",
            format!("{}.{} {name:?} not found", t.rt.plural, t.rt.group),
        );
    };
    if let Some(rv) = rv_of(&obj).filter(|rv| !rv.is_empty())
        && Some(&rv) != rv_of(&old).as_ref()
    {
        return status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {}.{} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                t.rt.plural, t.rt.group
            ),
        );
    }
    commit(inner, &mut store, t, &old, obj)
}

fn patch(inner: &Inner, t: &Target, body: &[u8], content_type: &str) -> Response {
    let mut store = lock(&inner.store);
    let name = t.name.clone().unwrap_or_default();
    let existing = store.objects.get(&key(t, &name)).cloned();
    let apply = content_type.starts_with("application/apply-patch");
    let old = match existing {
        Some(o) => o,
        None if apply && t.sub.is_none() => {
            drop(store);
            return match parse_body(body, "yaml") {
                Ok(obj) => create(inner, t, obj),
                Err(r) => r,
            };
        }
        None => {
            return status(
                404,
                "NotFound",
                format!("{}.{} {name:?} not found", t.rt.plural, t.rt.group),
            );
        }
    };
    let mut new = old.clone();
    if content_type.starts_with("application/json-patch+json") {
        let ops: json_patch::Patch = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => return status(400, "BadRequest", format!("not a JSON patch: {e}")),
        };
        if let Err(e) = json_patch::patch(&mut new, &ops) {
            return status(422, "Invalid", format!("the JSON patch does not apply: {e}"));
        }
    } else {
        let kind = if apply { "yaml" } else { "json" };
        let doc = match parse_body(body, kind) {
            Ok(d) => d,
            Err(r) => return r,
        };
        if let Some(rv) = rv_of(&doc).filter(|rv| !rv.is_empty())
            && Some(&rv) != rv_of(&old).as_ref()
        {
            return status(409, "Conflict", format!("the object {name:?} has been modified"));
        }
        json_patch::merge(&mut new, &doc);
    }
    commit(inner, &mut store, t, &old, new)
}

fn delete(inner: &Inner, t: &Target) -> Response {
    let mut store = lock(&inner.store);
    let name = t.name.clone().unwrap_or_default();
    match store.objects.remove(&key(t, &name)) {
        Some(obj) => {
            if t.rt.plural == "customresourcedefinitions" {
                let (g, p) = (
                    obj.pointer("/spec/group")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    obj.pointer("/spec/names/plural")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                );
                store.types.retain(|rt| !(rt.group == g && rt.plural == p));
            }
            store.rv += 1;
            let mut gone = obj.clone();
            gone["metadata"]["resourceVersion"] = json!(store.rv.to_string());
            record(inner, &mut store, "DELETED", t, gone.clone());
            axum::Json(with_version(t, gone)).into_response()
        }
        None => status(
            404,
            "NotFound",
            format!("{}.{} {name:?} not found", t.rt.plural, t.rt.group),
        ),
    }
}

/// The webhooks of one kind of configuration that a Pod create goes to:
/// (configuration name, webhook name, service namespace, service name, path, CA bundle PEM).
fn webhooks_for(store: &Store, plural: &str) -> Vec<(String, String, String, String, String, Vec<u8>)> {
    use base64::Engine;
    let mut out = Vec::new();
    for ((g, p, _, _), config) in &store.objects {
        if g != "admissionregistration.k8s.io" || p != plural {
            continue;
        }
        for w in config.get("webhooks").and_then(Value::as_array).into_iter().flatten() {
            let covers_pods = w.get("rules").and_then(Value::as_array).is_none_or(|rules| {
                rules.iter().any(|r| {
                    r.get("resources")
                        .and_then(Value::as_array)
                        .is_some_and(|res| res.iter().any(|x| x == "pods" || x == "*"))
                })
            });
            let svc = w.pointer("/clientConfig/service");
            let (Some(ns), Some(name)) = (
                svc.and_then(|s| s.get("namespace")).and_then(Value::as_str),
                svc.and_then(|s| s.get("name")).and_then(Value::as_str),
            ) else {
                continue;
            };
            if !covers_pods {
                continue;
            }
            let path = svc
                .and_then(|s| s.get("path"))
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_string();
            let ca = w
                .pointer("/clientConfig/caBundle")
                .and_then(Value::as_str)
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .unwrap_or_default();
            out.push((
                name_of(config),
                w.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                ns.to_string(),
                name.to_string(),
                path,
                ca,
            ));
        }
    }
    out
}

/// Sends an AdmissionReview to a webhook over HTTPS, trusting only its caBundle
/// and checking the certificate names `<service>.<namespace>.svc`.
async fn call_webhook(addr: SocketAddr, host: &str, path: &str, ca: &[u8], review: &Value) -> Result<Value, String> {
    use http_body_util::BodyExt;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca).flatten() {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let body = serde_json::to_vec(review).map_err(|e| e.to_string())?;
    let req = hyper::Request::post(path)
        .header("host", host)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let code = resp.status();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if !code.is_success() {
        return Err(format!("HTTP {code}: {}", String::from_utf8_lossy(&bytes)));
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// The admission chain for a Pod create: mutating webhooks, then validating
/// ones (failurePolicy Fail). Returns the admitted object and the warnings,
/// or the API server's denial.
async fn admit(inner: &Inner, t: &Target, mut obj: Value) -> Result<(Value, Vec<String>), Response> {
    use base64::Engine;
    let (mutating, validating) = {
        let store = lock(&inner.store);
        (
            webhooks_for(&store, "mutatingwebhookconfigurations"),
            webhooks_for(&store, "validatingwebhookconfigurations"),
        )
    };
    let mut warnings = Vec::new();
    for (phase, hooks) in [("mutating", mutating), ("validating", validating)] {
        for (_config, hook, ns, svc, path, ca) in hooks {
            let Some(addr) = lock(&inner.services).get(&(ns.clone(), svc.clone())).copied() else {
                continue;
            };
            let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
                "uid": format!("{}-{}", hook, name_of(&obj)),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "name": name_of(&obj), "namespace": t.namespace, "operation": "CREATE",
                "userInfo": {"username": "kubectl-user"}, "object": obj, "oldObject": null, "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}});
            let host = format!("{svc}.{ns}.svc");
            let answer = match call_webhook(addr, &host, &path, &ca, &review).await {
                Ok(a) => a,
                Err(e) => {
                    return Err(status(
                        500,
                        "InternalError",
                        format!("Internal error occurred: failed calling webhook {hook:?}: {e}"),
                    ));
                }
            };
            let response = &answer["response"];
            warnings.extend(
                response["warnings"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|w| w.as_str().map(str::to_string)),
            );
            if response["allowed"] != json!(true) {
                let message = response
                    .pointer("/status/message")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let code = response.pointer("/status/code").and_then(Value::as_u64).unwrap_or(403) as u16;
                return Err(status(
                    code,
                    "Forbidden",
                    format!("admission webhook {hook:?} denied the request: {message}"),
                ));
            }
            if phase == "mutating"
                && let Some(patch) = response["patch"].as_str()
            {
                let ops = base64::engine::general_purpose::STANDARD
                    .decode(patch)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<json_patch::Patch>(&b).ok());
                match ops {
                    Some(ops) => {
                        if let Err(e) = json_patch::patch(&mut obj, &ops) {
                            return Err(status(
                                500,
                                "InternalError",
                                format!("webhook {hook:?} returned a patch that does not apply: {e}"),
                            ));
                        }
                    }
                    None => {
                        return Err(status(
                            500,
                            "InternalError",
                            format!("webhook {hook:?} returned an unreadable patch"),
                        ));
                    }
                }
            }
        }
    }
    Ok((obj, warnings))
}
