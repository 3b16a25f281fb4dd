//! Rhai built-ins whose result can be far larger than their input, done
//! again with the size of the result worked out first.
//!
//! Rhai checks what a native function returns against the engine's limits
//! only once it has returned, and a native call never reaches the progress
//! callback that enforces `--hook-timeout`. So `s.split("")` on an 8 MiB
//! string built 8 million strings (+500 MB, 1.7 s past a 1 s hook limit)
//! before Rhai counted them, and `text.replace("a", s)` could ask for
//! gigabytes. Each function here computes its result's size before
//! allocating it and fails with a script error naming itself and the limit;
//! otherwise it does exactly what Rhai's does. `map`, `zip` and `for_each`
//! run script code per element, but pile its results up (or grow the
//! elements) where Rhai looks only at the end, so they count as they go.
//! Rhai looks for a function in the engine's own namespace before its
//! packages, so registering these on the engine replaces Rhai's for every
//! script.
//!
//! Left to Rhai, because what they build is at most a few times what the
//! script already holds (within the limits): concatenation (`+`, `+=`,
//! `append`), `to_upper`/`to_lower` (3x at most), `sub_string`, `crop`
//! and `index_of` (a transient `Vec<char>`, 4x), `to_string`/`to_debug`,
//! interpolation and `to_json` (escapes, 6x at most), `blob.as_string`
//! (3x), `blob()` and `blob.pad` (checked before by Rhai).

use rhai::{
    Array, Blob, Dynamic, Engine, FnPtr, FuncRegistration, INT, ImmutableString, Map,
    NativeCallContext,
};

use crate::engine::{Failure, NativeResult};

pub(crate) fn register(engine: &mut Engine) {
    register_splits(engine);
    engine.register_fn("to_chars", to_chars);

    // Rhai's `replace` and `pad` change the string in place, so calling
    // them on a constant is an error: the same here.
    FuncRegistration::new("replace")
        .with_purity(false)
        .register_into_engine(engine, replace);
    FuncRegistration::new("replace")
        .with_purity(false)
        .register_into_engine(engine, replace_with_char);
    FuncRegistration::new("replace")
        .with_purity(false)
        .register_into_engine(engine, replace_char);
    FuncRegistration::new("replace")
        .with_purity(false)
        .register_into_engine(engine, replace_char_with_char);
    FuncRegistration::new("pad")
        .with_purity(false)
        .register_into_engine(engine, pad_with_char);
    FuncRegistration::new("pad")
        .with_purity(false)
        .register_into_engine(engine, pad_with_string);
    FuncRegistration::new("pad")
        .with_purity(false)
        .register_into_engine(engine, pad_array);

    engine.register_fn("to_array", blob_to_array);
    engine.register_fn("map", map_array);
    engine.register_fn("map", map_map);
    engine.register_fn("zip", zip);
    FuncRegistration::new("for_each")
        .with_purity(false)
        .register_into_engine(engine, for_each);
    engine.register_fn("parse_json", parse_json);
}

fn register_splits(engine: &mut Engine) {
    engine
        .register_fn("split", split_whitespace)
        .register_fn(
            "split",
            |ctx: NativeCallContext, s: &mut ImmutableString, d: &str| {
                split(&ctx, "split", s, Delimiter::Text(d), None, false)
            },
        )
        .register_fn(
            "split",
            |ctx: NativeCallContext, s: &mut ImmutableString, d: &str, n: INT| {
                split(&ctx, "split", s, Delimiter::Text(d), Some(n), false)
            },
        )
        .register_fn(
            "split",
            |ctx: NativeCallContext, s: &mut ImmutableString, d: char| {
                split(&ctx, "split", s, Delimiter::Char(d), None, false)
            },
        )
        .register_fn(
            "split",
            |ctx: NativeCallContext, s: &mut ImmutableString, d: char, n: INT| {
                split(&ctx, "split", s, Delimiter::Char(d), Some(n), false)
            },
        )
        .register_fn(
            "split_rev",
            |ctx: NativeCallContext, s: &mut ImmutableString, d: &str| {
                split(&ctx, "split_rev", s, Delimiter::Text(d), None, true)
            },
        )
        .register_fn(
            "split_rev",
            |ctx: NativeCallContext, s: &mut ImmutableString, d: &str, n: INT| {
                split(&ctx, "split_rev", s, Delimiter::Text(d), Some(n), true)
            },
        )
        .register_fn(
            "split_rev",
            |ctx: NativeCallContext, s: &mut ImmutableString, d: char| {
                split(&ctx, "split_rev", s, Delimiter::Char(d), None, true)
            },
        )
        .register_fn(
            "split_rev",
            |ctx: NativeCallContext, s: &mut ImmutableString, d: char, n: INT| {
                split(&ctx, "split_rev", s, Delimiter::Char(d), Some(n), true)
            },
        );
}

