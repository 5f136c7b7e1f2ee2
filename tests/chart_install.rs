//! Install and use, as an admin would, without a cluster: the chart rendered by
//! the real Helm engine, its objects created with the real `kubectl` in **the
//! in-memory API server (a test double)**, then the real `distroless-guard`
//! binary started exactly as the chart's Deployment configures it (its args
//! and downward-API env; only the listen addresses move to 127.0.0.1).
//!
//! Checks that the webhook configurations receive their caBundle, that pods
//! are denied and mutated through them, and that the operator's API calls and
//! the chart's RBAC agree in both directions: every call is allowed by the
//! rendered ClusterRole/Role, and every rule is used by some call. Once with
//! self-managed certificates (including a forced rotation), once with
//! cert-manager, whose part (issuing into the mounted files, injecting the CA)
//! the test plays, as the double has no cert-manager.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::apiserver::{ApiServer, Call};
use support::chart::{Rendered, chart_dir, render_one, strings};
use support::process::{Killed, free_port};
use support::tls::TestCa;

const NAMESPACE: &str = "distroless-guard";

struct Kubectl(PathBuf);

impl Kubectl {
    async fn run(&self, args: &[&str]) -> Output {
        let kubeconfig = self.0.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(&args)
                .output()
                .expect("kubectl is installed")
        })
        .await
        .unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `kubectl create -f` of one object, written to a file (kubectl's typed
    /// commands such as `create namespace` and `run` speak protobuf, which the
    /// double does not).
    async fn create(&self, object: &Value) -> Output {
        let file = self.0.with_file_name(format!(
            "{}-{}.json",
            object["kind"].as_str().unwrap(),
            object["metadata"]["name"].as_str().unwrap()
        ));
        std::fs::write(&file, object.to_string()).unwrap();
        self.run(&["create", "--validate=false", "-f", file.to_str().unwrap()])
            .await
    }

    /// Polls `kubectl get ... -o jsonpath` until `done` holds for its output.
    async fn wait_for(&self, args: &[&str], what: &str, done: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let out = self.run(args).await;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if out.status.success() && done(&text) {
                return text;
            }
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "{what}: never happened; last: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Starts the real binary with the Deployment's args; the pod's listen
/// addresses become 127.0.0.1 ports, and the kubeconfig stands in for the
/// in-cluster service account.
fn start_as_the_chart_says(
    rendered: &Rendered,
    kubeconfig: &Path,
    webhook_port: u16,
    log: &Path,
    remap: &[(&str, &Path)],
) -> Killed {
    let pod = &rendered.one("Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mut args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let mut a = a.as_str().unwrap().to_string();
            for (mount, dir) in remap {
                a = a.replace(mount, &dir.to_string_lossy());
            }
            a
        })
        .filter(|a| !a.starts_with("--listen=") && !a.starts_with("--metrics-listen="))
        .collect();
    assert_eq!(args.len() + 2, container["args"].as_array().unwrap().len());
    args.push(format!("--listen=127.0.0.1:{webhook_port}"));
    args.push("--metrics-listen=127.0.0.1:0".into());
    args.push(format!("--kubeconfig={}", kubeconfig.display()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distroless-guard"));
    cmd.args(&args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for env in container["env"].as_array().unwrap() {
        let value = match env["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.namespace") => NAMESPACE.to_string(),
            Some("metadata.name") => "distroless-guard-7d9f8-abcde".to_string(),
            _ => env["value"].as_str().unwrap().to_string(),
        };
        cmd.env(env["name"].as_str().unwrap(), value);
    }
    Killed(cmd.spawn().unwrap())
}

/// One API call as RBAC sees it.
#[derive(Debug)]
struct Request {
    verb: String,
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

/// Reads a resource request from a call; None for discovery (non-resource URLs).
fn resource_request(call: &Call) -> Option<Request> {
    let segments: Vec<&str> = call.path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (resource, name) = match rest {
        [] => return None,
        [resource] => (resource.to_string(), None),
        [resource, name] => (resource.to_string(), Some(name.to_string())),
        [resource, name, sub] => (format!("{resource}/{sub}"), Some(name.to_string())),
        _ => panic!("unexpected path {}", call.path),
    };
    let watch = call.query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (call.method.as_str(), &name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if watch => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) => "deletecollection",
        (m, _) => panic!("unexpected method {m}"),
    };
    Some(Request {
        verb: verb.into(),
        group: group.into(),
        resource,
        namespace,
        name,
    })
}

/// Whether a PolicyRule allows a request, as Kubernetes RBAC decides it.
fn allows(rule: &Value, r: &Request) -> bool {
    let names = strings(&rule["resourceNames"]);
    strings(&rule["apiGroups"]).contains(&r.group)
        && strings(&rule["resources"]).contains(&r.resource)
        && strings(&rule["verbs"]).contains(&r.verb)
        && (names.is_empty() || r.name.as_ref().is_some_and(|n| names.contains(n)))
}

/// The chart installed in the double, ready for the operator.
struct Installed {
    server: ApiServer,
    dir: tempfile::TempDir,
    kubectl: Kubectl,
    rendered: Rendered,
    /// How many requests the install made; the operator's come after.
    install_calls: usize,
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// What `helm install -n distroless-guard --create-namespace` sends: the CRDs
/// first, then the rendered templates, except the kinds in `skip` (kinds whose
/// controllers the double does not have).
async fn install(values: Value, skip: &[&str]) -> Installed {
    let rendered = render_one(values);
    let server = ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    let kubectl = Kubectl(kubeconfig);
    let crds = chart_dir().join("crds");
    kubectl
        .ok(&["create", "--validate=false", "-f", crds.to_str().unwrap()])
        .await;
    assert!(kubectl.create(&namespace(NAMESPACE)).await.status.success());
    let mut list = rendered.as_list();
    let items = list["items"].as_array_mut().unwrap();
    items.retain(|o| !skip.contains(&o["kind"].as_str().unwrap()));
    let count = items.len();
    let manifest = dir.path().join("rendered.json");
    std::fs::write(&manifest, serde_json::to_vec(&list).unwrap()).unwrap();
    let created = kubectl
        .ok(&["create", "--validate=false", "-f", manifest.to_str().unwrap()])
        .await;
    assert_eq!(created.lines().count(), count, "{created}");
    let install_calls = server.calls().len();
    Installed {
        server,
        dir,
        kubectl,
        rendered,
        install_calls,
    }
}

impl Installed {
    /// Starts the operator as the chart's Deployment says; its webhook is
    /// reachable through the webhook Service.
    fn start_operator(&self, remap: &[(&str, &Path)]) -> (Killed, PathBuf) {
        let webhook_port = free_port();
        let log = self.dir.path().join("operator.log");
        let operator = start_as_the_chart_says(&self.rendered, &self.kubectl.0, webhook_port, &log, remap);
        self.server.route_service(
            NAMESPACE,
            "distroless-guard-webhook",
            format!("127.0.0.1:{webhook_port}").parse().unwrap(),
        );
        (operator, log)
    }

    /// What users do once it runs: a Deny policy; a root pod denied and a bare
    /// pod mutated through the chart's webhook configurations; a violating
    /// workload counted by the audit and named in an Event, which a different
    /// violation later updates.
    async fn use_it(&self, log: &Path) {
        let kubectl = &self.kubectl;
        let dump_log = || std::fs::read_to_string(log).unwrap_or_default();
        assert!(kubectl.create(&namespace("shop")).await.status.success());
        let policy = json!({"apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessPolicy",
            "metadata": {"name": "baseline"}, "spec": {"action": "Deny"}});
        assert!(kubectl.create(&policy).await.status.success());
        kubectl
            .wait_for(
                &[
                    "get",
                    "dpol",
                    "baseline",
                    "-o",
                    "jsonpath={.status.conditions[0].status}",
                ],
                "the policy in force",
                |s| s == "True",
            )
            .await;
        let pod = |name: &str, spec: Value| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"}, "spec": spec});
        let root = pod(
            "root",
            json!({"securityContext": {"runAsUser": 0}, "containers": [{"name": "app", "image": "busybox"}]}),
        );
        let started = Instant::now();
        let denied = loop {
            let out = kubectl.create(&root).await;
            if !out.status.success() {
                break String::from_utf8_lossy(&out.stderr).to_string();
            }
            kubectl.ok(&["delete", "pod", "-n", "shop", "root"]).await;
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "a root pod was admitted\n{}",
                dump_log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert!(
            denied.contains("validate.distrolessguard.dev") && denied.contains("[root-uid]"),
            "{denied}\n{}",
            dump_log()
        );
        let bare = pod(
            "bare",
            json!({"containers": [{"name": "app", "image": "gcr.io/distroless/static"}]}),
        );
        let out = kubectl.create(&bare).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let context = kubectl
            .ok(&[
                "get",
                "pod",
                "bare",
                "-n",
                "shop",
                "-o",
                "jsonpath={.spec.securityContext}",
            ])
            .await;
        let context: Value = serde_json::from_str(&context).unwrap();
        assert_eq!(context["runAsUser"], 65532);
        assert_eq!(context["fsGroup"], 65532);
        assert_eq!(context["runAsNonRoot"], true);

        // The double calls webhooks for Pods only, so this Deployment stands
        // for one that existed before the policy.
        let deployment = |command: &str| {
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "legacy", "namespace": "shop"},
                "spec": {"selector": {"matchLabels": {"app": "legacy"}}, "template": {"metadata": {"labels": {"app": "legacy"}},
                "spec": {"containers": [{"name": "app", "image": "nginx", "command": [command, "-c", "run"]}]}}}})
        };
        assert!(kubectl.create(&deployment("sh")).await.status.success());
        kubectl
            .wait_for(
                &["get", "dpol", "baseline", "-o", "jsonpath={.status.audit.violating}"],
                "the audit",
                |s| s == "1",
            )
            .await;
        let events = ["get", "events.events.k8s.io", "-n", "shop", "-o"];
        kubectl
            .wait_for(
                &[&events[..], &["jsonpath={.items[*].reason}"]].concat(),
                "the Event",
                |s| s.contains("DistrolessViolation"),
            )
            .await;
        let file = self.dir.path().join("legacy.json");
        std::fs::write(&file, deployment("bash").to_string()).unwrap();
        kubectl
            .ok(&["replace", "--validate=false", "-f", file.to_str().unwrap()])
            .await;
        kubectl
            .wait_for(
                &[&events[..], &["jsonpath={.items[*].series.count}"]].concat(),
                "the Event's series",
                |s| s.contains('2'),
            )
            .await;
    }

    /// The operator's resource requests so far (kubectl's own are left out).
    fn operator_requests(&self) -> Vec<(Call, Request)> {
        self.server.calls()[self.install_calls..]
            .iter()
            .filter(|c| !c.agent.starts_with("kubectl"))
            .filter_map(|c| Some((c.clone(), resource_request(c)?)))
            .collect()
    }

    /// RBAC, both ways: every call the operator made is allowed by the chart's
    /// rules, and every rule was needed by some call.
    fn check_rbac(&self) {
        let cluster = self.rendered.one("ClusterRole")["rules"].as_array().unwrap().clone();
        let local = self.rendered.one("Role")["rules"].as_array().unwrap().clone();
        let mut used: BTreeSet<(bool, usize, String, String)> = BTreeSet::new();
        let requests = self.operator_requests();
        assert!(requests.len() > 20, "{} operator calls", requests.len());
        for (call, request) in &requests {
            let mut allowed = false;
            for (i, rule) in cluster.iter().enumerate() {
                if allows(rule, request) {
                    allowed = true;
                    used.insert((true, i, request.resource.clone(), request.verb.clone()));
                }
            }
            if request.namespace.as_deref() == Some(NAMESPACE) {
                for (i, rule) in local.iter().enumerate() {
                    if allows(rule, request) {
                        allowed = true;
                        used.insert((false, i, request.resource.clone(), request.verb.clone()));
                    }
                }
            }
            assert!(
                allowed,
                "the chart's RBAC forbids {request:?} ({} {})",
                call.method, call.path
            );
        }
        for (cluster_wide, rules) in [(true, &cluster), (false, &local)] {
            for (i, rule) in rules.iter().enumerate() {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        assert!(
                            used.contains(&(cluster_wide, i, resource.clone(), verb.clone())),
                            "{} rule {rule} grants {verb} {resource}, which the operator never used",
                            if cluster_wide { "ClusterRole" } else { "Role" }
                        );
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rendered_chart_installs_and_the_operator_works_with_exactly_its_rbac() {
    let installed = install(json!({}), &[]).await;
    let kubectl = &installed.kubectl;
    let (_operator, log) = installed.start_operator(&[]);
    let dump_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // The operator issues its CA and writes it into both webhook configurations.
    let secret = ["get", "secret", "-n", NAMESPACE, "distroless-guard-webhook-tls", "-o"];
    let ca = kubectl
        .wait_for(
            &[&secret[..], &["jsonpath={.data.ca\\.crt}"]].concat(),
            "the certificate Secret",
            |s| !s.is_empty(),
        )
        .await;
    let bundle_of = |kind: &'static str| {
        [
            "get",
            kind,
            "distroless-guard",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ]
    };
    for kind in ["validatingwebhookconfiguration", "mutatingwebhookconfiguration"] {
        let bundle = kubectl
            .wait_for(&bundle_of(kind), "the caBundle", |s| !s.is_empty())
            .await;
        assert_eq!(bundle, ca, "{kind} trusts the Secret's CA\n{}", dump_log());
    }

    installed.use_it(&log).await;

    // An admin forces a rotation: the operator reissues the serving
    // certificate from the same CA and replaces the Secret; the caBundle stays valid.
    let leaf_path = "jsonpath={.data.tls\\.crt}";
    let leaf = kubectl.ok(&[&secret[..], &[leaf_path]].concat()).await;
    kubectl
        .ok(&[
            "annotate",
            "secret",
            "-n",
            NAMESPACE,
            "distroless-guard-webhook-tls",
            "--overwrite",
            "distrolessguard.dev/not-after=2000-01-01T00:00:00Z",
        ])
        .await;
    kubectl
        .wait_for(&[&secret[..], &[leaf_path]].concat(), "the rotation", |s| {
            !s.is_empty() && s != leaf
        })
        .await;
    let not_after = kubectl
        .ok(&[
            &secret[..],
            &["jsonpath={.metadata.annotations.distrolessguard\\.dev/not-after}"],
        ]
        .concat())
        .await;
    assert!(not_after.as_str() > "2026", "{not_after}");
    let kept = kubectl
        .ok(&[
            &secret[..],
            &["jsonpath={.type} {.metadata.labels.app\\.kubernetes\\.io/managed-by}"],
        ]
        .concat())
        .await;
    assert_eq!(
        kept, "Opaque Helm",
        "the chart's Secret keeps its type and Helm's labels"
    );
    let bundle = kubectl.ok(&bundle_of("validatingwebhookconfiguration")).await;
    assert_eq!(bundle, ca);

    installed.check_rbac();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_cert_manager_the_operator_serves_the_mounted_certificate_and_needs_no_secret_or_webhook_rights() {
    // The double has no cert-manager: the test plays its part (issues the
    // Certificate into the mounted files, injects the CA into the caBundles).
    let installed = install(json!({"certManager": {"enabled": true}}), &["Certificate", "Issuer"]).await;
    let certificate = installed.rendered.one("Certificate");
    let names: Vec<String> = strings(&certificate["spec"]["dnsNames"]);
    assert!(names.contains(&"distroless-guard-webhook.distroless-guard.svc".to_string()));
    let ca = TestCa::new("cert-manager self-signed");
    let tls = installed.dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    ca.serving_cert_for(&names.iter().map(String::as_str).collect::<Vec<_>>(), 1)
        .write(&tls);
    let mount = installed.rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]
        ["mountPath"]
        .as_str()
        .unwrap()
        .to_string();
    let (_operator, log) = installed.start_operator(&[(mount.as_str(), tls.as_path())]);

    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD.encode(&ca.cert_pem);
    let patch = json!([{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle}]).to_string();
    for kind in ["validatingwebhookconfiguration", "mutatingwebhookconfiguration"] {
        let annotation = installed.rendered.one(if kind.starts_with('v') {
            "ValidatingWebhookConfiguration"
        } else {
            "MutatingWebhookConfiguration"
        })["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
            .clone();
        assert_eq!(annotation, "distroless-guard/distroless-guard-webhook");
        installed
            .kubectl
            .ok(&["patch", kind, "distroless-guard", "--type=json", "-p", &patch])
            .await;
    }

    installed.use_it(&log).await;

    for (call, request) in installed.operator_requests() {
        assert!(
            request.resource != "secrets" && !request.resource.contains("webhookconfigurations"),
            "with cert-manager the operator touched {} {}",
            call.method,
            call.path
        );
    }
    installed.check_rbac();
}
