//! Custom resource types. Nothing but types, their schema and their defaults.

mod policy;

pub use policy::*;

/// The CRDs this operator owns, as one multi-document YAML stream.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&DistrolessPolicy::crd())
}
