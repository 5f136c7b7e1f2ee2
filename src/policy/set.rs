//! Policies checked once and kept in name order, ready for evaluation.

use std::collections::{BTreeMap, BTreeSet};

use jiff::civil::Date;
use wildmatch::WildMatch;

use super::selector::{self, Selector, SelectorError, SelectorExt};
use crate::api::{Action, DistrolessPolicy, DistrolessPolicySpec, Exemption, Match, OnError, RuleId};

/// The namespaces no built-in default ever touches.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-node-lease", "kube-public"];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {policy:?}: {source}")]
    Selector {
        policy: String,
        #[source]
        source: SelectorError,
    },
    #[error("policy {policy:?}: exemption {index} has an empty reason; every exemption needs one")]
    EmptyReason { policy: String, index: usize },
    #[error("policy {policy:?}: exemption {index} expires on {value:?}, which is not a date (YYYY-MM-DD)")]
    BadExpiry {
        policy: String,
        index: usize,
        value: String,
    },
    #[error("policy {policy:?}: nonRootUser must be a UID from 1 to 2147483647, not {uid}")]
    BadUid { policy: String, uid: i64 },
    #[error("policy {policy:?}: platform must be os/arch[/variant] or all, not {value:?}")]
    BadPlatform { policy: String, value: String },
    #[error("policy {0:?} is given twice")]
    Duplicate(String),
    #[error("a DistrolessPolicy needs metadata.name")]
    Unnamed,
}

/// An exemption with its expiry parsed and its image patterns compiled.
#[derive(Clone, Debug)]
pub struct CompiledExemption {
    pub exemption: Exemption,
    pub expires: Option<Date>,
    /// `exemption.images` as glob patterns: `*` matches any run of characters
    /// (slashes included), `?` any one character.
    images: Vec<WildMatch>,
}

impl CompiledExemption {
    fn new(exemption: Exemption, expires: Option<Date>) -> Self {
        let images = exemption.images.iter().map(|p| WildMatch::new(p)).collect();
        Self {
            exemption,
            expires,
            images,
        }
    }

    /// Whether this exemption names `namespace` (or names none, so covers every one).
    /// Namespaces are matched exactly; only images take patterns.
    pub fn covers_namespace(&self, namespace: &str) -> bool {
        let names = &self.exemption.namespaces;
        names.is_empty() || names.iter().any(|n| n == namespace)
    }

    /// Whether this exemption covers `rule` for the given namespace and images on `today`.
    pub fn covers(&self, rule: RuleId, namespace: &str, images: &[String], today: Date) -> bool {
        let e = &self.exemption;
        self.expires.is_none_or(|last| today <= last)
            && (e.rules.is_empty() || e.rules.contains(&rule))
            && self.covers_namespace(namespace)
            && (self.images.is_empty()
                || (!images.is_empty() && images.iter().all(|i| self.images.iter().any(|p| p.matches(i)))))
    }
}

/// A validated policy.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub name: String,
    pub spec: DistrolessPolicySpec,
    pub exemptions: Vec<CompiledExemption>,
    /// `spec.platform`, parsed.
    pub platform: crate::image::Platform,
    /// `spec.match.namespaceSelector` and `objectSelector`, compiled.
    namespace_selector: Option<Selector>,
    object_selector: Option<Selector>,
}

impl CompiledPolicy {
    pub fn compile(policy: &DistrolessPolicy) -> Result<Self, PolicyError> {
        let name = policy
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(PolicyError::Unnamed)?;
        Self::from_spec(name, policy.spec.clone())
    }

