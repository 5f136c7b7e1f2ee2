//! The pod and container rules. Each finding says what is wrong, why it breaks
//! on a distroless image or is unsafe, and the exact change that fixes it.

use super::model::{Container, PodSecurityContext, PodSpec};

use super::shell::{SHELLS, find_shell};
use crate::api::RuleId;

/// A rule broken by a pod spec, before any policy decides what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub rule: RuleId,
    /// The container at fault, `None` for pod-level fields.
    pub container: Option<String>,
    /// The images the finding concerns (an exemption by image must cover all of them).
    pub images: Vec<String>,
    /// Field path from the object's root, e.g. `spec.containers[0].livenessProbe.exec`.
    pub path: String,
    pub message: String,
}

/// Which parts of a pod spec are checked.
#[derive(Clone, Copy, Debug, Default)]
pub enum Scope<'a> {
    /// Everything: pod-level fields, init, regular and ephemeral containers.
    #[default]
    Full,
    /// An update of `pods/ephemeralcontainers`: only ephemeral containers not
    /// named in `existing` (those were admitted before).
    NewEphemeralContainers { existing: &'a [String] },
}

/// A container and where it stands in the pod spec.
pub(super) struct Located<'a> {
    pub list: &'static str,
    pub index: usize,
    pub container: &'a Container,
}

impl Located<'_> {
    pub(super) fn name(&self) -> &str {
        &self.container.name
    }

    pub(super) fn path(&self, spec_path: &str, rest: &str) -> String {
        format!("{spec_path}.{}[{}].{rest}", self.list, self.index)
    }

    pub(super) fn finding(&self, rule: RuleId, path: String, message: String) -> Finding {
        Finding {
            rule,
            container: Some(self.container.name.clone()),
            images: vec![self.container.image.clone().unwrap_or_default()],
            path,
            message,
        }
    }
}

fn located<'a>(list: &'static str, containers: &'a [Container]) -> impl Iterator<Item = Located<'a>> {
    containers
        .iter()
        .enumerate()
        .map(move |(index, container)| Located { list, index, container })
}

pub(super) fn containers<'a>(spec: &'a PodSpec, scope: Scope<'_>) -> Vec<Located<'a>> {
    let ephemeral = located("ephemeralContainers", spec.ephemeral_containers());
    match scope {
        Scope::Full => located("initContainers", spec.init_containers())
            .chain(located("containers", spec.containers()))
            .chain(ephemeral)
            .collect(),
        Scope::NewEphemeralContainers { existing } => {
            ephemeral.filter(|c| !existing.contains(&c.container.name)).collect()
        }
    }
}

/// Every finding of the pod-spec rules (`root-uid`, `non-root-disabled`,
/// `exec-probe`, `exec-hook`, `shell-command`). `spec_path` is where the pod
/// spec sits in its object; `uid` is the non-root UID the fix should name.
pub fn check_pod_spec(spec: &PodSpec, spec_path: &str, scope: Scope<'_>, uid: i64) -> Vec<Finding> {
    let mut findings = Vec::new();
    if matches!(scope, Scope::Full) {
        check_pod_security_context(spec, spec_path, uid, &mut findings);
    }
    for c in containers(spec, scope) {
        check_container(&c, spec_path, uid, &mut findings);
    }
    findings
}

fn all_images(spec: &PodSpec) -> Vec<String> {
    [spec.init_containers(), spec.containers(), spec.ephemeral_containers()]
        .into_iter()
        .flatten()
        .map(|c| c.image.clone().unwrap_or_default())
        .collect()
}

fn check_pod_security_context(spec: &PodSpec, spec_path: &str, uid: i64, out: &mut Vec<Finding>) {
    let Some(sc): Option<&PodSecurityContext> = spec.security_context.as_ref() else {
        return;
    };
    if sc.run_as_user == Some(0) {
        out.push(Finding {
            rule: RuleId::RootUid,
            container: None,
            images: all_images(spec),
            path: format!("{spec_path}.securityContext.runAsUser"),
            message: format!(
                "the pod sets runAsUser: 0, so every container that does not choose its own user runs as root; \
                 root in a container is root on the node's kernel if anything escapes. \
                 Fix: set spec.securityContext.runAsUser to {uid} (the distroless nonroot user) or remove runAsUser: 0"
            ),
        });
    }
    if sc.run_as_non_root == Some(false) {
        out.push(Finding {
            rule: RuleId::NonRootDisabled,
            container: None,
            images: all_images(spec),
            path: format!("{spec_path}.securityContext.runAsNonRoot"),
            message: format!(
                "the pod sets runAsNonRoot: false, which lets the kubelet start containers whose image runs as root. \
                 Fix: set spec.securityContext.runAsNonRoot: true (or remove it and let mutation set it) and run as UID {uid}"
            ),
        });
    }
}

