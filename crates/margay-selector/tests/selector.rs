//! Behaviour of the public API: parsing, matching, printing and errors.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use margay_selector::{Expr, InvalidExpr, Labels, ParseError, Selector, MAX_DEPTH};

fn sel(input: &str) -> Selector {
    Selector::parse(input).unwrap_or_else(|e| panic!("{input:?} failed to parse: {e}"))
}

fn matches(input: &str, labels: &[(&str, &str)]) -> bool {
    sel(input).matches(labels)
}

fn err(input: &str) -> ParseError {
    match Selector::parse(input) {
        Ok(s) => panic!("{input:?} parsed unexpectedly as {s}"),
        Err(e) => e,
    }
}

/// Asserts the error column and that the message contains `needle`.
#[track_caller]
fn assert_err(input: &str, column: usize, needle: &str) {
    let e = err(input);
    assert_eq!(e.column, column, "column for {input:?}: {e}");
    assert!(
        e.message.contains(needle),
        "message for {input:?} should contain {needle:?}: {e}"
    );
}

fn key(k: &str) -> String {
    k.to_owned()
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

// ---------------------------------------------------------------- operators

#[test]
fn all_and_empty() {
    for input in ["all()", "", "   ", "\t\n", "all( )", " all () "] {
        let s = sel(input);
        assert!(s.is_all(), "{input:?}");
        assert!(s.matches(&[("a", "b")]));
        assert!(s.matches(&[] as &[(&str, &str)]));
    }
    assert!(Selector::all().is_all());
    assert!(Selector::default().is_all());
    assert_eq!(sel(""), sel("all()"));
}

#[test]
fn global_matches_everything_but_is_not_all() {
    let s = sel("global()");
    assert_eq!(s.expr(), &Expr::Global);
    assert!(!s.is_all());
    assert!(s.matches(&[] as &[(&str, &str)]));
    assert!(s.matches(&[("projectcalico.org/namespace", "default")]));
    assert!(!sel("!global()").matches(&[("a", "b")]));
}

#[test]
fn has() {
    assert_eq!(sel("has(a)").expr(), &Expr::Has { key: key("a") });
    assert!(matches("has(a)", &[("a", "")]));
    assert!(matches("has( a )", &[("a", "x")]));
    assert!(!matches("has(a)", &[("b", "x")]));
    assert!(matches("!has(a)", &[("b", "x")]));
    assert!(!matches("! has(a)", &[("a", "x")]));
}

#[test]
fn equals_and_not_equals() {
    assert_eq!(
        sel("a == 'b'").expr(),
        &Expr::Equals {
            key: key("a"),
            value: key("b")
        }
    );
    assert!(matches("a == 'b'", &[("a", "b")]));
    assert!(!matches("a == 'b'", &[("a", "c")]));
    assert!(matches("a != 'b'", &[("a", "c")]));
    assert!(!matches("a != 'b'", &[("a", "b")]));
    assert!(matches("a == ''", &[("a", "")]));
    assert!(!matches("a == ''", &[]));
}

#[test]
fn in_and_not_in() {
    assert_eq!(
        sel("a in {'x', 'y', 'x'}").expr(),
        &Expr::In {
            key: key("a"),
            values: set(&["x", "y"])
        }
    );
    assert!(matches("a in {'x', 'y'}", &[("a", "y")]));
    assert!(!matches("a in {'x', 'y'}", &[("a", "z")]));
    assert!(matches("a not in {'x','y'}", &[("a", "z")]));
    assert!(!matches("a not in {'x','y'}", &[("a", "x")]));
    // Empty sets.
    assert!(!matches("a in {}", &[("a", "")]));
    assert!(matches("a not in {}", &[("a", "")]));
    assert_eq!(
        sel("a not in { }").expr(),
        &Expr::NotIn {
            key: key("a"),
            values: BTreeSet::new()
        }
    );
}

#[test]
fn string_operators() {
    assert!(matches("a contains 'ell'", &[("a", "hello")]));
    assert!(matches("a contains ''", &[("a", "")]));
    assert!(!matches("a contains 'xyz'", &[("a", "hello")]));
    assert!(matches("a starts with 'he'", &[("a", "hello")]));
    assert!(!matches("a starts with 'lo'", &[("a", "hello")]));
    assert!(matches("a ends with 'lo'", &[("a", "hello")]));
    assert!(!matches("a ends with 'he'", &[("a", "hello")]));
    assert_eq!(
        sel("a starts with 'x'").expr(),
        &Expr::StartsWith {
            key: key("a"),
            value: key("x")
        }
    );
    assert_eq!(
        sel("a ends with 'x'").expr(),
        &Expr::EndsWith {
            key: key("a"),
            value: key("x")
        }
    );
    assert_eq!(
        sel("a contains 'x'").expr(),
        &Expr::Contains {
            key: key("a"),
            value: key("x")
        }
    );
}

#[test]
fn absent_label_semantics_match_calico() {
    let none: &[(&str, &str)] = &[];
    assert!(!matches("a == 'x'", none));
    assert!(matches("a != 'x'", none));
    assert!(!matches("a in {'x'}", none));
    assert!(matches("a not in {'x'}", none));
    assert!(!matches("a contains ''", none));
    assert!(!matches("a starts with ''", none));
    assert!(!matches("a ends with ''", none));
    assert!(!matches("has(a)", none));
    // `!(a == 'x')` and `a != 'x'` agree, present or absent.
    for labels in [none, &[("a", "x")], &[("a", "y")]] {
        assert_eq!(matches("!a == 'x'", labels), matches("a != 'x'", labels));
    }
}

#[test]
fn glued_keyword_spellings_calico_accepts() {
    assert_eq!(sel("a startswith 'x'"), sel("a starts with 'x'"));
    assert_eq!(sel("a endswith 'x'"), sel("a ends with 'x'"));
    assert_eq!(sel("a notin {'x'}"), sel("a not in {'x'}"));
    assert_eq!(sel("a starts \t with 'x'"), sel("a starts with 'x'"));
}

// --------------------------------------------------------- boolean structure

#[test]
fn and_binds_tighter_than_or() {
    let a = Expr::Has { key: key("a") };
    let b = Expr::Has { key: key("b") };
    let c = Expr::Has { key: key("c") };
    assert_eq!(
        sel("has(a) || has(b) && has(c)").expr(),
        &Expr::Or(vec![a.clone(), Expr::And(vec![b.clone(), c.clone()])])
    );
    assert_eq!(
        sel("has(a) && has(b) || has(c)").expr(),
        &Expr::Or(vec![Expr::And(vec![a.clone(), b.clone()]), c.clone()])
    );
    assert_eq!(
        sel("has(a) && (has(b) || has(c))").expr(),
        &Expr::And(vec![a.clone(), Expr::Or(vec![b.clone(), c.clone()])])
    );
    assert!(matches("has(a) || has(b) && has(c)", &[("a", "")]));
    assert!(!matches("(has(a) || has(b)) && has(c)", &[("a", "")]));
}

#[test]
fn not_binds_tightest() {
    let a = Expr::Has { key: key("a") };
    let b = Expr::Has { key: key("b") };
    assert_eq!(
        sel("!has(a) && has(b)").expr(),
        &Expr::And(vec![Expr::Not(Box::new(a.clone())), b.clone()])
    );
    assert_eq!(
        sel("!(has(a) && has(b))").expr(),
        &Expr::Not(Box::new(Expr::And(vec![a.clone(), b])))
    );
    // `!` applies to the whole comparison, not to the key.
    assert_eq!(
        sel("!a == 'x'").expr(),
        &Expr::Not(Box::new(Expr::Equals {
            key: key("a"),
            value: key("x")
        }))
    );
    // Double negation is kept in the tree but evaluates away.
    assert_eq!(
        sel("!!has(a)").expr(),
        &Expr::Not(Box::new(Expr::Not(Box::new(a))))
    );
    assert!(matches("!!has(a)", &[("a", "")]));
}

#[test]
fn chains_are_flat_and_groups_nest() {
    let [a, b, c] = ["a", "b", "c"].map(|k| Expr::Has { key: key(k) });
    assert_eq!(
        sel("has(a) && has(b) && has(c)").expr(),
        &Expr::And(vec![a.clone(), b.clone(), c.clone()])
    );
    assert_eq!(
        sel("(has(a) && has(b)) && has(c)").expr(),
        &Expr::And(vec![Expr::And(vec![a.clone(), b.clone()]), c.clone()])
    );
    // Redundant parentheses add nothing.
    assert_eq!(sel("((has(a)))").expr(), &a);
}

#[test]
fn whitespace_is_optional_and_anywhere() {
    let canonical = sel("a == 'x' && b in {'y', 'z'} || !has(c)");
    for input in [
        "a=='x'&&b in{'y','z'}||!has(c)",
        "  a  ==  'x'  &&  b  in  {  'y'  ,  'z'  }  ||  !  has  (  c  )  ",
        "a == 'x'\n&& b in {'y', 'z'}\r\n|| !has(c)",
    ] {
        assert_eq!(sel(input), canonical, "{input:?}");
    }
}

// ------------------------------------------------------------ keys & strings

#[test]
fn realistic_keys() {
    assert!(matches(
        "projectcalico.org/name == 'default'",
        &[("projectcalico.org/name", "default")]
    ));
    assert!(matches(
        "pcns.kubernetes.io/metadata.name in {'kube-system'}",
        &[("pcns.kubernetes.io/metadata.name", "kube-system")]
    ));
    assert!(matches("app_v-2.x/y == '1'", &[("app_v-2.x/y", "1")]));
}

#[test]
fn keywords_can_be_label_keys() {
    for k in [
        "has", "all", "global", "in", "not", "contains", "starts", "with",
    ] {
        let s = sel(&format!("{k} == 'v'"));
        assert!(s.matches(&[(k, "v")]), "{k}");
        assert_eq!(sel(&format!("has({k})")).expr(), &Expr::Has { key: key(k) });
    }
    assert!(matches("not not in {'x'}", &[("not", "y")]));
    assert!(matches("in in {'x'}", &[("in", "x")]));
}

#[test]
fn quoting() {
    assert_eq!(sel(r#"a == "b""#), sel("a == 'b'"));
    assert!(matches(r#"a == 'say "hi"'"#, &[("a", r#"say "hi""#)]));
    assert!(matches(r#"a == "it's""#, &[("a", "it's")]));
    // No escapes: a backslash is an ordinary character, as in Calico.
    assert!(matches(r"a == 'x\'", &[("a", r"x\")]));
    // Anything goes inside a string, including operators and non-ASCII.
    assert!(matches("a == '&& || ) {'", &[("a", "&& || ) {")]));
    assert!(matches("a == 'café ☕'", &[("a", "café ☕")]));
}

// ----------------------------------------------------------------- printing

#[test]
fn display_is_calico_canonical_form() {
    let cases = [
        ("", "all()"),
        ("global()", "global()"),
        ("has( a )", "has(a)"),
        ("a=='b'", r#"a == "b""#),
        ("a!='b'", r#"a != "b""#),
        (r#"a == 'say "hi"'"#, r#"a == 'say "hi"'"#),
        ("a in {'z','x','z'}", r#"a in {"x", "z"}"#),
        ("a not in {}", "a not in {}"),
        ("a contains 'x'", r#"a contains "x""#),
        ("a startswith 'x'", r#"a starts with "x""#),
        ("a ends   with 'x'", r#"a ends with "x""#),
        ("!has(a)", "!has(a)"),
        ("!a == 'x'", r#"!a == "x""#),
        (
            "has(a) && has(b) || has(c)",
            "((has(a) && has(b)) || has(c))",
        ),
        ("!(has(a) || has(b))", "!(has(a) || has(b))"),
    ];
    for (input, printed) in cases {
        let s = sel(input);
        assert_eq!(s.to_string(), printed, "{input:?}");
        assert_eq!(sel(printed), s, "{printed:?} should re-parse");
    }
}

#[test]
fn from_str() {
    let s: Selector = "has(a)".parse().unwrap();
    assert_eq!(s, sel("has(a)"));
    let e: ParseError = "has(".parse::<Selector>().unwrap_err();
    assert_eq!(e.column, 5);
}

// ------------------------------------------------------------------- errors

#[test]
fn error_display_names_the_column() {
    let e = err("app == web");
    assert_eq!(
        e.to_string(),
        "column 8: expected a quoted string after '=='"
    );
}

#[test]
fn errors_point_at_the_offending_column() {
    // Unterminated strings point at the opening quote.
    assert_err("a == 'abc", 6, "unterminated string");
    assert_err(r#"a in {"x", "y}"#, 12, "unterminated string");
    // Operators.
    assert_err("a = 'b'", 3, "unknown operator '='; did you mean '=='?");
    assert_err("has(a) & has(b)", 8, "did you mean '&&'");
    assert_err("has(a) | has(b)", 8, "did you mean '||'");
    assert_err("a equals 'b'", 3, "unknown operator 'equals'");
    assert_err("a starts 'b'", 10, "expected 'with' after 'starts'");
    assert_err("a not 'b'", 7, "expected 'in' after 'not'");
    assert_err("a", 2, "expected an operator after label 'a'");
    assert_err("a && has(b)", 3, "expected an operator after label 'a'");
    assert_err("a != b", 6, "expected a quoted string after '!='");
    assert_err(
        "a contains",
        11,
        "expected a quoted string after 'contains'",
    );
    // Parentheses.
    assert_err("(has(a)", 8, "missing closing ')' for the '(' at column 1");
    assert_err("(has(a) has(b))", 9, "to close the '(' at column 1");
    assert_err("has(a))", 7, "unmatched ')'");
    assert_err("()", 2, "expected an expression, found ')'");
    assert_err("has(a", 6, "missing closing ')' after 'has(a'");
    assert_err("has()", 5, "expected a label key inside has()");
    assert_err("has('a')", 5, "written without quotes");
    assert_err("all(x)", 5, "all() takes no arguments");
    assert_err("global(", 8, "missing closing ')' after 'global('");
    assert_err("hsa(a)", 1, "unknown function 'hsa()'");
    // Braces.
    assert_err(
        "a in {'x'",
        10,
        "missing closing '}' for the '{' at column 6",
    );
    assert_err(
        "a in {'x',",
        11,
        "missing closing '}' for the '{' at column 6",
    );
    assert_err(
        "a in {'x' 'y'}",
        11,
        "expected ',' or '}' after a set value",
    );
    assert_err("a in {x}", 7, "set values must be quoted");
    assert_err("a in {,}", 7, "expected a quoted string or '}' in set");
    assert_err("a in 'x'", 6, "expected '{' after 'in'");
    assert_err("a not in ('x')", 10, "expected '{' after 'not in'");
    // Trailing input.
    assert_err(
        "has(a) has(b)",
        8,
        "found 'has' after a complete expression",
    );
    assert_err(
        "a == 'x' 'y'",
        10,
        "found a quoted string after a complete expression",
    );
    // Bad key characters, including non-ASCII.
    assert_err(
        "app:web == 'x'",
        4,
        "invalid character ':' in label key 'app'",
    );
    assert_err("café == 'x'", 4, "invalid character 'é' in label key 'caf'");
    assert_err("has(a:b)", 6, "invalid character ':' in label key 'a'");
    assert_err("a == 'x' && @", 13, "unexpected character '@'");
    // Incomplete expressions.
    assert_err("has(a) &&", 10, "unexpected end of selector");
    assert_err("!", 2, "unexpected end of selector");
    assert_err("|| has(a)", 1, "expected an expression, found '||'");
    assert_err("'a' == 'b'", 1, "written without quotes");
}

#[test]
fn columns_count_characters_not_bytes() {
    assert_err("a == '☕☕' b", 11, "found 'b'");
    assert_err("é", 1, "unexpected character 'é'");
}

#[test]
fn the_leftmost_error_wins() {
    // The missing operand at column 6 is reported, not the stray ';' later.
    assert_err("a == == 'b' ;", 6, "expected a quoted string after '=='");
}

#[test]
fn nesting_is_bounded() {
    let ok = format!("{}has(a){}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert_eq!(sel(&ok).expr(), &Expr::Has { key: key("a") });
    let deep = format!(
        "{}has(a){}",
        "(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    assert_err(&deep, MAX_DEPTH + 1, "nests more than");

    let ok = format!("{}has(a)", "!".repeat(MAX_DEPTH - 1));
    assert!(sel(&ok).matches(&[("a", "")]) == (MAX_DEPTH % 2 == 1));
    assert_err(
        &format!("{}has(a)", "!".repeat(MAX_DEPTH)),
        1,
        "nests more than",
    );

    // Huge inputs fail cleanly instead of overflowing the stack.
    assert_err(&"(".repeat(100_000), MAX_DEPTH + 1, "nests more than");
    assert_err(&"!".repeat(100_000), 1, "nests more than");
    // Long flat chains are fine: they are one node.
    let chain = vec!["has(a)"; 10_000].join(" && ");
    assert!(sel(&chain).matches(&[("a", "")]));
}

// ---------------------------------------------------------------- from_expr

#[test]
fn from_expr_validates() {
    let has = |k: &str| Expr::Has { key: key(k) };
    let ok = Expr::And(vec![has("a"), Expr::Not(Box::new(has("b")))]);
    let s = Selector::from_expr(ok.clone()).unwrap();
    assert_eq!(s.expr(), &ok);
    assert_eq!(s.clone().into_expr(), ok);
    assert_eq!(sel(&s.to_string()), s);

    assert_eq!(
        Selector::from_expr(has("a b")),
        Err(InvalidExpr::InvalidKey { key: key("a b") })
    );
    assert_eq!(
        Selector::from_expr(has("")),
        Err(InvalidExpr::InvalidKey { key: key("") })
    );
    assert_eq!(
        Selector::from_expr(Expr::In {
            key: key("a"),
            values: set(&["ok", r#"'""#])
        }),
        Err(InvalidExpr::UnquotableValue {
            value: key(r#"'""#)
        })
    );
    assert_eq!(
        Selector::from_expr(Expr::Or(vec![has("a")])),
        Err(InvalidExpr::TooFewOperands {
            operator: "||",
            count: 1
        })
    );
    assert_eq!(
        Selector::from_expr(Expr::And(vec![])),
        Err(InvalidExpr::TooFewOperands {
            operator: "&&",
            count: 0
        })
    );

    let mut deep = has("a");
    for _ in 1..MAX_DEPTH {
        deep = Expr::Not(Box::new(deep));
    }
    assert!(Selector::from_expr(deep.clone()).is_ok());
    assert_eq!(
        Selector::from_expr(Expr::Not(Box::new(deep))),
        Err(InvalidExpr::TooDeep)
    );
}

#[test]
fn deepest_valid_tree_round_trips() {
    // Alternate And/Or nesting: the printed form has a '(' per level, which
    // the parser must accept.
    let mut expr = Expr::Has { key: key("a") };
    for depth in 2..=MAX_DEPTH {
        let sibling = Expr::Has { key: key("b") };
        expr = if depth % 2 == 0 {
            Expr::And(vec![expr, sibling])
        } else {
            Expr::Or(vec![expr, sibling])
        };
    }
    let s = Selector::from_expr(expr).unwrap();
    assert_eq!(sel(&s.to_string()), s);
}

// ------------------------------------------------------------------- labels

#[test]
fn label_sources() {
    let s = sel("a == 'x' && b != 'y'");
    let btree = BTreeMap::from([(key("a"), key("x"))]);
    let hash: HashMap<String, String> = HashMap::from([(key("a"), key("x"))]);
    let borrowed: BTreeMap<&str, &str> = BTreeMap::from([("a", "x")]);
    let pairs = vec![(key("a"), key("x")), (key("b"), key("z"))];
    assert!(s.matches(&btree));
    assert!(s.matches(&hash));
    assert!(s.matches(&borrowed));
    assert!(s.matches(&pairs));
    assert!(s.matches(pairs.as_slice()));
    assert!(s.matches(&[("a", "x")]));
    // First pair wins on duplicate keys.
    assert_eq!([("a", "1"), ("a", "2")].get_label("a"), Some("1"));
    // Labels computed on the fly: an endpoint's own labels over its
    // namespace's, without building a merged map.
    struct Overlay<'a> {
        own: &'a [(&'a str, &'a str)],
        inherited: &'a [(&'a str, &'a str)],
    }
    impl Labels for Overlay<'_> {
        fn get_label(&self, key: &str) -> Option<&str> {
            self.own
                .get_label(key)
                .or_else(|| self.inherited.get_label(key))
        }
    }
    let overlay = Overlay {
        own: &[("app", "web")],
        inherited: &[("app", "ignored"), ("ns", "prod")],
    };
    assert!(sel("app == 'web' && ns == 'prod'").matches(&overlay));
    assert!(!sel("has(other)").matches(&overlay));
}