    pub fn from_spec(name: String, spec: DistrolessPolicySpec) -> Result<Self, PolicyError> {
        let compile = |sel: &Option<_>| {
            sel.as_ref()
                .map(selector::compile)
                .transpose()
                .map_err(|source| PolicyError::Selector {
                    policy: name.clone(),
                    source,
                })
        };
        let namespace_selector = compile(&spec.match_.namespace_selector)?;
        let object_selector = compile(&spec.match_.object_selector)?;
        let platform = spec.platform.parse().map_err(|_| PolicyError::BadPlatform {
            policy: name.clone(),
            value: spec.platform.clone(),
        })?;
        if !(1..=i64::from(i32::MAX)).contains(&spec.non_root_user) {
            return Err(PolicyError::BadUid {
                policy: name,
                uid: spec.non_root_user,
            });
        }
        let exemptions = spec
            .exemptions
            .iter()
            .enumerate()
            .map(|(index, e)| {
                if e.reason.trim().is_empty() {
                    return Err(PolicyError::EmptyReason {
                        policy: name.clone(),
                        index,
                    });
                }
                let expires = e
                    .expires
                    .as_deref()
                    .map(|v| {
                        v.parse::<Date>().map_err(|_| PolicyError::BadExpiry {
                            policy: name.clone(),
                            index,
                            value: v.to_string(),
                        })
                    })
                    .transpose()?;
                Ok(CompiledExemption::new(e.clone(), expires))
            })
            .collect::<Result<_, _>>()?;
        Ok(CompiledPolicy {
            name,
            spec,
            exemptions,
            platform,
            namespace_selector,
            object_selector,
        })
    }

    /// Whether the policy applies to an object with these labels in this namespace.
    pub fn matches(
        &self,
        namespace: &str,
        namespace_labels: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        let m = &self.spec.match_;
        !m.exclude_namespaces.iter().any(|n| n == namespace)
            && self
                .namespace_selector
                .as_ref()
                .is_none_or(|s| s.matches(namespace_labels))
            && self.object_selector.as_ref().is_none_or(|s| s.matches(labels))
    }

    /// This policy's action for a rule, `None` when it ignores the rule.
    /// `image-unverified` follows `onError` unless `rules` names it.
    pub fn action_for(&self, rule: RuleId) -> Option<Action> {
        match (self.spec.rules.get(&rule), rule) {
            (Some(over), _) => over.action(),
            (None, RuleId::ImageUnverified) => match self.spec.on_error {
                OnError::Deny => Some(Action::Deny),
                OnError::Warn => Some(Action::Warn),
                OnError::Allow => None,
            },
            (None, _) => Some(self.spec.action),
        }
    }

    /// Whether any image rule is checked, so images must be inspected.
    pub fn inspects_images(&self) -> bool {
        [
            RuleId::ImageHasShell,
            RuleId::ImageHasPackageManager,
            RuleId::ImageRootUser,
            RuleId::ImageUnverified,
        ]
        .into_iter()
        .any(|r| self.action_for(r).is_some())
    }

    /// The first exemption covering the finding, if any.
    pub fn exemption_for(
        &self,
        rule: RuleId,
        namespace: &str,
        images: &[String],
        today: Date,
    ) -> Option<&CompiledExemption> {
        self.exemptions
            .iter()
            .find(|e| e.covers(rule, namespace, images, today))
    }

    /// The next instant an exemption of this policy stops applying, after `today`.
    pub fn next_expiry(&self, today: Date) -> Option<Date> {
        self.exemptions
            .iter()
            .filter_map(|e| e.expires)
            .filter(|d| *d >= today)
            .min()
    }
}

/// Every policy in force, in name order.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    policies: Vec<CompiledPolicy>,
}

impl PolicySet {
    pub fn new(policies: &[DistrolessPolicy]) -> Result<Self, PolicyError> {
        let compiled = policies
            .iter()
            .map(CompiledPolicy::compile)
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_compiled(compiled)
    }

    pub fn from_compiled(mut policies: Vec<CompiledPolicy>) -> Result<Self, PolicyError> {
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        let mut seen = BTreeSet::new();
        for p in &policies {
            if !seen.insert(p.name.as_str()) {
                return Err(PolicyError::Duplicate(p.name.clone()));
            }
        }
        Ok(PolicySet { policies })
    }

