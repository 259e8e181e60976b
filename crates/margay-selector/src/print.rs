//! Canonical printing, in the same format as Calico's `Selector.String()`.
//!
//! Matching Calico's text means canonical selectors can be compared with, or
//! hashed like, the ones Calico tooling prints. The format also re-parses to
//! the same tree: every `&&`/`||` node is parenthesised, so nesting survives,
//! and `!` binds to exactly one atom or group.

use std::collections::BTreeSet;
use std::fmt::{self, Write};

use crate::Expr;

pub(crate) fn write_expr(f: &mut fmt::Formatter<'_>, expr: &Expr) -> fmt::Result {
    match expr {
        Expr::All => f.write_str("all()"),
        Expr::Global => f.write_str("global()"),
        Expr::Has { key } => write!(f, "has({key})"),
        Expr::Equals { key, value } => write_comparison(f, key, "==", value),
        Expr::NotEquals { key, value } => write_comparison(f, key, "!=", value),
        Expr::Contains { key, value } => write_comparison(f, key, "contains", value),
        Expr::StartsWith { key, value } => write_comparison(f, key, "starts with", value),
        Expr::EndsWith { key, value } => write_comparison(f, key, "ends with", value),
        Expr::In { key, values } => write_set(f, key, "in", values),
        Expr::NotIn { key, values } => write_set(f, key, "not in", values),
        Expr::Not(inner) => {
            f.write_char('!')?;
            write_expr(f, inner)
        }
        Expr::And(operands) => write_group(f, operands, " && "),
        Expr::Or(operands) => write_group(f, operands, " || "),
    }
}

fn write_comparison(f: &mut fmt::Formatter<'_>, key: &str, op: &str, value: &str) -> fmt::Result {
    write!(f, "{key} {op} ")?;
    write_string(f, value)
}

fn write_set(
    f: &mut fmt::Formatter<'_>,
    key: &str,
    op: &str,
    values: &BTreeSet<String>,
) -> fmt::Result {
    write!(f, "{key} {op} {{")?;
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write_string(f, value)?;
    }
    f.write_char('}')
}

fn write_group(f: &mut fmt::Formatter<'_>, operands: &[Expr], separator: &str) -> fmt::Result {
    f.write_char('(')?;
    for (i, operand) in operands.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        write_expr(f, operand)?;
    }
    f.write_char(')')
}

/// Double quotes unless the value contains one. There are no escapes, so a
/// value with both quote characters has no form; [`crate::Selector`] never
/// holds one.
fn write_string(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    let quote = if value.contains('"') { '\'' } else { '"' };
    write!(f, "{quote}{value}{quote}")
}
