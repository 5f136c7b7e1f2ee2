//! AdmissionReview `admission.k8s.io/v1`, the parts this webhook reads and writes.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

pub use kube::core::admission::Operation;

use crate::policy::ObjectShape;

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// A review whose object is read as `O`: the engine's shape for the kinds it
/// knows, a JSON value for custom resources.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
pub struct AdmissionReview<O = ObjectShape> {
    pub api_version: String,
    pub kind: String,
    #[serde(default = "Option::default")]
    pub request: Option<AdmissionRequest<O>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    pub kind: String,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
pub struct AdmissionRequest<O = ObjectShape> {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub sub_resource: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub operation: Operation,
    /// The object, read straight into the shape the engine needs (one pass
    /// over the body; everything else is skipped).
    #[serde(default = "Option::default")]
    pub object: Option<O>,
    #[serde(default = "Option::default")]
    pub old_object: Option<O>,
    pub dry_run: Option<bool>,
    /// Who makes the request, as the API server authenticated it.
    #[serde(default)]
    pub user_info: UserInfo,
}

/// Only the username is read: the groups are not needed by any decision.
#[derive(Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
}

/// Just enough of a review to answer it when its object cannot be read.
#[derive(Deserialize, Debug)]
pub struct ReviewHeader {
    pub request: RequestHeader,
}

#[derive(Deserialize, Debug)]
pub struct RequestHeader {
    pub uid: String,
    pub kind: GroupVersionKind,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// Base64 of the RFC 6902 JSON patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
}

/// Reads a review. A body that is valid UTF-8 as a whole (any review the
/// API server sends) is read without checking each string again; any other
/// body gets the byte-wise reader and its errors.
pub fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, serde_json::Error> {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    }
}

impl AdmissionResponse {
    pub fn allow(uid: &str) -> Self {
        AdmissionResponse {
            uid: uid.to_string(),
            allowed: true,
            status: None,
            patch_type: None,
            patch: None,
            warnings: Vec::new(),
            audit_annotations: BTreeMap::new(),
        }
    }

    pub fn deny(uid: &str, code: u16, reason: &'static str, message: String) -> Self {
        AdmissionResponse {
            allowed: false,
            status: Some(Status { code, reason, message }),
            ..Self::allow(uid)
        }
    }

    /// Attaches a JSON patch (skipped when it has no operation).
    pub fn with_patch(mut self, ops: &[json_patch::PatchOperation]) -> Result<Self, serde_json::Error> {
        if !ops.is_empty() {
            let bytes = serde_json::to_vec(ops)?;
            self.patch = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
            self.patch_type = Some("JSONPatch");
        }
        Ok(self)
    }

    pub fn into_review(self) -> ReviewOut {
        ReviewOut {
            api_version: API_VERSION,
            kind: KIND,
            response: self,
        }
    }
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOut {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub response: AdmissionResponse,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_is_not_utf8_throughout_is_read_as_the_byte_wise_reader_reads_it() {
        let review = |options: &[u8], uid: &[u8]| {
            let mut body =
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""#.to_vec();
            body.extend_from_slice(uid);
            body.extend_from_slice(br#"","kind":{"kind":"Pod"},"operation":"CREATE","options":{"note":""#);
            body.extend_from_slice(options);
            body.extend_from_slice(br#""}}}"#);
            body
        };
        // A stray byte in a field the webhook skips: read, as before.
        let skipped = review(b"caf\xe9", b"u1");
        assert!(std::str::from_utf8(&skipped).is_err());
        let read: AdmissionReview = parse(&skipped).unwrap();
        assert_eq!(read.request.unwrap().uid, "u1");
        // In a field it reads: the byte-wise reader's error.
        let in_uid = review(b"ok", b"u\xff");
        let err = parse::<AdmissionReview>(&in_uid).unwrap_err();
        assert_eq!(
            err.to_string(),
            serde_json::from_slice::<AdmissionReview>(&in_uid)
                .unwrap_err()
                .to_string()
        );
        // Valid UTF-8 reads the same either way.
        let fine = review(b"ok", b"u2");
        assert_eq!(
            format!("{:?}", parse::<AdmissionReview>(&fine).unwrap()),
            format!("{:?}", serde_json::from_slice::<AdmissionReview>(&fine).unwrap())
        );
    }

    #[test]
    fn the_header_of_a_review_with_an_unreadable_object_is_still_read() {
        let body = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":{"spec":{"containers":"not a list"}}}}"#;
        assert!(serde_json::from_str::<AdmissionReview>(body).is_err());
        let header: ReviewHeader = serde_json::from_str(body).unwrap();
        assert_eq!(
            (header.request.uid.as_str(), header.request.kind.kind.as_str()),
            ("u1", "Pod")
        );
    }
}
