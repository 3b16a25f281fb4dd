//! `--hist-out FILE` and `tcpscript merge FILE...`: a run's figures
//! written losslessly, then shards' files added up exactly. A file is one
//! JSON object; both histograms (microseconds) are HdrHistogram V2
//! encodings in base64, so adding them gives the same buckets, and the
//! same percentiles, as one run that recorded every conversation:
//!
//! ```json
//! {"format":"tcpscript-load","version":1,"script":"echo.rhai","shard":"1/2",
//!  "users":25,"elapsed_us":10002345,"passed":25690,"failed":2,"sent":25692,
//!  "received":25690,"failures":[{"message":"…","count":2,"code":4}],
//!  "encoding":"hdrhistogram-v2+base64","latency_us":"HISTIEw…","handshake_us":"HISTIEw…"}
//! ```
//!
//! Merged, conversations per second is all conversations over the longest
//! shard's time: shards that start together (`--start-at`) run side by
//! side, so the whole test took as long as its slowest shard.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use thiserror::Error;

use super::hdr_v2::{self, DecodeError};
use super::shard::Shard;
use super::{ReportOptions, Run, Tally, finish};
use crate::error::Error;
use crate::report::timeline::Timeline;

const FORMAT: &str = "tcpscript-load";
const VERSION: u64 = 1;
const ENCODING: &str = "hdrhistogram-v2+base64";

