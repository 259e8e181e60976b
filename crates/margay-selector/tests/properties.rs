//! Property tests over random expression trees and label sets.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use margay_selector::{Expr, Selector};
use proptest::prelude::*;

// ------------------------------------------------------------- generators

/// Keys: mostly from a small pool so that random label sets hit them, with
/// keywords that must still work as keys, plus arbitrary valid keys.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "a", "b", "app", "projectcalico.org/name", "in", "not", "has", "all", "starts",
        ])
        .prop_map(str::to_owned),
        1 => "[A-Za-z0-9_./-]{1,12}",
    ]
}

/// Values: a small pool (so comparisons sometimes succeed) plus arbitrary
/// strings with either quote character, but never both.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["", "x", "xy", "yx", "it's", "say \"hi\"", "☕"])
            .prop_map(str::to_owned),
        1 => "[a-z'\" ☕&|(){},!=]{0,6}"
            .prop_filter("no form holds both quotes", |v| !(v.contains('\'') && v.contains('"'))),
    ]
}

fn values() -> impl Strategy<Value = BTreeSet<String>> {
    prop::collection::btree_set(value(), 0..4)
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        Just(Expr::All),
        Just(Expr::Global),
        key().prop_map(|key| Expr::Has { key }),
        (key(), value()).prop_map(|(key, value)| Expr::Equals { key, value }),
        (key(), value()).prop_map(|(key, value)| Expr::NotEquals { key, value }),
        (key(), values()).prop_map(|(key, values)| Expr::In { key, values }),
        (key(), values()).prop_map(|(key, values)| Expr::NotIn { key, values }),
        (key(), value()).prop_map(|(key, value)| Expr::Contains { key, value }),
        (key(), value()).prop_map(|(key, value)| Expr::StartsWith { key, value }),
        (key(), value()).prop_map(|(key, value)| Expr::EndsWith { key, value }),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            prop::collection::vec(inner.clone(), 2..5).prop_map(Expr::And),
            prop::collection::vec(inner, 2..5).prop_map(Expr::Or),
        ]
    })
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(key(), value(), 0..6)
}

// ----------------------------------------------------- reference evaluator

/// An independent, deliberately naive reading of Calico's semantics: look
/// the label up, and spell out what an absent label means per operator.
fn reference(expr: &Expr, labels: &BTreeMap<String, String>) -> bool {
    let lookup = |key: &String| labels.get(key).map(String::as_str);
    match expr {
        Expr::All | Expr::Global => true,
        Expr::Has { key } => labels.contains_key(key),
        Expr::Equals { key, value } => match lookup(key) {
            None => false,
            Some(v) => v == value,
        },
        Expr::NotEquals { key, value } => match lookup(key) {
            None => true,
            Some(v) => v != value,
        },
        Expr::In { key, values } => match lookup(key) {
            None => false,
            Some(v) => values.iter().any(|x| x == v),
        },
        Expr::NotIn { key, values } => match lookup(key) {
            None => true,
            Some(v) => values.iter().all(|x| x != v),
        },
        Expr::Contains { key, value } => match lookup(key) {
            None => false,
            Some(v) => (0..=v.len()).any(|i| {
                v.get(i..)
                    .is_some_and(|rest| rest.starts_with(value.as_str()))
            }),
        },
        Expr::StartsWith { key, value } => match lookup(key) {
            None => false,
            Some(v) => v.get(..value.len()) == Some(value.as_str()),
        },
        Expr::EndsWith { key, value } => match lookup(key) {
            None => false,
            Some(v) => {
                v.len() >= value.len() && v.get(v.len() - value.len()..) == Some(value.as_str())
            }
        },
        Expr::Not(inner) => !reference(inner, labels),
        Expr::And(operands) => {
            let mut result = true;
            for operand in operands {
                result &= reference(operand, labels);
            }
            result
        }
        Expr::Or(operands) => {
            let mut result = false;
            for operand in operands {
                result |= reference(operand, labels);
            }
            result
        }
    }
}

// ---------------------------------------------------------- noisy printer

/// A tiny deterministic generator driving the noisy printer's choices.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % sides
    }

    fn chance(&mut self, in_four: u64) -> bool {
        self.roll(4) < in_four
    }
}

/// Prints `expr` the way a person might write it: arbitrary whitespace,
/// either quote, redundant parentheses, glued keyword spellings. Everything
/// it writes must parse back to `expr`.
struct Noisy {
    dice: Dice,
    out: String,
}

