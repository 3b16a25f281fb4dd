//! The measurements the stack sizes rest on, in the build being tested
//! (`cargo test` measures the debug build, `cargo test --release` the
//! release one), and the guarantees they give. Each prints its figures
//! (`cargo test stack -- --nocapture`).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use rhai::{Array, Dynamic, Engine, FnPtr, Map, Scope};

use super::*;
use crate::engine::{self, Limits, Params};

/// Runs `f` on a fresh thread with `size` bytes of stack.
pub(super) fn on_thread<T: Send>(size: usize, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        Builder::new()
            .stack_size(size)
            .spawn_scoped(scope, f)
            .expect("a test thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

const PATTERN: u64 = 0x5a5a_a5a5_5a5a_a5a5;
/// Left alone below the current frame: what the measuring code itself uses.
const SKIP: usize = 64 << 10;

fn word_at(address: usize) -> u64 {
    // SAFETY: only called on this thread's own stack, between its end and
    // the current frame: mapped, and not in use by any live frame.
    unsafe { std::ptr::read_volatile(address as *const u64) }
}

fn paint(from: usize, to: usize) {
    let mut address = from & !7;
    while address > to {
        // SAFETY: as in `word_at`.
        unsafe { std::ptr::write_volatile(address as *mut u64, PATTERN) };
        address -= 8;
    }
}

/// The stack `f` uses below the caller's frame (up to `most`), found by
/// painting the unused stack and looking for the lowest word `f` changed.
#[inline(never)]
fn stack_used(most: usize, f: impl FnOnce()) -> usize {
    let top = (stack_pointer() - SKIP) & !7;
    let (low, _) = bounds().expect("stack bounds");
    let bottom = (low + (64 << 10)).max(top.saturating_sub(most)) & !7;
    paint(top, bottom);
    f();
    let mut address = bottom + 8;
    while address < top && word_at(address) == PATTERN {
        address += 8;
    }
    top - address
}

/// Stack per level of `walk` over values built by `make(levels)`.
fn per_level(make: &dyn Fn(usize) -> Dynamic, walk: &dyn Fn(Dynamic)) -> usize {
    let (few, many) = (500, 2500);
    let small = make(few);
    let large = make(many);
    let used_small = stack_used(32 << 20, || walk(small));
    let used_large = stack_used(32 << 20, || walk(large));
    (used_large - used_small) / (many - few)
}

/// Takes a deep value apart one level at a time.
pub(super) fn take_apart(value: Dynamic) {
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        if value.is_array() {
            pending.extend(value.into_array().unwrap());
        } else if value.is_map() {
            pending.extend(value.cast::<Map>().into_values());
        } else if value.is_fnptr() {
            let mut fn_ptr = value.cast::<FnPtr>();
            pending.extend(fn_ptr.iter_curry_mut().map(std::mem::take));
        }
    }
}

fn nested_arrays(levels: usize) -> Dynamic {
    let mut value = Dynamic::from_array(Array::new());
    for _ in 0..levels {
        value = Dynamic::from_array(vec![value, Dynamic::from("x")]);
    }
    value
}

fn nested_maps(levels: usize) -> Dynamic {
    let mut value = Dynamic::from_map(Map::new());
    for _ in 0..levels {
        let mut map = Map::new();
        map.insert("a".into(), Dynamic::from("x"));
        map.insert("k".into(), value);
        value = Dynamic::from_map(map);
    }
    value
}

fn nested_fn_ptrs(levels: usize) -> Dynamic {
    let mut value = Dynamic::UNIT;
    for _ in 0..levels {
        let mut fn_ptr = FnPtr::new("f").unwrap();
        fn_ptr.add_curry(value);
        value = Dynamic::from(fn_ptr);
    }
    value
}

/// Every recursive walk Rhai (or Rust's formatting, which Rhai falls back
/// on) makes over nested values. Each takes the value apart afterwards,
/// except `drop`, which is the walk.
/// A named walk over a value it takes.
type Walk<'a> = (&'static str, Box<dyn Fn(Dynamic) + 'a>);

fn walks(engine: &Engine) -> Vec<Walk<'_>> {
    vec![
        (
            "clone",
            Box::new(|v| {
                std::mem::forget(std::hint::black_box(v.clone()));
                take_apart(v);
            }),
        ),
        ("drop", Box::new(|v| drop(std::hint::black_box(v)))),
        (
            "size check",
            Box::new(|v| {
                let _ = engine.ensure_data_size_within_limits(&v);
                take_apart(v);
            }),
        ),
        (
            "hash",
            Box::new(|v| {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                v.hash(&mut hasher);
                std::hint::black_box(hasher.finish());
                take_apart(v);
            }),
        ),
        (
            "switch",
            Box::new(|v| {
                let mut scope = Scope::new();
                scope.push("v", v);
                let _ =
                    engine.eval_with_scope::<Dynamic>(&mut scope, "switch v { 1 => 0, _ => 1 }");
                take_apart(scope.remove::<Dynamic>("v").unwrap());
            }),
        ),
        (
            "Display",
            Box::new(|v| {
                drop(std::hint::black_box(v.to_string()));
                take_apart(v);
            }),
        ),
        (
            "Debug",
            Box::new(|v| {
                drop(std::hint::black_box(format!("{v:?}")));
                take_apart(v);
            }),
        ),
    ]
}

