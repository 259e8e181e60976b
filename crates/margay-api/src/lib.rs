//! Margay's resource model, API group `margay.dev/v1`.
//!
//! Every kind is a plain serde struct implementing [`Object`]; [`Resource`] is the enum over all
//! of them. [`document::decode`] turns a YAML/JSON document (Margay's own, or Calico's
//! `projectcalico.org/v3` / `crd.projectcalico.org/v1` as `calicoctl`/`kubectl` print them)
//! into a defaulted, validated resource.

pub mod document;
pub mod kind;
pub mod kinds;
pub mod meta;
pub mod object;
mod serde_util;
pub mod validate;

pub use document::{decode, parse_documents, set_default_namespace, Decoded, Source};
pub use kind::{Kind, Resource};
pub use kinds::*;
pub use meta::{ObjectMeta, API_VERSION};
pub use object::Object;
pub use validate::{Errors, FieldError};