/// Why a file cannot be merged.
#[derive(Debug, Error)]
pub enum ShardFileError {
    #[error("it is not JSON ({0})")]
    Json(serde_json::Error),
    #[error("it is not a file of load mode's --hist-out (no \"format\": \"{FORMAT}\")")]
    Format,
    #[error("it is version {0}; this tcpscript reads version {VERSION}")]
    Version(u64),
    #[error("its histograms are encoded as `{0}`; this tcpscript reads {ENCODING}")]
    Encoding(String),
    #[error("`{0}` is missing or not of the right type")]
    Field(&'static str),
    #[error("`{0}` is not base64")]
    Base64(&'static str),
    #[error("`{field}`: {source}")]
    Histogram {
        field: &'static str,
        source: DecodeError,
    },
    #[error("`{0}` holds values past what load mode records (1 µs to 1 h)")]
    Range(&'static str),
    #[error("it is shard {shard}, like `{other}`: a shard counted twice")]
    Twice { shard: String, other: String },
}

/// What `merge` was asked for.
#[derive(Debug)]
pub(crate) struct MergeOptions {
    pub(crate) files: Vec<PathBuf>,
    /// The merged figures as one file again, for a merge of merges.
    pub(crate) hist_out: Option<PathBuf>,
    pub(crate) report: ReportOptions,
}

/// Writes a run's figures for `merge`.
pub(crate) fn write(path: &Path, run: &Run, shard: Option<Shard>) -> Result<(), Error> {
    let tally = &run.tally;
    let mut failures: Vec<_> = tally.failures.iter().collect();
    failures.sort();
    let file = json!({
        "format": FORMAT,
        "version": VERSION,
        "script": run.script,
        "shard": shard.map(|s| s.to_string()),
        "users": run.users,
        "elapsed_us": u64::try_from(run.elapsed.as_micros()).unwrap_or(u64::MAX),
        "passed": tally.passed,
        "failed": tally.failed,
        "sent": tally.sent,
        "received": tally.received,
        "failures": failures
            .iter()
            .map(|(message, (count, code))| json!({ "message": message, "count": count, "code": code }))
            .collect::<Vec<_>>(),
        "encoding": ENCODING,
        "latency_us": BASE64.encode(hdr_v2::encode(&tally.latency)),
        "handshake_us": BASE64.encode(hdr_v2::encode(&tally.handshake)),
    });
    std::fs::write(path, format!("{file}\n")).map_err(|source| Error::WriteFile {
        path: path.display().to_string(),
        source,
    })
}

/// One file, read back.
struct ShardFile {
    run: Run,
    shard: Option<String>,
}

fn read(path: &Path) -> Result<ShardFile, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|problem| Error::ShardFile {
        path: path.display().to_string(),
        problem,
    })
}

fn parse(text: &str) -> Result<ShardFile, ShardFileError> {
    let file: Value = serde_json::from_str(text).map_err(ShardFileError::Json)?;
    if file["format"] != FORMAT {
        return Err(ShardFileError::Format);
    }
    match file["version"].as_u64() {
        Some(VERSION) => {}
        Some(other) => return Err(ShardFileError::Version(other)),
        None => return Err(ShardFileError::Field("version")),
    }
    if file["encoding"] != ENCODING {
        let encoding = file["encoding"].as_str().unwrap_or("?").to_string();
        return Err(ShardFileError::Encoding(encoding));
    }
    let number = |field: &'static str| file[field].as_u64().ok_or(ShardFileError::Field(field));
    let mut tally = Tally::new();
    tally.passed = number("passed")?;
    tally.failed = number("failed")?;
    tally.sent = number("sent")?;
    tally.received = number("received")?;
    for (field, into) in [
        ("latency_us", &mut tally.latency),
        ("handshake_us", &mut tally.handshake),
    ] {
        let text = file[field].as_str().ok_or(ShardFileError::Field(field))?;
        let bytes = BASE64
            .decode(text)
            .map_err(|_| ShardFileError::Base64(field))?;
        let histogram =
            hdr_v2::decode(&bytes).map_err(|source| ShardFileError::Histogram { field, source })?;
        into.add(&histogram)
            .map_err(|_| ShardFileError::Range(field))?;
    }
    let failures = file["failures"]
        .as_array()
        .ok_or(ShardFileError::Field("failures"))?;
    for failure in failures {
        let message = failure["message"]
            .as_str()
            .ok_or(ShardFileError::Field("failures"))?;
        let count = failure["count"]
            .as_u64()
            .ok_or(ShardFileError::Field("failures"))?;
        let code = failure["code"]
            .as_u64()
            .and_then(|c| u8::try_from(c).ok())
            .ok_or(ShardFileError::Field("failures"))?;
        tally.failures.insert(message.to_string(), (count, code));
    }
    Ok(ShardFile {
        run: Run {
            script: file["script"].as_str().unwrap_or_default().to_string(),
            users: number("users")? as usize,
            elapsed: Duration::from_micros(number("elapsed_us")?),
            tally,
            timeline: Timeline::default(),
        },
        shard: file["shard"].as_str().map(str::to_string),
    })
}

/// Adds the files up, then reports as a load run does.
pub(crate) fn run(options: &MergeOptions) -> Result<(), Error> {
    let mut whole = Run {
        script: String::new(),
        users: 0,
        elapsed: Duration::ZERO,
        tally: Tally::new(),
        timeline: Timeline::default(),
    };
    // Each shard's file once: a file given twice would count its
    // conversations twice and still look like a plausible run.
    let mut seen: BTreeMap<String, &Path> = BTreeMap::new();
    let mut scripts: Vec<String> = Vec::new();
    for path in &options.files {
        let file = read(path)?;
        if let Some(shard) = &file.shard
            && let Some(other) = seen.insert(shard.clone(), path)
        {
            return Err(Error::ShardFile {
                path: path.display().to_string(),
                problem: ShardFileError::Twice {
                    shard: shard.clone(),
                    other: other.display().to_string(),
                },
            });
        }
        if !scripts.contains(&file.run.script) {
            scripts.push(file.run.script.clone());
        }
        whole.users = whole.users.saturating_add(file.run.users);
        whole.elapsed = whole.elapsed.max(file.run.elapsed);
        // Both histograms were read into a fresh tally's range: adding
        // them cannot fail.
        whole.tally.merge(file.run.tally);
    }
    whole.script = scripts.join(", ");
    if !options.report.quiet
        && let Some(note) = missing_shards(seen.keys().map(String::as_str))
    {
        crate::console::err(&note);
    }
    if let Some(path) = &options.hist_out {
        write(path, &whole, None)?;
    }
    finish(&whole, &options.report)
}

/// A note when the shards' files are not one whole test: some of the N
/// missing (a pod that never wrote its file), or shards of different Ns.
/// Not an error: a partial merge is still exact for what it holds.
fn missing_shards<'a>(labels: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut counts = BTreeMap::<u64, Vec<u64>>::new();
    for label in labels {
        if let Some((k, n)) = label.split_once('/')
            && let (Ok(k), Ok(n)) = (k.parse::<u64>(), n.parse::<u64>())
        {
            counts.entry(n).or_default().push(k);
        }
    }
    if counts.len() > 1 {
        let ns: Vec<String> = counts.keys().map(|n| format!("/{n}")).collect();
        return Some(format!(
            "note: the files are shards of different splits ({}): the merged figures are their sum",
            ns.join(", ")
        ));
    }
    let (n, ks) = counts.into_iter().next()?;
    let missing: Vec<String> = (1..=n)
        .filter(|k| !ks.contains(k))
        .map(|k| format!("{k}/{n}"))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "note: merging {} of {n} shards; missing: {}",
            ks.len(),
            missing.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(latencies: &[u64], failed: u64) -> Run {
        let mut tally = Tally::new();
        for micros in latencies {
            tally.latency.record(*micros).unwrap();
        }
        tally.passed = latencies.len() as u64 - failed;
        tally.failed = failed;
        tally.sent = 2 * latencies.len() as u64;
        tally.received = tally.sent;
        if failed > 0 {
            tally
                .failures
                .insert("x.rhai:1:1: values differ".into(), (failed, 1));
        }
        tally.handshake.record(1_234).unwrap();
        Run {
            script: "x.rhai".into(),
            users: 3,
            elapsed: Duration::from_micros(1_500_000),
            tally,
            timeline: Timeline::default(),
        }
    }

