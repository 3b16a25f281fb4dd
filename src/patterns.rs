//! Regular expressions written as string literals, checked when a script
//! compiles: `expect("+PONG")` would otherwise fail only once the
//! conversation reaches it, and `tcpscript check` would call the script
//! fine.

use std::collections::HashSet;

use rhai::{AST, ASTNode, Expr, FnCallExpr, Position, Stmt};

/// A literal that is not a regular expression, for the diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidPattern {
    /// The function it was given to.
    pub(crate) function: String,
    /// Where the literal is.
    pub(crate) position: Position,
    /// What the regex crate says is wrong, on one line.
    pub(crate) problem: String,
}

impl InvalidPattern {
    pub(crate) fn message(&self) -> String {
        format!(
            "invalid regular expression given to {}(): {}",
            self.function, self.problem
        )
    }
}

/// How a function takes its pattern, and which regex type reads it then.
#[derive(Clone, Copy)]
enum Reader {
    /// `expect`, `expect_stream`: matched against a message's bytes
    /// (`regex::bytes`), and the pattern comes first: `expect(re)`,
    /// `expect(re, ms)`, `c.expect(re)`, or `expect(c, re)`.
    Bytes,
    /// `matches`, `captures`: matched against a string (`regex`), and the
    /// pattern comes after the text: `matches(text, re)`, `text.matches(re)`.
    Text,
}

fn reader(function: &str) -> Option<Reader> {
    match function {
        "expect" | "expect_stream" => Some(Reader::Bytes),
        "matches" | "captures" => Some(Reader::Text),
        _ => None,
    }
}

/// The first string literal in `ast`, by position, given as a pattern to
/// `expect`, `expect_stream`, `matches` or `captures` that the regex
/// crate refuses. Calls the script's own functions of those names answer,
/// and calls into modules, are left alone.
pub(crate) fn invalid_pattern(ast: &AST) -> Option<InvalidPattern> {
    let mut invalid: Vec<InvalidPattern> = Vec::new();
    // A recorded script repeats the same few patterns thousands of times.
    let mut valid: HashSet<(String, bool)> = HashSet::new();
    ast.walk(&mut |path: &[ASTNode]| {
        // A call whose value is unused is a statement of its own.
        let (call, method) = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, _)) | ASTNode::Stmt(Stmt::FnCall(call, _))) => {
                (call, false)
            }
            Some(ASTNode::Expr(Expr::MethodCall(call, _))) => (call, true),
            _ => return true,
        };
        let Some(reader) = reader(&call.name) else {
            return true;
        };
        if call.is_qualified() || script_defines(ast, call) {
            return true;
        }
        if let Some((pattern, position)) = literal_pattern(call, method, reader) {
            let bytes = matches!(reader, Reader::Bytes);
            if !valid.contains(&(pattern.to_string(), bytes)) {
                match check(pattern, reader) {
                    Ok(()) => {
                        valid.insert((pattern.to_string(), bytes));
                    }
                    Err(problem) => invalid.push(InvalidPattern {
                        function: call.name.to_string(),
                        position,
                        problem,
                    }),
                }
            }
        }
        true
    });
    invalid
        .into_iter()
        .min_by_key(|bad| (bad.position.line(), bad.position.position()))
}

/// Whether the script's own function of that name and arity answers the
/// call (`fn expect(x) { ... }`, or with `this` for a method call).
fn script_defines(ast: &AST, call: &FnCallExpr) -> bool {
    ast.iter_functions()
        .any(|f| f.name == call.name.as_str() && f.params.len() == call.args.len())
}

/// The string literal a call passes as its pattern, if it passes one.
fn literal_pattern(call: &FnCallExpr, method: bool, reader: Reader) -> Option<(&str, Position)> {
    let literal = |index: usize| match call.args.get(index) {
        Some(Expr::StringConstant(text, position)) => Some((text.as_str(), *position)),
        _ => None,
    };
    match (reader, method) {
        (_, true) => literal(0),
        // `expect(c, re)` is the method called as a function; a connection
        // is never a literal, so a literal first is the pattern.
        (Reader::Bytes, false) => literal(0).or_else(|| literal(1)),
        (Reader::Text, false) => literal(1),
    }
}

/// Parses `pattern` as the regex crate does for the function reading it
/// at run time: `regex::bytes::Regex` (and `regex::Regex`) parse with
/// `regex_syntax` and these settings, so a syntax error here is the same
/// error there. The matcher itself is not built: that costs 10 to 20
/// times more (10,000 distinct patterns, as a long recorded session has,
/// took 1 to 5 s in a release build, against 0.1 to 0.3 s to parse), and
/// only adds the size limit on compiled patterns, which stays a run-time
/// error.
fn check(pattern: &str, reader: Reader) -> Result<(), String> {
    let utf8 = matches!(reader, Reader::Text);
    regex_syntax::ParserBuilder::new()
        .utf8(utf8)
        .build()
        .parse(pattern)
        .map(drop)
        .map_err(|error| one_line(&error))
}