/// Fails unless `count` items fit the array limit (0: none).
fn fits_array(
    ctx: &NativeCallContext,
    function: &str,
    count: usize,
    what: &str,
) -> NativeResult<()> {
    let limit = ctx.engine().max_array_size();
    if limit > 0 && count > limit {
        return Err(Failure::script(format!(
            "{function}(): {count} {what} is more than the array limit of {limit}"
        ))
        .into());
    }
    Ok(())
}

/// Fails unless a string of `bytes` fits the string limit (0: none);
/// `None` is a size past `usize`.
fn fits_string(ctx: &NativeCallContext, function: &str, bytes: Option<usize>) -> NativeResult<()> {
    let limit = ctx.engine().max_string_size();
    if limit == 0 || bytes.is_some_and(|bytes| bytes <= limit) {
        return Ok(());
    }
    let size = bytes.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string());
    Err(Failure::script(format!(
        "{function}(): the result would be {size} bytes, more than the string limit of {limit}"
    ))
    .into())
}

/// Whether a result of at most `bound` items certainly fits, so that the
/// exact count (a pass over the input) can be skipped: small inputs, the
/// usual case, pay nothing.
fn surely_fits(ctx: &NativeCallContext, bound: usize) -> bool {
    let limit = ctx.engine().max_array_size();
    limit == 0 || bound <= limit
}

#[derive(Clone, Copy)]
enum Delimiter<'a> {
    Text(&'a str),
    Char(char),
}

/// Every `split` and `split_rev` with a delimiter, optionally into at most
/// `segments` pieces, as Rhai does them.
fn split(
    ctx: &NativeCallContext,
    function: &str,
    string: &mut ImmutableString,
    delimiter: Delimiter,
    segments: Option<INT>,
    reverse: bool,
) -> NativeResult<Array> {
    let absent = match delimiter {
        Delimiter::Text(d) => !d.is_empty() && !string.contains(d),
        Delimiter::Char(d) => !string.contains(d),
    };
    if segments.is_some_and(|n| n <= 1) || string.is_empty() || absent {
        return Ok(vec![string.clone().into()]);
    }
    let segments = segments.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    // An empty delimiter cuts around every character: chars + 2 pieces.
    if !surely_fits(ctx, string.len().saturating_add(2)) {
        let pieces = match delimiter {
            Delimiter::Text("") => string.chars().count() + 2,
            Delimiter::Text(d) => string.matches(d).count() + 1,
            Delimiter::Char(d) => string.matches(d).count() + 1,
        };
        let pieces = segments.map_or(pieces, |n| pieces.min(n));
        fits_array(ctx, function, pieces, "pieces")?;
    }
    let string = string.as_str();
    Ok(match (delimiter, segments, reverse) {
        (Delimiter::Text(d), None, false) => string.split(d).map(Into::into).collect(),
        (Delimiter::Text(d), None, true) => string.rsplit(d).map(Into::into).collect(),
        (Delimiter::Text(d), Some(n), false) => string.splitn(n, d).map(Into::into).collect(),
        (Delimiter::Text(d), Some(n), true) => string.rsplitn(n, d).map(Into::into).collect(),
        (Delimiter::Char(d), None, false) => string.split(d).map(Into::into).collect(),
        (Delimiter::Char(d), None, true) => string.rsplit(d).map(Into::into).collect(),
        (Delimiter::Char(d), Some(n), false) => string.splitn(n, d).map(Into::into).collect(),
        (Delimiter::Char(d), Some(n), true) => string.rsplitn(n, d).map(Into::into).collect(),
    })
}

/// `split()`: the words between runs of whitespace.
fn split_whitespace(ctx: NativeCallContext, string: &mut ImmutableString) -> NativeResult<Array> {
    if string.is_empty() {
        return Ok(vec![string.clone().into()]);
    }
    if !surely_fits(&ctx, string.len()) {
        fits_array(&ctx, "split", string.split_whitespace().count(), "pieces")?;
    }
    Ok(string.split_whitespace().map(Into::into).collect())
}

fn to_chars(ctx: NativeCallContext, string: &str) -> NativeResult<Array> {
    if string.is_empty() {
        return Ok(Array::new());
    }
    if !surely_fits(&ctx, string.len()) {
        fits_array(&ctx, "to_chars", string.chars().count(), "characters")?;
    }
    Ok(string.chars().map(Into::into).collect())
}

/// The size of `string` once every `find` in it is replaced by
/// `substitute_len` bytes; `None` past `usize`.
fn replaced_len(string: &str, find: &str, substitute_len: usize) -> Option<usize> {
    // An empty pattern matches around every character.
    let matches = if find.is_empty() {
        string.chars().count() + 1
    } else if substitute_len <= find.len() {
        return Some(string.len());
    } else {
        string.matches(find).count()
    };
    let removed = matches * find.len();
    matches
        .checked_mul(substitute_len)?
        .checked_add(string.len() - removed)
}

