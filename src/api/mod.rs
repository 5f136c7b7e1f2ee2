//! Custom resource types. Nothing but types, their schema and their defaults.

mod policy;

pub use policy::*;