/// The parser's errors span lines (the pattern, a caret under it, then
/// `error: ...`); the diagnostic's caret points at the literal, so the
/// last line says it all.
fn one_line(error: &regex_syntax::Error) -> String {
    let text = error.to_string();
    match text
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("error: "))
    {
        Some(problem) => problem.to_string(),
        None => text.lines().collect::<Vec<_>>().join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Limits, Params, new_engine};

    /// The first invalid pattern of `script`: function, line, column.
    fn invalid(script: &str) -> Option<(String, usize, usize)> {
        let engine = new_engine(&Limits::default(), Params::default(), None);
        let ast = engine.compile(script).expect(script);
        invalid_pattern(&ast).map(|bad| {
            (
                bad.function,
                bad.position.line().unwrap_or(0),
                bad.position.position().unwrap_or(0),
            )
        })
    }

    fn at(function: &str, line: usize, column: usize) -> Option<(String, usize, usize)> {
        Some((function.to_string(), line, column))
    }

    #[test]
    fn every_way_of_passing_a_pattern_is_checked() {
        assert_eq!(invalid(r#"expect("+PONG");"#), at("expect", 1, 8));
        assert_eq!(invalid(r#"expect("(", 500);"#), at("expect", 1, 8));
        assert_eq!(invalid(r#"let c = 1; c.expect("(");"#), at("expect", 1, 21));
        assert_eq!(
            invalid(r#"let c = 1; expect(c, "[");"#),
            at("expect", 1, 22)
        );
        assert_eq!(
            invalid(r#"expect_stream("*");"#),
            at("expect_stream", 1, 15)
        );
        assert_eq!(invalid(r#"matches("x", "[");"#), at("matches", 1, 14));
        assert_eq!(
            invalid(r#"let s = "x"; s.matches("[");"#),
            at("matches", 1, 24)
        );
        assert_eq!(invalid(r#"captures("x", "(?P<");"#), at("captures", 1, 15));
        assert_eq!(
            invalid("fn f() {\n    expect(\"ok\");\n    expect(\"a{2,1}\")\n}"),
            at("expect", 3, 12)
        );
    }

    #[test]
    fn the_first_invalid_pattern_is_reported() {
        assert_eq!(
            invalid("expect(\"ok\");\nmatches(\"x\", \"(\");\nexpect(\"+\");"),
            at("matches", 2, 14)
        );
    }

    #[test]
    fn valid_patterns_and_other_strings_pass() {
        assert_eq!(invalid(r#"expect("^\\+PONG$"); expect("a", 1);"#), None);
        // The text matched is not a pattern.
        assert_eq!(invalid(r#"matches("(", "x"); "(".captures("x");"#), None);
        // Bytes that are not UTF-8 only `expect` can match.
        assert_eq!(invalid(r#"expect("(?-u:\\xff)");"#), None);
        assert_eq!(invalid(r#"let p = "("; expect(p);"#), None);
        assert_eq!(invalid(r#"send("+PONG"); print("(");"#), None);
    }

    #[test]
    fn text_patterns_are_checked_as_text() {
        assert_eq!(
            invalid(r#"matches("x", "(?-u:\\xff)");"#),
            at("matches", 1, 14)
        );
    }

    #[test]
    fn a_function_of_the_script_is_its_own_business() {
        assert_eq!(invalid(r#"fn expect(s) { s } expect("+");"#), None);
        assert_eq!(
            invalid(r#"fn expect(s, t) { s } expect("+");"#),
            at("expect", 1, 30)
        );
    }

    /// The check must agree with the regex types the functions use.
    #[test]
    fn the_verdict_is_the_regex_crates() {
        for pattern in [
            "+PONG",
            "(",
            "[",
            "a{2,1}",
            r"\p{Nope}",
            r"(?-u:\xff)",
            r"\xff",
            "(?P<",
            "ok",
            "",
            r"^\d+ OK$",
            "a**",
            r"\",
            "(?i)é",
        ] {
            assert_eq!(
                check(pattern, Reader::Bytes).is_ok(),
                regex::bytes::Regex::new(pattern).is_ok(),
                "{pattern}"
            );
            assert_eq!(
                check(pattern, Reader::Text).is_ok(),
                regex::Regex::new(pattern).is_ok(),
                "{pattern}"
            );
            if let Err(error) = regex::Regex::new(pattern) {
                assert!(
                    error
                        .to_string()
                        .ends_with(&check(pattern, Reader::Text).unwrap_err()),
                    "{pattern}"
                );
            }
        }
    }

    #[test]
    fn the_message_is_one_line() {
        let engine = new_engine(&Limits::default(), Params::default(), None);
        let ast = engine.compile(r#"expect("+PONG");"#).unwrap();
        assert_eq!(
            invalid_pattern(&ast).unwrap().message(),
            "invalid regular expression given to expect(): repetition operator missing expression"
        );
    }
}