fn replace_checked(
    ctx: &NativeCallContext,
    string: &mut ImmutableString,
    find: &str,
    substitute: &str,
) -> NativeResult<()> {
    if string.is_empty() {
        return Ok(());
    }
    // At most one substitute per byte and one more: often plainly small.
    let most = (string.len() + 1)
        .checked_mul(substitute.len())
        .and_then(|n| n.checked_add(string.len()));
    let limit = ctx.engine().max_string_size();
    if limit > 0 && most.is_none_or(|most| most > limit) {
        fits_string(ctx, "replace", replaced_len(string, find, substitute.len()))?;
    }
    *string = string.replace(find, substitute).into();
    Ok(())
}

fn replace(
    ctx: NativeCallContext,
    string: &mut ImmutableString,
    find: &str,
    substitute: &str,
) -> NativeResult<()> {
    replace_checked(&ctx, string, find, substitute)
}

fn replace_with_char(
    ctx: NativeCallContext,
    string: &mut ImmutableString,
    find: &str,
    substitute: char,
) -> NativeResult<()> {
    replace_checked(&ctx, string, find, substitute.encode_utf8(&mut [0; 4]))
}

fn replace_char(
    ctx: NativeCallContext,
    string: &mut ImmutableString,
    find: char,
    substitute: &str,
) -> NativeResult<()> {
    replace_checked(&ctx, string, find.encode_utf8(&mut [0; 4]), substitute)
}

fn replace_char_with_char(
    ctx: NativeCallContext,
    string: &mut ImmutableString,
    find: char,
    substitute: char,
) -> NativeResult<()> {
    replace_checked(
        &ctx,
        string,
        find.encode_utf8(&mut [0; 4]),
        substitute.encode_utf8(&mut [0; 4]),
    )
}

/// The characters `pad` must add to reach `len`, or `None` when the string
/// is long enough; Rhai's refusals of a length past the limit first.
fn padding_needed(ctx: &NativeCallContext, string: &str, len: INT) -> NativeResult<Option<usize>> {
    if len <= 0 {
        return Ok(None);
    }
    let limit = ctx.engine().max_string_size();
    let wanted = usize::try_from(len)
        .ok()
        .filter(|&wanted| limit == 0 || wanted <= limit);
    let Some(wanted) = wanted else {
        return Err(Failure::script(format!(
            "pad(): {len} characters is more than the string limit of {limit} bytes"
        ))
        .into());
    };
    Ok(wanted
        .checked_sub(string.chars().count())
        .filter(|&n| n > 0))
}

fn pad_with_char(
    ctx: NativeCallContext,
    string: &mut ImmutableString,
    len: INT,
    character: char,
) -> NativeResult<()> {
    let Some(missing) = padding_needed(&ctx, string, len)? else {
        return Ok(());
    };
    let total = missing
        .checked_mul(character.len_utf8())
        .and_then(|n| n.checked_add(string.len()));
    fits_string(&ctx, "pad", total)?;
    let mut text = String::with_capacity(total.unwrap_or(0));
    text.push_str(string);
    // `repeat` copies in doubling blocks: a character at a time is slow.
    text.push_str(&character.encode_utf8(&mut [0; 4]).repeat(missing));
    *string = text.into();
    Ok(())
}

fn pad_with_string(
    ctx: NativeCallContext,
    string: &mut ImmutableString,
    len: INT,
    padding: &str,
) -> NativeResult<()> {
    let Some(missing) = padding_needed(&ctx, string, len)? else {
        return Ok(());
    };
    // Rhai's own loop never ends with nothing to add.
    if padding.is_empty() {
        return Err(Failure::script(format!(
            "pad(): the padding is empty, so the string never reaches {len} characters"
        ))
        .into());
    }
    let per_copy = padding.chars().count();
    let (copies, rest) = (missing / per_copy, missing % per_copy);
    let tail = padding
        .char_indices()
        .nth(rest)
        .map_or(padding.len(), |(i, _)| i);
    let total = copies
        .checked_mul(padding.len())
        .and_then(|n| n.checked_add(tail))
        .and_then(|n| n.checked_add(string.len()));
    fits_string(&ctx, "pad", total)?;
    let mut text = String::with_capacity(total.unwrap_or(0));
    text.push_str(string);
    text.push_str(&padding.repeat(copies));
    text.push_str(&padding[..tail]);
    *string = text.into();
    Ok(())
}

/// Items, map properties and string bytes, counted as Rhai's limits count
/// them: every value inside an array or map is one item or property, and
/// strings and blobs by their bytes (the vendored Rhai counts a blob's
/// bytes with strings', see `vendor/README.md`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sizes {
    arrays: usize,
    maps: usize,
    strings: usize,
}

