//! Splits selector text into tokens, tracking character columns.
//!
//! The lexer is pulled one token at a time by the parser rather than run over
//! the whole input first, so that the error reported is always the leftmost
//! one: a stray character late in the input must not hide a mistake before
//! it.
//!
//! Keywords (`in`, `not`, `contains`, `starts`, `ends`, `with`, `has`, `all`,
//! `global`) are not tokens of their own. They lex as [`Tok::Word`], exactly
//! like label keys, and the parser decides from position what a word means.
//! That is what lets `in`, `has` or `all` also be used as label keys, as in
//! Calico.

use crate::ParseError;

/// Characters allowed in a label key (and so in a [`Tok::Word`]).
pub(crate) fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tok<'a> {
    /// A run of key characters: a label key or a keyword.
    Word(&'a str),
    /// The contents of a quoted string, without the quotes.
    Str(&'a str),
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Eq,
    Ne,
    Not,
    And,
    Or,
    Eof,
}

impl Tok<'_> {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("'{w}'"),
            Tok::Str(_) => "a quoted string".to_owned(),
            Tok::LParen => "'('".to_owned(),
            Tok::RParen => "')'".to_owned(),
            Tok::LBrace => "'{'".to_owned(),
            Tok::RBrace => "'}'".to_owned(),
            Tok::Comma => "','".to_owned(),
            Tok::Eq => "'=='".to_owned(),
            Tok::Ne => "'!='".to_owned(),
            Tok::Not => "'!'".to_owned(),
            Tok::And => "'&&'".to_owned(),
            Tok::Or => "'||'".to_owned(),
            Tok::Eof => "the end of the selector".to_owned(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Token<'a> {
    pub(crate) tok: Tok<'a>,
    /// 1-based character column of the token's first character.
    pub(crate) column: usize,
}

pub(crate) struct Lexer<'a> {
    input: &'a str,
    /// Byte offset of the next unread character.
    pos: usize,
    /// 1-based character column of `pos`.
    column: usize,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(input: &'a str) -> Self {
        Lexer {
            input,
            pos: 0,
            column: 1,
        }
    }

    fn peek(&self) -> Option<char> {
        self.input[self.pos..].chars().next()
    }

    fn bump(&mut self, c: char) {
        self.pos += c.len_utf8();
        self.column += 1;
    }

    fn eat(&mut self, expected: char) -> bool {
        if self.peek() == Some(expected) {
            self.bump(expected);
            true
        } else {
            false
        }
    }

    /// Reads the next token; at the end of input, returns [`Tok::Eof`]
    /// (repeatedly) with the column just past the last character.
    pub(crate) fn next_token(&mut self) -> Result<Token<'a>, ParseError> {
        while let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
            self.bump(c);
        }
        let column = self.column;
        let Some(c) = self.peek() else {
            return Ok(Token {
                tok: Tok::Eof,
                column,
            });
        };
        if is_key_char(c) {
            return Ok(Token {
                tok: self.word(),
                column,
            });
        }
        if c == '\'' || c == '"' {
            return Ok(Token {
                tok: self.string(c, column)?,
                column,
            });
        }
        self.bump(c);
        let tok = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '{' => Tok::LBrace,
            '}' => Tok::RBrace,
            ',' => Tok::Comma,
            '!' if self.eat('=') => Tok::Ne,
            '!' => Tok::Not,
            '=' if self.eat('=') => Tok::Eq,
            '&' if self.eat('&') => Tok::And,
            '|' if self.eat('|') => Tok::Or,
            '=' => {
                return Err(ParseError::new(
                    column,
                    "unknown operator '='; did you mean '=='?",
                ))
            }
            '&' => {
                return Err(ParseError::new(
                    column,
                    "unknown operator '&'; did you mean '&&'?",
                ))
            }
            '|' => {
                return Err(ParseError::new(
                    column,
                    "unknown operator '|'; did you mean '||'?",
                ))
            }
            _ => return Err(self.unexpected(c, column)),
        };
        Ok(Token { tok, column })
    }

    fn word(&mut self) -> Tok<'a> {
        let start = self.pos;
        while let Some(c) = self.peek().filter(|c| is_key_char(*c)) {
            self.bump(c);
        }
        Tok::Word(&self.input[start..self.pos])
    }

    /// Reads a string opened by `quote` at `column`. There are no escapes:
    /// the string ends at the next matching quote, as in Calico.
    fn string(&mut self, quote: char, column: usize) -> Result<Tok<'a>, ParseError> {
        self.bump(quote);
        let rest = &self.input[self.pos..];
        let Some(len) = rest.find(quote) else {
            return Err(ParseError::new(
                column,
                format!("unterminated string: the {quote} here is never closed"),
            ));
        };
        let contents = &rest[..len];
        self.pos += len;
        self.column += contents.chars().count();
        self.bump(quote);
        Ok(Tok::Str(contents))
    }

    /// The error for a character that starts no token. When it directly
    /// follows a key, the likely mistake is a bad character inside the key
    /// (`app:web`, `café`), so say that rather than just "unexpected".
    fn unexpected(&self, c: char, column: usize) -> ParseError {
        let before = &self.input[..self.pos - c.len_utf8()];
        let key_len: usize = before
            .chars()
            .rev()
            .take_while(|c| is_key_char(*c))
            .map(char::len_utf8)
            .sum();
        if key_len == 0 {
            return ParseError::new(column, format!("unexpected character {c:?}"));
        }
        let key = &before[before.len() - key_len..];
        ParseError::new(
            column,
            format!(
                "invalid character {c:?} in label key '{key}'; keys may contain only \
                 ASCII letters, digits, '_', '.', '/' and '-'"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All tokens of `input` with their columns, up to and including EOF.
    fn lex(input: &str) -> Vec<(Tok<'_>, usize)> {
        let mut lexer = Lexer::new(input);
        let mut out = Vec::new();
        loop {
            let Token { tok, column } = lexer.next_token().expect("lexes");
            out.push((tok, column));
            if tok == Tok::Eof {
                return out;
            }
        }
    }

    #[test]
    fn tokens_and_columns() {
        assert_eq!(
            lex("a.b/c-d_1=='x'&&!has(k)||{\"y\",}!="),
            vec![
                (Tok::Word("a.b/c-d_1"), 1),
                (Tok::Eq, 10),
                (Tok::Str("x"), 12),
                (Tok::And, 15),
                (Tok::Not, 17),
                (Tok::Word("has"), 18),
                (Tok::LParen, 21),
                (Tok::Word("k"), 22),
                (Tok::RParen, 23),
                (Tok::Or, 24),
                (Tok::LBrace, 26),
                (Tok::Str("y"), 27),
                (Tok::Comma, 30),
                (Tok::RBrace, 31),
                (Tok::Ne, 32),
                (Tok::Eof, 34),
            ]
        );
    }

    #[test]
    fn columns_advance_by_character_through_strings_and_whitespace() {
        assert_eq!(
            lex(" '☕é'\u{a0}\tb"),
            vec![(Tok::Str("☕é"), 2), (Tok::Word("b"), 8), (Tok::Eof, 9)]
        );
    }

    #[test]
    fn eof_repeats() {
        let mut lexer = Lexer::new("  ");
        for _ in 0..3 {
            let token = lexer.next_token().expect("lexes");
            assert_eq!((token.tok, token.column), (Tok::Eof, 3));
        }
    }

    #[test]
    fn strings_end_at_the_first_matching_quote() {
        assert_eq!(
            lex(r#"'a"b'"c'd""#),
            vec![(Tok::Str("a\"b"), 1), (Tok::Str("c'd"), 6), (Tok::Eof, 11)]
        );
    }
}
