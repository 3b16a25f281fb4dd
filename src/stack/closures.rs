//! Values inside function pointers, which Rhai's size limits do not see.
//!
//! A closure that uses a variable from around it turns that variable into a
//! shared cell and keeps a reference to it. A loop can then chain cells
//! without end, each holding a closure that holds the previous cell
//! (`let q = prev; prev = || q;`), one level per iteration at no cost, and
//! dropping the chain recurses through every level: a million levels take
//! about a second to build and overflow any stack. Rhai gives no way to
//! make such captures copy instead, so scripts may not capture variables at
//! all ([`captured_variable`] finds the first that does); `curry` passes
//! values in explicitly, as copies.
//!
//! Curried values are hidden from the size limits too, so `curry` is routed
//! to [`CURRY`], which refuses values nesting deeper than [`CURRY_DEPTH`]:
//! `p = Fn("f").curry(p)` in a loop otherwise nests one level per turn.

use std::any::TypeId;

use rhai::{AST, ASTNode, Dynamic, Engine, FnPtr, NativeCallContext, Position, Stmt, Token};

use super::CURRY_DEPTH;
use super::values::measure;
use crate::engine::{Failure, NativeResult};

/// The function `curry` calls become: Rhai's own `curry` is handled inside
/// the evaluator, before any registered function could check its values.
const CURRY: &str = "curry_checked";

/// The most values one `curry` call passes.
const MAX_CURRIED: usize = 16;

/// The first variable a closure in `ast` captures, and where the closure
/// uses it.
pub(crate) fn captured_variable(ast: &AST) -> Option<(String, Position)> {
    let mut captured: Vec<(String, Position)> = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some(ASTNode::Stmt(Stmt::Share(variables))) = path.last() {
            captured.extend(
                variables
                    .iter()
                    .map(|(variable, _)| (variable.name.to_string(), variable.pos)),
            );
        }
        true
    });
    captured
        .into_iter()
        .min_by_key(|(_, position)| (position.line(), position.position()))
}

pub(super) fn register(engine: &mut Engine) {
    // `curry` is a reserved word everywhere but in a call, so renaming the
    // word renames exactly the calls.
    #[allow(deprecated)] // volatile, not deprecated: stable within the pinned Rhai
    engine.on_parse_token(|token, _, _| match token {
        Token::Reserved(word) | Token::Identifier(word) if word.as_str() == "curry" => {
            Token::Identifier(Box::new(CURRY.into()))
        }
        other => other,
    });
    for arity in 0..=MAX_CURRIED + 1 {
        engine.register_raw_fn(
            CURRY,
            vec![TypeId::of::<Dynamic>(); arity],
            |ctx: NativeCallContext, args: &mut [&mut Dynamic]| curry(&ctx, args),
        );
    }
}