#[test]
fn each_level_of_data_costs_no_more_stack_than_budgeted() {
    on_thread(SIZE, || {
        let mut engine = Engine::new();
        engine
            .set_max_array_size(MAX_ITEMS)
            .set_max_map_size(MAX_ITEMS);
        type Kind<'a> = (&'a str, &'a dyn Fn(usize) -> Dynamic, usize);
        let kinds: [Kind; 3] = [
            ("array", &nested_arrays, ARRAY_LEVEL),
            ("map", &nested_maps, MAP_LEVEL),
            ("curried Fn", &nested_fn_ptrs, MAP_LEVEL),
        ];
        let mut over = Vec::new();
        for (kind, make, budget) in kinds {
            for (walk_name, walk) in walks(&engine) {
                let cost = per_level(make, walk.as_ref());
                println!("{kind:10} {walk_name:10} {cost:6} bytes per level (budget {budget})");
                if cost > budget {
                    over.push(format!("{kind} {walk_name}: {cost} > {budget}"));
                }
            }
        }
        assert!(over.is_empty(), "levels costlier than budgeted: {over:?}");
    });
}

/// The deepest value a script can build, of the costliest kind per level.
fn deepest_value() -> Dynamic {
    let mut value = Dynamic::UNIT;
    for level in 0..DATA_DEPTH {
        value = if level < 2 * MAX_ITEMS && level % 2 == 0 {
            Dynamic::from_array(vec![value])
        } else {
            let mut map = Map::new();
            map.insert("k".into(), value);
            Dynamic::from_map(map)
        };
    }
    value
}

#[test]
fn the_deepest_value_fits_in_the_walk_budget() {
    println!(
        "deepest value: {DATA_DEPTH} levels; walks budgeted {} MiB; margin {} MiB; \
         nesting {} MiB; thread stack {} MiB",
        WALK >> 20,
        MARGIN >> 20,
        NESTING >> 20,
        SIZE >> 20
    );
    let value = on_thread(64 << 20, deepest_value);
    // Rhai's walks over it, and ours, with only the walk budget (and the
    // gap that can precede one) to spare.
    let value = on_thread(WALK + GAP, move || {
        let mut engine = Engine::new();
        engine
            .set_max_array_size(MAX_ITEMS)
            .set_max_map_size(MAX_ITEMS);
        for (name, walk) in walks(&engine) {
            walk(value.clone());
            println!("{name} of the deepest value: fits");
        }
        assert!(display(&value).len() > DATA_DEPTH);
        assert!(debug(&value).len() > DATA_DEPTH);
        value
    });
    take_apart(value);
}

/// Engine for the script tests: tcpscript's functions and limits, with the
/// check in place.
fn checked_engine(dir: Option<&std::path::Path>) -> Engine {
    let mut engine = engine::new_engine(&Limits::default(), Params::default(), dir);
    engine.on_progress(|_| check());
    engine
}

