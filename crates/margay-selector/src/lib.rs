//! Calico's label selector language.
//!
//! Calico resources pick the endpoints, namespaces, nodes and network sets
//! they apply to with a small boolean expression language over labels, for
//! example `app == 'web' && tier in {'frontend', 'edge'} && !has(canary)`.
//! Margay keeps the language unchanged so that existing Calico policies work
//! as written; this crate parses it, evaluates it against a set of labels and
//! prints it back in a canonical form.
//!
//! # Grammar
//!
//! ```text
//! selector   := <empty> | or
//! or         := and ( '||' and )*
//! and        := unary ( '&&' unary )*
//! unary      := '!'* primary
//! primary    := '(' or ')' | 'all()' | 'global()' | 'has(' key ')'
//!             | key ( '==' | '!=' | 'contains' | 'starts with' | 'ends with' ) string
//!             | key ( 'in' | 'not in' ) '{' [ string ( ',' string )* [ ',' ] ] '}'
//! key        := [A-Za-z0-9_./-]+
//! string     := "'" <anything but '> "'" | '"' <anything but "> '"'
//! ```
//!
//! Whitespace may appear between any two tokens (and inside `starts with`,
//! `ends with` and `not in`). An empty or whitespace-only selector means
//! `all()`.
//!
//! Calico-compatible quirks that are kept on purpose: strings have no escape
//! sequences (a value can contain `'` or `"` but not both), a set may end with
//! a trailing comma, and `startswith`, `endswith` and `notin` are accepted
//! without the inner space. Margay is more lenient than Calico in one respect:
//! any whitespace character separates tokens, where Calico only accepts space
//! and tab, so selectors written as multi-line YAML strings still parse.
//!
//! # Absent labels
//!
//! `k != 'v'` and `k not in {...}` match when `k` is absent; `==`, `in`,
//! `contains`, `starts with` and `ends with` do not. This mirrors Calico, so
//! `!(k == 'v')` and `k != 'v'` are the same selector.
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeMap;
//! use margay_selector::Selector;
//!
//! let sel: Selector = "app == 'web' && tier not in {'db'}".parse()?;
//! let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
//! assert!(sel.matches(&labels));
//! assert_eq!(sel.to_string(), r#"(app == "web" && tier not in {"db"})"#);
//! # Ok::<(), margay_selector::ParseError>(())
//! ```
#![warn(missing_docs)]

mod ast;
mod error;
mod labels;
mod lexer;
mod parser;
mod print;

use std::fmt;
use std::str::FromStr;

pub use ast::Expr;
pub use error::{InvalidExpr, ParseError};
pub use labels::Labels;

/// The deepest expression tree a [`Selector`] may hold.
///
/// Parsing, matching, printing and dropping a selector all recurse over its
/// tree, so an unbounded depth would let a hostile selector (say, ten
/// thousand `(`) overflow the stack. Real selectors nest a handful of
/// levels; 128 leaves plenty of room. Depth counts tree levels: a single
/// comparison has depth 1, `!has(a)` depth 2, `a == 'x' && (b == 'y' ||
/// c == 'z')` depth 3. The parser also refuses parentheses nested deeper
/// than this, even redundant ones.
pub const MAX_DEPTH: usize = 128;

/// A parsed label selector.
///
/// A `Selector` is always printable: its [`Display`](fmt::Display) output
/// parses back to an equal `Selector`. That is why the expression tree is
/// only reachable through [`Selector::expr`] and can only be replaced through
/// the validating [`Selector::from_expr`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    expr: Expr,
}

impl Selector {
    /// Parses a selector. Empty and whitespace-only input means `all()`.
    ///
    /// # Errors
    ///
    /// A [`ParseError`] naming the 1-based character column of the first
    /// problem.
    pub fn parse(input: &str) -> Result<Selector, ParseError> {
        parser::parse(input).map(|expr| Selector { expr })
    }

    /// The selector that matches every label set, `all()`.
    pub fn all() -> Selector {
        Selector { expr: Expr::All }
    }

    /// Wraps an expression built in code, e.g. by the policy engine when it
    /// combines a namespace selector with an endpoint selector.
    ///
    /// # Errors
    ///
    /// Rejects expressions that have no textual form, so that every
    /// `Selector` keeps its print/parse round-trip: label keys must be
    /// non-empty and use only `[A-Za-z0-9_./-]`, values must not contain
    /// both quote characters, `And`/`Or` need at least two operands and the
    /// tree may be at most [`MAX_DEPTH`] levels deep.
    pub fn from_expr(expr: Expr) -> Result<Selector, InvalidExpr> {
        expr.validate()?;
        Ok(Selector { expr })
    }

    /// The expression tree, for callers that analyse selectors.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Consumes the selector, returning its expression tree.
    pub fn into_expr(self) -> Expr {
        self.expr
    }

    /// Whether the selector matches the given labels.
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        self.expr.matches(labels)
    }

    /// Whether this is exactly `all()` (which is also what an empty selector
    /// parses to).
    ///
    /// This is structural: `global()` or `has(a) || !has(a)` also match
    /// everything but are not `all()`, because callers use this to recognise
    /// the "no restriction" selector, and `global()` carries a different
    /// meaning in a policy rule's `namespaceSelector`.
    pub fn is_all(&self) -> bool {
        self.expr == Expr::All
    }
}

impl Default for Selector {
    /// `all()`, matching Calico's treatment of an omitted selector.
    fn default() -> Self {
        Selector::all()
    }
}

impl fmt::Display for Selector {
    /// Prints the canonical form, which is byte-for-byte what Calico's own
    /// `Selector.String()` produces for the same tree: values in double quotes
    /// unless they contain one, set members sorted, and every `&&`/`||` group
    /// wrapped in parentheses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        print::write_expr(f, &self.expr)
    }
}

impl FromStr for Selector {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}
