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
use crate::policy::{self, ImageFacts, ImageStatus, PolicySet, Subject, Workload, namespace_name_labels};

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

/// A workload's verdict and its state in the migration: the one judgement
/// behind both [`counts`] and [`build`]. `labels`: the namespace's labels, if known.
fn assess(
    w: &Workload,
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
    policies: &PolicySet,
    facts: Option<&ImageFacts>,
    now: Timestamp,
) -> (policy::Verdict, State) {
    let fallback;
    let namespace_labels = match labels {
        Some(l) => l,
        None => {
            fallback = namespace_name_labels(namespace);
            &fallback
        }
    };
    let subject = Subject::new(w, namespace, namespace_labels).with_images(facts);
    let verdict = policy::evaluate(policies, &subject, now);
    let mut images = State::Done;
    let mut has_images = false;
    for (_, image) in images_of(w) {
        has_images = true;
        images = images.max(image_state(image, facts));
    }
    let state = workload_state(images, has_images, &verdict, facts);
    (verdict, state)
}

/// Each container's name and image, leaving out containers without one.
fn images_of(w: &Workload) -> impl Iterator<Item = (&str, &str)> {
    w.spec
        .all_containers()
        .filter_map(|c| Some((c.name.as_str(), c.image.as_deref().filter(|i| !i.is_empty())?)))
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
        let (_, state) = assess(w, namespace, namespace_labels(namespace), policies, facts, now);
        by_namespace.entry(namespace).or_default().add(state);
    }
    by_namespace.into_iter().map(|(n, c)| (n.to_string(), c)).collect()
}

fn image_entry(container: &str, image: &str, facts: Option<&ImageFacts>) -> ImageEntry {
    let (verdict, why) = match facts.map(|f| f.get(image)) {
        None => ("not read".to_string(), Vec::new()),
        Some(None) => ("not read".to_string(), vec!["not read".to_string()]),
        Some(Some(ImageStatus::Failed(reason))) => ("unverified".to_string(), vec![reason.clone()]),
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
            (verdict.to_string(), why)
        }
    };
    ImageEntry {
        container: container.to_string(),
        image: image.to_string(),
        verdict,
        why,
    }
}