    /// The policy used when none is configured: every rule denies, pods are
    /// mutated to UID 65532, and the control plane's namespaces are left alone.
    pub fn builtin_default() -> Self {
        // `action` is Deny by default (a test below holds it there).
        let spec = DistrolessPolicySpec {
            match_: Match {
                exclude_namespaces: SYSTEM_NAMESPACES.iter().map(|s| s.to_string()).collect(),
                ..Match::default()
            },
            ..DistrolessPolicySpec::default()
        };
        let policy = CompiledPolicy {
            name: "builtin-default".into(),
            spec,
            exemptions: Vec::new(),
            platform: crate::image::Platform::default(),
            namespace_selector: None,
            object_selector: None,
        };
        PolicySet { policies: vec![policy] }
    }

    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether any policy selects namespaces by label: when none does, the
    /// namespace's labels are never read and need not be looked up.
    pub fn reads_namespace_labels(&self) -> bool {
        self.policies.iter().any(|p| p.spec.match_.namespace_selector.is_some())
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn get(&self, name: &str) -> Option<&CompiledPolicy> {
        self.policies.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_default_denies_and_leaves_the_control_plane_namespaces_alone() {
        let set = PolicySet::builtin_default();
        let p = &set.policies()[0];
        assert_eq!(p.spec.action, Action::Deny);
        assert_eq!(p.action_for(RuleId::RootUid), Some(Action::Deny));
        assert_eq!(p.spec.match_.exclude_namespaces, SYSTEM_NAMESPACES);
    }

    #[test]
    fn a_set_counts_its_policies_and_reads_namespace_labels_only_when_one_selects_by_them() {
        let spec = |selector: serde_json::Value| -> DistrolessPolicySpec {
            serde_json::from_value(serde_json::json!({"match": {"namespaceSelector": selector}})).unwrap()
        };
        let empty = PolicySet::from_compiled(Vec::new()).unwrap();
        assert!(empty.is_empty() && !empty.reads_namespace_labels());
        assert_eq!(empty.len(), 0);
        let plain = CompiledPolicy::from_spec("a".into(), DistrolessPolicySpec::default()).unwrap();
        let by_labels =
            CompiledPolicy::from_spec("b".into(), spec(serde_json::json!({"matchLabels": {"team": "x"}}))).unwrap();
        let one = PolicySet::from_compiled(vec![plain.clone()]).unwrap();
        assert!(!one.is_empty() && one.len() == 1 && !one.reads_namespace_labels());
        let two = PolicySet::from_compiled(vec![plain, by_labels]).unwrap();
        assert_eq!(two.len(), 2);
        assert!(two.reads_namespace_labels());
    }

    /// Whether an exemption for `pattern` alone covers a pod of the one image `image`.
    fn exempts(pattern: &str, image: &str) -> bool {
        let exemption = Exemption {
            reason: "vendor image".into(),
            images: vec![pattern.into()],
            ..Exemption::default()
        };
        let today = Date::constant(2026, 1, 1);
        CompiledExemption::new(exemption, None).covers(RuleId::RootUid, "team-a", &[image.into()], today)
    }

    #[test]
    fn exemption_image_patterns_match_like_globs_across_slashes_and_must_match_the_whole_reference() {
        assert!(exempts(
            "registry.example.com/vendor/*",
            "registry.example.com/vendor/db:1.2"
        ));
        assert!(exempts("*:debug", "gcr.io/distroless/base:debug"));
        assert!(exempts("nginx", "nginx"));
        assert!(exempts("ngin?:1.2?", "nginx:1.27"));
        assert!(!exempts(
            "registry.example.com/vendor/*",
            "registry.example.com/other/db"
        ));
        assert!(!exempts("nginx", "nginx:1"));
        assert!(!exempts("nginx", "my-nginx"));
    }

    #[test]
    fn a_trailing_star_matches_nothing_and_a_star_backtracks_over_partial_matches() {
        assert!(exempts("reg/app*", "reg/app"));
        assert!(exempts("reg/app:*", "reg/app:"));
        assert!(!exempts("reg/app:?", "reg/app:"));
        assert!(exempts("*:debug", "reg/app:debug-old:debug"));
        assert!(!exempts("*:debug", "reg/app:debug-old"));
    }

    #[test]
    fn exemption_namespaces_are_names_not_patterns() {
        let exemption = |namespaces: &[&str]| {
            let e = Exemption {
                reason: "migration".into(),
                namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
                ..Exemption::default()
            };
            CompiledExemption::new(e, None)
        };
        assert!(exemption(&[]).covers_namespace("anything"));
        assert!(exemption(&["team-a", "team-b"]).covers_namespace("team-b"));
        assert!(!exemption(&["team-*"]).covers_namespace("team-a"));
        assert!(!exemption(&["team-a"]).covers_namespace("team-ab"));
    }
}