impl Noisy {
    /// Optional whitespace between two tokens.
    fn gap(&mut self) {
        let options = ["", "", " ", "  ", "\t", "\n", " \r\n "];
        self.out
            .push_str(options[self.dice.roll(options.len() as u64) as usize]);
    }

    /// Mandatory whitespace between two words.
    fn space(&mut self) {
        let options = [" ", "  ", "\t", "\n"];
        self.out
            .push_str(options[self.dice.roll(options.len() as u64) as usize]);
    }

    fn string(&mut self, value: &str) {
        let quote = if value.contains('\'') {
            '"'
        } else if value.contains('"') || self.dice.chance(2) {
            '\''
        } else {
            '"'
        };
        self.out.push(quote);
        self.out.push_str(value);
        self.out.push(quote);
    }

    /// `key <op> <operand>`, where `op` is a keyword when `word_op`.
    fn comparison(&mut self, key: &str, op: &str, word_op: bool) {
        self.out.push_str(key);
        if word_op {
            self.space();
        } else {
            self.gap();
        }
        self.out.push_str(op);
    }

    fn two_words(&mut self, first: &str, second: &str, glued: &str) {
        if self.dice.chance(1) {
            self.out.push_str(glued);
        } else {
            self.out.push_str(first);
            self.space();
            self.out.push_str(second);
        }
    }

    fn set(&mut self, values: &BTreeSet<String>) {
        self.gap();
        self.out.push('{');
        // Order and duplicates do not matter; reverse and repeat sometimes.
        let mut items: Vec<&String> = values.iter().collect();
        if self.dice.chance(2) {
            items.reverse();
        }
        if let Some(first) = items.first().copied() {
            if self.dice.chance(1) {
                items.push(first);
            }
        }
        for (i, v) in items.iter().enumerate() {
            if i > 0 {
                self.gap();
                self.out.push(',');
            }
            self.gap();
            self.string(v);
        }
        if !items.is_empty() && self.dice.chance(1) {
            self.gap();
            self.out.push(',');
        }
        self.gap();
        self.out.push('}');
    }

    fn expr(&mut self, expr: &Expr) {
        if self.dice.chance(1) && !matches!(expr, Expr::And(_) | Expr::Or(_)) {
            self.out.push('(');
            self.gap();
            self.bare(expr);
            self.gap();
            self.out.push(')');
        } else {
            self.bare(expr);
        }
    }

    fn bare(&mut self, expr: &Expr) {
        match expr {
            Expr::All => self.call("all", None),
            Expr::Global => self.call("global", None),
            Expr::Has { key } => self.call("has", Some(key)),
            Expr::Equals { key, value } => {
                self.comparison(key, "==", false);
                self.gap();
                self.string(value);
            }
            Expr::NotEquals { key, value } => {
                self.comparison(key, "!=", false);
                self.gap();
                self.string(value);
            }
            Expr::Contains { key, value } => {
                self.comparison(key, "contains", true);
                self.gap();
                self.string(value);
            }
            Expr::StartsWith { key, value } => {
                self.comparison(key, "", true);
                self.two_words("starts", "with", "startswith");
                self.gap();
                self.string(value);
            }
            Expr::EndsWith { key, value } => {
                self.comparison(key, "", true);
                self.two_words("ends", "with", "endswith");
                self.gap();
                self.string(value);
            }
            Expr::In { key, values } => {
                self.comparison(key, "in", true);
                self.set(values);
            }
            Expr::NotIn { key, values } => {
                self.comparison(key, "", true);
                self.two_words("not", "in", "notin");
                self.set(values);
            }
            Expr::Not(inner) => {
                self.out.push('!');
                self.gap();
                self.operand(inner, true);
            }
            Expr::And(operands) => self.chain(operands, "&&", true),
            Expr::Or(operands) => self.chain(operands, "||", false),
        }
    }

    fn call(&mut self, name: &str, key: Option<&str>) {
        self.out.push_str(name);
        self.gap();
        self.out.push('(');
        self.gap();
        if let Some(key) = key {
            self.out.push_str(key);
            self.gap();
        }
        self.out.push(')');
    }

