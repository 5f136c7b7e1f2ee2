//! The in-memory API server (a test double, see tests/support/apiserver.rs)
//! driven by the real `kube::Client`, `kube::runtime` watchers and the real
//! `kubectl`: so controller tests can trust it.

mod support;

use std::time::Duration;

use distroless_guard::api::DistrolessPolicy;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use support::apiserver::ApiServer;

fn crd() -> serde_json::Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/distrolessguard.dev_distrolesspolicies.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn config_map(name: &str, team: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"team": team}}, "data": {"k": "v"}})).unwrap()
}

#[tokio::test]
async fn create_get_list_replace_patch_and_delete_with_the_real_client() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "shop");
    let created = api
        .create(&PostParams::default(), &config_map("a", "web"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &config_map("b", "db"))
        .await
        .unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("shop"));
    let rv = created.metadata.resource_version.clone().unwrap();

    let web = api.list(&ListParams::default().labels("team=web")).await.unwrap();
    assert_eq!(web.items.len(), 1);
    assert_eq!(
        api.list(&ListParams::default().labels("team in (web,db)"))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert_eq!(
        api.list(&ListParams::default().labels("team!=web"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let mut changed = created.clone();
    changed.data = Some([("k".to_string(), "v2".to_string())].into());
    let replaced = api.replace("a", &PostParams::default(), &changed).await.unwrap();
    assert_ne!(replaced.metadata.resource_version.as_deref(), Some(rv.as_str()));
    let stale = api.replace("a", &PostParams::default(), &changed).await.unwrap_err();
    assert!(matches!(stale, kube::Error::Api(ref e) if e.code == 409), "{stale}");

    let merged = api
        .patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"m": "1"}})))
        .await
        .unwrap();
    assert_eq!(merged.data.unwrap()["m"], "1");
    let ops = serde_json::from_value(json!([{"op": "replace", "path": "/data/k", "value": "j"}])).unwrap();
    let patched = api
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["k"], "j");
    let applied = api
        .patch(
            "c",
            &PatchParams::apply("test").force(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(applied.metadata.name.as_deref(), Some("c"), "apply creates");

    api.delete("a", &DeleteParams::default()).await.unwrap();
    let missing = api.get("a").await.unwrap_err();
    assert!(matches!(missing, kube::Error::Api(ref e) if e.code == 404), "{missing}");
}

#[tokio::test]
async fn the_status_subresource_and_generation_behave_like_the_api_server() {
    let server = ApiServer::start().await;
    let api: Api<Deployment> = Api::namespaced(server.client(), "shop");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"replicas": 1,
        "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}, "status": {"replicas": 9}}))
    .unwrap();
    let created = api.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let st = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().ready_replicas, Some(1));
    assert_eq!(
        st.metadata.generation,
        Some(1),
        "a status write does not bump generation"
    );
    let spec = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}, "status": {"readyReplicas": 7}})),
        )
        .await
        .unwrap();
    assert_eq!(spec.metadata.generation, Some(2));
    assert_eq!(
        spec.status.unwrap().ready_replicas,
        Some(1),
        "the main resource cannot write status"
    );
}

#[tokio::test]
async fn watchers_see_every_change_and_recover_from_a_dropped_watch() {
    let server = ApiServer::start().await;
    let client = server.client();
    let api: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let pod = |name: &str| -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        )
        .unwrap()
    };
    api.create(&PostParams::default(), &pod("before")).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch_api = api.clone();
    let task = tokio::spawn(async move {
        let mut stream = watcher(watch_api, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = event {
                let _ = tx.send(p.metadata.name.unwrap_or_default());
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, seen: &mut Vec<String>, name: &str| {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !seen.iter().any(|s| s == name) {
                seen.push(rx.recv().await.unwrap());
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never saw {name}; saw {seen:?}"));
    };
    wait_for(&mut rx, &mut seen, "before").await;
    api.create(&PostParams::default(), &pod("during")).await.unwrap();
    wait_for(&mut rx, &mut seen, "during").await;
    server.drop_watches();
    api.create(&PostParams::default(), &pod("after-drop")).await.unwrap();
    wait_for(&mut rx, &mut seen, "after-drop").await;
    task.abort();
}

#[tokio::test]
async fn crds_from_the_repository_serve_custom_resources_checked_against_their_schema() {
    let server = ApiServer::start().await;
    let client = server.client();
    let policies: Api<DistrolessPolicy> = Api::all(client.clone());
    assert!(
        policies.list(&ListParams::default()).await.is_err(),
        "not served before the CRD exists"
    );
    server.install_crd(crd()).unwrap();
    let p: DistrolessPolicy = serde_yaml::from_str(
        "apiVersion: distrolessguard.dev/v1alpha1\nkind: DistrolessPolicy\nmetadata: {name: audit}\nspec: {action: Audit}\n",
    )
    .unwrap();
    let created = policies.create(&PostParams::default(), &p).await.unwrap();
    assert_eq!(created.spec.action, distroless_guard::api::Action::Audit);
    let bad = json!({"apiVersion": "distrolessguard.dev/v1alpha1", "kind": "DistrolessPolicy", "metadata": {"name": "bad"}, "spec": {"action": "Maybe"}});
    let raw: Api<kube::api::DynamicObject> = Api::all_with(
        client,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("distrolessguard.dev", "v1alpha1", "DistrolessPolicy"),
            "distrolesspolicies",
        ),
    );
    let err = raw
        .create(&PostParams::default(), &serde_json::from_value(bad).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 422 && e.message.contains("Unsupported value")),
        "{err}"
    );
}

#[tokio::test]
async fn injected_failures_reach_the_client() {
    let server = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "shop");
    server.fail_requests("/configmaps", 500, 1);
    assert!(api.list(&ListParams::default()).await.is_err());
    assert!(
        api.list(&ListParams::default()).await.is_ok(),
        "only the next request fails"
    );
}

#[tokio::test]
async fn the_real_kubectl_creates_gets_and_deletes_against_it() {
    let server = ApiServer::start().await;
    server.install_crd(crd()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies/audit.yaml");
    let kubectl = move |args: Vec<String>| {
        let kubeconfig = kubeconfig.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(&args)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let out = kubectl(vec![
        "create".into(),
        "--validate=false".into(),
        "-f".into(),
        policy.display().to_string(),
    ])
    .await;
    assert!(
        out.status.success(),
        "kubectl create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("distrolesspolicy.distrolessguard.dev/audit created"));
    let out = kubectl(s(&["get", "dpol", "audit", "-o", "yaml"])).await;
    assert!(
        out.status.success(),
        "kubectl get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("action: Audit") && text.contains("kind: DistrolessPolicy"),
        "{text}"
    );
    let out = kubectl(s(&["delete", "dpol", "audit"])).await;
    assert!(
        out.status.success(),
        "kubectl delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        server
            .get("distrolessguard.dev", "distrolesspolicies", "", "audit")
            .is_none()
    );
}
