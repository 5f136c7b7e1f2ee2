//! Kubernetes' own Pod Security Admission fixtures (v1.37, vendored under
//! tests/conformance/psa) as a golden corpus for the engine and mutation.

use std::path::{Path, PathBuf};

use crate::support::psa;
use distroless_guard::api::{DistrolessPolicy, RuleId};
use distroless_guard::manifest::verdicts as check;
use distroless_guard::manifest::{self, Document};
use distroless_guard::policy::PolicySet;
use serde_json::Value;

fn fixtures(level: &str, outcome: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conformance/psa/v1.37")
        .join(level)
        .join(outcome);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn load(path: &Path) -> Vec<Document> {
    manifest::load(&[path.to_path_buf()]).unwrap()
}

/// The built-in default policy, plus every optional hardening mutation.
fn hardening() -> PolicySet {
    let policy: DistrolessPolicy = serde_saphyr::from_str(
        r#"
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata: {name: hardening}
spec:
  mutation: {allowPrivilegeEscalation: false, seccompRuntimeDefault: true, dropAllCapabilities: true}
"#,
    )
    .unwrap();
    PolicySet::new(&[policy]).unwrap()
}

fn root_rules(docs: &mut [Document], set: &PolicySet, fix: bool) -> (Vec<RuleId>, bool) {
    let report = check::check(docs, set, jiff::Timestamp::now(), fix, None);
    assert_eq!(report.unreadable, []);
    assert_eq!(report.results.len(), 1);
    let r = &report.results[0];
    let rules = r
        .violations
        .iter()
        .map(|v| v.rule)
        .filter(|r| matches!(r, RuleId::RootUid | RuleId::NonRootDisabled))
        .collect();
    (rules, r.allowed)
}

fn fixed(path: &Path, set: &PolicySet) -> (Value, Value) {
    let mut docs = load(path);
    let before = docs[0].value.clone();
    let report = check::check(&mut docs, set, jiff::Timestamp::now(), true, None);
    assert_eq!(report.unreadable, []);
    (before, docs[0].value.clone())
}

#[test]
fn every_restricted_runasuser_and_runasnonroot_failure_is_denied_or_fixed() {
    let set = PolicySet::builtin_default();
    let mut denied = 0;
    let mut fixed_by_mutation = 0;
    for path in fixtures("restricted", "fail") {
        let file = name(&path);
        if !(file.starts_with("runasuser") || file.starts_with("runasnonroot")) {
            continue;
        }
        let (rules, allowed) = root_rules(&mut load(&path), &set, false);
        if !rules.is_empty() {
            assert!(!allowed, "{file}: a root rule must deny under the default policy");
            denied += 1;
            continue;
        }
        let (_, after) = fixed(&path, &set);
        assert!(
            psa::run_as_non_root(&after) && psa::run_as_user(&after),
            "{file}: neither denied nor fixed: {after:#}"
        );
        fixed_by_mutation += 1;
    }
    // runasuser0-2 and runasnonroot1-3 set a root value explicitly; runasnonroot0 only leaves it unset.
    assert_eq!((denied, fixed_by_mutation), (6, 1));
}

#[test]
fn no_passing_fixture_gets_a_root_rule() {
    let set = PolicySet::builtin_default();
    for level in ["restricted", "baseline"] {
        for path in fixtures(level, "pass") {
            let (rules, _) = root_rules(&mut load(&path), &set, false);
            assert!(rules.is_empty(), "{level}/pass/{}: {rules:?}", name(&path));
        }
    }
}

#[test]
fn mutation_never_turns_a_passing_control_into_a_failing_one() {
    let mut checked = 0;
    for set in [PolicySet::builtin_default(), hardening()] {
        for level in ["restricted", "baseline"] {
            for outcome in ["pass", "fail"] {
                for path in fixtures(level, outcome) {
                    let (before, after) = fixed(&path, &set);
                    for (control, passes) in psa::CONTROLS {
                        if passes(&before) {
                            assert!(
                                passes(&after),
                                "{level}/{outcome}/{}: mutation broke {control}",
                                name(&path)
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 500, "only {checked} control checks ran");
}

#[test]
fn hardening_mutation_fixes_every_restricted_failure_it_can() {
    // These set the forbidden value explicitly; mutation never overrides an explicit value.
    let explicit = [
        "allowprivilegeescalation0.yaml",
        "allowprivilegeescalation1.yaml",
        "capabilities_restricted3.yaml",
        "seccompprofile_restricted1.yaml",
        "seccompprofile_restricted4.yaml",
    ];
    let set = hardening();
    let mut fixed_count = 0;
    for path in fixtures("restricted", "fail") {
        let file = name(&path);
        let Some(control) = psa::control_for(&file) else {
            continue;
        };
        if file.starts_with("runas") {
            continue;
        }
        let (before, after) = fixed(&path, &set);
        assert!(!control(&before), "{file} should fail its control before mutation");
        if explicit.contains(&file.as_str()) {
            assert!(!control(&after), "{file}: an explicit value was overridden");
        } else {
            assert!(control(&after), "{file}: mutation should fix it: {after:#}");
            fixed_count += 1;
        }
    }
    assert_eq!(fixed_count, 8);
}

/// The oracle itself, against the fixtures it models: every `restricted/pass`
/// pod passes all five controls, and every `restricted/fail` pod named for
/// one of them fails that one (so the tests above cannot pass on a wrong oracle).
#[test]
fn the_psa_oracle_agrees_with_kubernetes_own_pass_and_fail_fixtures() {
    let pod = |path: &Path| load(path).remove(0).value;
    let mut checked = 0;
    for path in fixtures("restricted", "pass") {
        let pod = pod(&path);
        for (control, passes) in psa::CONTROLS {
            assert!(
                passes(&pod),
                "restricted/pass/{}: the oracle fails {control}",
                name(&path)
            );
            checked += 1;
        }
    }
    let mut failing = 0;
    for path in fixtures("restricted", "fail") {
        let file = name(&path);
        if let Some(control) = psa::control_for(&file) {
            assert!(!control(&pod(&path)), "restricted/fail/{file}: the oracle passes it");
            failing += 1;
        }
    }
    assert!(
        checked >= 5 * 10 && failing >= 20,
        "{checked} pass checks, {failing} fail checks"
    );
}
