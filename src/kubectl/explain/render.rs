//! The explanation for people: the policies, the rules broken (rule → cause
//! → fix), what the API server recorded, the containers not running, the
//! rollout, and what could not be read.

use super::Explanation;

/// The explanation, for people.
pub(crate) fn render(x: &Explanation) -> Vec<String> {
    let mut out = vec![format!("{} in namespace {}", x.object, x.namespace)];
    if x.policies.is_empty() {
        out.push("  no DistrolessPolicy matches it".into());
    } else {
        out.push(format!("  policies: {}", x.policies.join(", ")));
    }
    for e in &x.exemptions {
        out.push(format!("  exemption: {e}"));
    }
    if !x.rules.is_empty() {
        out.push(String::new());
        out.push("Rules broken (rule → cause → fix):".into());
        for r in &x.rules {
            out.push(format!(
                "  [{}] {}{}{}",
                r.rule,
                r.action.to_uppercase(),
                r.container
                    .as_deref()
                    .map(|c| format!(" container {c:?}"))
                    .unwrap_or_default(),
                if r.path.is_empty() {
                    String::new()
                } else {
                    format!(" at {}", r.path)
                }
            ));
            out.push(format!("      cause: {}", r.cause));
            if !r.fix.is_empty() {
                out.push(format!("      fix:   {}", r.fix));
            }
            out.push(format!("      policy: {}", r.policy));
        }
    }
    if !x.events.is_empty() {
        out.push(String::new());
        out.push("What the API server recorded (Warning Events):".into());
        for e in &x.events {
            let by = e
                .refused_by
                .as_deref()
                .map(|b| format!(", refused by {b}"))
                .unwrap_or_default();
            out.push(format!("  {} {} (x{}{by}): {}", e.object, e.reason, e.count, e.message));
        }
    }
    if !x.containers.is_empty() {
        out.push(String::new());
        out.push("Containers not running:".into());
        for c in &x.containers {
            out.push(format!(
                "  pod {} container {}: {}: {}",
                c.pod, c.container, c.reason, c.message
            ));
            if !c.hint.is_empty() {
                out.push(format!("      hint: {}", c.hint));
            }
        }
    }
    for r in &x.rollouts {
        out.push(String::new());
        out.push(format!(
            "DistrolessRollout {}: {} at step {}: {}",
            r.name, r.phase, r.step, r.message
        ));
        if let Some(f) = &r.failure {
            out.push(format!("  failed: {f}"));
        }
        if !r.hint.is_empty() {
            out.push(format!("  hint: {}", r.hint));
        }
    }
    for u in &x.unavailable {
        out.push(format!("  (not readable: {u})"));
    }
    if x.rules.is_empty()
        && x.events.is_empty()
        && x.containers.is_empty()
        && x.rollouts.iter().all(|r| r.failure.is_none())
    {
        out.push("  nothing wrong found: no rule broken, no Warning Event, every container running".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubectl::explain::RuleFinding;

    #[test]
    fn a_broken_rule_is_written_with_its_cause_fix_and_policy() {
        let lines = render(&Explanation {
            object: "deployment/web".into(),
            namespace: "shop".into(),
            rules: vec![RuleFinding {
                rule: "shell-command".into(),
                action: "Deny".into(),
                container: Some("app".into()),
                path: "spec.template.spec.containers[0].command".into(),
                cause: "runs a shell".into(),
                fix: "run the binary".into(),
                policy: "strict".into(),
            }],
            ..Explanation::default()
        });
        assert_eq!(lines[0], "deployment/web in namespace shop");
        assert!(
            lines.contains(
                &"  [shell-command] DENY container \"app\" at spec.template.spec.containers[0].command".to_string()
            ),
            "{lines:?}"
        );
        assert!(lines.contains(&"      fix:   run the binary".to_string()), "{lines:?}");
        assert!(lines.contains(&"      policy: strict".to_string()), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("nothing wrong found")), "{lines:?}");
    }
}
