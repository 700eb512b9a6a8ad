//! A1111's emphasis syntax: `parse_prompt_attention` of `modules/prompt_parser.py`
//! (AUTOMATIC1111/stable-diffusion-webui), reproduced rule by rule.
//!
//! A1111 scans the prompt with one regex, `re_attention`, whose alternatives are tried in this order
//! at each position (the first that matches wins, not the longest):
//!
//! | alternative | token | what A1111 does with it |
//! |---|---|---|
//! | `\(` `\)` `\[` `\]` `\\` | escape | the character after the backslash, weight 1.0 |
//! | `\` (any other) | lone backslash | an empty fragment (so the backslash disappears) |
//! | `(` / `[` | opener | remembers the fragment count on the round / square stack |
//! | `:\s*([+-]?[.\d]+)\s*\)` | weight | with an open `(`: multiplies everything since it by `float(number)` |
//! | `)` / `]` | closer | with an open one of its kind: multiplies everything since it by 1.1 / (1 / 1.1) |
//! | `[^\\()\[\]:]+` or `:` | text | split on `re_break` (`\s*\bBREAK\b\s*`), each `BREAK` a ("BREAK", -1) marker |
//!
//! A weight token or closer without a matching opener falls through to "text" and is kept literally
//! (`x:1.5)`, `x)`, `x]`). Openers left unclosed at the end multiply everything after them by 1.1 or
//! 1 / 1.1, round ones first, each stack in the order they were opened. Then adjacent fragments with
//! equal weights are merged (the BREAK marker included, if its weight equals its neighbour's), and an
//! empty result becomes `[("", 1.0)]`.
//!
//! Weights are kept as f64, as A1111's Python floats are, and multiplied in A1111's order: the merge
//! compares them for exact equality and `tokenize_line` tests `weight == -1` on them, so rounding
//! them to f32 early could merge or split fragments that A1111 does not. They become f32 where A1111
//! makes a float32 tensor of them (`torch.asarray(multipliers)` in `process_tokens`): in
//! [`super::chunks`].
//!
//! The weight after `:` is read as Python's `float()` reads it. `[.\d]+` also matches strings that
//! are not numbers (`1.2.3`, `.`): A1111 raises `ValueError` there and the generation fails, so this
//! returns an error. A weight that is not made of digits and dots (`(x:abc)`) does not match the
//! weight token at all: the `:` and `abc` are text and the `(` … `)` a plain 1.1 emphasis.
//!
//! Python's regex classes are Unicode-aware on `str`; this follows them: `\s` is `str.isspace()`
//! (Rust's `char::is_whitespace` plus U+001C..U+001F), `\d` is any decimal digit (category Nd, e.g.
//! fullwidth `１`, which `float()` accepts too). One approximation: `\b` uses Rust's
//! `char::is_alphanumeric` for Python's `str.isalnum()`; they differ on the few non-letter
//! characters Unicode calls alphabetic (combining vowel signs, circled letters), so `BREAK` directly
//! after such a character splits in A1111 and does not here.

use lcm_core::{Error, Result};

/// The multiplier of `( … )` (A1111's `round_bracket_multiplier`).
const ROUND: f64 = 1.1;

/// The BREAK marker's weight (A1111 appends `["BREAK", -1]`).
pub const BREAK_WEIGHT: f64 = -1.0;

/// The marker text for a BREAK.
pub const BREAK: &str = "BREAK";

/// One token of A1111's `re_attention`.
enum Token<'a> {
    /// An escape or a lone backslash: the text after the backslash (empty for a lone one).
    Escaped(&'a str),
    OpenRound,
    OpenSquare,
    /// `:number)`: the number as written, and the whole token (kept literally without an open `(`).
    Weight {
        number: &'a str,
        whole: &'a str,
    },
    CloseRound,
    CloseSquare,
    /// A text run, or a lone `:`.
    Text(&'a str),
}

/// Splits `text` into `re_attention` tokens, left to right, as `re.finditer` does.
fn tokens(text: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let (token, len) = match c {
            '\\' => match rest[1..].chars().next() {
                Some(e @ ('(' | ')' | '[' | ']' | '\\')) => {
                    (Token::Escaped(&rest[1..1 + e.len_utf8()]), 1 + e.len_utf8())
                }
                _ => (Token::Escaped(""), 1),
            },
            '(' => (Token::OpenRound, 1),
            '[' => (Token::OpenSquare, 1),
            ')' => (Token::CloseRound, 1),
            ']' => (Token::CloseSquare, 1),
            ':' => match weight_token(rest) {
                Some((number, len)) => (Token::Weight { number, whole: &rest[..len] }, len),
                None => (Token::Text(":"), 1),
            },
            _ => {
                let len = rest.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(rest.len());
                (Token::Text(&rest[..len]), len)
            }
        };
        out.push(token);
        rest = &rest[len..];
    }
    out
}

