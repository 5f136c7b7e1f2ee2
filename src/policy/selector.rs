//! `metav1.LabelSelector` matching, as the API server does it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("unknown label selector operator {0:?} (expected In, NotIn, Exists or DoesNotExist)")]
    UnknownOperator(String),
    #[error("label selector operator {0} on key {1:?} needs at least one value")]
    MissingValues(String, String),
}

/// Checks a selector once, so matching later cannot fail.
pub fn validate(selector: &LabelSelector) -> Result<(), SelectorError> {
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
    Ok(())
}

/// Whether `labels` satisfy `selector`. An unset or empty selector matches everything.
pub fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && selector.match_expressions.iter().flatten().all(|expr| {
            let value = labels.get(&expr.key);
            let in_values = |v: &String| expr.values.iter().flatten().any(|x| x == v);
            match expr.operator.as_str() {
                "In" => value.is_some_and(in_values),
                "NotIn" => !value.is_some_and(in_values),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

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
        assert_eq!(validate(&sel), Err(SelectorError::UnknownOperator("Equals".into())));
        let sel = LabelSelector {
            match_expressions: Some(vec![expr("a", "In", &[])]),
            ..Default::default()
        };
        assert!(matches!(validate(&sel), Err(SelectorError::MissingValues(..))));
    }
}