/// Code as deep as Rhai's limits allow: the deepest recursion (63 calls
/// below the top level) with the body of each nested as deep as it can be.
fn deepest_code() -> Vec<(&'static str, String)> {
    let nest = |open: &str, leaf: &str, close: &str, levels: usize| {
        format!("{}{leaf}{}", open.repeat(levels), close.repeat(levels))
    };
    let recursing = |body: String| {
        format!("fn f(n) {{ let x = 1; if n <= 0 {{ return 0; }} {body} }}\nfn g(x) {{ x }}\nf(63)")
    };
    let shapes: [(&str, &str, &str); 9] = [
        ("arithmetic", "x + (", ")"),
        ("calls", "g(", ")"),
        ("blocks", "{ let y = x; ", " }"),
        ("arrays", "[x, ", "]"),
        ("maps", "#{a: ", "}"),
        ("interpolation", "`${", "}`"),
        ("if", "if x > 0 { x + ", " } else { 0 }"),
        ("switch", "switch x { 1 => ", ", _ => f(n - 1) }"),
        ("closures", "(|n| ", ").call(n)"),
    ];
    let compiles = |source: &str| checked_engine(None).compile(source).is_ok();
    let mut scripts = Vec::new();
    for (name, open, close) in shapes {
        let make = |levels| recursing(nest(open, "f(n - 1)", close, levels));
        let mut levels = 1;
        while compiles(&make(levels + 1)) {
            levels += 1;
        }
        scripts.push((name, make(levels)));
    }
    scripts.push((
        "the issue's shape",
        recursing(nest("x + (", "f(n - 1)", ")", 16)),
    ));
    scripts
}

#[test]
fn code_as_deep_as_the_limits_allow_fits_in_the_nesting_budget() {
    on_thread(SIZE, || {
        for (name, source) in deepest_code() {
            let engine = checked_engine(None);
            let ast = engine.compile(&source).expect("compiles");
            let mut outcome = Ok(Dynamic::UNIT);
            let used = stack_used(2 * NESTING, || outcome = engine.eval_ast::<Dynamic>(&ast));
            println!(
                "{name:20} {:8} KiB (budget {} KiB)",
                used >> 10,
                NESTING >> 10
            );
            if let Err(err) = &outcome {
                // Rhai's own call limit may come first (closures count as
                // calls); never the native check.
                assert!(
                    matches!(**err, rhai::EvalAltResult::ErrorStackOverflow(..)),
                    "{name}: {err}"
                );
            }
            assert!(used <= NESTING, "{name}: {used} bytes > {NESTING}");
        }
    });
}

thread_local! {
    /// For the gap probe: the stack pointer at the last check, and the
    /// widest excursion below it seen before the next check.
    static LAST_CHECK: Cell<usize> = const { Cell::new(0) };
}
static WIDEST_GAP: AtomicUsize = AtomicUsize::new(0);
/// How far below the top of a script the gap probe paints and looks.
const PROBED: usize = NESTING + 4 * GAP;

/// Called at every check: how far below the previous check the stack went
/// before this one, from the paint it left; the paint is then restored.
#[inline(never)]
fn probe_gap() {
    let here = stack_pointer();
    let last = LAST_CHECK.with(Cell::get);
    let from = (last.min(here) - SKIP) & !7;
    let (low, _) = bounds().expect("stack bounds");
    // Look down to the lowest changed word, past any unused holes in frames.
    let mut lowest = from;
    let mut address = from;
    let mut clean = 0;
    let floor = (low + (64 << 10)).max(from.saturating_sub(PROBED));
    while address > floor && clean < (128 << 10) {
        if word_at(address) == PATTERN {
            clean += 8;
        } else {
            lowest = address;
            clean = 0;
        }
        address -= 8;
    }
    paint(from, lowest.saturating_sub(8));
    WIDEST_GAP.fetch_max(last.saturating_sub(lowest), Ordering::Relaxed);
    LAST_CHECK.with(|l| l.set(here));
}