/// `:\s*([+-]?[.\d]+)\s*\)` at the start of `s` (which starts with ':'): the number and the
/// token's length. The classes are disjoint, so the greedy match never backtracks.
fn weight_token(s: &str) -> Option<(&str, usize)> {
    let mut i = 1;
    i += leading_len(&s[i..], py_isspace);
    let start = i;
    if s[i..].starts_with(['+', '-']) {
        i += 1;
    }
    let digits = leading_len(&s[i..], |c| c == '.' || decimal_value(c).is_some());
    if digits == 0 {
        return None;
    }
    i += digits;
    let number = &s[start..i];
    i += leading_len(&s[i..], py_isspace);
    s[i..].starts_with(')').then_some((number, i + 1))
}

/// The byte length of the longest prefix of `s` whose characters all satisfy `pred`.
fn leading_len(s: &str, pred: impl Fn(char) -> bool) -> usize {
    s.find(|c: char| !pred(c)).unwrap_or(s.len())
}

/// Python's `float()` of a `[+-]?[.\d]+` string: `None` where Python raises `ValueError` (no digit,
/// more than one dot). Decimal digits of any script count, as in Python.
fn py_float(number: &str) -> Option<f64> {
    let ascii: String = number.chars().map(|c| decimal_value(c).map_or(c, |d| char::from(b'0' + d as u8))).collect();
    let body = ascii.trim_start_matches(['+', '-']);
    let dots = body.matches('.').count();
    if dots > 1 || !body.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    // Rust's parser is correctly rounded, as CPython's is, and accepts "1." and ".5" as Python does.
    ascii.parse::<f64>().ok()
}

