//! The migration inventory: for each workload, its images (distroless or
//! not, and why: the shell's path, the package manager, the root user), the
//! spec rules that block a switch, and the next step. Pure: the workloads,
//! what image inspection found and the policies come in; a table, JSON or a
//! self-contained HTML page go out ([`render`]; `distroless-guard inventory` offline,
//! `kubectl distroless inventory` on a cluster).

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::Serialize;

mod render;

pub(crate) use render::{html, table};

use crate::api::RuleId;
use crate::policy::{self, ImageFacts, ImageStatus, PolicySet, Scope, Subject, Workload, namespace_name_labels};

/// Where a workload stands in the migration.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub(crate) enum State {
    /// Distroless images and nothing in its spec in the way.
    Done,
    /// Its images are distroless but its spec is not ready (shell commands, exec probes, root).
    SpecBlocked,
    /// At least one image has a shell or a package manager, or runs as root.
    NotDistroless,
    /// An image could not be read (or was not read).
    Unverified,
}

impl State {
    pub(crate) fn label(self) -> &'static str {
        match self {
            State::Done => "done",
            State::SpecBlocked => "spec blocks the switch",
            State::NotDistroless => "not distroless",
            State::Unverified => "image not verified",
        }
    }

    const ALL: [State; 4] = [State::Done, State::SpecBlocked, State::NotDistroless, State::Unverified];

    fn color(self) -> &'static str {
        match self {
            State::Done => "#1b9e47",
            State::SpecBlocked => "#f0a30a",
            State::NotDistroless => "#d62828",
            State::Unverified => "#7a7a7a",
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImageEntry {
    pub container: String,
    pub image: String,
    /// `distroless`, `not distroless`, `unverified` or `not read`.
    pub verdict: String,
    /// Evidence: where the shell is, which package manager, the user.
    pub why: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Blocker {
    pub rule: String,
    pub container: Option<String>,
    pub cause: String,
    pub fix: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WorkloadEntry {
    pub kind: String,
    pub name: String,
    pub state: State,
    pub images: Vec<ImageEntry>,
    /// Spec rules broken (what must change in the manifest besides the image).
    pub blockers: Vec<Blocker>,
    /// The ready-made next step.
    pub next_step: String,
}

#[derive(Clone, Debug, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Counts {
    pub workloads: usize,
    pub done: usize,
    pub spec_blocked: usize,
    pub not_distroless: usize,
    pub unverified: usize,
}

impl Counts {
    fn add(&mut self, state: State) {
        self.workloads += 1;
        match state {
            State::Done => self.done += 1,
            State::SpecBlocked => self.spec_blocked += 1,
            State::NotDistroless => self.not_distroless += 1,
            State::Unverified => self.unverified += 1,
        }
    }

    fn of(&self, state: State) -> usize {
        match state {
            State::Done => self.done,
            State::SpecBlocked => self.spec_blocked,
            State::NotDistroless => self.not_distroless,
            State::Unverified => self.unverified,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NamespaceEntry {
    pub name: String,
    pub counts: Counts,
    pub workloads: Vec<WorkloadEntry>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Inventory {
    pub generated_at: String,
    /// What was looked at: a cluster context and namespaces, or files.
    pub source: String,
    pub totals: Counts,
    pub namespaces: Vec<NamespaceEntry>,
}

/// What an image's inspection says of the migration, without the words.
fn image_state(image: &str, facts: Option<&ImageFacts>) -> State {
    match facts.map(|f| f.get(image)) {
        None => State::Done,
        Some(None | Some(ImageStatus::Failed(_))) => State::Unverified,
        Some(Some(ImageStatus::Inspected(reports))) => {
            if reports.iter().all(|r| r.distroless && !r.runs_as_root()) {
                State::Done
            } else {
                State::NotDistroless
            }
        }
    }
}

/// A workload's state from its verdict and the states of its images.
fn workload_state(images: State, has_images: bool, verdict: &policy::Verdict, facts: Option<&ImageFacts>) -> State {
    let mut state = images;
    if verdict.violations.iter().any(|v| v.rule == RuleId::ImageRootUser) {
        state = state.max(State::NotDistroless);
    }
    if state == State::Done && verdict.violations.iter().any(|v| !v.rule.reads_the_image()) {
        state = State::SpecBlocked;
    }
    if facts.is_none() && state == State::Done && has_images {
        // Nothing in the spec is in the way, but the images were not read.
        state = State::Unverified;
    }
    state
}

/// Workloads per namespace and state: what [`build`] counts, without building
/// the rows (the audit keeps these as metrics on every pass).
pub(crate) fn counts<'a>(
    workloads: impl IntoIterator<Item = &'a Workload>,
    namespace_labels: &dyn Fn(&str) -> Option<&'a BTreeMap<String, String>>,
    policies: &PolicySet,
    facts: Option<&ImageFacts>,
    now: Timestamp,
) -> Vec<(String, Counts)> {
    let mut by_namespace: BTreeMap<&str, Counts> = BTreeMap::new();
    for w in workloads.into_iter().filter(|w| w.owner.is_none()) {
        let namespace = w.namespace.as_deref().unwrap_or("default");
        let fallback;
        let labels = match namespace_labels(namespace) {
            Some(l) => l,
            None => {
                fallback = namespace_name_labels(namespace);
                &fallback
            }
        };
        let subject = Subject {
            workload: w,
            namespace,
            namespace_labels: labels,
            scope: Scope::Full,
            images: facts,
        };
        let verdict = policy::evaluate(policies, &subject, now);
        let mut images = State::Done;
        let mut has_images = false;
        for image in w
            .spec
            .all_containers()
            .filter_map(|c| c.image.as_deref())
            .filter(|i| !i.is_empty())
        {
            has_images = true;
            images = images.max(image_state(image, facts));
        }
        by_namespace
            .entry(namespace)
            .or_default()
            .add(workload_state(images, has_images, &verdict, facts));
    }
    by_namespace.into_iter().map(|(n, c)| (n.to_string(), c)).collect()
}

fn image_entry(container: &str, image: &str, facts: Option<&ImageFacts>) -> (ImageEntry, State) {
    let (verdict, why, state) = match facts.map(|f| f.get(image)) {
        None => ("not read".to_string(), Vec::new(), State::Done),
        Some(None) => ("not read".to_string(), vec!["not read".to_string()], State::Unverified),
        Some(Some(ImageStatus::Failed(reason))) => ("unverified".to_string(), vec![reason.clone()], State::Unverified),
        Some(Some(ImageStatus::Inspected(reports))) => {
            let mut why = Vec::new();
            let mut distroless = true;
            for r in reports.iter() {
                for shell in &r.shells {
                    let layer = r
                        .evidence
                        .iter()
                        .find(|e| &e.path == shell)
                        .map(|e| e.layer.get(..19).unwrap_or(&e.layer));
                    why.push(format!(
                        "shell {shell}{}",
                        layer.map(|l| format!(" (layer {l})")).unwrap_or_default()
                    ));
                }
                for pm in &r.package_managers {
                    why.push(format!("package manager {pm}"));
                }
                distroless &= r.distroless;
                if r.runs_as_root() {
                    why.push("runs as root (USER unset or 0)".to_string());
                } else if !r.user.is_empty() {
                    why.push(format!("user {}", r.user));
                }
            }
            why.dedup();
            let verdict = if distroless { "distroless" } else { "not distroless" };
            (verdict.to_string(), why, image_state(image, facts))
        }
    };
    (
        ImageEntry {
            container: container.to_string(),
            image: image.to_string(),
            verdict,
            why,
        },
        state,
    )
}

/// The `:nonroot` form of a distroless image that runs as root, when its repository is a distroless one.
fn nonroot_tag(image: &str) -> Option<String> {
    let repo_end = image.rfind(':').filter(|i| !image[*i..].contains('/'))?;
    let (repo, tag) = (&image[..repo_end], &image[repo_end + 1..]);
    (repo.contains("distroless") && !tag.contains("nonroot")).then(|| format!("{repo}:nonroot"))
}

fn next_step(w: &Workload, state: State, images: &[ImageEntry], blockers: &[Blocker]) -> String {
    match state {
        State::Done => "nothing: distroless and non-root".into(),
        State::Unverified if images.iter().all(|i| i.verdict == "not read") => {
            "read the images too (--inspect-images, or without --no-images)".into()
        }
        State::Unverified => "make the image readable (registry reachable, imagePullSecrets), then look again".into(),
        State::SpecBlocked => format!(
            "change the manifest: {}",
            blockers
                .iter()
                .map(|b| b.fix.clone())
                .filter(|f| !f.is_empty())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join("; ")
        ),
        State::NotDistroless => {
            if let Some(tag) = images.iter().find_map(|i| nonroot_tag(&i.image)) {
                return format!("use {tag} (the same distroless image, UID 65532)");
            }
            let containers: Vec<String> = images
                .iter()
                .filter(|i| i.verdict != "distroless")
                .map(|i| {
                    format!(
                        "{{name: {}, image: <{}, built FROM a distroless base>}}",
                        i.container, i.image
                    )
                })
                .collect();
            if w.kind.to_string() == "Deployment" {
                format!(
                    "build a distroless image, then roll it out: DistrolessRollout {{targetRef: {{name: {}}}, containers: [{}]}}",
                    w.name,
                    containers.join(", ")
                )
            } else {
                format!(
                    "build the image FROM a distroless base (e.g. gcr.io/distroless/static-debian12:nonroot) and ship it: {}",
                    containers.join(", ")
                )
            }
        }
    }
}

/// One entry per workload that is not controlled by another (a Deployment,
/// not its ReplicaSets and Pods). `facts`: what image inspection found (`None`: it was off).
pub(crate) fn build<'a>(
    source: &str,
    workloads: impl IntoIterator<Item = &'a Workload>,
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
    policies: &PolicySet,
    facts: Option<&ImageFacts>,
    now: Timestamp,
) -> Inventory {
    let mut by_namespace: BTreeMap<String, Vec<WorkloadEntry>> = BTreeMap::new();
    for w in workloads.into_iter().filter(|w| w.owner.is_none()) {
        let namespace = w.namespace.clone().unwrap_or_else(|| "default".into());
        let labels = namespaces
            .get(&namespace)
            .cloned()
            .unwrap_or_else(|| namespace_name_labels(&namespace));
        let subject = Subject {
            workload: w,
            namespace: &namespace,
            namespace_labels: &labels,
            scope: Scope::Full,
            images: facts,
        };
        let verdict = policy::evaluate(policies, &subject, now);
        let blockers: Vec<Blocker> = verdict
            .violations
            .iter()
            .filter(|v| !v.rule.reads_the_image())
            .map(|v| {
                let (cause, fix) = policy::cause_and_fix(&v.message);
                Blocker {
                    rule: v.rule.to_string(),
                    container: v.container.clone(),
                    cause: cause.to_string(),
                    fix: fix.to_string(),
                }
            })
            .collect();
        let mut images = Vec::new();
        let mut state = State::Done;
        for c in w.spec.all_containers() {
            let Some(image) = c.image.as_deref().filter(|i| !i.is_empty()) else {
                continue;
            };
            let (entry, s) = image_entry(&c.name, image, facts);
            state = state.max(s);
            images.push(entry);
        }
        let state = workload_state(state, !images.is_empty(), &verdict, facts);
        let next_step = next_step(w, state, &images, &blockers);
        by_namespace.entry(namespace).or_default().push(WorkloadEntry {
            kind: w.kind.to_string(),
            name: w.name.clone(),
            state,
            images,
            blockers,
            next_step,
        });
    }
    let mut totals = Counts::default();
    let namespaces = by_namespace
        .into_iter()
        .map(|(name, mut workloads)| {
            workloads.sort_by(|a, b| (b.state, &a.kind, &a.name).cmp(&(a.state, &b.kind, &b.name)));
            let mut counts = Counts::default();
            for w in &workloads {
                counts.add(w.state);
                totals.add(w.state);
            }
            NamespaceEntry {
                name,
                counts,
                workloads,
            }
        })
        .collect();
    Inventory {
        generated_at: now.to_string(),
        source: source.to_string(),
        totals,
        namespaces,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Evidence, ImageReport};
    use serde_json::json;
    use std::sync::Arc;

    fn workload(name: &str, ns: &str, image: &str, command: Option<&str>) -> Workload {
        let mut c = json!({"name": "app", "image": image});
        if let Some(cmd) = command {
            c["command"] = json!(["sh", "-c", cmd]);
        }
        Workload::from_value(&json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"template": {"spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 65532}, "containers": [c]}}}}))
        .unwrap()
        .unwrap()
    }

    fn report(image: &str, shells: &[&str], user: &str, uid: u32) -> ImageStatus {
        let r = ImageReport {
            image: image.into(),
            digest: "sha256:1".into(),
            platform: "linux/amd64".into(),
            user: user.into(),
            uid: Some(uid),
            shells: shells.iter().map(|s| s.to_string()).collect(),
            package_managers: Vec::new(),
            package_databases: Vec::new(),
            distroless: shells.is_empty(),
            evidence: shells
                .iter()
                .map(|s| Evidence {
                    path: s.to_string(),
                    layer: "sha256:abcdef0123456789abcdef".into(),
                })
                .collect(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            base_image: None,
        };
        ImageStatus::Inspected(Arc::new(vec![Arc::new(r)]))
    }

    #[test]
    fn each_workload_gets_its_state_evidence_and_next_step() {
        let workloads = vec![
            workload("done", "shop", "r/app:1-distroless", None),
            workload("shell", "shop", "r/app:1-debian", None),
            workload("script", "shop", "r/app:1-distroless", Some("exec /app")),
            workload("gone", "ops", "r/app:missing", None),
            workload("rootless", "ops", "gcr.io/distroless/static-debian12:latest", None),
        ];
        let mut facts = ImageFacts::new();
        facts.insert(
            "r/app:1-distroless".into(),
            report("r/app:1-distroless", &[], "65532", 65532),
        );
        facts.insert(
            "r/app:1-debian".into(),
            report("r/app:1-debian", &["/usr/bin/dash"], "65532", 65532),
        );
        facts.insert("r/app:missing".into(), ImageStatus::Failed("manifest unknown".into()));
        facts.insert(
            "gcr.io/distroless/static-debian12:latest".into(),
            report("gcr.io/distroless/static-debian12:latest", &[], "", 0),
        );
        let inv = build(
            "test",
            &workloads,
            &BTreeMap::new(),
            &PolicySet::builtin_default(),
            Some(&facts),
            Timestamp::UNIX_EPOCH,
        );
        let find = |name: &str| {
            inv.namespaces
                .iter()
                .flat_map(|n| &n.workloads)
                .find(|w| w.name == name)
                .unwrap()
                .clone()
        };
        assert_eq!(find("done").state, State::Done);
        let shell = find("shell");
        assert_eq!(shell.state, State::NotDistroless);
        assert!(
            shell.images[0].why[0].contains("/usr/bin/dash (layer sha256:abcdef012345"),
            "{:?}",
            shell.images[0].why
        );
        assert!(
            shell.next_step.contains("DistrolessRollout {targetRef: {name: shell}"),
            "{}",
            shell.next_step
        );
        let script = find("script");
        assert_eq!(script.state, State::SpecBlocked);
        assert_eq!(script.blockers[0].rule, "shell-command");
        assert!(script.next_step.starts_with("change the manifest:"));
        assert_eq!(find("gone").state, State::Unverified);
        let rootless = find("rootless");
        assert_eq!(rootless.state, State::NotDistroless);
        assert_eq!(
            rootless.next_step,
            "use gcr.io/distroless/static-debian12:nonroot (the same distroless image, UID 65532)"
        );
        assert_eq!(
            inv.totals,
            Counts {
                workloads: 5,
                done: 1,
                spec_blocked: 1,
                not_distroless: 2,
                unverified: 1
            }
        );
        let text = table(&inv);
        assert!(
            text.contains("deployment/shell") && text.contains("5 workloads: 1 done"),
            "{text}"
        );
        let page = html(&inv);
        assert!(page.contains("<svg id=\"progress\"") && page.contains("1 of 5 workloads done"));
        assert!(!page.contains("<script"), "self-contained, no script");
    }

    #[test]
    fn without_image_inspection_the_spec_still_decides() {
        let workloads = vec![
            workload("script", "shop", "r/app:1", Some("exec /app")),
            workload("plain", "shop", "r/app:1", None),
        ];
        let inv = build(
            "t",
            &workloads,
            &BTreeMap::new(),
            &PolicySet::builtin_default(),
            None,
            Timestamp::UNIX_EPOCH,
        );
        let states: Vec<State> = inv.namespaces[0].workloads.iter().map(|w| w.state).collect();
        assert_eq!(states, [State::Unverified, State::SpecBlocked]);
        assert!(inv.namespaces[0].workloads[0].next_step.contains("--inspect-images"));
    }

    #[test]
    fn html_escapes_what_comes_from_the_cluster() {
        let w = workload("<b>x</b>", "ns", "img\"<script>", None);
        let inv = build(
            "<src>",
            &[w],
            &BTreeMap::new(),
            &PolicySet::builtin_default(),
            None,
            Timestamp::UNIX_EPOCH,
        );
        let page = html(&inv);
        assert!(
            !page.contains("<b>x</b>") && !page.contains("<script>") && page.contains("&lt;src&gt;"),
            "{page}"
        );
    }
}