fn check_container(c: &Located<'_>, spec_path: &str, uid: i64, out: &mut Vec<Finding>) {
    let container = c.container;
    if let Some(sc) = &container.security_context {
        if sc.run_as_user == Some(0) {
            out.push(c.finding(
                RuleId::RootUid,
                c.path(spec_path, "securityContext.runAsUser"),
                format!(
                    "container {:?} runs as root (securityContext.runAsUser: 0); root in a container is root on the \
                     node's kernel if anything escapes. Fix: set securityContext.runAsUser to {uid} or remove runAsUser: 0",
                    c.name()
                ),
            ));
        }
        if sc.run_as_non_root == Some(false) {
            out.push(c.finding(
                RuleId::NonRootDisabled,
                c.path(spec_path, "securityContext.runAsNonRoot"),
                format!(
                    "container {:?} sets runAsNonRoot: false, which lets the kubelet start it even when its image runs as root. \
                     Fix: set securityContext.runAsNonRoot: true (or remove the field) and run as UID {uid}",
                    c.name()
                ),
            ));
        }
    }

    let probes = [
        ("livenessProbe", &container.liveness_probe),
        ("readinessProbe", &container.readiness_probe),
        ("startupProbe", &container.startup_probe),
    ];
    for (field, probe) in probes {
        if let Some(exec) = probe.as_ref().and_then(|p| p.exec.as_ref()) {
            let argv = exec.command.as_deref().unwrap_or_default();
            let message = match purpose_built(argv) {
                Some(program) => format!(
                    "container {:?} has an exec {field} ({}); it runs {program:?}, a program of its own, which a \
                     distroless image has only if it is copied in. Fix: copy {program} into the distroless image \
                     (and keep this probe), or use a grpc, httpGet or tcpSocket probe",
                    c.name(),
                    show_argv(argv)
                ),
                None => format!(
                    "container {:?} has an exec {field} ({}); a distroless image has no shell and usually none of the \
                     tools a probe command needs, so the probe fails and the kubelet restarts or never readies the container. \
                     Fix: use httpGet, grpc or tcpSocket instead of exec",
                    c.name(),
                    show_argv(argv)
                ),
            };
            out.push(c.finding(RuleId::ExecProbe, c.path(spec_path, &format!("{field}.exec")), message));
        }
    }

    let hooks = container
        .lifecycle
        .as_ref()
        .map(|l| [("postStart", l.post_start.as_ref()), ("preStop", l.pre_stop.as_ref())]);
    for (hook, handler) in hooks.into_iter().flatten() {
        if let Some(exec) = handler.and_then(|h| h.exec.as_ref()) {
            let argv = exec.command.as_deref().unwrap_or_default();
            out.push(c.finding(
                RuleId::ExecHook,
                c.path(spec_path, &format!("lifecycle.{hook}.exec")),
                format!(
                    "container {:?} has an exec {hook} hook ({}); a distroless image has no shell or tools to run it, \
                     so the hook fails{}. Fix: use an httpGet or sleep {hook} handler, or do the work in the program itself{}",
                    c.name(),
                    show_argv(argv),
                    if hook == "postStart" { " and the container is killed" } else { " and shutdown is not graceful" },
                    if hook == "preStop" { " on SIGTERM" } else { "" }
                ),
            ));
        }
    }

    let command = container.command.as_deref().unwrap_or_default();
    let args = container.args.as_deref().unwrap_or_default();
    if let Some(shell) = find_shell(command, args) {
        let field = shell.field.as_str();
        let what = match &shell.inline_script {
            Some((flag, script)) => format!("starts a shell ({} {flag} {})", shell.program, quote_short(script)),
            None => format!("starts a shell ({})", shell.program),
        };
        out.push(c.finding(
            RuleId::ShellCommand,
            c.path(spec_path, &format!("{field}[{}]", shell.index)),
            format!(
                "container {:?} {what}; a distroless image has no shell, so the container fails to start with \
                 \"executable file not found\". Fix: run the program directly (command: [\"/path/to/app\", \"--flag\"]), \
                 use $(VAR) references for environment variables, and move pipes, && and loops into the program",
                c.name()
            ),
        ));
    }
}

/// The program an exec command runs when it is neither a shell nor one of
/// the general-purpose tools a base image brings (`grpc_health_probe`,
/// `/wait-shutdown`, `pilot-agent`): a binary that ships with the
/// application and can be copied into a distroless image as well.
fn purpose_built(argv: &[String]) -> Option<&str> {
    /// Tools of coreutils, busybox and the like: what a distroless image lacks.
    const GENERAL: &[&str] = &[
        "cat", "curl", "wget", "test", "[", "ls", "ps", "pgrep", "pidof", "nc", "netcat", "ncat", "stat", "touch",
        "rm", "echo", "true", "false", "sleep", "grep", "kill", "killall", "find", "env", "timeout", "busybox",
        "nslookup", "ping", "python", "python3", "perl", "ruby", "node",
    ];
    let program = argv.first()?.trim();
    let name = program.rsplit('/').next().unwrap_or(program);
    if name.is_empty() || SHELLS.contains(&name) || GENERAL.contains(&name) {
        return None;
    }
    Some(program)
}

fn show_argv(argv: &[String]) -> String {
    let joined = argv.join(" ");
    format!("exec: {}", quote_short(&joined))
}

fn quote_short(s: &str) -> String {
    const MAX: usize = 60;
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > MAX {
        let cut: String = one_line.chars().take(MAX).collect();
        format!("{cut:?}...")
    } else {
        format!("{one_line:?}")
    }
}
