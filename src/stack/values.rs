//! Nested arrays and maps formatted, compared and turned into JSON with a
//! work list on the heap instead of recursion on the native stack.
//!
//! Rhai implements `print`, `to_string`, `to_debug`, `debug` (and so string
//! interpolation and `+` with a string), `==`, `!=` (and so `in`,
//! `contains`, `index_of`, `dedup`) and `to_json` for arrays and maps by
//! calling itself through the function table once per level of nesting:
//! about 1.6 KB of stack per level in a release build and 8 KB in a debug
//! one, with no check in between. Functions registered on the engine come
//! before Rhai's own, so these replace them for arrays and maps, with the
//! same results; the values inside that are neither arrays nor maps are
//! still formatted and compared by Rhai's functions for their types.
//!
//! Each walk takes its own copy of the value and takes it apart as it goes,
//! so the copy is also dropped one level at a time.

use std::fmt::Write;

use rhai::{Array, Dynamic, Engine, EvalAltResult, FnPtr, ImmutableString, Map, NativeCallContext};

use crate::engine::NativeResult;

pub(super) fn register(engine: &mut Engine) {
    for name in ["print", "to_string", "debug", "to_debug"] {
        engine.register_fn(name, |ctx: NativeCallContext, array: &mut Array| {
            script_text(&ctx, Dynamic::from_array(array.clone()))
        });
        engine.register_fn(name, |ctx: NativeCallContext, map: &mut Map| {
            script_text(&ctx, Dynamic::from_map(map.clone()))
        });
    }
    engine.register_fn(
        "==",
        |ctx: NativeCallContext, a: &mut Array, b: Array| -> NativeResult<bool> {
            equal(&ctx, Dynamic::from_array(a.clone()), Dynamic::from_array(b))
        },
    );
    engine.register_fn(
        "!=",
        |ctx: NativeCallContext, a: &mut Array, b: Array| -> NativeResult<bool> {
            equal(&ctx, Dynamic::from_array(a.clone()), Dynamic::from_array(b)).map(|e| !e)
        },
    );
    engine.register_fn(
        "==",
        |ctx: NativeCallContext, a: &mut Map, b: Map| -> NativeResult<bool> {
            equal(&ctx, Dynamic::from_map(a.clone()), Dynamic::from_map(b))
        },
    );
    engine.register_fn(
        "!=",
        |ctx: NativeCallContext, a: &mut Map, b: Map| -> NativeResult<bool> {
            equal(&ctx, Dynamic::from_map(a.clone()), Dynamic::from_map(b)).map(|e| !e)
        },
    );
    engine.register_fn("to_json", |map: &mut Map| {
        to_json(Dynamic::from_map(map.clone()))
    });
}

/// `value.to_string()`, as Rhai's `Display` writes it.
pub(crate) fn display(value: &Dynamic) -> String {
    if value.is_array() || value.is_map() {
        return debug(value);
    }
    // Nothing else looks inside when displayed: a function pointer shows
    // its name only.
    value.to_string()
}

/// `format!("{value:?}")`, as Rhai's `Debug` writes it.
pub(crate) fn debug(value: &Dynamic) -> String {
    let mut out = String::new();
    write_nested(&mut out, value.clone(), true, &mut |out, leaf| {
        let _ = write!(out, "{leaf:?}");
    });
    out
}

/// What Rhai's `print` (and `to_string`, `debug`, `to_debug`) makes of an
/// array or a map: every item in it by `to_debug`, as Rhai's own version
/// calls it, with the same fallback.
fn script_text(ctx: &NativeCallContext, value: Dynamic) -> ImmutableString {
    let mut out = String::new();
    write_nested(
        &mut out,
        value,
        false,
        &mut |out, mut item| match ctx.call_native_fn_raw(
            rhai::FUNC_TO_DEBUG,
            true,
            &mut [&mut item],
        ) {
            Ok(text) if text.is_string() => {
                out.push_str(&text.into_immutable_string().unwrap_or_default());
            }
            Ok(other) => out.push_str(ctx.engine().map_type_name(other.type_name())),
            Err(_) => {
                let _ = write!(out, "{item:?}");
            }
        },
    );
    out.into()
}