/// The `:nonroot` form of a distroless image that runs as root, when its
/// repository is a distroless one (a digest, which pins the root image, is dropped).
fn nonroot_tag(image: &str) -> Option<String> {
    let named = image.split('@').next().unwrap_or(image);
    let (repo, tag) = named.rsplit_once(':').filter(|(_, tag)| !tag.contains('/'))?;
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
        let (verdict, state) = assess(w, &namespace, namespaces.get(&namespace), policies, facts, now);
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
        let images: Vec<ImageEntry> = images_of(w)
            .map(|(container, image)| image_entry(container, image, facts))
            .collect();
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

    /// Each image inspected, running as 65532, with the shells given.
    fn nonroot_facts(images: &[(&str, &[&str])]) -> ImageFacts {
        let mut facts = ImageFacts::new();
        for (image, shells) in images {
            facts.insert(image.to_string(), report(image, shells, "65532", 65532));
        }
        facts
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
        let mut facts = nonroot_facts(&[("r/app:1-distroless", &[]), ("r/app:1-debian", &["/usr/bin/dash"])]);
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

    /// An inspected image of one platform: `uid` as the image's config gives it.
    fn inspected(image: &str, shells: &[&str], user: &str, uid: Option<u32>) -> ImageStatus {
        let ImageStatus::Inspected(reports) = report(image, shells, user, 0) else {
            unreachable!()
        };
        let mut r = (*reports[0]).clone();
        r.uid = uid;
        ImageStatus::Inspected(Arc::new(vec![Arc::new(r)]))
    }

    #[test]
    fn each_state_has_its_own_label_and_colour() {
        let labels: BTreeSet<&str> = State::ALL.iter().map(|s| s.label()).collect();
        let colours: BTreeSet<&str> = State::ALL.iter().map(|s| s.color()).collect();
        assert_eq!(labels.len(), 4, "{labels:?}");
        assert_eq!(colours.len(), 4, "{colours:?}");
        assert_eq!(State::SpecBlocked.label(), "spec blocks the switch");
        assert!(
            colours.iter().all(|c| c.len() == 7 && c.starts_with('#')),
            "{colours:?}"
        );
    }

    #[test]
    fn counts_add_one_workload_to_its_state_and_give_each_state_back() {
        let mut counts = Counts::default();
        for (state, times) in State::ALL.into_iter().zip(1..) {
            for _ in 0..times {
                counts.add(state);
            }
        }
        assert_eq!(
            counts,
            Counts {
                workloads: 10,
                done: 1,
                spec_blocked: 2,
                not_distroless: 3,
                unverified: 4
            }
        );
        let of: Vec<usize> = State::ALL.iter().map(|s| counts.of(*s)).collect();
        assert_eq!(of, [1, 2, 3, 4]);
    }

    #[test]
    fn an_image_entry_gives_the_verdict_and_its_evidence_for_each_way_an_image_can_be_known() {
        let mut facts = ImageFacts::new();
        facts.insert("failed:1".into(), ImageStatus::Failed("manifest unknown".into()));
        facts.insert("root:1".into(), inspected("root:1", &[], "", Some(0)));
        facts.insert("user:1".into(), inspected("user:1", &[], "65532", Some(65532)));
        facts.insert("unset:1".into(), inspected("unset:1", &[], "", None));
        let entry = |image: &str, facts: Option<&ImageFacts>| {
            let (e, state) = (image_entry("app", image, facts), image_state(image, facts));
            assert_eq!((e.container.as_str(), e.image.as_str()), ("app", image));
            (e.verdict, e.why, state)
        };
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Inspection off: nothing known, nothing in the way.
        assert_eq!(entry("any:1", None), ("not read".into(), vec![], State::Done));
        // Inspection on, this image not among what it read.
        assert_eq!(
            entry("missing:1", Some(&facts)),
            ("not read".into(), strings(&["not read"]), State::Unverified)
        );
        assert_eq!(
            entry("failed:1", Some(&facts)),
            ("unverified".into(), strings(&["manifest unknown"]), State::Unverified)
        );
        assert_eq!(
            entry("root:1", Some(&facts)),
            (
                "distroless".into(),
                strings(&["runs as root (USER unset or 0)"]),
                State::NotDistroless
            )
        );
        assert_eq!(
            entry("user:1", Some(&facts)),
            ("distroless".into(), strings(&["user 65532"]), State::Done)
        );
        // No USER and no UID known: nothing to say of the user.
        assert_eq!(
            entry("unset:1", Some(&facts)),
            ("distroless".into(), vec![], State::Done)
        );
    }

    #[test]
    fn an_image_is_distroless_only_when_every_platform_is() {
        let ImageStatus::Inspected(amd64) = report("multi:1", &[], "65532", 65532) else {
            unreachable!()
        };
        let ImageStatus::Inspected(arm64) = report("multi:1", &["/bin/sh"], "65532", 65532) else {
            unreachable!()
        };
        let mut pm = (*arm64[0]).clone();
        pm.package_managers = vec!["/usr/bin/dpkg".into()];
        let mut facts = ImageFacts::new();
        facts.insert(
            "multi:1".into(),
            ImageStatus::Inspected(Arc::new(vec![amd64[0].clone(), Arc::new(pm)])),
        );
        let e = image_entry("app", "multi:1", Some(&facts));
        assert_eq!(e.verdict, "not distroless");
        assert!(
            e.why.contains(&"package manager /usr/bin/dpkg".to_string()),
            "{:?}",
            e.why
        );
        assert_eq!(image_state("multi:1", Some(&facts)), State::NotDistroless);
    }

    #[test]
    fn the_nonroot_tag_is_offered_only_for_a_tagged_distroless_repository_not_yet_nonroot() {
        assert_eq!(
            nonroot_tag("gcr.io/distroless/static-debian12:latest").as_deref(),
            Some("gcr.io/distroless/static-debian12:nonroot")
        );
        assert_eq!(
            nonroot_tag("registry:5000/distroless/base:debug").as_deref(),
            Some("registry:5000/distroless/base:nonroot")
        );
        assert_eq!(nonroot_tag("gcr.io/distroless/static-debian12:nonroot"), None);
        assert_eq!(nonroot_tag("gcr.io/distroless/base:debug-nonroot"), None);
        // A port is not a tag; an untagged reference gets no suggestion.
        assert_eq!(nonroot_tag("registry:5000/distroless/base"), None);
        assert_eq!(nonroot_tag("gcr.io/distroless/base@sha256:0123abcd"), None);
        assert_eq!(
            nonroot_tag("gcr.io/distroless/base:latest@sha256:0123abcd").as_deref(),
            Some("gcr.io/distroless/base:nonroot")
        );
        assert_eq!(nonroot_tag("docker.io/library/nginx:1.27"), None);
    }

    fn entry(image: &str, verdict: &str) -> ImageEntry {
        ImageEntry {
            container: image.split(':').next().unwrap_or_default().into(),
            image: image.into(),
            verdict: verdict.into(),
            why: Vec::new(),
        }
    }

    #[test]
    fn the_next_step_of_an_unverified_workload_says_whether_to_read_its_images_or_make_them_readable() {
        let w = workload("web", "shop", "a:1", None);
        let unread = [entry("a:1", "not read"), entry("b:1", "not read")];
        assert!(next_step(&w, State::Unverified, &unread, &[]).contains("--inspect-images"));
        let failed = [entry("a:1", "not read"), entry("b:1", "unverified")];
        assert_eq!(
            next_step(&w, State::Unverified, &failed, &[]),
            "make the image readable (registry reachable, imagePullSecrets), then look again"
        );
    }

    #[test]
    fn the_next_step_of_a_blocked_spec_lists_each_fix_once_in_order_and_skips_empty_ones() {
        let w = workload("web", "shop", "a:1", None);
        let blocker = |fix: &str| Blocker {
            rule: "exec-probe".into(),
            container: None,
            cause: "c".into(),
            fix: fix.into(),
        };
        let blockers = [
            blocker("use an httpGet probe"),
            blocker(""),
            blocker("drop the shell"),
            blocker("use an httpGet probe"),
        ];
        assert_eq!(
            next_step(&w, State::SpecBlocked, &[], &blockers),
            "change the manifest: drop the shell; use an httpGet probe"
        );
    }

    #[test]
    fn the_next_step_of_an_image_to_rebuild_names_only_the_containers_not_distroless() {
        let images = [entry("side:1", "distroless"), entry("app:1", "not distroless")];
        let deployment = workload("web", "shop", "app:1", None);
        assert_eq!(
            next_step(&deployment, State::NotDistroless, &images, &[]),
            "build a distroless image, then roll it out: DistrolessRollout {targetRef: {name: web}, \
             containers: [{name: app, image: <app:1, built FROM a distroless base>}]}"
        );
        let mut job = deployment.clone();
        job.kind = crate::policy::WorkloadKind::StatefulSet;
        let step = next_step(&job, State::NotDistroless, &images, &[]);
        assert!(step.starts_with("build the image FROM a distroless base"), "{step}");
        assert!(
            step.ends_with("{name: app, image: <app:1, built FROM a distroless base>}"),
            "{step}"
        );
    }

    #[test]
    fn counts_agree_with_the_inventory_and_leave_out_owned_workloads_and_empty_images() {
        let mut owned = workload("web-7d9f", "shop", "r/app:1-debian", None);
        owned.owner = Some(crate::policy::Owner {
            kind: crate::policy::WorkloadKind::Deployment,
            name: "web".into(),
            uid: "u1".into(),
        });
        let mut no_namespace = workload("loose", "x", "r/app:1-distroless", None);
        no_namespace.namespace = None;
        let workloads = vec![
            workload("done", "shop", "r/app:1-distroless", None),
            workload("shell", "shop", "r/app:1-debian", None),
            workload("script", "ops", "r/app:1-distroless", Some("exec /app")),
            owned,
            no_namespace,
            workload("imageless", "ops", "", None),
        ];
        let facts = nonroot_facts(&[("r/app:1-distroless", &[]), ("r/app:1-debian", &["/bin/sh"])]);
        let policies = PolicySet::builtin_default();
        fn no_labels<'a>(_: &str) -> Option<&'a BTreeMap<String, String>> {
            None
        }
        for facts in [Some(&facts), None] {
            let inv = build(
                "t",
                &workloads,
                &BTreeMap::new(),
                &policies,
                facts,
                Timestamp::UNIX_EPOCH,
            );
            let from_build: Vec<(String, Counts)> = inv
                .namespaces
                .iter()
                .map(|n| (n.name.clone(), n.counts.clone()))
                .collect();
            assert_eq!(
                counts(&workloads, &no_labels, &policies, facts, Timestamp::UNIX_EPOCH),
                from_build
            );
            let names: Vec<&str> = inv.namespaces.iter().map(|n| n.name.as_str()).collect();
            assert_eq!(names, ["default", "ops", "shop"]);
            assert_eq!(inv.totals.workloads, 5, "the ReplicaSet is its Deployment's");
            let imageless = inv.namespaces[1]
                .workloads
                .iter()
                .find(|w| w.name == "imageless")
                .unwrap();
            assert!(imageless.images.is_empty(), "{imageless:?}");
            // Nothing to read and nothing in the spec's way, inspection or not.
            assert_eq!(imageless.state, State::Done);
        }
    }

    #[test]
    fn a_workload_lists_spec_blockers_only_and_sorts_worst_first_then_by_kind_and_name() {
        // A StatefulSet sorts after the Deployments of its state, whatever its name.
        let mut stateful = workload("0-done", "shop", "r/app:1", None);
        stateful.kind = crate::policy::WorkloadKind::StatefulSet;
        let workloads = vec![
            workload("b-done", "shop", "r/app:1", None),
            stateful,
            workload("a-done", "shop", "r/app:1", None),
            workload("script", "shop", "r/app:1-debian", Some("exec /app")),
        ];
        let facts = nonroot_facts(&[("r/app:1", &[]), ("r/app:1-debian", &["/bin/sh"])]);
        let inv = build(
            "t",
            &workloads,
            &BTreeMap::new(),
            &PolicySet::builtin_default(),
            Some(&facts),
            Timestamp::UNIX_EPOCH,
        );
        let order: Vec<&str> = inv.namespaces[0].workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(order, ["script", "a-done", "b-done", "0-done"]);
        let script = &inv.namespaces[0].workloads[0];
        // image-has-shell is the image's, not the manifest's: not a blocker.
        let rules: Vec<&str> = script.blockers.iter().map(|b| b.rule.as_str()).collect();
        assert_eq!(rules, ["shell-command"]);
        assert_eq!(script.state, State::NotDistroless);
        assert_eq!(
            (inv.source.as_str(), inv.generated_at.as_str()),
            ("t", "1970-01-01T00:00:00Z")
        );
    }
}
