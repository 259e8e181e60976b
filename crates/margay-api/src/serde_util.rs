//! Serde helpers shared by the kinds.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};

/// The string form's parser for types that already implement `FromStr`.
pub(crate) fn parse_str<T>(s: &str) -> Result<T, String>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    s.parse().map_err(|e: T::Err| e.to_string())
}

/// Deserializes a scalar that users write either as a number or as a string (ports,
/// protocols, AS numbers, Kubernetes int-or-string). Each form goes to its own parser; their
/// error messages become the field's error.
pub(crate) fn number_or_string<'de, D, T>(
    d: D,
    expecting: &'static str,
    from_number: fn(i128) -> Result<T, String>,
    from_str: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct NumberOrString<T> {
        expecting: &'static str,
        from_number: fn(i128) -> Result<T, String>,
        from_str: fn(&str) -> Result<T, String>,
        out: PhantomData<T>,
    }

    impl<T> Visitor<'_> for NumberOrString<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
            (self.from_number)(i128::from(n)).map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
            (self.from_number)(i128::from(n)).map_err(E::custom)
        }

        fn visit_f64<E: de::Error>(self, n: f64) -> Result<T, E> {
            // YAML reads an unquoted `1.10` as the float 1.1; say so instead of guessing.
            Err(E::custom(format!(
                "{n} is not a whole number: expected {}",
                self.expecting
            )))
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            (self.from_str)(s).map_err(E::custom)
        }
    }

    d.deserialize_any(NumberOrString {
        expecting,
        from_number,
        from_str,
        out: PhantomData,
    })
}