/// One step of a walk: a value to write, or text to write once the values
/// pushed before it are done.
enum Task {
    Value(Dynamic),
    Text(&'static str),
    Key(String),
}

/// Writes arrays and maps (and, with `curried`, function pointers with
/// their curried values) as Rhai does, and every other value with `leaf`.
fn write_nested(
    out: &mut String,
    value: Dynamic,
    curried: bool,
    leaf: &mut dyn FnMut(&mut String, Dynamic),
) {
    let mut tasks = vec![Task::Value(value)];
    while let Some(task) = tasks.pop() {
        let value = match task {
            Task::Text(text) => {
                out.push_str(text);
                continue;
            }
            Task::Key(key) => {
                let _ = write!(out, "{key:?}: ");
                continue;
            }
            Task::Value(value) => value.flatten(),
        };
        if value.is_array() {
            out.push('[');
            tasks.push(Task::Text("]"));
            let items = value.into_array().unwrap_or_default();
            push_separated(&mut tasks, items.into_iter().map(Task::Value), ", ");
        } else if value.is_map() {
            out.push_str("#{");
            tasks.push(Task::Text("}"));
            let map = value.try_cast::<Map>().unwrap_or_default();
            let count = map.len();
            for (i, (key, item)) in map.into_iter().rev().enumerate() {
                tasks.push(Task::Value(item));
                tasks.push(Task::Key(key.into()));
                if i + 1 < count {
                    tasks.push(Task::Text(", "));
                }
            }
        } else if curried && value.read_lock::<FnPtr>().is_some_and(|f| f.is_curried()) {
            // `Fn("name", curried...)`: the bare pointer's text, left open.
            let mut fn_ptr = value.cast::<FnPtr>();
            let items: Vec<Dynamic> = fn_ptr.iter_curry_mut().map(std::mem::take).collect();
            fn_ptr.set_curry(std::iter::empty());
            let head = format!("{:?}", Dynamic::from(fn_ptr));
            out.push_str(head.strip_suffix(')').unwrap_or(&head));
            tasks.push(Task::Text(")"));
            for item in items.into_iter().rev() {
                tasks.push(Task::Value(item));
                tasks.push(Task::Text(", "));
            }
        } else {
            leaf(out, value);
        }
    }
}

/// Pushes `items` so that they pop in order, with `separator` between.
fn push_separated(
    tasks: &mut Vec<Task>,
    items: impl DoubleEndedIterator<Item = Task> + ExactSizeIterator,
    separator: &'static str,
) {
    let count = items.len();
    for (i, item) in items.rev().enumerate() {
        tasks.push(item);
        if i + 1 < count {
            tasks.push(Task::Text(separator));
        }
    }
}

/// Where two values being compared sit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inside {
    Top,
    Array,
    Map,
}

/// What is left to compare, in Rhai's order.
enum Compare {
    /// Two values, where they sit, and whether an array holds a pair of
    /// containers above them (see [`leaf_equal`]).
    Pair(Dynamic, Dynamic, Inside, bool),
    /// A key of the first map that the second lacks.
    Missing,
}

