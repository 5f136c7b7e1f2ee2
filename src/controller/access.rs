//! [`Access`] through the API server: a SubjectAccessReview for the
//! requesting user, so the rollout webhook asks exactly what the API server
//! would decide for that user's own `kubectl patch deployment` or
//! `kubectl get secret`.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

use crate::admission::rollouts::{Access, Question, RequestUser};

pub(crate) struct SubjectAccess {
    client: kube::Client,
}

impl SubjectAccess {
    pub(crate) fn new(client: kube::Client) -> Self {
        SubjectAccess { client }
    }
}

impl Access for SubjectAccess {
    fn allows<'a>(&'a self, user: &'a RequestUser, q: &'a Question) -> BoxFuture<'a, Result<bool, kube::Error>> {
        async move {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.username.clone()),
                    uid: Some(user.uid.clone()).filter(|u| !u.is_empty()),
                    groups: Some(user.groups.clone()),
                    extra: Some(user.extra.clone()).filter(|e| !e.is_empty()),
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(q.namespace.clone()),
                        verb: Some(q.verb.into()),
                        group: Some(q.group.into()),
                        resource: Some(q.resource.into()),
                        name: Some(q.name.clone()),
                        ..ResourceAttributes::default()
                    }),
                    ..SubjectAccessReviewSpec::default()
                },
                ..SubjectAccessReview::default()
            };
            let answer = Api::<SubjectAccessReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await?;
            Ok(answer.status.is_some_and(|s| s.allowed && s.denied != Some(true)))
        }
        .boxed()
    }
}
