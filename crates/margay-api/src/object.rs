//! The trait every stored kind implements.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::kind::{Kind, Resource};
use crate::meta::ObjectMeta;
use crate::validate::Errors;

/// A typed resource: `{metadata, spec}` (the `apiVersion`/`kind` pair is implied by `KIND`).
pub trait Object:
    Serialize + DeserializeOwned + Clone + Debug + PartialEq + Send + Sync + Into<Resource> + 'static
{
    const KIND: Kind;

    fn metadata(&self) -> &ObjectMeta;
    fn metadata_mut(&mut self) -> &mut ObjectMeta;

    /// Fills Calico's defaults, so that what is stored (and printed) is explicit.
    fn apply_defaults(&mut self) {}

    /// Checks the object on its own; each problem names its field path.
    fn validate_spec(&self, _errs: &mut Errors) {}

    /// Checks a change against the stored version (immutable fields).
    fn validate_update(&self, _old: &Self, _errs: &mut Errors) {}

    /// Field paths (from the document root, e.g. `spec.bpfLogLevel`) that are valid in Calico
    /// but not implemented by Margay. A trailing `*` matches a prefix. Migration drops them
    /// with a warning; anything else unknown is an error.
    fn calico_ignored_fields() -> &'static [&'static str] {
        &[]
    }

    /// Rewrites a Calico document body (server fields already dropped) into Margay's shape
    /// where the two differ, e.g. CRD-only spellings.
    fn migrate_calico(_body: &mut serde_json::Map<String, serde_json::Value>) {}

    /// Metadata checks plus [`Object::validate_spec`].
    fn validate(&self) -> Errors {
        let mut errs = Errors::default();
        self.metadata().validate(Self::KIND.namespaced(), &mut errs);
        if Self::KIND.namespaced() && self.metadata().namespace.is_none() {
            errs.add("metadata.namespace", "is required for this kind");
        }
        self.validate_spec(&mut errs);
        errs
    }
}

/// Implements the two metadata accessors of [`Object`] for a struct with a `metadata` field.
#[macro_export]
macro_rules! object_meta {
    () => {
        fn metadata(&self) -> &$crate::ObjectMeta {
            &self.metadata
        }
        fn metadata_mut(&mut self) -> &mut $crate::ObjectMeta {
            &mut self.metadata
        }
    };
}