/// Rhai's `==` for arrays and maps, item by item in Rhai's order.
fn equal(ctx: &NativeCallContext, a: Dynamic, b: Dynamic) -> NativeResult<bool> {
    let mut pending = vec![Compare::Pair(a, b, Inside::Top, false)];
    while let Some(next) = pending.pop() {
        let Compare::Pair(a, b, inside, held) = next else {
            return Ok(false);
        };
        let (a, b) = (a.flatten(), b.flatten());
        // The pairs inside a pair of containers that an array holds, or
        // that is inside one that is, are held by an array.
        let inner_held = held || inside == Inside::Array;
        if a.is_array() && b.is_array() {
            let a = a.into_array().unwrap_or_default();
            let b = b.into_array().unwrap_or_default();
            if a.len() != b.len() {
                return Ok(false);
            }
            for (x, y) in a.into_iter().zip(b).rev() {
                pending.push(Compare::Pair(x, y, Inside::Array, inner_held));
            }
        } else if a.is_map() && b.is_map() {
            let a = a.try_cast::<Map>().unwrap_or_default();
            let mut b = b.try_cast::<Map>().unwrap_or_default();
            if a.len() != b.len() {
                return Ok(false);
            }
            // Rhai compares the values key by key and stops at the first
            // key of `a` that `b` lacks.
            let mut entries = Vec::with_capacity(a.len());
            for (key, x) in a {
                match b.remove(&key) {
                    Some(y) => entries.push(Compare::Pair(x, y, Inside::Map, inner_held)),
                    None => {
                        entries.push(Compare::Missing);
                        break;
                    }
                }
            }
            pending.extend(entries.into_iter().rev());
        } else if !leaf_equal(ctx, a, b, inside, held)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Two values that are not both arrays or both maps, compared with Rhai's
/// `==` for their types. Without one, Rhai's array `==` answers `false` for
/// items of different types and fails for items of the same type; that
/// failure reaches the array `==` one level up as a failed comparison of
/// an item it has already handed over (and so of a different type): there
/// it becomes `false`. Rhai's map `==` passes every failure on.
fn leaf_equal(
    ctx: &NativeCallContext,
    mut a: Dynamic,
    mut b: Dynamic,
    inside: Inside,
    held: bool,
) -> NativeResult<bool> {
    let same_type = a.type_id() == b.type_id();
    match ctx.call_native_fn_raw("==", true, &mut [&mut a, &mut b]) {
        Ok(equal) => Ok(equal.as_bool().unwrap_or(false)),
        Err(err) if is_missing_equals(&err) && inside == Inside::Array && !same_type => Ok(false),
        Err(err) if is_missing_equals(&err) && held => Ok(false),
        Err(err) => Err(err),
    }
}

fn is_missing_equals(err: &EvalAltResult) -> bool {
    matches!(err, EvalAltResult::ErrorFunctionNotFound(signature, _) if signature.starts_with("=="))
}

/// Rhai's `to_json` for a map.
fn to_json(value: Dynamic) -> String {
    let mut out = String::new();
    let mut tasks = vec![Task::Value(value)];
    while let Some(task) = tasks.pop() {
        let value = match task {
            Task::Text(text) => {
                out.push_str(text);
                continue;
            }
            Task::Key(key) => {
                let _ = write!(out, "{key:?}:");
                continue;
            }
            Task::Value(value) => value.flatten(),
        };
        if value.is_unit() {
            out.push_str("null");
        } else if value.is_map() {
            out.push('{');
            tasks.push(Task::Text("}"));
            let map = value.try_cast::<Map>().unwrap_or_default();
            let count = map.len();
            for (i, (key, item)) in map.into_iter().rev().enumerate() {
                tasks.push(Task::Value(item));
                tasks.push(Task::Key(key.into()));
                if i + 1 < count {
                    tasks.push(Task::Text(","));
                }
            }
        } else if value.is_array() {
            out.push('[');
            tasks.push(Task::Text("]"));
            let items = value.into_array().unwrap_or_default();
            push_separated(&mut tasks, items.into_iter().map(Task::Value), ",");
        } else if value.is_blob() {
            let bytes = value.into_blob().unwrap_or_default();
            let texts: Vec<String> = bytes.iter().map(u8::to_string).collect();
            let _ = write!(out, "[{}]", texts.join(","));
        } else if value.is_fnptr() {
            let mut fn_ptr = value.cast::<FnPtr>();
            if !fn_ptr.is_curried() {
                let _ = write!(out, "{:?}", fn_ptr.fn_name());
                continue;
            }
            let _ = write!(out, "[{:?}", fn_ptr.fn_name());
            tasks.push(Task::Text("]"));
            let items: Vec<Dynamic> = fn_ptr.iter_curry_mut().map(std::mem::take).collect();
            for item in items.into_iter().rev() {
                tasks.push(Task::Value(item));
                tasks.push(Task::Text(","));
            }
        } else {
            let _ = write!(out, "{value:?}");
        }
    }
    out
}

/// How deep `value` nests (a value that is not an array, a map or a curried
/// function pointer is 0 deep), counting no further than `limit + 1`, and
/// how many items its arrays, maps and curried values hold.
pub(super) fn measure(value: &Dynamic, limit: usize) -> (usize, usize) {
    let (mut deepest, mut items) = (0, 0);
    let mut pending = vec![(value.clone(), 0)];
    while let Some((value, level)) = pending.pop() {
        let value = value.flatten();
        let inside: Vec<Dynamic> = if value.is_array() {
            value.into_array().unwrap_or_default()
        } else if value.is_map() {
            value.cast::<Map>().into_values().collect()
        } else if value.is_fnptr() {
            let mut fn_ptr = value.cast::<FnPtr>();
            fn_ptr.iter_curry_mut().map(std::mem::take).collect()
        } else {
            continue;
        };
        items += inside.len();
        deepest = deepest.max(level + 1);
        if deepest > limit {
            break;
        }
        pending.extend(inside.into_iter().map(|item| (item, level + 1)));
    }
    (deepest, items)
}

/// How deep `value` nests, counting no further than `limit + 1`.
#[cfg(test)]
pub(super) fn depth(value: &Dynamic, limit: usize) -> usize {
    measure(value, limit).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Limits, Params, new_engine};

    /// Values of every kind the formatting and comparison functions meet.
    const VALUES: &str = r#"[
        [], #{}, [1, -2, 3.5, 1e-10, true, (), 'c', "q\"uote\n", blob(3, 0x41)],
        #{a: 1, "b c": [2, #{d: "e"}], f: #{}, g: [[], [[]]]},
        [Fn("max"), Fn("max").curry(1, [2]), |x| x + 1, timestamp()],
        ["a", ["b", ["c", #{"d": ['e']}]]],
    ]"#;

    fn plain() -> Engine {
        quiet(Engine::new())
    }

    fn ours() -> Engine {
        quiet(new_engine(&Limits::default(), Params::default(), None))
    }

    /// `print` and `debug` give their text to nobody.
    fn quiet(mut engine: Engine) -> Engine {
        engine.on_print(|_| {}).on_debug(|_, _, _| {});
        engine
    }

    /// What `expression` makes of each of [`VALUES`] (as `x`), as text.
    fn results(engine: &Engine, expression: &str) -> Vec<String> {
        let values: Array = engine.eval(VALUES).unwrap();
        values
            .into_iter()
            .map(|x| {
                let mut scope = rhai::Scope::new();
                scope.push("x", x.clone());
                scope.push("y", x);
                match engine.eval_with_scope::<Dynamic>(&mut scope, expression) {
                    // Timestamps print the same but differ.
                    Ok(value) => value.to_string(),
                    Err(err) => format!("error: {err}"),
                }
            })
            .collect()
    }

    #[test]
    fn formatting_arrays_and_maps_gives_what_rhai_gives() {
        for expression in [
            "x.to_string()",
            "x.to_debug()",
            "print(x)",
            "debug(x)",
            "`<${x}>`",
            r#""+" + x"#,
            "x + \"+\"",
        ] {
            assert_eq!(
                results(&ours(), expression),
                results(&plain(), expression),
                "{expression}"
            );
        }
    }

    #[test]
    fn comparing_arrays_and_maps_gives_what_rhai_gives() {
        for expression in [
            "x == y",
            "x != y",
            "x == [x]",
            "[x, 1] == [y, 1]",
            "[x, 1] == [y, 2]",
            "#{k: x} == #{k: y}",
            "#{k: x} == #{j: y}",
            "[1, \"a\"] == [1, 'a']",
            "#{a: 1} == #{a: \"1\"}",
            "[x] == [#{}]",
            "#{a: [1]} == #{a: #{}}",
            "x in [1, y]",
            "[1, y].contains(x)",
            "[1, y].index_of(x)",
        ] {
            assert_eq!(
                results(&ours(), expression),
                results(&plain(), expression),
                "{expression}"
            );
        }
    }

    #[test]
    fn maps_to_json_as_rhai_does() {
        let expression = "#{x: x, list: [x, (), 1.5], f: Fn(\"f\").curry(x)}.to_json()";
        assert_eq!(results(&ours(), expression), results(&plain(), expression));
    }

    #[test]
    fn tcpscripts_own_text_is_rusts_display_and_debug() {
        let values: Array = plain().eval(VALUES).unwrap();
        for value in values {
            assert_eq!(display(&value), value.to_string());
            assert_eq!(debug(&value), format!("{value:?}"));
        }
    }

    /// 50,000 levels of a map holding an array, built without copies.
    fn nested(levels: usize) -> Dynamic {
        let mut value = Dynamic::from_array(vec![]);
        for _ in 0..levels {
            let mut map = Map::new();
            map.insert("k".into(), Dynamic::from_array(vec![value]));
            value = Dynamic::from_map(map);
        }
        value
    }

    #[test]
    fn nested_values_are_formatted_and_compared_without_recursion() {
        // Rhai's own `to_string` and `==` take 8 KB of stack per level in a
        // debug build: these 100,000 levels would need 800 MB, more than a
        // script thread has.
        use crate::stack::tests::{on_thread, take_apart};
        on_thread(crate::stack::SIZE, || {
            let levels = 50_000;
            let text = debug_taking(nested(levels));
            assert!(text.starts_with("#{\"k\": [#{\"k\": [") && text.len() > 10 * levels);
            let json = to_json(nested(levels));
            assert!(json.starts_with("{\"k\":[{\"k\":[") && json.len() > 8 * levels);
            let engine = ours();
            let mut scope = rhai::Scope::new();
            scope.push("a", nested(levels));
            scope.push("b", nested(levels));
            let checks = engine
                .eval_with_scope::<Array>(
                    &mut scope,
                    "[a == b, a != b, a in [b], a.to_string().len(), `${a}`.len()]",
                )
                .unwrap();
            assert_eq!(checks[0].as_bool(), Ok(true));
            assert_eq!(checks[1].as_bool(), Ok(false));
            assert_eq!(checks[2].as_bool(), Ok(true));
            assert_eq!(checks[3].as_int(), Ok(text.len() as rhai::INT));
            assert_eq!(checks[3].as_int(), checks[4].as_int());
            for name in ["a", "b"] {
                take_apart(scope.remove::<Dynamic>(name).unwrap());
            }
        });
    }

    /// `debug` of a value this function owns: no copy, so no recursive clone.
    fn debug_taking(value: Dynamic) -> String {
        let mut out = String::new();
        write_nested(&mut out, value, true, &mut |out, leaf| {
            let _ = write!(out, "{leaf:?}");
        });
        out
    }

    #[test]
    fn depth_counts_arrays_maps_and_curried_values() {
        let engine = ours();
        let depth_of = |source: &str| depth(&engine.eval::<Dynamic>(source).unwrap(), 100);
        assert_eq!(depth_of("1"), 0);
        assert_eq!(depth_of("[]"), 1);
        assert_eq!(depth_of("[1, [2, #{a: [3]}]]"), 4);
        assert_eq!(depth_of("Fn(\"f\").curry([[1]])"), 3);
        assert_eq!(depth(&engine.eval::<Dynamic>("[[[[1]]]]").unwrap(), 2), 3);
    }
}
