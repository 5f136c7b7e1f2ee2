//! `metav1.LabelSelector`s, checked once as the API server checks them and
//! compiled into kube's [`Selector`], which does the matching. The check is
//! ours because kube's conversion accepts what the API server refuses (`In`
//! with an empty list) and its messages do not name the operator or the key.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
pub(crate) use kube::core::{Selector, SelectorExt};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("unknown label selector operator {0:?} (expected In, NotIn, Exists or DoesNotExist)")]
    UnknownOperator(String),
    #[error("label selector operator {0} on key {1:?} needs at least one value")]
    MissingValues(String, String),
    #[error("label selector: {0}")]
    Invalid(String),
}

/// Checks a selector and compiles it, so matching later cannot fail. An
/// empty selector matches everything.
pub(crate) fn compile(selector: &LabelSelector) -> Result<Selector, SelectorError> {
    for expr in selector.match_expressions.iter().flatten() {
        let has_values = expr.values.as_ref().is_some_and(|v| !v.is_empty());
        match expr.operator.as_str() {
            "In" | "NotIn" if !has_values => {
                return Err(SelectorError::MissingValues(expr.operator.clone(), expr.key.clone()));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => return Err(SelectorError::UnknownOperator(other.to_string())),
        }
    }
    Selector::try_from(selector.clone()).map_err(|e| SelectorError::Invalid(e.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
        selector.is_none_or(|s| compile(s).expect("a valid selector").matches(labels))
    }

    #[test]
    fn match_labels_and_expressions_must_all_hold() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("team", "web")])),
            match_expressions: Some(vec![expr("env", "NotIn", &["dev"]), expr("tier", "Exists", &[])]),
        };
        assert!(matches(
            Some(&sel),
            &labels(&[("team", "web"), ("env", "prod"), ("tier", "1")])
        ));
        assert!(!matches(
            Some(&sel),
            &labels(&[("team", "web"), ("env", "dev"), ("tier", "1")])
        ));
        assert!(!matches(Some(&sel), &labels(&[("team", "web"), ("env", "prod")])));
        assert!(!matches(Some(&sel), &labels(&[("team", "db"), ("tier", "1")])));
    }

    #[test]
    fn empty_or_missing_selector_matches_everything() {
        assert!(matches(None, &labels(&[])));
        assert!(matches(Some(&LabelSelector::default()), &labels(&[("a", "b")])));
    }

    #[test]
    fn bad_operators_are_rejected_up_front() {
        let sel = LabelSelector {
            match_expressions: Some(vec![expr("a", "Equals", &["b"])]),
            ..Default::default()
        };
        assert_eq!(
            compile(&sel).err(),
            Some(SelectorError::UnknownOperator("Equals".into()))
        );
        let sel = LabelSelector {
            match_expressions: Some(vec![expr("a", "In", &[])]),
            ..Default::default()
        };
        assert!(matches!(compile(&sel), Err(SelectorError::MissingValues(..))));
    }
}
