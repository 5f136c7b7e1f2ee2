//! Completion for kubectl: verbs, rollout verbs, kinds and the names the
//! cluster has.

use super::args::Global;
use crate::kubectl::explain;

const VERBS: &[&str] = &["debug", "explain", "inspect", "inventory", "rollout", "check"];
const ROLLOUT_VERBS: &[&str] = &["get", "status", "promote", "pause", "resume", "abort", "retry", "undo"];
const KINDS: &[&str] = &[
    "pod/",
    "deployment/",
    "statefulset/",
    "daemonset/",
    "job/",
    "cronjob/",
    "replicaset/",
];

/// Cobra's completion protocol, which kubectl speaks with plugins: one
/// candidate per line, then `:4` (no file completion). Names come from the
/// cluster when it can be reached, and nothing breaks when it cannot.
pub(super) async fn complete(global: &Global, words: &[String]) -> Vec<String> {
    let current = words.last().cloned().unwrap_or_default();
    let positional: Vec<&str> = words[..words.len().saturating_sub(1)]
        .iter()
        .map(String::as_str)
        .filter(|w| !w.starts_with('-'))
        .collect();
    let names = |ar: Option<kube::core::ApiResource>| async move {
        let Some(ar) = ar else { return Vec::new() };
        let Ok((client, ns, _)) = global.connection().connect().await else {
            return Vec::new();
        };
        let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(client, &ns, &ar);
        api.list_metadata(&Default::default())
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter_map(|o| o.metadata.name)
                    .collect::<Vec<String>>()
            })
            .unwrap_or_default()
    };
    let candidates: Vec<String> = match positional.as_slice() {
        [] => VERBS.iter().map(|s| s.to_string()).collect(),
        ["rollout"] => ROLLOUT_VERBS.iter().map(|s| s.to_string()).collect(),
        ["rollout", _] => {
            names(Some(kube::core::ApiResource::erase::<crate::api::DistrolessRollout>(
                &(),
            )))
            .await
        }
        ["debug"] => names(explain::api_resource("pod")).await,
        ["explain"] => match current.split_once('/') {
            Some((kind, _)) => names(explain::api_resource(kind))
                .await
                .into_iter()
                .map(|n| format!("{kind}/{n}"))
                .collect(),
            None => KINDS.iter().map(|s| s.to_string()).collect(),
        },
        _ => Vec::new(),
    };
    candidates.into_iter().filter(|c| c.starts_with(&current)).collect()
}