impl Sizes {
    fn of_array(array: &Array) -> Sizes {
        array
            .iter()
            .fold(Sizes::default(), |total, item| total.plus(element(item)))
    }

    fn of_map(map: &Map) -> Sizes {
        map.values()
            .fold(Sizes::default(), |total, value| total.plus(property(value)))
    }

    /// What a value held by an array or map adds besides its own place.
    fn inside(value: &Dynamic) -> Sizes {
        if let Some(array) = value.read_lock::<Array>() {
            return Sizes::of_array(&array);
        }
        if let Some(map) = value.read_lock::<Map>() {
            return Sizes::of_map(&map);
        }
        if let Some(blob) = value.read_lock::<Blob>() {
            return Sizes {
                strings: blob.len(),
                ..Sizes::default()
            };
        }
        if let Ok(text) = value.as_immutable_string_ref() {
            return Sizes {
                strings: text.len(),
                ..Sizes::default()
            };
        }
        Sizes::default()
    }

    fn plus(self, other: Sizes) -> Sizes {
        Sizes {
            arrays: self.arrays.saturating_add(other.arrays),
            maps: self.maps.saturating_add(other.maps),
            strings: self.strings.saturating_add(other.strings),
        }
    }

    fn minus(self, other: Sizes) -> Sizes {
        Sizes {
            arrays: self.arrays.saturating_sub(other.arrays),
            maps: self.maps.saturating_sub(other.maps),
            strings: self.strings.saturating_sub(other.strings),
        }
    }

    fn times(self, n: usize) -> Sizes {
        Sizes {
            arrays: self.arrays.saturating_mul(n),
            maps: self.maps.saturating_mul(n),
            strings: self.strings.saturating_mul(n),
        }
    }
}

/// `array.pad(len, item)`: Rhai checks first too, but its arithmetic
/// overflows (a panic in debug builds) for a large `len` and a big item.
fn pad_array(
    ctx: NativeCallContext,
    array: &mut Array,
    len: INT,
    item: Dynamic,
) -> NativeResult<()> {
    let Ok(len) = usize::try_from(len) else {
        return Ok(());
    };
    if len <= array.len() {
        return Ok(());
    }
    let added = len - array.len();
    let total = Sizes::of_array(array).plus(element(&item).times(added));
    within_limits(&ctx, "pad", "the array", total)?;
    array.resize(len, item);
    Ok(())
}

/// Fails unless `sizes` fit every limit (0: none). `what` names the value.
fn within_limits(
    ctx: &NativeCallContext,
    function: &str,
    what: &str,
    sizes: Sizes,
) -> NativeResult<()> {
    let engine = ctx.engine();
    let over = [
        (
            sizes.arrays,
            engine.max_array_size(),
            "items",
            "the array limit",
        ),
        (
            sizes.maps,
            engine.max_map_size(),
            "map properties",
            "the map limit",
        ),
        (
            sizes.strings,
            engine.max_string_size(),
            "bytes of strings",
            "the string limit",
        ),
    ]
    .into_iter()
    .find(|&(size, limit, _, _)| limit > 0 && size > limit);
    match over {
        None => Ok(()),
        Some((size, limit, unit, name)) => Err(Failure::script(format!(
            "{function}(): {what} would hold {size} {unit}, more than {name} of {limit}"
        ))
        .into()),
    }
}

/// A running count of what a callback loop builds, or changes in place:
/// each call is script code, but what it returns piles up in a native
/// vector that Rhai counts only when the loop is over. An 8 MiB string
/// per element made gigabytes before.
struct Tally<'a> {
    ctx: &'a NativeCallContext<'a>,
    function: &'static str,
    what: &'static str,
    sizes: Sizes,
}

impl<'a> Tally<'a> {
    fn new(
        ctx: &'a NativeCallContext<'a>,
        function: &'static str,
        what: &'static str,
        sizes: Sizes,
    ) -> Self {
        Tally {
            ctx,
            function,
            what,
            sizes,
        }
    }

    fn add(&mut self, sizes: Sizes) -> NativeResult<()> {
        self.sizes = self.sizes.plus(sizes);
        within_limits(self.ctx, self.function, self.what, self.sizes)
    }

    /// An element changed in place (through `this`) from `before` to `after`.
    fn replace(&mut self, before: Sizes, after: Sizes) -> NativeResult<()> {
        self.sizes = self.sizes.minus(before);
        self.add(after)
    }
}

/// One element's place in an array, and what it holds.
fn element(value: &Dynamic) -> Sizes {
    Sizes {
        arrays: 1,
        ..Sizes::default()
    }
    .plus(Sizes::inside(value))
}

/// One property's place in a map, and what it holds.
fn property(value: &Dynamic) -> Sizes {
    Sizes {
        maps: 1,
        ..Sizes::default()
    }
    .plus(Sizes::inside(value))
}

