//! Tests that need nothing but the code and the repository: the pure engine
//! (with property tests and Kubernetes' own PSA fixtures), the CRD, the real
//! `distroless-guard` binary offline, the crate's architecture, the Dockerfile.

#[path = "../support/command.rs"]
#[allow(dead_code)]
mod command;
#[path = "../support/corpus.rs"]
mod corpus;
#[path = "../support/psa.rs"]
mod psa;
mod support {
    pub(crate) use super::{corpus, psa};
}

mod architecture;
mod check_cli;
mod check_custom_resources;
mod check_input;
mod conformance_psa;
mod crd;
mod dockerfile;
mod engine;
mod fix_corpus;
mod fuzz_regressions;
mod mutation;
