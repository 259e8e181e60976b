//! Error types.

use crate::MAX_DEPTH;

/// Why a selector failed to parse, and where.
///
/// Displays as `column 7: expected a quoted string after '=='`, so that a
/// validation message can quote the selector and the user can count to the
/// problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ParseError {
    /// 1-based column, counted in characters (not bytes), of the offending
    /// token; one past the last character when the input ended too early.
    pub column: usize,
    /// What was wrong, phrased for a human.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(column: usize, message: impl Into<String>) -> Self {
        ParseError {
            column,
            message: message.into(),
        }
    }
}

/// Why [`crate::Selector::from_expr`] refused an expression tree: it has no
/// textual form that would parse back to itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidExpr {
    /// A label key that is empty or uses characters outside `[A-Za-z0-9_./-]`.
    #[error(
        "invalid label key {key:?}: keys must be non-empty and use only ASCII letters, \
         digits, '_', '.', '/' and '-'"
    )]
    InvalidKey {
        /// The offending key.
        key: String,
    },
    /// A value containing both `'` and `"`; selector strings have no escapes.
    #[error("value {value:?} contains both ' and \", so no selector string can hold it")]
    UnquotableValue {
        /// The offending value.
        value: String,
    },
    /// An `And` or `Or` with fewer than two operands, which the parser never
    /// produces.
    #[error("'{operator}' needs at least two operands, got {count}")]
    TooFewOperands {
        /// `&&` or `||`.
        operator: &'static str,
        /// How many operands there were.
        count: usize,
    },
    /// The tree is deeper than [`MAX_DEPTH`].
    #[error("expression nests more than {MAX_DEPTH} levels deep")]
    TooDeep,
}