fn index(i: usize) -> Dynamic {
    INT::try_from(i).unwrap_or(INT::MAX).into()
}

/// `array.map(f)`, as Rhai's: `f` sees the element as `this` or as its
/// first argument, and its index as the next.
fn map_array(ctx: NativeCallContext, array: &mut Array, mapper: FnPtr) -> NativeResult<Array> {
    if array.is_empty() {
        return Ok(Array::new());
    }
    let mut results = Tally::new(&ctx, "map", "the results", Sizes::default());
    let mut source = Tally::new(&ctx, "map", "the array", Sizes::of_array(array));
    let mut mapped = Array::with_capacity(array.len());
    for (i, item) in array.iter_mut().enumerate() {
        let before = element(item);
        let value =
            mapper.call_raw_with_extra_args("map", &ctx, Some(item), [], [index(i)], Some(0))?;
        source.replace(before, element(item))?;
        results.add(element(&value))?;
        mapped.push(value);
    }
    Ok(mapped)
}

/// `map.map(f)`, as Rhai's: `f` sees the value as `this` or as its first
/// argument, and the property's name as the next.
fn map_map(ctx: NativeCallContext, map: &mut Map, mapper: FnPtr) -> NativeResult<Map> {
    if map.is_empty() {
        return Ok(Map::new());
    }
    let mut results = Tally::new(&ctx, "map", "the results", Sizes::default());
    let mut source = Tally::new(&ctx, "map", "the map", Sizes::of_map(map));
    let mut mapped = Map::new();
    for (key, item) in map.iter_mut() {
        let before = property(item);
        let value = mapper.call_raw_with_extra_args(
            "filter",
            &ctx,
            Some(item),
            [key.into()],
            [],
            Some(1),
        )?;
        source.replace(before, property(item))?;
        results.add(property(&value))?;
        mapped.insert(key.clone(), value);
    }
    Ok(mapped)
}

/// `a.zip(b, f)`, as Rhai's: `f(x, y)` or `f(x, y, index)` per pair.
fn zip(
    ctx: NativeCallContext,
    array: &mut Array,
    other: Array,
    mapper: FnPtr,
) -> NativeResult<Array> {
    if array.is_empty() && other.is_empty() {
        return Ok(Array::new());
    }
    let mut results = Tally::new(&ctx, "zip", "the results", Sizes::default());
    let mut zipped = Array::with_capacity(array.len().min(other.len()));
    for (i, (x, y)) in array.iter_mut().zip(other).enumerate() {
        let value =
            mapper.call_raw_with_extra_args("zip", &ctx, None, [x.clone(), y], [index(i)], None)?;
        results.add(element(&value))?;
        zipped.push(value);
    }
    Ok(zipped)
}

/// `array.for_each(f)`, as Rhai's: `f` sees each element as `this`, and
/// may change it.
fn for_each(ctx: NativeCallContext, array: &mut Array, f: FnPtr) -> NativeResult<()> {
    if array.is_empty() {
        return Ok(());
    }
    let mut source = Tally::new(&ctx, "for_each", "the array", Sizes::of_array(array));
    for (i, item) in array.iter_mut().enumerate() {
        let before = element(item);
        let _ = f.call_raw_with_extra_args("for_each", &ctx, Some(item), [], [index(i)], None)?;
        source.replace(before, element(item))?;
    }
    Ok(())
}

fn blob_to_array(ctx: NativeCallContext, blob: &mut Blob) -> NativeResult<Array> {
    fits_array(&ctx, "to_array", blob.len(), "bytes")?;
    Ok(blob.iter().map(|&byte| INT::from(byte).into()).collect())
}

/// `parse_json(text)`: Rhai parses the text as a script expression, so a
/// text of many small values becomes a syntax tree of millions of nodes
/// before the result is counted. Commas and brackets outside strings bound
/// the values inside containers: when they exceed both limits together,
/// the result would too.
fn parse_json(ctx: NativeCallContext, json: &str) -> NativeResult<Dynamic> {
    let engine = ctx.engine();
    let (arrays, maps) = (engine.max_array_size(), engine.max_map_size());
    if arrays > 0 && maps > 0 {
        let values = json_values_at_most(json);
        if values > arrays + maps {
            return Err(Failure::script(format!(
                "parse_json(): {values} values is more than the array limit of {arrays} \
                 and the map limit of {maps} allow together"
            ))
            .into());
        }
    }
    engine.parse_json(json, true).map(Dynamic::from)
}

/// At least as many as the values inside arrays and maps in `json`: each
/// container holds one more value than it has separating commas.
fn json_values_at_most(json: &str) -> usize {
    let mut count = 0;
    let mut quote = None;
    let mut escaped = false;
    for byte in json.bytes() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if byte == b'\\' => escaped = true,
            Some(q) if byte == q => quote = None,
            Some(_) => {}
            None => match byte {
                b'"' | b'\'' | b'`' => quote = Some(byte),
                b',' | b'[' | b'{' => count += 1,
                _ => {}
            },
        }
    }
    count
}

