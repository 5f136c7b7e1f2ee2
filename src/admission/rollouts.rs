//! Admission of DistrolessRollouts: the operator may patch every Deployment
//! and read the Secrets metric gates name, so a rollout must never let its
//! author do through the operator what they could not do themselves.
//! Creating a rollout, or changing its spec or its verb annotations
//! (`distrolessguard.dev/promote`, ...), is allowed only to a user the API
//! server says may `patch` the target Deployment and `get` every Secret its
//! metric gates take credentials from (a SubjectAccessReview for the
//! request's user, groups and extra). Anything that cannot be decided (no API
//! server, the review fails) is denied.
//! Metadata-only updates (the operator's own finalizer) and deletes pass:
//! deleting a rollout only ever goes back to the standard images its
//! authorised author started from.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;

use super::review::{AdmissionResponse, GroupVersionKind, Operation};

/// The prefix of the annotations that act as verbs (see `api::rollout::verbs`).
const VERB_PREFIX: &str = "distrolessguard.dev/";

/// Who made a request, as the API server authenticated it: everything a
/// SubjectAccessReview needs to ask about the same user.
#[derive(Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct RequestUser {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// One thing a user must be allowed to do for their rollout to be admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub namespace: String,
    pub name: String,
}

impl Question {
    fn patch_deployment(namespace: &str, name: &str) -> Self {
        Question {
            verb: "patch",
            group: "apps",
            resource: "deployments",
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn get_secret(namespace: &str, name: &str) -> Self {
        Question {
            verb: "get",
            group: "",
            resource: "secrets",
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Why it matters, for the denial.
    fn because(&self) -> &'static str {
        if self.resource == "secrets" {
            "a metric gate's credentials are read by the operator and sent to the gate's address, so naming a Secret \
             needs permission to read it"
        } else {
            "a DistrolessRollout changes the images of the Deployment it targets, so creating or changing one needs \
             that permission"
        }
    }
}

/// Asks the API server whether a user may do something.
pub trait Access: Send + Sync {
    /// `Ok(true)` when allowed; `Err` when the question could not be answered.
    fn allows<'a>(&'a self, user: &'a RequestUser, question: &'a Question) -> BoxFuture<'a, Result<bool, kube::Error>>;
}

#[derive(Deserialize, Debug)]
struct Review {
    request: Request,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: GroupVersionKind,
    namespace: Option<String>,
    operation: Operation,
    #[serde(default)]
    user_info: RequestUser,
    object: Option<Rollout>,
    old_object: Option<Rollout>,
}

#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(default)]
struct Rollout {
    metadata: Metadata,
    spec: Value,
}

#[derive(Deserialize, Debug, Default, PartialEq)]
struct Metadata {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl Rollout {
    fn target(&self) -> Option<&str> {
        self.spec.pointer("/targetRef/name").and_then(Value::as_str)
    }

    /// The Secrets the metric gates take credentials from.
    fn gate_secrets(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .spec
            .get("metrics")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|g| g.pointer("/auth/secretName").and_then(Value::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    fn verbs(&self) -> BTreeMap<&str, &str> {
        self.metadata
            .annotations
            .iter()
            .filter(|(k, _)| k.starts_with(VERB_PREFIX))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Whether `self` asks the operator for something `old` did not.
    fn acts_differently_from(&self, old: &Rollout) -> bool {
        self.spec != old.spec || self.verbs() != old.verbs()
    }
}

/// The review of one DistrolessRollout request. `Err` only for a body that
/// is not an AdmissionReview (answered with HTTP 400).
pub(crate) async fn review(body: &[u8], access: Option<&dyn Access>) -> Result<AdmissionResponse, serde_json::Error> {
    let review: Review = super::review::parse(body)?;
    let req = review.request;
    let uid = req.uid.as_str();
    if req.kind.kind != "DistrolessRollout" || !matches!(req.operation, Operation::Create | Operation::Update) {
        return Ok(AdmissionResponse::allow(uid));
    }
    let Some(object) = req.object.as_ref() else {
        return Ok(AdmissionResponse::deny(
            uid,
            400,
            "BadRequest",
            "the review carries no object".into(),
        ));
    };
    if let Some(why) = object
        .metadata
        .annotations
        .iter()
        .find_map(|(k, v)| crate::api::rollout::verbs::invalid(k, v))
    {
        return Ok(AdmissionResponse::deny(uid, 422, "Invalid", why));
    }
    let old = req.old_object.as_ref();
    if old.is_some_and(|old| !object.acts_differently_from(old)) {
        return Ok(AdmissionResponse::allow(uid));
    }
    let namespace = req.namespace.as_deref().unwrap_or_default();
    // The new target, and on an update the old one too: moving a rollout
    // off a Deployment changes that Deployment's future as well.
    let mut questions: Vec<Question> = object
        .target()
        .into_iter()
        .map(|t| Question::patch_deployment(namespace, t))
        .collect();
    if let Some(t) = old.and_then(Rollout::target).filter(|t| object.target() != Some(t)) {
        questions.push(Question::patch_deployment(namespace, t));
    }
    questions.extend(
        object
            .gate_secrets()
            .into_iter()
            .map(|s| Question::get_secret(namespace, s)),
    );
    let Some(access) = access else {
        return Ok(AdmissionResponse::deny(
            uid,
            500,
            "InternalError",
            "this webhook runs without an API server and cannot check who may change the target Deployment; \
             DistrolessRollouts are admitted only by the operator's webhook"
                .into(),
        ));
    };
    let user = &req.user_info;
    for q in &questions {
        let what = format!("{} {}/{} in namespace {:?}", q.verb, q.resource, q.name, q.namespace);
        match access.allows(user, q).await {
            Ok(true) => {}
            Ok(false) => {
                return Ok(AdmissionResponse::deny(
                    uid,
                    403,
                    "Forbidden",
                    format!(
                        "user {:?} may not {what}: {} (the operator does not lend its own)",
                        user.username,
                        q.because()
                    ),
                ));
            }
            Err(e) => {
                return Ok(AdmissionResponse::deny(
                    uid,
                    500,
                    "InternalError",
                    format!(
                        "cannot check whether user {:?} may {what} (SubjectAccessReview: {e}); the rollout is refused until it can be checked",
                        user.username
                    ),
                ));
            }
        }
    }
    Ok(AdmissionResponse::allow(uid))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures_util::FutureExt;
    use serde_json::json;

    use super::*;

    /// Answers from a fixed table of (user, name) and records every question.
    struct Table {
        allowed: Vec<(&'static str, &'static str)>,
        fail: bool,
        asked: Mutex<Vec<(RequestUser, String, String)>>,
    }

    impl Access for Table {
        fn allows<'a>(&'a self, user: &'a RequestUser, q: &'a Question) -> BoxFuture<'a, Result<bool, kube::Error>> {
            self.asked
                .lock()
                .unwrap()
                .push((user.clone(), q.namespace.clone(), q.name.clone()));
            let answer = if self.fail {
                Err(kube::Error::Service(Box::new(std::io::Error::other(
                    "connection refused",
                ))))
            } else {
                Ok(self.allowed.iter().any(|(u, n)| *u == user.username && *n == q.name))
            };
            async move { answer }.boxed()
        }
    }

    fn table(allowed: &[(&'static str, &'static str)]) -> Table {
        Table {
            allowed: allowed.to_vec(),
            fail: false,
            asked: Mutex::new(Vec::new()),
        }
    }

    fn rollout(target: &str, annotations: Value) -> Value {
        json!({"metadata": {"name": "r", "annotations": annotations},
               "spec": {"targetRef": {"name": target}, "containers": [{"name": "app", "image": "x:1-distroless"}]}})
    }

    fn body(operation: &str, object: Value, old: Value) -> Vec<u8> {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u1", "kind": {"group": "distrolessguard.dev", "version": "v1alpha1", "kind": "DistrolessRollout"},
            "namespace": "team", "operation": operation,
            "userInfo": {"username": "alice", "uid": "42", "groups": ["devs", "system:authenticated"],
                         "extra": {"scopes": ["a"]}},
            "object": object, "oldObject": old}})
        .to_string()
        .into_bytes()
    }

    async fn decide(access: Option<&Table>, body: &[u8]) -> AdmissionResponse {
        review(body, access.map(|a| a as &dyn Access)).await.unwrap()
    }

    #[tokio::test]
    async fn a_create_is_denied_with_the_reason_when_the_user_may_not_patch_the_target() {
        let access = table(&[("alice", "other")]);
        let r = decide(Some(&access), &body("CREATE", rollout("web", json!({})), Value::Null)).await;
        assert!(!r.allowed);
        let status = r.status.unwrap();
        assert_eq!(status.code, 403);
        assert!(
            status.message.contains("may not patch deployments/web"),
            "{}",
            status.message
        );
    }

    #[tokio::test]
    async fn a_create_is_allowed_when_the_user_may_patch_the_target_and_the_question_names_user_groups_and_extra() {
        let access = table(&[("alice", "web")]);
        let r = decide(Some(&access), &body("CREATE", rollout("web", json!({})), Value::Null)).await;
        assert!(r.allowed);
        let asked = access.asked.lock().unwrap();
        assert_eq!(asked.len(), 1);
        let (user, ns, d) = &asked[0];
        assert_eq!(
            (user.username.as_str(), user.uid.as_str(), ns.as_str(), d.as_str()),
            ("alice", "42", "team", "web")
        );
        assert_eq!(user.groups, ["devs", "system:authenticated"]);
        assert_eq!(user.extra["scopes"], ["a"]);
    }

    #[tokio::test]
    async fn retargeting_needs_permission_on_the_old_and_the_new_deployment() {
        let access = table(&[("alice", "web")]);
        let r = decide(
            Some(&access),
            &body("UPDATE", rollout("web", json!({})), rollout("payments", json!({}))),
        )
        .await;
        assert!(!r.allowed, "alice may not patch payments, the old target");
        let asked: Vec<String> = access.asked.lock().unwrap().iter().map(|a| a.2.clone()).collect();
        assert_eq!(asked, ["web", "payments"]);
    }

    #[tokio::test]
    async fn a_verb_annotation_is_checked_but_a_metadata_only_update_is_not() {
        let access = table(&[]);
        let old = rollout("web", json!({}));
        let verb = decide(
            Some(&access),
            &body(
                "UPDATE",
                rollout("web", json!({"distrolessguard.dev/abort": "true"})),
                old.clone(),
            ),
        )
        .await;
        assert!(!verb.allowed, "an abort is an action on the Deployment");
        let label = decide(
            Some(&access),
            &body("UPDATE", rollout("web", json!({"team": "payments"})), old),
        )
        .await;
        assert!(
            label.allowed,
            "an unrelated annotation changes nothing the operator does"
        );
        assert_eq!(access.asked.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_unanswerable_question_or_no_api_server_denies() {
        let failing = Table {
            fail: true,
            ..table(&[("alice", "web")])
        };
        let r = decide(Some(&failing), &body("CREATE", rollout("web", json!({})), Value::Null)).await;
        assert!(!r.allowed);
        assert!(r.status.unwrap().message.contains("connection refused"));
        let r = decide(None, &body("CREATE", rollout("web", json!({})), Value::Null)).await;
        assert!(!r.allowed);
    }

    #[tokio::test]
    async fn a_verb_annotation_that_is_not_a_verb_is_refused_with_what_it_takes() {
        let access = table(&[("alice", "web")]);
        for (key, value, want) in [
            ("distrolessguard.dev/promote", "0", "a step number from 1"),
            ("distrolessguard.dev/paused", "yes", "\"true\" or \"false\""),
            ("distrolessguard.dev/retry", "-1", "an attempt number"),
        ] {
            let r = decide(
                Some(&access),
                &body("CREATE", rollout("web", json!({key: value})), Value::Null),
            )
            .await;
            assert!(!r.allowed, "{key}: {value}");
            let message = r.status.unwrap().message;
            assert!(message.contains(key) && message.contains(want), "{message}");
        }
    }

    #[tokio::test]
    async fn deletes_pass_without_a_question() {
        let access = table(&[]);
        let r = decide(Some(&access), &body("DELETE", Value::Null, rollout("web", json!({})))).await;
        assert!(r.allowed);
        assert!(access.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_body_that_is_not_a_review_is_an_error_not_a_panic() {
        assert!(review(b"{\"request\": 3}", None).await.is_err());
        assert!(review(b"\xff\xfe", None).await.is_err());
    }
}