/// `f.curry(a, b)`: a copy of `f` with `a` and `b` curried, as Rhai's own,
/// but refusing values nested deeper than [`CURRY_DEPTH`] allows, and more
/// items in all than an array may hold (Rhai's size limits do not look
/// inside function pointers: `p = p.curry(p)` doubles `p` every time).
fn curry(ctx: &NativeCallContext, args: &mut [&mut Dynamic]) -> NativeResult<FnPtr> {
    let fn_ptr = args
        .first()
        .and_then(|f| f.read_lock::<FnPtr>().map(|f| f.clone()));
    let Some(mut fn_ptr) = fn_ptr else {
        let given = args
            .first()
            .map_or(String::new(), |f| format!(", not {}", f.type_name()));
        return Err(Failure::script(format!("curry needs a function pointer first{given}")).into());
    };
    let most = ctx.engine().max_array_size();
    let (_, mut items) = measure(&Dynamic::from(fn_ptr.clone()), CURRY_DEPTH);
    for value in args.iter_mut().skip(1) {
        let value = std::mem::take(*value).flatten();
        let (depth, inside) = measure(&value, CURRY_DEPTH - 1);
        if depth >= CURRY_DEPTH {
            return Err(Failure::script(format!(
                "curry: this value nests more than {} levels deep; curried values may not",
                CURRY_DEPTH - 1
            ))
            .into());
        }
        items += inside + 1;
        if most > 0 && items > most {
            return Err(Failure::script(format!(
                "curry: the curried values would hold more than {most} items, \
                 the most an array may hold"
            ))
            .into());
        }
        fn_ptr.add_curry(value);
    }
    Ok(fn_ptr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Limits, Params, new_engine};

    fn engine() -> Engine {
        new_engine(&Limits::default(), Params::default(), None)
    }

    /// The message of the failure `source` ends with.
    fn failure(source: &str) -> String {
        match *engine().eval::<Dynamic>(source).unwrap_err() {
            rhai::EvalAltResult::ErrorRuntime(value, _) => value.cast::<Failure>().message,
            other => panic!("{source}: {other}"),
        }
    }

    fn captured(source: &str) -> Option<(String, Option<usize>, Option<usize>)> {
        let ast = engine().compile(source).unwrap();
        captured_variable(&ast).map(|(name, at)| (name, at.line(), at.position()))
    }

    #[test]
    fn a_closure_that_captures_is_found_wherever_it_is() {
        assert_eq!(
            captured("let k = 1;\nlet f = |x| x + k;"),
            Some(("k".into(), Some(2), Some(17)))
        );
        assert_eq!(
            captured("fn hook(m) {\n    [1].map(|x| [2].map(|y| y + m))\n}"),
            Some(("m".into(), Some(2), Some(33)))
        );
        let first = captured("fn a(p) { || p }\nfn b(q) { || q }\nlet r = 1; || r");
        assert_eq!(first.map(|c| c.0), Some("p".into()));
    }

    #[test]
    fn closures_that_capture_nothing_are_fine() {
        assert_eq!(captured("let f = |x, y| x + y; [1].map(|x| x * 2)"), None);
        assert_eq!(captured("const K = 5; let f = |x| x + K;"), None);
        assert_eq!(captured("let f = (|k, x| x + k).curry(3);"), None);
    }

    #[test]
    fn curry_works_as_rhais_own() {
        let plain = Engine::new();
        for source in [
            "let f = (|a, b, c| a + b * c).curry(1); f.call(2, 3)",
            "let f = curry(|a, b| a - b, 10); f.call(3)",
            "const F = Fn(\"max\"); F.curry(5).call(2)",
            "let f = Fn(\"max\"); let g = f.curry(1); g.curry(7).call() + f.call(1, 2)",
            "(|a| a).curry([1, [2, #{k: 3}]]).call().to_string()",
            "Fn(\"max\").curry().call(1, 2)",
        ] {
            assert_eq!(
                engine().eval::<Dynamic>(source).unwrap().to_string(),
                plain.eval::<Dynamic>(source).unwrap().to_string(),
                "{source}"
            );
        }
    }

    #[test]
    fn curried_values_may_not_nest_without_limit() {
        let err = failure("let p = Fn(\"max\"); loop { p = Fn(\"max\").curry(p); }");
        assert!(err.contains("curried values may not"), "{err}");
        let nested =
            |levels| format!("let v = 1; for i in 0..{levels} {{ v = [v]; }} Fn(\"max\").curry(v)");
        let err = failure(&nested(64));
        assert!(err.contains("more than 63 levels"), "{err}");
        assert!(engine().eval::<Dynamic>(&nested(63)).is_ok());
        // Rhai's size limits do not look inside function pointers.
        let err = failure("let p = Fn(\"max\"); loop { p = p.curry(p); }");
        assert!(err.contains("more than 100000 items"), "{err}");
        let err = failure("curry(5, 1)");
        assert!(
            err.contains("curry needs a function pointer first, not i64"),
            "{err}"
        );
        assert_eq!(failure("curry()"), "curry needs a function pointer first");
    }
}