    /// An operand of `!`, `&&` or `||`. A nested `&&`/`||` needs
    /// parentheses to stay a separate node, except an `&&` under `||`, which
    /// precedence already groups.
    fn operand(&mut self, expr: &Expr, in_and_or_not: bool) {
        let needs_parens = match expr {
            Expr::And(_) => in_and_or_not || self.dice.chance(2),
            Expr::Or(_) => true,
            _ => false,
        };
        if needs_parens {
            self.out.push('(');
            self.gap();
            self.bare(expr);
            self.gap();
            self.out.push(')');
        } else {
            self.expr(expr);
        }
    }

    fn chain(&mut self, operands: &[Expr], separator: &str, is_and: bool) {
        for (i, operand) in operands.iter().enumerate() {
            if i > 0 {
                self.gap();
                self.out.push_str(separator);
                self.gap();
            }
            self.operand(operand, is_and);
        }
    }
}

fn noisy(expr: &Expr, seed: u64) -> String {
    let mut printer = Noisy {
        dice: Dice(seed),
        out: String::new(),
    };
    printer.gap();
    printer.expr(expr);
    printer.gap();
    printer.out
}

// -------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Display is canonical: it parses back to the same tree.
    #[test]
    fn display_round_trips(expr in expr()) {
        let selector = Selector::from_expr(expr.clone()).expect("generated trees are valid");
        let printed = selector.to_string();
        let reparsed = Selector::parse(&printed)
            .unwrap_or_else(|e| panic!("{printed:?} does not parse: {e}"));
        prop_assert_eq!(reparsed.expr(), &expr, "printed as {}", printed);
        // Printing is a fixed point.
        prop_assert_eq!(reparsed.to_string(), printed);
    }

    /// Text written with arbitrary spacing, quoting and redundant parens
    /// parses to the intended tree.
    #[test]
    fn noisy_text_parses_to_the_intended_tree(expr in expr(), seed in any::<u64>()) {
        let text = noisy(&expr, seed);
        let parsed = Selector::parse(&text)
            .unwrap_or_else(|e| panic!("{text:?} does not parse: {e}"));
        prop_assert_eq!(parsed.expr(), &expr, "text was {:?}", text);
    }

    /// `matches` agrees with the reference evaluator, whatever the label
    /// source.
    #[test]
    fn matches_agrees_with_reference(expr in expr(), labels in labels()) {
        let expected = reference(&expr, &labels);
        let selector = Selector::from_expr(expr).expect("generated trees are valid");
        prop_assert_eq!(selector.matches(&labels), expected);
        let hashed: HashMap<String, String> = labels.clone().into_iter().collect();
        prop_assert_eq!(selector.matches(&hashed), expected);
        let pairs: Vec<(&str, &str)> =
            labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        prop_assert_eq!(selector.matches(pairs.as_slice()), expected);
    }

    /// `!x` is the complement of `x`, and `k != v` is `!(k == v)`.
    #[test]
    fn negation_is_complement(expr in expr(), labels in labels(), k in key(), v in value()) {
        let selector = Selector::from_expr(expr.clone()).expect("valid");
        let negated = Selector::from_expr(Expr::Not(Box::new(expr))).expect("valid");
        prop_assert_eq!(negated.matches(&labels), !selector.matches(&labels));
        let ne = Selector::from_expr(Expr::NotEquals { key: k.clone(), value: v.clone() })
            .expect("valid");
        let eq = Selector::from_expr(Expr::Equals { key: k, value: v }).expect("valid");
        prop_assert_eq!(ne.matches(&labels), !eq.matches(&labels));
    }

    /// Arbitrary input never panics; errors point inside the input (or just
    /// past it); whatever parses round-trips.
    #[test]
    fn arbitrary_input(input in prop_oneof![
        "\\PC{0,40}",
        // Token soup: much likelier to get deep into the grammar.
        prop::collection::vec(
            prop::sample::select(vec![
                "a", "b.c/d", " ", "==", "!=", "!", "&&", "||", "(", ")", "{", "}", ",",
                "'x'", "\"y\"", "'", "in", "not", "starts", "with", "ends", "contains",
                "has(", "all()", "global()", "=", "&", "é",
            ]),
            0..24,
        )
        .prop_map(|parts| parts.concat()),
    ]) {
        match Selector::parse(&input) {
            Ok(selector) => {
                let printed = selector.to_string();
                prop_assert_eq!(Selector::parse(&printed), Ok(selector));
            }
            Err(e) => {
                prop_assert!(e.column >= 1 && e.column <= input.chars().count() + 1, "{}", e);
                prop_assert!(!e.message.is_empty());
            }
        }
    }
}