/// Scripts that exercise what runs between two checks, on shallow data: a
/// call's set-up, closures called by native functions, regular
/// expressions, JSON, and compiling an imported module as deep as the
/// limits allow.
fn gap_corpus() -> Vec<String> {
    let mut scripts: Vec<String> = deepest_code().into_iter().map(|(_, s)| s).collect();
    let groups = format!("{}a{}", "(".repeat(120), ")".repeat(120));
    let json = format!("{}1{}", "[".repeat(60), "]".repeat(60));
    scripts.extend([
        format!("matches(\"aaa\", \"{groups}\")"),
        format!("parse_json(`{{\"a\": {json}}}`)"),
        "import \"deep\" as d; d::f(3)".to_string(),
        "let a = [3, 1, 2]; a.sort(|x, y| x - y); a.map(|x| x * 2).filter(|x| x > 2)\
         .reduce(|s, x| s + x, 0)"
            .to_string(),
        "let a = [[1, [2]], #{b: [3]}]; `${a}` + a.to_string() + a.to_debug() + \
         (a == a) + (a in [a]) + #{x: a}.to_json()"
            .to_string(),
        "let f = (|a, b| a + b).curry(1); f.call(2) + curry(Fn(\"max\"), 1).call(2)".to_string(),
    ]);
    scripts
}

#[test]
fn no_more_than_the_gap_is_used_between_two_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (_, deepest) = deepest_code().swap_remove(0);
    std::fs::write(
        dir.path().join("deep.rhai"),
        deepest.replace("\nf(63)", "\n"),
    )
    .unwrap();
    on_thread(SIZE, || {
        let mut engine =
            engine::new_engine(&Limits::default(), Params::default(), Some(dir.path()));
        engine.on_progress(|_| {
            probe_gap();
            None
        });
        for source in gap_corpus() {
            let ast = engine.compile(&source).expect("compiles");
            let top = stack_pointer() - SKIP;
            paint(top, top - PROBED);
            LAST_CHECK.with(|l| l.set(top));
            WIDEST_GAP.store(0, Ordering::Relaxed);
            let outcome = engine.eval_ast::<Dynamic>(&ast);
            let widest = WIDEST_GAP.load(Ordering::Relaxed);
            let shown: String = source.chars().take(60).collect();
            println!(
                "{:6} KiB between checks ({}): {shown}",
                widest >> 10,
                outcome.is_ok()
            );
            assert!(
                widest <= GAP,
                "{widest} bytes > {GAP} between checks in {source}"
            );
        }
    });
}

/// A function recursing `n` calls deep with `levels` of parentheses in
/// each call, called as `down(63, 1)` on line 5.
fn too_deep_for_a_small_thread() -> String {
    format!(
        "fn down(n, x) {{\n    if n <= 0 {{ return 0; }}\n    {}down(n - 1, x){}\n}}\nlet r = down(63, 1);\n",
        "x + (".repeat(24),
        ")".repeat(24)
    )
}

/// Threads smaller than a script thread keep a smaller margin, enough to
/// try the check on: 4 MiB holds less than this recursion needs in any
/// build.
const SMALL_THREAD: usize = 4 << 20;

#[test]
fn the_check_stops_nesting_too_deep_for_the_thread_with_its_position() {
    let source = too_deep_for_a_small_thread();
    let rendered = on_thread(SMALL_THREAD, || {
        let engine = checked_engine(None);
        let script = engine::compile_source(&engine, "t.rhai".into(), source).unwrap();
        let err = engine.run_ast(&script.ast).unwrap_err();
        assert!(
            matches!(*err, rhai::EvalAltResult::ErrorTerminated(..)),
            "{err}"
        );
        // The thread goes on running scripts.
        assert_eq!(engine.eval::<rhai::INT>("40 + 2").unwrap(), 42);
        engine::diagnose(&err, &script, None).render()
    });
    assert!(
        rendered.contains("script nests too deeply for the native stack"),
        "{rendered}"
    );
    assert!(rendered.contains("t.rhai:5:9"), "{rendered}");
}

#[test]
fn a_hook_is_checked_too() {
    let source = too_deep_for_a_small_thread().replace(
        "let r = down(63, 1);",
        "fn on_message(msg) { down(parse_int(msg), 1) }",
    );
    let rendered = on_thread(SMALL_THREAD, || {
        let script = crate::server::hooks::ServerScript::from_source(
            "t.rhai",
            &source,
            &Limits::default(),
            crate::transcript::Verbosity::Quiet,
        )
        .unwrap();
        let mut hooks = std::sync::Arc::new(script).connection(
            "127.0.0.1:1".parse().unwrap(),
            &crate::framing::Framing::Line,
            1 << 20,
        );
        hooks.on_message(b"63").unwrap_err().error.render()
    });
    assert!(rendered.contains("script nests too deeply"), "{rendered}");
    assert!(rendered.contains("in hook `on_message`"), "{rendered}");
    assert!(rendered.contains("t.rhai:5:"), "{rendered}");
}

