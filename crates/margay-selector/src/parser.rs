//! Recursive-descent parser from tokens to [`Expr`].
//!
//! Precedence, loosest first: `||`, `&&`, `!`. Comparisons such as
//! `k == 'v'` are atoms, so `!k == 'v'` negates the whole comparison. Chains
//! of the same operator become one n-ary node, which keeps a long flat chain
//! like `a && b && ... && z` shallow however long it is.

use std::collections::BTreeSet;

use crate::lexer::{Lexer, Tok, Token};
use crate::{Expr, ParseError, MAX_DEPTH};

/// Parses a whole selector; empty input is `all()`.
pub(crate) fn parse(input: &str) -> Result<Expr, ParseError> {
    let mut lexer = Lexer::new(input);
    let current = lexer.next_token()?;
    let mut parser = Parser {
        lexer,
        current,
        paren_depth: 0,
    };
    if parser.current.tok == Tok::Eof {
        return Ok(Expr::All);
    }
    let node = parser.parse_or()?;
    let Token { tok, column } = parser.current;
    match tok {
        Tok::Eof => Ok(node.expr),
        Tok::RParen => Err(ParseError::new(column, "unmatched ')'")),
        _ => Err(ParseError::new(
            column,
            format!(
                "found {} after a complete expression; expected '&&', '||' or the end of \
                 the selector",
                tok.describe()
            ),
        )),
    }
}

/// An expression together with its tree depth, tracked while parsing so the
/// [`MAX_DEPTH`] check needs no second, recursive pass.
struct Node {
    expr: Expr,
    depth: usize,
}

struct Parser<'a> {
    lexer: Lexer<'a>,
    /// The next token, not yet consumed.
    current: Token<'a>,
    /// How many `(` are open; bounds the parser's own recursion.
    paren_depth: usize,
}

fn too_deep(column: usize) -> ParseError {
    ParseError::new(
        column,
        format!("selector nests more than {MAX_DEPTH} levels deep"),
    )
}

impl<'a> Parser<'a> {
    /// Consumes the current token and lexes the next one.
    fn advance(&mut self) -> Result<(), ParseError> {
        self.current = self.lexer.next_token()?;
        Ok(())
    }

    fn parse_or(&mut self) -> Result<Node, ParseError> {
        self.parse_chain(Tok::Or, Self::parse_and, Expr::Or)
    }

    fn parse_and(&mut self) -> Result<Node, ParseError> {
        self.parse_chain(Tok::And, Self::parse_unary, Expr::And)
    }

    /// Parses `operand (separator operand)*`, building one n-ary node when
    /// there are two or more operands.
    fn parse_chain(
        &mut self,
        separator: Tok<'static>,
        operand: fn(&mut Self) -> Result<Node, ParseError>,
        build: fn(Vec<Expr>) -> Expr,
    ) -> Result<Node, ParseError> {
        let column = self.current.column;
        let first = operand(self)?;
        if self.current.tok != separator {
            return Ok(first);
        }
        let mut depth = first.depth;
        let mut operands = vec![first.expr];
        while self.current.tok == separator {
            self.advance()?;
            let next = operand(self)?;
            depth = depth.max(next.depth);
            operands.push(next.expr);
        }
        if depth >= MAX_DEPTH {
            return Err(too_deep(column));
        }
        Ok(Node {
            expr: build(operands),
            depth: depth + 1,
        })
    }

    /// Parses `!* primary`. The `!`s are counted in a loop rather than by
    /// recursion, so a long run of them cannot exhaust the stack.
    fn parse_unary(&mut self) -> Result<Node, ParseError> {
        let column = self.current.column;
        let mut nots = 0;
        while self.current.tok == Tok::Not {
            nots += 1;
            if nots >= MAX_DEPTH {
                return Err(too_deep(column));
            }
            self.advance()?;
        }
        let mut node = self.parse_primary()?;
        if node.depth + nots > MAX_DEPTH {
            return Err(too_deep(column));
        }
        for _ in 0..nots {
            node.expr = Expr::Not(Box::new(node.expr));
        }
        node.depth += nots;
        Ok(node)
    }

