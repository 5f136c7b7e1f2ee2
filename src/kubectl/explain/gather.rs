//! What the cluster holds about one workload, read once: the object, the
//! policies and namespace labels, the ReplicaSets or Jobs it owns, their
//! pods, the namespace's Events and the DistrolessRollouts. The only I/O of
//! `explain`; what cannot be read is kept as its error, for the judge to say.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use super::super::{Error, describe};
use super::resolve;
use crate::api::{DistrolessPolicy, DistrolessRollout};
use crate::policy::namespace_name_labels;

/// Everything `explain` reads about `kind/name`.
pub(super) struct Gathered {
    /// `Deployment`, `Pod`, ...
    pub kind: &'static str,
    pub name: String,
    pub namespace: String,
    /// The workload as the API server returned it, with its apiVersion and kind.
    pub object: Value,
    pub policies: Result<Vec<DistrolessPolicy>, Error>,
    pub namespace_labels: BTreeMap<String, String>,
    /// The uids of the workload and the ReplicaSets or Jobs it owns.
    pub owners: BTreeSet<String>,
    /// The pods the owners own (the workload itself for a Pod).
    pub pods: Result<Vec<Pod>, Error>,
    pub events: Result<Vec<Event>, Error>,
    /// The namespace's DistrolessRollouts (none read but for a Deployment,
    /// and none where the CRD is not installed).
    pub rollouts: Result<Vec<DistrolessRollout>, Error>,
}

fn owned_by(meta: &ObjectMeta, owners: &BTreeSet<String>) -> bool {
    meta.owner_references.iter().flatten().any(|o| owners.contains(&o.uid))
}

/// The uids of the objects of kind `K` that `owners` own (none when they cannot be listed).
async fn owned_uids<K>(client: &kube::Client, namespace: &str, owners: &BTreeSet<String>) -> Vec<String>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map(|list| {
            list.items
                .iter()
                .filter(|o| owned_by(o.meta(), owners))
                .filter_map(|o| o.meta().uid.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Reads what [`Gathered`] holds. Only a workload that cannot be read is an error.
pub(super) async fn gather(client: &kube::Client, namespace: &str, kind: &str, name: &str) -> Result<Gathered, Error> {
    let (group, version, kind, plural) = resolve(kind).ok_or_else(|| Error::Usage(format!("unknown kind {kind}")))?;
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let objects: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    let object = objects
        .get(name)
        .await
        .map_err(|e| describe(e, &format!("{} {name:?}", kind.to_ascii_lowercase()), namespace))?;
    let mut object = serde_json::to_value(&object).map_err(|source| Error::Shape {
        what: format!("{} {name:?}", kind.to_ascii_lowercase()),
        source,
    })?;
    object["apiVersion"] = Value::String(ar.api_version.clone());
    object["kind"] = Value::String(kind.to_string());

    let policies = Api::<DistrolessPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|e| describe(e, "distrolesspolicies", namespace));
    let mut namespace_labels = namespace_name_labels(namespace);
    if let Ok(Some(ns)) = Api::<Namespace>::all(client.clone()).get_opt(namespace).await {
        namespace_labels.extend(ns.metadata.labels.unwrap_or_default());
    }

    // The workload's ReplicaSets or Jobs, then pods, by owner.
    let mut owners: BTreeSet<String> = object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_string)
        .into_iter()
        .collect();
    // A Deployment's pods belong to its ReplicaSets, a CronJob's to its Jobs.
    let owned = match kind {
        "Deployment" => owned_uids::<ReplicaSet>(client, namespace, &owners).await,
        "CronJob" => owned_uids::<Job>(client, namespace, &owners).await,
        _ => Vec::new(),
    };
    owners.extend(owned);
    let pods = if kind == "Pod" {
        Ok(serde_json::from_value(object.clone()).into_iter().collect())
    } else {
        Api::<Pod>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .map(|list| {
                list.items
                    .into_iter()
                    .filter(|p| owned_by(&p.metadata, &owners))
                    .collect()
            })
            .map_err(|e| describe(e, "pods", namespace))
    };
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|e| describe(e, "events", namespace));
    let rollouts = if kind == "Deployment" {
        match Api::<DistrolessRollout>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => Ok(list.items),
            Err(e) => match describe(e, "distrolessrollouts", namespace) {
                Error::NoCrd { .. } => Ok(Vec::new()),
                e => Err(e),
            },
        }
    } else {
        Ok(Vec::new())
    };
    Ok(Gathered {
        kind,
        name: name.to_string(),
        namespace: namespace.to_string(),
        object,
        policies,
        namespace_labels,
        owners,
        pods,
        events,
        rollouts,
    })
}