/// `hex(x)`: two digits per byte, so twice the input.
pub(crate) fn hex(ctx: &NativeCallContext, bytes: &[u8]) -> NativeResult<String> {
    fits_string(ctx, "hex", bytes.len().checked_mul(2))?;
    Ok(crate::message::hex(bytes))
}

#[cfg(test)]
mod tests {
    use rhai::{EvalAltResult, Scope};

    use super::*;
    use crate::engine::{self, Limits, Params};

    /// tcpscript's engine with small limits, so that going past them is cheap.
    fn small() -> Engine {
        let limits = Limits {
            max_string_size: 1000,
            max_array_size: 10,
            max_map_size: 10,
            ..Limits::default()
        };
        engine::new_engine(&limits, Params::default(), None)
    }

    /// The message of the error `script` ends with.
    fn error_of(engine: &Engine, scope: &mut Scope, script: &str) -> String {
        let error = engine
            .eval_with_scope::<Dynamic>(scope, script)
            .expect_err(script);
        match *error {
            EvalAltResult::ErrorRuntime(value, _) if value.is::<Failure>() => {
                value.cast::<Failure>().message
            }
            other => other.to_string(),
        }
    }

    /// Fails unless `script` stops with exactly `message`, in tcpscript's
    /// engine with small limits. A message only an override gives also
    /// shows that the override, not Rhai's function, ran.
    fn refused(script: &str, message: &str) {
        // A 400-byte string, and a blob of more bytes than an array may
        // hold items.
        let mut scope = Scope::new();
        scope.push("big", "x".repeat(400));
        scope.push("bytes", vec![0_u8; 11]);
        assert_eq!(error_of(&small(), &mut scope, script), message);
    }

    /// Fails unless `script` gives the same value in tcpscript's engine as
    /// with Rhai's own functions, or fails in both.
    fn same_as_rhai(script: &str) {
        let ours = engine::new_engine(&Limits::default(), Params::default(), None);
        let rhai = Engine::new();
        let show = |result: Result<Dynamic, Box<EvalAltResult>>| result.map(|v| format!("{v:?}"));
        match (show(ours.eval(script)), show(rhai.eval(script))) {
            (Ok(ours), Ok(rhai)) => assert_eq!(ours, rhai, "{script}"),
            (Err(_), Err(_)) => {}
            (ours, rhai) => panic!("{script}: ours {ours:?}, Rhai's {rhai:?}"),
        }
    }

    #[test]
    fn split_behaves_as_rhai() {
        for script in [
            r#""a,b,,c".split(",")"#,
            r#""".split(",")"#,
            r#""abc".split("")"#,
            r#""héllo".split("")"#,
            r#""abc".split("x")"#,
            r#""a,b,c".split(",", 2)"#,
            r#""a,b,c".split(",", 0)"#,
            r#""a,b,c".split(",", -1)"#,
            r#""a,b,c".split(",", 99)"#,
            r#""abc".split("", 2)"#,
            r#""a,b".split(',')"#,
            r#""a,b,c".split(',', 2)"#,
            r#""abc".split('x')"#,
            r#""a,b,,c".split_rev(",")"#,
            r#""a,b,c".split_rev(",", 2)"#,
            r#""a,b,c".split_rev(',')"#,
            r#""a,b,c".split_rev(',', 2)"#,
            r#""abc".split_rev("")"#,
            r#""  a  b ".split()"#,
            r#""".split()"#,
            r#""   ".split()"#,
            r#"const S = "a,b"; S.split(",")"#,
        ] {
            same_as_rhai(script);
        }
    }

    #[test]
    fn split_into_more_pieces_than_the_array_limit_is_refused() {
        refused(
            r#""abcdefghijkl".split("")"#,
            "split(): 14 pieces is more than the array limit of 10",
        );
        refused(
            r#"",,,,,,,,,,,".split(",")"#,
            "split(): 12 pieces is more than the array limit of 10",
        );
        refused(
            r#"",,,,,,,,,,,".split(',')"#,
            "split(): 12 pieces is more than the array limit of 10",
        );
        refused(
            r#"",,,,,,,,,,,".split(",", 11)"#,
            "split(): 11 pieces is more than the array limit of 10",
        );
        refused(
            r#""a b c d e f g h i j k".split()"#,
            "split(): 11 pieces is more than the array limit of 10",
        );
    }