/// The first code point of each run of ten decimal digits (Unicode category Nd, as Python 3.11's
/// `unicodedata` lists them; Unicode keeps every Nd run contiguous and ordered 0..9).
const DIGIT_ZEROS: [u32; 66] = [
    0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6, 0xE50, 0xED0,
    0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620,
    0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0,
    0x112F0, 0x11450, 0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60,
    0x16AC0, 0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// The value of a decimal digit of any script (Python's `\d` and `float()`).
fn decimal_value(c: char) -> Option<u32> {
    let c = c as u32;
    let i = DIGIT_ZEROS.partition_point(|&zero| zero <= c);
    let zero = *DIGIT_ZEROS.get(i.checked_sub(1)?)?;
    (c - zero < 10).then_some(c - zero)
}

/// Python's `\s` on `str`: `str.isspace()`.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `\w` on `str` (see the module note on the approximation).
fn py_is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `re.split(re_break, text)` with `re_break = \s*\bBREAK\b\s*`: the parts between the BREAKs.
fn split_break(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut part_start = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find(BREAK) {
        let at = search + found;
        let end = at + BREAK.len();
        let word_before = text[..at].chars().next_back().is_some_and(py_is_word);
        let word_after = text[end..].chars().next().is_some_and(py_is_word);
        if word_before || word_after {
            search = at + 1;
            continue;
        }
        // The match starts at the whitespace run before BREAK (not reaching into the previous match)
        // and takes the whitespace after it.
        let before = &text[part_start..at];
        let start = part_start + before.trim_end_matches(py_isspace).len();
        let after = &text[end..];
        let match_end = end + (after.len() - after.trim_start_matches(py_isspace).len());
        parts.push(&text[part_start..start]);
        part_start = match_end;
        search = match_end;
    }
    parts.push(&text[part_start..]);
    parts
}

/// A1111's `parse_prompt_attention`: the prompt's fragments with their weights, BREAKs as
/// `("BREAK", -1.0)`. See the module documentation for each rule. Fails only where A1111 fails: a
/// `(…:w)` weight made of digits and dots that is not a number (`1.2.3`).
pub fn parse_attention(text: &str) -> Result<Vec<(String, f64)>> {
    let mut res: Vec<(String, f64)> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    // A1111's `multiply_range`.
    let multiply = |res: &mut Vec<(String, f64)>, from: usize, by: f64| {
        for fragment in &mut res[from..] {
            fragment.1 *= by;
        }
    };
    let square_multiplier = 1.0 / ROUND;

    for token in tokens(text) {
        let literal = match token {
            Token::Escaped(s) => {
                res.push((s.to_string(), 1.0));
                continue;
            }
            Token::OpenRound => {
                round.push(res.len());
                continue;
            }
            Token::OpenSquare => {
                square.push(res.len());
                continue;
            }
            Token::Weight { number, whole } => match round.pop() {
                Some(from) => {
                    let weight = py_float(number).ok_or_else(|| {
                        Error::invalid(
                            "prompt",
                            format!(
                                "the emphasis weight `{number}` in `{whole}` is not a number (A1111 stops here too, \
                                 with \"could not convert string to float\"); write one number as in `(word:1.2)`, \
                                 or `\\)` for a literal parenthesis"
                            ),
                        )
                    })?;
                    multiply(&mut res, from, weight);
                    continue;
                }
                None => whole,
            },
            Token::CloseRound => match round.pop() {
                Some(from) => {
                    multiply(&mut res, from, ROUND);
                    continue;
                }
                None => ")",
            },
            Token::CloseSquare => match square.pop() {
                Some(from) => {
                    multiply(&mut res, from, square_multiplier);
                    continue;
                }
                None => "]",
            },
            Token::Text(s) => s,
        };
        for (i, part) in split_break(literal).into_iter().enumerate() {
            if i > 0 {
                res.push((BREAK.to_string(), BREAK_WEIGHT));
            }
            res.push((part.to_string(), 1.0));
        }
    }

    for from in round {
        multiply(&mut res, from, ROUND);
    }
    for from in square {
        multiply(&mut res, from, square_multiplier);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }

    // Merge runs of identical weights (exact f64 equality, as A1111's `==`).
    let mut merged: Vec<(String, f64)> = Vec::with_capacity(res.len());
    for (text, weight) in res {
        match merged.last_mut() {
            Some(last) if last.1 == weight => last.0.push_str(&text),
            _ => merged.push((text, weight)),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Vec<(String, f64)> {
        parse_attention(text).unwrap()
    }

    #[test]
    fn docstring_examples() {
        assert_eq!(parsed("normal text"), [("normal text".to_string(), 1.0)]);
        let house = parsed("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).");
        let expected = [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ];
        let expected: Vec<(String, f64)> = expected.iter().map(|(t, w)| (t.to_string(), *w)).collect();
        // Bit-exact: the same f64 products in the same order as Python.
        assert_eq!(house, expected);
    }

    #[test]
    fn python_floats() {
        assert_eq!(py_float("1."), Some(1.0));
        assert_eq!(py_float(".5"), Some(0.5));
        assert_eq!(py_float("-.5"), Some(-0.5));
        assert_eq!(py_float("+007"), Some(7.0));
        assert_eq!(py_float("１.５"), Some(1.5));
        assert_eq!(py_float("."), None);
        assert_eq!(py_float("1.2.3"), None);
        assert_eq!(py_float("-."), None);
    }

    #[test]
    fn a_weight_python_cannot_read_is_an_error_naming_it() {
        let err = parse_attention("(x:1.2.3)").unwrap_err().to_string();
        assert!(err.contains("prompt") && err.contains("`1.2.3`"), "{err}");
        // Without an open `(` the same token is text, as in A1111.
        assert_eq!(parsed("x:1.2.3)"), [("x:1.2.3)".to_string(), 1.0)]);
    }

    #[test]
    fn break_split_follows_python() {
        assert_eq!(split_break("a BREAK b"), ["a", "b"]);
        assert_eq!(split_break("BREAK BREAK"), ["", "", ""]);
        assert_eq!(split_break("aBREAK b"), ["aBREAK b"]);
        assert_eq!(split_break("a  BREAK,b"), ["a", ",b"]);
        assert_eq!(split_break("BREAKBREAK"), ["BREAKBREAK"]);
        assert_eq!(split_break("a\u{3000}BREAK\u{1f}b"), ["a", "b"]);
    }
}