    fn parse_primary(&mut self) -> Result<Node, ParseError> {
        let Token { tok, column } = self.current;
        match tok {
            Tok::LParen => self.parse_group(column),
            Tok::Word(word) => {
                self.advance()?;
                let expr = if self.current.tok == Tok::LParen {
                    self.parse_function(word, column)?
                } else {
                    self.parse_comparison(word)?
                };
                Ok(Node { expr, depth: 1 })
            }
            Tok::Eof => Err(ParseError::new(
                column,
                "unexpected end of selector; expected an expression",
            )),
            Tok::Str(_) => Err(ParseError::new(
                column,
                "expected an expression, found a quoted string; label keys are written \
                 without quotes",
            )),
            _ => Err(ParseError::new(
                column,
                format!("expected an expression, found {}", tok.describe()),
            )),
        }
    }

    /// Parses `( or )`; the current token is the `(` at `open`.
    fn parse_group(&mut self, open: usize) -> Result<Node, ParseError> {
        if self.paren_depth >= MAX_DEPTH {
            return Err(too_deep(open));
        }
        self.paren_depth += 1;
        self.advance()?;
        let inner = self.parse_or()?;
        self.paren_depth -= 1;
        let Token { tok, column } = self.current;
        match tok {
            Tok::RParen => {
                self.advance()?;
                Ok(inner)
            }
            Tok::Eof => Err(ParseError::new(
                column,
                format!("missing closing ')' for the '(' at column {open}"),
            )),
            _ => Err(ParseError::new(
                column,
                format!(
                    "expected '&&', '||' or ')' to close the '(' at column {open}, found {}",
                    tok.describe()
                ),
            )),
        }
    }

    /// Parses `name(...)`; `name` (at `column`) is consumed and the current
    /// token is the `(`.
    fn parse_function(&mut self, name: &str, column: usize) -> Result<Expr, ParseError> {
        let expr = match name {
            "all" => Expr::All,
            "global" => Expr::Global,
            "has" => {
                self.advance()?;
                let Token { tok, column } = self.current;
                let key = match tok {
                    Tok::Word(key) => key,
                    Tok::RParen => {
                        return Err(ParseError::new(column, "expected a label key inside has()"))
                    }
                    Tok::Str(_) => {
                        return Err(ParseError::new(
                            column,
                            "expected a label key inside has(), found a quoted string; label \
                             keys are written without quotes",
                        ))
                    }
                    _ => {
                        return Err(ParseError::new(
                            column,
                            format!(
                                "expected a label key inside has(), found {}",
                                tok.describe()
                            ),
                        ))
                    }
                };
                self.advance()?;
                self.expect_close(&format!("has({key}"))?;
                return Ok(Expr::Has {
                    key: key.to_owned(),
                });
            }
            _ => {
                return Err(ParseError::new(
                    column,
                    format!("unknown function '{name}()'; expected has(), all() or global()"),
                ))
            }
        };
        self.advance()?;
        if let Tok::Eof | Tok::RParen = self.current.tok {
            self.expect_close(&format!("{name}("))?;
            Ok(expr)
        } else {
            Err(ParseError::new(
                self.current.column,
                format!("{name}() takes no arguments"),
            ))
        }
    }

    /// Consumes the `)` that ends the call whose text so far is `opened`.
    fn expect_close(&mut self, opened: &str) -> Result<(), ParseError> {
        let Token { tok, column } = self.current;
        match tok {
            Tok::RParen => self.advance(),
            Tok::Eof => Err(ParseError::new(
                column,
                format!("missing closing ')' after '{opened}'"),
            )),
            _ => Err(ParseError::new(
                column,
                format!("expected ')' after '{opened}', found {}", tok.describe()),
            )),
        }
    }