    #[test]
    fn split_within_the_limit_still_works() {
        let engine = small();
        let pieces: Array = engine.eval(r#"",,,,,,,,,,,".split(",", 3)"#).unwrap();
        assert_eq!(pieces.len(), 3);
        let pieces: Array = engine.eval(r#""a,b,c,d,e,f,g,h,i,j".split(",")"#).unwrap();
        assert_eq!(pieces.len(), 10);
    }

    #[test]
    fn split_rev_into_too_many_pieces_is_refused() {
        refused(
            r#""abcdefghijkl".split_rev("")"#,
            "split_rev(): 14 pieces is more than the array limit of 10",
        );
        refused(
            r#"",,,,,,,,,,,".split_rev(',', 99)"#,
            "split_rev(): 12 pieces is more than the array limit of 10",
        );
    }

    #[test]
    fn to_chars_behaves_as_rhai() {
        same_as_rhai(r#""héllo".to_chars()"#);
        same_as_rhai(r#""".to_chars()"#);
    }

    #[test]
    fn to_chars_past_the_array_limit_is_refused() {
        refused(
            r#""abcdefghijk".to_chars()"#,
            "to_chars(): 11 characters is more than the array limit of 10",
        );
    }

    #[test]
    fn replace_behaves_as_rhai() {
        for call in [
            r#"s.replace("l", "LL")"#,
            r#"s.replace("ll", "")"#,
            r#"s.replace("", "-")"#,
            r#"s.replace("x", "yy")"#,
            r#"s.replace("l", '!')"#,
            r#"s.replace('l', "λλ")"#,
            r#"s.replace('l', 'λ')"#,
        ] {
            same_as_rhai(&format!(r#"let s = "hello"; {call}; s"#));
        }
        same_as_rhai(r#"let s = ""; s.replace("", "x"); s"#);
        same_as_rhai(r#"const S = "hello"; S.replace("l", "L"); S"#);
    }

    #[test]
    fn replace_past_the_string_limit_is_refused() {
        refused(
            r#"let s = "aaaa"; s.replace("a", big)"#,
            "replace(): the result would be 1600 bytes, more than the string limit of 1000",
        );
        refused(
            r#"let s = "abc"; s.replace("", big)"#,
            "replace(): the result would be 1603 bytes, more than the string limit of 1000",
        );
        refused(
            r#"let s = "aaa"; s.replace('a', big)"#,
            "replace(): the result would be 1200 bytes, more than the string limit of 1000",
        );
    }

    #[test]
    fn replace_past_the_size_of_memory_is_refused() {
        let mut scope = Scope::new();
        scope.push("big", "x".repeat(1 << 20));
        let engine = engine::new_engine(&Limits::default(), Params::default(), None);
        let message = error_of(
            &engine,
            &mut scope,
            r#"let s = ""; s.pad(8000000, "a"); s.replace("a", big)"#,
        );
        assert_eq!(
            message,
            "replace(): the result would be 8388608000000 bytes, more than the string limit of 8388608"
        );
    }

    #[test]
    fn pad_behaves_as_rhai() {
        for call in [
            r#"s.pad(5, '*')"#,
            r#"s.pad(5, 'é')"#,
            r#"s.pad(5, "xy")"#,
            r#"s.pad(8, "héllo")"#,
            r#"s.pad(1, "xy")"#,
            r#"s.pad(-3, 'x')"#,
            r#"s.pad(2, "")"#,
        ] {
            same_as_rhai(&format!(r#"let s = "ab"; {call}; s"#));
        }
        same_as_rhai(r#"const S = "ab"; S.pad(5, 'x'); S"#);
        same_as_rhai(r#"let a = [1]; a.pad(3, 0); a"#);
        same_as_rhai(r#"let a = [1, 2]; a.pad(1, 0); a"#);
        same_as_rhai(r#"let a = [1]; a.pad(-1, 0); a"#);
    }

    #[test]
    fn pad_past_the_string_limit_is_refused() {
        refused(
            r#"let s = ""; s.pad(600, 'é')"#,
            "pad(): the result would be 1200 bytes, more than the string limit of 1000",
        );
        refused(
            r#"let s = ""; s.pad(600, "é")"#,
            "pad(): the result would be 1200 bytes, more than the string limit of 1000",
        );
        refused(
            r#"let s = ""; s.pad(2000, "x")"#,
            "pad(): 2000 characters is more than the string limit of 1000 bytes",
        );
    }

    #[test]
    fn pad_with_nothing_is_refused_instead_of_looping_for_ever() {
        refused(
            r#"let s = "a"; s.pad(3, "")"#,
            "pad(): the padding is empty, so the string never reaches 3 characters",
        );
    }

    #[test]
    fn array_pad_past_the_limits_is_refused_without_overflowing() {
        refused(
            r#"let a = []; a.pad(11, 0)"#,
            "pad(): the array would hold 11 items, more than the array limit of 10",
        );
        refused(
            r#"let a = []; a.pad(4611686018427387904, big)"#,
            "pad(): the array would hold 4611686018427387904 items, more than the array limit of 10",
        );
        refused(
            r#"let a = []; a.pad(3, big)"#,
            "pad(): the array would hold 1200 bytes of strings, more than the string limit of 1000",
        );
        refused(
            r#"let a = []; a.pad(6, #{a: 1, b: 2})"#,
            "pad(): the array would hold 12 map properties, more than the map limit of 10",
        );
    }

    #[test]
    fn blob_to_array_behaves_as_rhai() {
        same_as_rhai("blob(3, 7).to_array()");
        same_as_rhai("blob().to_array()");
    }

    #[test]
    fn blob_to_array_past_the_array_limit_is_refused() {
        refused(
            "bytes.to_array()",
            "to_array(): 11 bytes is more than the array limit of 10",
        );
    }

    #[test]
    fn parse_json_behaves_as_rhai() {
        same_as_rhai(r#"parse_json(`{"a": [1, 2.5, "x,[{", null, true], "b": {}}`)"#);
        same_as_rhai(r#"parse_json(`{"a": "\"],"}`)"#);
        same_as_rhai(r#"parse_json("[1, 2]")"#);
        same_as_rhai(r#"parse_json("{")"#);
    }

    #[test]
    fn parse_json_of_more_values_than_the_limits_is_refused_before_parsing() {
        let values = (0..21).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        refused(
            &format!("parse_json(`{{\"a\": [{values}]}}`)"),
            "parse_json(): 22 values is more than the array limit of 10 \
             and the map limit of 10 allow together",
        );
    }

    #[test]
    fn parse_json_counts_no_commas_inside_strings() {
        let engine = small();
        let map: Map = engine
            .eval(r#"parse_json(`{"a": ",,,,,,,,,,,,,,,,,,,,,,,,,", "b": '\'', "c": "\\\"[[["}`)"#)
            .unwrap();
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn callbacks_behave_as_rhai() {
        for script in [
            "[1, 2, 3].map(|x| x * 2)",
            "[1, 2, 3].map(|x, i| x + i)",
            "[1, 2].map(|| this * 10)",
            "fn inc(x) { x + 1 } [1, 2].map(inc)",
            "fn inc(x) { x + 1 } [1, 2].map(Fn(\"inc\"))",
            "[].map(|x| x)",
            "let a = [1, 2]; a.map(|| { this += 1; 0 }); a",
            "#{a: 1, b: 2}.map(|v| v * 2)",
            "#{a: 1, b: 2}.map(|| this * 3)",
            "#{a: 1, b: 2}.map(|k, v| `${k}${v}`)",
            "#{}.map(|v| v)",
            "[1, 2, 3].zip([4, 5], |a, b| a + b)",
            "[1, 2, 3].zip([4, 5, 6], |a, b, i| a + b + i)",
            "[].zip([], |a, b| a)",
            "[1].zip([], |a, b| a)",
            "let a = [1, 2]; a.for_each(|| this *= 3); a",
            "let a = [1, 2]; a.for_each(|i| this += i); a",
            "let a = []; a.for_each(|| this = 1); a",
            "const A = [1]; A.for_each(|| this = 2); A",
            "[1, 2].map(|x| x.nope())",
        ] {
            same_as_rhai(script);
        }
    }

    #[test]
    fn map_results_past_the_limits_are_refused_as_they_pile_up() {
        refused(
            "[1, 2, 3].map(|x| big)",
            "map(): the results would hold 1200 bytes of strings, more than the string limit of 1000",
        );
        refused(
            "[1, 2, 3].map(|x| [1, 2, 3, 4])",
            "map(): the results would hold 15 items, more than the array limit of 10",
        );
        refused(
            "#{a: 1, b: 2, c: 3}.map(|v| big)",
            "map(): the results would hold 1200 bytes of strings, more than the string limit of 1000",
        );
    }

    #[test]
    fn map_growing_its_own_elements_is_refused() {
        refused(
            "let a = [1, 2, 3]; a.map(|| { this = big; 0 })",
            "map(): the array would hold 1200 bytes of strings, more than the string limit of 1000",
        );
    }

    #[test]
    fn zip_results_past_the_limits_are_refused() {
        refused(
            "[1, 2, 3].zip([1, 2, 3], |x, y| big)",
            "zip(): the results would hold 1200 bytes of strings, more than the string limit of 1000",
        );
    }

    #[test]
    fn for_each_growing_the_array_past_the_limits_is_refused() {
        refused(
            "let a = [1, 2, 3]; a.for_each(|| this = big)",
            "for_each(): the array would hold 1200 bytes of strings, more than the string limit of 1000",
        );
    }

    #[test]
    fn hex_past_the_string_limit_is_refused() {
        refused(
            r#"let s = ""; s.pad(600, "x"); hex(s)"#,
            "hex(): the result would be 1200 bytes, more than the string limit of 1000",
        );
    }
}