#[test]
fn a_client_script_is_checked_too() {
    use crate::client::{ClientOptions, ClientScript};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.rhai");
    std::fs::write(&path, too_deep_for_a_small_thread()).unwrap();
    let options = ClientOptions {
        script: path.clone(),
        connect: addr,
        timeout: std::time::Duration::from_secs(5),
        connect_retry: None,
        udp: false,
        framing: None,
        max_frame: 1 << 20,
        params: Params::default(),
        verbosity: crate::transcript::Verbosity::Quiet,
        limits: Limits::default(),
        case_timeout: None,
        tls: None,
        starttls: Default::default(),
        tls_flags: Default::default(),
    };
    // The connection waits in the listener's backlog: nothing is read.
    let rendered = on_thread(SMALL_THREAD, || {
        let script = ClientScript::load(&options).unwrap();
        script.run(None, 10).result.unwrap_err().render()
    });
    assert!(rendered.contains("script nests too deeply"), "{rendered}");
    assert!(
        rendered.contains(&format!("{}:5:9", path.display())),
        "{rendered}"
    );
    drop(listener);
}

/// The deepest value [`keep`] has been given on this thread.
static DEEPEST: AtomicUsize = AtomicUsize::new(0);

#[test]
fn size_limits_bound_how_deep_any_way_of_nesting_data_gets() {
    // Small size limits and an operation limit: a way of nesting that the
    // limits did not bound would pass the bound below long before the
    // operations run out.
    let items = 40;
    let bound = 2 * items + NAVIGATION + CURRY_DEPTH;
    let tries = [
        "let a = []; loop { a = [a]; keep(a); }",
        "let a = []; loop { a = [take(a)]; keep(a); }",
        "let m = #{}; loop { m = #{k: [m]}; keep(m); }",
        "let a = []; loop { a.push(a); keep(a); }",
        "let a = []; loop { let b = [()]; b[0] = a; a = b; keep(a); }",
        "let a = [[[[]]]]; loop { a[0][0][0] = [[[[a]]]]; keep(a); }",
        "let m = #{a: #{b: #{}}}; loop { m.a.b = #{a: #{b: m}}; keep(m); }",
        "let a = []; loop { a += [a]; keep(a); }",
        "let a = []; loop { a = [a].map(|x| [x, [x]]); keep(a); }",
        "let a = []; loop { a = [1, 2, 3].reduce(|acc, x| [acc], a); keep(a); }",
        "fn attach(v) { if this.len() == 0 { this.push(v) } else { this[0].attach(v) } }\n\
         let a = []; loop { a.attach([[[[]]]]); keep(a); }",
        // Down four levels a call, through a place that is never checked
        // as a whole: as deep as the call limit lets it reach.
        "fn sink(v) { if this[0][0][0][0].len() == 0 { this[0][0][0][0] = v } \
         else { this[0][0][0][0].sink(v) } }\n\
         let a = [[[[[]]]]]; loop { a.sink([[[[[]]]]]); keep(a); }",
        "let p = Fn(\"max\"); loop { p = p.curry(p); keep(p); }",
        "let p = Fn(\"max\"); loop { p = Fn(\"max\").curry([[p]]); keep(p); }",
        "let a = []; loop { a = [Fn(\"max\").curry(a)]; keep(a); }",
    ];
    on_thread(SIZE, || {
        for source in tries {
            let limits = Limits {
                max_operations: 200_000,
                max_array_size: items,
                max_map_size: items,
                ..Limits::default()
            };
            let mut engine = engine::new_engine(&limits, Params::default(), None);
            engine.register_fn("keep", move |value: Dynamic| {
                DEEPEST.fetch_max(values::depth(&value, bound), Ordering::Relaxed);
            });
            DEEPEST.store(0, Ordering::Relaxed);
            let err = engine.run(source).expect_err("a limit stops it");
            let deepest = DEEPEST.load(Ordering::Relaxed);
            println!("{deepest:5} levels deep before: {err}");
            assert!(deepest <= bound, "{deepest} > {bound} levels: {source}");
        }
    });
}
