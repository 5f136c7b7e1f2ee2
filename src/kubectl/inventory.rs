//! `kubectl distroless inventory`: what runs in the cluster, read with the
//! user's own credentials; images read from their registries from here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ListParams};

use super::{Error, describe};
use crate::api::DistrolessPolicy;
use crate::image::{Inspector, Platform};
use crate::inventory::Inventory;
use crate::policy::{CompiledPolicy, ImageFacts, ImageStatus, PolicySet, Workload, WorkloadKind};

/// Lists the workloads of `namespace` (every namespace with `None`), judges
/// them with the cluster's policies (the built-in default when it has none),
/// and reads their images with `inspector` unless it is `None`.
pub(crate) async fn gather(
    client: &kube::Client,
    namespace: Option<&str>,
    source: &str,
    inspector: Option<&Arc<Inspector>>,
) -> Result<Inventory, Error> {
    let mut workloads = Vec::new();
    for kind in WorkloadKind::ALL {
        let ar = crate::controller::api_resource(kind);
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| describe(e, &ar.plural, namespace.unwrap_or("(all)")))?;
        for object in list.items {
            let mut value = serde_json::to_value(&object).map_err(|source| Error::Shape {
                what: "a workload".into(),
                source,
            })?;
            value["apiVersion"] = serde_json::Value::String(ar.api_version.clone());
            value["kind"] = serde_json::Value::String(ar.kind.clone());
            if let Ok(Some(w)) = Workload::from_value(&value) {
                workloads.push(w);
            }
        }
    }
    let policies = match Api::<DistrolessPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) if !list.items.is_empty() => {
            let compiled: Vec<CompiledPolicy> = list
                .items
                .iter()
                .filter_map(|p| CompiledPolicy::compile(p).ok())
                .collect();
            PolicySet::from_compiled(compiled).unwrap_or_default()
        }
        _ => PolicySet::builtin_default(),
    };
    let mut labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    if let Ok(list) = Api::<Namespace>::all(client.clone()).list(&ListParams::default()).await {
        for ns in list.items {
            let name = ns.metadata.name.clone().unwrap_or_default();
            let mut l = crate::policy::namespace_name_labels(&name);
            l.extend(ns.metadata.labels.unwrap_or_default());
            labels.insert(name, l);
        }
    }
    let facts = match inspector {
        Some(inspector) => Some(read_images(inspector, &workloads).await),
        None => None,
    };
    Ok(crate::inventory::build(
        source,
        &workloads,
        &labels,
        &policies,
        facts.as_ref(),
        jiff::Timestamp::now(),
    ))
}

/// Reads the distinct images of the workloads not controlled by another, eight at a time.
pub(crate) async fn read_images(inspector: &Arc<Inspector>, workloads: &[Workload]) -> ImageFacts {
    let images: BTreeSet<String> = workloads
        .iter()
        .filter(|w| w.owner.is_none())
        .flat_map(|w| w.spec.all_containers().filter_map(|c| c.image.clone()))
        .filter(|i| !i.is_empty())
        .collect();
    futures_util::stream::iter(images)
        .map(|image| async move {
            let status = match inspector
                .inspect(&image, &Platform::default(), Some(Duration::from_secs(30)))
                .await
            {
                Ok(r) => ImageStatus::Inspected(r),
                Err(e) => ImageStatus::Failed(e.to_string()),
            };
            (image, status)
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}
