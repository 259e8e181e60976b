//! The selector expression tree and its evaluation.

use std::collections::BTreeSet;

use crate::{lexer, InvalidExpr, Labels, MAX_DEPTH};

/// One node of a selector's expression tree.
///
/// The tree mirrors the source faithfully: parentheses that group an `&&`
/// inside another `&&` produce a nested [`Expr::And`], and `!!x` is two
/// [`Expr::Not`] nodes. Calico collapses double negation while parsing; Margay
/// keeps it so that any tree prints and re-parses to itself. The two forms
/// always evaluate the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    /// `all()`: matches every label set.
    All,
    /// `global()`: matches every label set, exactly like Calico's
    /// `GlobalNode`.
    ///
    /// The operator only means something in the `namespaceSelector` of a
    /// policy rule, where Calico rewrites it to
    /// `!has(projectcalico.org/namespace)` so that the rule selects
    /// non-namespaced resources (host endpoints, global network sets) instead
    /// of namespaces. That rewrite belongs to the policy engine; as a plain
    /// label predicate Calico evaluates `global()` to true, and so does this
    /// crate.
    Global,
    /// `has(key)`: the label is present, whatever its value.
    Has {
        /// Label key.
        key: String,
    },
    /// `key == 'value'`: false when the label is absent.
    Equals {
        /// Label key.
        key: String,
        /// Value compared against.
        value: String,
    },
    /// `key != 'value'`: true when the label is absent.
    NotEquals {
        /// Label key.
        key: String,
        /// Value compared against.
        value: String,
    },
    /// `key in {'a', 'b'}`: false when the label is absent. The set may be
    /// empty, in which case nothing matches.
    In {
        /// Label key.
        key: String,
        /// Accepted values; a set because order and duplicates do not matter.
        values: BTreeSet<String>,
    },
    /// `key not in {'a', 'b'}`: true when the label is absent.
    NotIn {
        /// Label key.
        key: String,
        /// Rejected values.
        values: BTreeSet<String>,
    },
    /// `key contains 'sub'`: false when the label is absent.
    Contains {
        /// Label key.
        key: String,
        /// Substring looked for.
        value: String,
    },
    /// `key starts with 'prefix'`: false when the label is absent.
    StartsWith {
        /// Label key.
        key: String,
        /// Required prefix.
        value: String,
    },
    /// `key ends with 'suffix'`: false when the label is absent.
    EndsWith {
        /// Label key.
        key: String,
        /// Required suffix.
        value: String,
    },
    /// `!expr`.
    Not(Box<Expr>),
    /// `a && b && ...`, with at least two operands.
    And(Vec<Expr>),
    /// `a || b || ...`, with at least two operands.
    Or(Vec<Expr>),
}

impl Expr {
    /// Evaluates the expression against a set of labels, with Calico's
    /// absent-label semantics (see each variant).
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        match self {
            Expr::All | Expr::Global => true,
            Expr::Has { key } => labels.get_label(key).is_some(),
            Expr::Equals { key, value } => labels.get_label(key) == Some(value.as_str()),
            Expr::NotEquals { key, value } => labels.get_label(key) != Some(value.as_str()),
            Expr::In { key, values } => labels.get_label(key).is_some_and(|v| values.contains(v)),
            Expr::NotIn { key, values } => {
                !labels.get_label(key).is_some_and(|v| values.contains(v))
            }
            Expr::Contains { key, value } => labels
                .get_label(key)
                .is_some_and(|v| v.contains(value.as_str())),
            Expr::StartsWith { key, value } => labels
                .get_label(key)
                .is_some_and(|v| v.starts_with(value.as_str())),
            Expr::EndsWith { key, value } => labels
                .get_label(key)
                .is_some_and(|v| v.ends_with(value.as_str())),
            Expr::Not(inner) => !inner.matches(labels),
            Expr::And(operands) => operands.iter().all(|e| e.matches(labels)),
            Expr::Or(operands) => operands.iter().any(|e| e.matches(labels)),
        }
    }

    /// Checks that the tree has a textual form; see [`crate::Selector::from_expr`].
    pub(crate) fn validate(&self) -> Result<(), InvalidExpr> {
        self.validate_at(1)
    }

    /// `level` is this node's depth. Checking it before descending bounds the
    /// recursion by [`MAX_DEPTH`] even for a hostile, very deep tree.
    fn validate_at(&self, level: usize) -> Result<(), InvalidExpr> {
        if level > MAX_DEPTH {
            return Err(InvalidExpr::TooDeep);
        }
        match self {
            Expr::All | Expr::Global => Ok(()),
            Expr::Has { key } => check_key(key),
            Expr::Equals { key, value }
            | Expr::NotEquals { key, value }
            | Expr::Contains { key, value }
            | Expr::StartsWith { key, value }
            | Expr::EndsWith { key, value } => {
                check_key(key)?;
                check_value(value)
            }
            Expr::In { key, values } | Expr::NotIn { key, values } => {
                check_key(key)?;
                values.iter().try_for_each(|v| check_value(v))
            }
            Expr::Not(inner) => inner.validate_at(level + 1),
            Expr::And(operands) => check_operands("&&", operands, level),
            Expr::Or(operands) => check_operands("||", operands, level),
        }
    }
}

fn check_key(key: &str) -> Result<(), InvalidExpr> {
    if !key.is_empty() && key.chars().all(lexer::is_key_char) {
        Ok(())
    } else {
        Err(InvalidExpr::InvalidKey {
            key: key.to_owned(),
        })
    }
}

fn check_value(value: &str) -> Result<(), InvalidExpr> {
    if value.contains('\'') && value.contains('"') {
        Err(InvalidExpr::UnquotableValue {
            value: value.to_owned(),
        })
    } else {
        Ok(())
    }
}

fn check_operands(
    operator: &'static str,
    operands: &[Expr],
    level: usize,
) -> Result<(), InvalidExpr> {
    if operands.len() < 2 {
        return Err(InvalidExpr::TooFewOperands {
            operator,
            count: operands.len(),
        });
    }
    operands.iter().try_for_each(|e| e.validate_at(level + 1))
}