    #[test]
    fn a_file_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.json");
        let run = run_with(&[10, 200, 3_000, 40_000, 40_001], 2);
        write(&path, &run, Some(Shard { index: 2, count: 3 })).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.shard.as_deref(), Some("2/3"));
        assert_eq!(back.run.users, 3);
        assert_eq!(back.run.elapsed, run.elapsed);
        assert_eq!(back.run.tally.latency, run.tally.latency);
        assert_eq!(back.run.tally.handshake, run.tally.handshake);
        assert_eq!(back.run.tally.failures, run.tally.failures);
        assert_eq!(
            (
                back.run.tally.passed,
                back.run.tally.failed,
                back.run.tally.sent
            ),
            (3, 2, 10)
        );
    }

    #[test]
    fn damaged_files_say_what_is_wrong() {
        let problem = |text: &str| parse(text).err().unwrap().to_string();
        assert!(problem("{").starts_with("it is not JSON"));
        assert!(problem("{}").contains("not a file of load mode's --hist-out"));
        let good = {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f.json");
            write(&path, &run_with(&[5], 0), None).unwrap();
            std::fs::read_to_string(path).unwrap()
        };
        assert!(parse(&good).is_ok());
        let changed = |from: &str, to: &str| problem(&good.replacen(from, to, 1));
        assert_eq!(
            changed("\"version\":1", "\"version\":2"),
            "it is version 2; this tcpscript reads version 1"
        );
        assert_eq!(
            changed("\"passed\":1", "\"passed\":-1"),
            "`passed` is missing or not of the right type"
        );
        assert_eq!(
            changed("\"latency_us\":\"", "\"latency_us\":\"!"),
            "`latency_us` is not base64"
        );
        assert_eq!(
            changed("\"latency_us\":\"HI", "\"latency_us\":\"AA"),
            "`latency_us`: it is not an uncompressed HdrHistogram V2 encoding"
        );
    }

    #[test]
    fn missing_shards_are_noted() {
        let note = |labels: &[&str]| missing_shards(labels.iter().copied());
        assert_eq!(note(&["1/3", "2/3", "3/3"]), None);
        assert_eq!(note(&[]), None);
        assert_eq!(
            note(&["3/3", "1/3"]).as_deref(),
            Some("note: merging 2 of 3 shards; missing: 2/3")
        );
        assert!(note(&["1/2", "1/3"]).unwrap().contains("(/2, /3)"));
    }
}