    /// Parses the operator and operand after label `key`, which is consumed.
    fn parse_comparison(&mut self, key: &str) -> Result<Expr, ParseError> {
        let key = key.to_owned();
        let Token { tok, column } = self.current;
        let op = match tok {
            Tok::Eq => Op::Equals,
            Tok::Ne => Op::NotEquals,
            Tok::Word("contains") => Op::Contains,
            Tok::Word("in") => Op::In,
            // Calico matches these keywords by prefix, so it accepts the
            // glued spellings too; keep accepting them.
            Tok::Word("startswith") => Op::StartsWith,
            Tok::Word("endswith") => Op::EndsWith,
            Tok::Word("notin") => Op::NotIn,
            Tok::Word(first @ ("starts" | "ends" | "not")) => {
                self.advance()?;
                let (second, op) = match first {
                    "starts" => ("with", Op::StartsWith),
                    "ends" => ("with", Op::EndsWith),
                    _ => ("in", Op::NotIn),
                };
                if self.current.tok != Tok::Word(second) {
                    return Err(ParseError::new(
                        self.current.column,
                        format!(
                            "expected '{second}' after '{first}', found {}",
                            self.current.tok.describe()
                        ),
                    ));
                }
                op
            }
            Tok::Word(other) => {
                return Err(ParseError::new(
                    column,
                    format!("unknown operator '{other}' after label '{key}'; expected {OPERATORS}"),
                ))
            }
            _ => {
                return Err(ParseError::new(
                    column,
                    format!(
                        "expected an operator after label '{key}', found {}; operators are \
                         {OPERATORS}",
                        tok.describe()
                    ),
                ))
            }
        };
        self.advance()?;
        Ok(match op {
            Op::In => Expr::In {
                key,
                values: self.parse_set("in")?,
            },
            Op::NotIn => Expr::NotIn {
                key,
                values: self.parse_set("not in")?,
            },
            Op::Equals => Expr::Equals {
                key,
                value: self.parse_string("==")?,
            },
            Op::NotEquals => Expr::NotEquals {
                key,
                value: self.parse_string("!=")?,
            },
            Op::Contains => Expr::Contains {
                key,
                value: self.parse_string("contains")?,
            },
            Op::StartsWith => Expr::StartsWith {
                key,
                value: self.parse_string("starts with")?,
            },
            Op::EndsWith => Expr::EndsWith {
                key,
                value: self.parse_string("ends with")?,
            },
        })
    }

    /// Parses the quoted operand of operator `op`.
    fn parse_string(&mut self, op: &str) -> Result<String, ParseError> {
        match self.current.tok {
            Tok::Str(value) => {
                self.advance()?;
                Ok(value.to_owned())
            }
            _ => Err(ParseError::new(
                self.current.column,
                format!("expected a quoted string after '{op}'"),
            )),
        }
    }

    /// Parses `{ 'a', 'b' }` after operator `op`. A trailing comma is
    /// accepted, as Calico does.
    fn parse_set(&mut self, op: &str) -> Result<BTreeSet<String>, ParseError> {
        let open = self.current.column;
        if self.current.tok != Tok::LBrace {
            return Err(ParseError::new(open, format!("expected '{{' after '{op}'")));
        }
        self.advance()?;
        let mut values = BTreeSet::new();
        loop {
            let Token { tok, column } = self.current;
            match tok {
                Tok::RBrace => break,
                Tok::Str(value) => {
                    values.insert(value.to_owned());
                    self.advance()?;
                }
                Tok::Eof => return Err(unclosed_set(column, open)),
                Tok::Word(_) => {
                    return Err(ParseError::new(
                        column,
                        format!(
                            "expected a quoted string or '}}' in set, found {}; set values \
                             must be quoted",
                            tok.describe()
                        ),
                    ))
                }
                _ => {
                    return Err(ParseError::new(
                        column,
                        format!(
                            "expected a quoted string or '}}' in set, found {}",
                            tok.describe()
                        ),
                    ))
                }
            }
            let Token { tok, column } = self.current;
            match tok {
                Tok::Comma => self.advance()?,
                Tok::RBrace => break,
                Tok::Eof => return Err(unclosed_set(column, open)),
                _ => {
                    return Err(ParseError::new(
                        column,
                        format!(
                            "expected ',' or '}}' after a set value, found {}",
                            tok.describe()
                        ),
                    ))
                }
            }
        }
        self.advance()?;
        Ok(values)
    }
}

/// Operators, as listed in error messages.
const OPERATORS: &str = "==, !=, in, not in, contains, starts with or ends with";

/// The operator after a label key, recognised before its operand is parsed.
enum Op {
    Equals,
    NotEquals,
    In,
    NotIn,
    Contains,
    StartsWith,
    EndsWith,
}

fn unclosed_set(column: usize, open: usize) -> ParseError {
    ParseError::new(
        column,
        format!("missing closing '}}' for the '{{' at column {open}"),
    )
}
