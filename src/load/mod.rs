//! Load mode: `tcpscript client SCRIPT --concurrency N (--duration D |
//! --iterations M)`. N virtual users each run the conversation in a loop,
//! every run on a fresh connection, and the figures come out as a summary
//! (or JSON): conversations/s, messages/s, latency percentiles, failures
//! grouped by message. `--threshold`s judge the figures (see `threshold`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

mod hdr_v2; // HdrHistogram's V2 encoding, for --hist-out
pub(crate) mod merge; // --hist-out FILE and `tcpscript merge`
pub(crate) mod shard; // --shard K/N and --start-at
pub(crate) mod stages; // --stages: users over time
pub(crate) mod threshold; // --threshold EXPR

use crate::client::{ClientOptions, ClientScript};
use crate::error::{Error, exit};
use crate::report::diagnostic_of;
use crate::report::timeline::{Second, Timeline};
use crate::transcript::{SHOWN_ON_FAILURE, Verbosity};
use threshold::{Measured, Threshold, Verdict};

#[derive(Debug, Clone)]
pub(crate) struct LoadOptions {
    pub(crate) client: ClientOptions,
    /// Virtual users, each running conversations one after another.
    pub(crate) concurrency: usize,
    pub(crate) until: Until,
    /// New conversations per second across all users; `None`: as fast as they go.
    pub(crate) rate: Option<f64>,
    /// `--shard K/N`: which slice of the whole test this is (the users,
    /// iterations and rate above are its share already).
    pub(crate) shard: Option<shard::Shard>,
    /// `--start-at`: when the users start, once the scripts are compiled.
    pub(crate) start_at: Option<SystemTime>,
    /// `--hist-out FILE`: the figures for `tcpscript merge`.
    pub(crate) hist_out: Option<PathBuf>,
    /// `--stages`: how many of the `concurrency` users run when (this
    /// shard's share already); `None`: all of them all the time.
    pub(crate) stages: Option<stages::Stages>,
    pub(crate) report: ReportOptions,
}

/// What to make of a run's figures: the same for a run and for `merge`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReportOptions {
    /// The summary as one JSON object on stdout instead of text on stderr.
    pub(crate) json: bool,
    /// `-q`: no summary when every conversation passed and every threshold held.
    pub(crate) quiet: bool,
    /// `--html FILE`: a page of charts, from figures kept per second.
    pub(crate) html: Option<PathBuf>,
    /// `--junit FILE`: one test case per threshold.
    pub(crate) junit: Option<PathBuf>,
    pub(crate) thresholds: Vec<Threshold>,
}

/// The most virtual users: one thread and one compiled script each.
pub(crate) const MAX_USERS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Until {
    Elapsed(Duration),
    Iterations(u64),
}

/// What one user measured; merged at the end.
pub(crate) struct Tally {
    /// Conversation durations in microseconds.
    latency: Histogram<u64>,
    /// TLS handshake durations in microseconds, apart from the above.
    handshake: Histogram<u64>,
    passed: u64,
    failed: u64,
    sent: u64,
    received: u64,
    /// Failure report (message and place) to how often, and its exit code.
    failures: HashMap<String, (u64, u8)>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            // 1 µs to an hour, 3 significant digits.
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static histogram bounds are valid"),
            handshake: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static histogram bounds are valid"),
            passed: 0,
            failed: 0,
            sent: 0,
            received: 0,
            failures: HashMap::new(),
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.latency.add(&other.latency);
        let _ = self.handshake.add(&other.handshake);
        // Saturating: `merge` adds up counts read from files, which
        // may be anything.
        self.passed = self.passed.saturating_add(other.passed);
        self.failed = self.failed.saturating_add(other.failed);
        self.sent = self.sent.saturating_add(other.sent);
        self.received = self.received.saturating_add(other.received);
        for (message, (count, code)) in other.failures {
            let entry = self.failures.entry(message).or_insert((0, code));
            entry.0 = entry.0.saturating_add(count);
        }
    }
}

/// The most stripes the users' figures are kept in.
const STRIPES: usize = 64;

/// The figures of the users whose number is the stripe's modulo
/// [`STRIPES`].
#[derive(Default)]
struct Stripe {
    tally: Tally,
    /// `--html`: the current second's conversations, for the timeline.
    second: Second,
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

/// Shared by the users while they run.
struct Pace {
    started: Instant,
    until: Until,
    /// Conversations begun so far, across users.
    begun: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    /// Users still running.
    running: AtomicU64,
    stop: AtomicBool,
    rate: Option<f64>,
    stages: Option<stages::Stages>,
}

impl Pace {
    /// Under `--stages`, waits until user `user` has its turn; `false`
    /// when it will not have one again before the end.
    fn turn(&self, user: usize) -> bool {
        let Some(stages) = &self.stages else {
            return true;
        };
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let now = self.started.elapsed();
            match stages.next_turn(user, now) {
                None => return false,
                Some(at) if at <= now => return true,
                // At most a second at a time, to notice `stop`.
                Some(at) => std::thread::sleep((at - now).min(Duration::from_secs(1))),
            }
        }
    }

    /// Claims the next conversation, waiting for its slot under `--rate`;
    /// `None` when the run is over.
    fn claim(&self) -> Option<Claimed> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let number = self.begun.fetch_add(1, Ordering::Relaxed);
        match self.until {
            Until::Iterations(total) if number >= total => return None,
            Until::Elapsed(limit) if self.started.elapsed() >= limit => return None,
            _ => {}
        }
        let mut due = None;
        if let Some(rate) = self.rate {
            let slot = self.started + Duration::from_secs_f64(number as f64 / rate);
            let now = Instant::now();
            if slot > now {
                std::thread::sleep(slot - now);
            }
            if let Until::Elapsed(limit) = self.until
                && self.started.elapsed() >= limit
            {
                return None;
            }
            due = Some(slot);
        }
        Some(Claimed { due })
    }
}

/// A conversation a user may start.
struct Claimed {
    /// Under `--rate`, when it was due to start. A server that stalls
    /// keeps every user busy, and the conversations due meanwhile start
    /// late: timed from when they started, the stall would count once,
    /// in the one conversation it held up ("coordinated omission"). Timed
    /// from when they were due, the latency is what a steady stream of
    /// clients would have seen.
    due: Option<Instant>,
}

impl Claimed {
    /// The conversation's latency, in microseconds: from when it was due.
    fn latency(&self, began: Instant, took: Duration) -> u64 {
        let late = self
            .due
            .map_or(Duration::ZERO, |due| began.saturating_duration_since(due));
        (took + late).as_micros().clamp(1, u64::MAX as u128) as u64
    }
}

pub(crate) fn run(options: &LoadOptions) -> Result<(), Error> {
    let client = ClientOptions {
        verbosity: Verbosity::Quiet,
        ..options.client.clone()
    };
    // Compile errors are reported once, before any user starts. The users
    // share the engine and the compiled script.
    let script = ClientScript::load(&client)?;
    let users = options.concurrency.max(1);
    crate::net::raise_open_file_limit();
    if let Some(start) = options.start_at {
        wait_for_start(start, options);
    }
    let pace = Arc::new(Pace {
        started: Instant::now(),
        until: options.until,
        begun: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        running: AtomicU64::new(users as u64),
        stop: AtomicBool::new(false),
        rate: options.rate,
        stages: options.stages.clone(),
    });
    let progress = progress_bar(options);
    let html = options.report.html.is_some();
    let timeline = html.then(|| Mutex::new(Timeline::default()));
    let timeline = timeline.as_ref();
    // The users' figures, a stripe per few users: a tally of its own per
    // user would cost each of ten thousand users two histograms (about
    // 400 KB), and one shared by all would make every user wait for it.
    let stripes: Vec<Mutex<Stripe>> = (0..users.min(STRIPES))
        .map(|_| Mutex::new(Stripe::default()))
        .collect();
    let stripes = &stripes;

    // One thread per user, each with a stack sized for scripts (virtual
    // memory: see `stack`). If the system refuses one, the run stops.
    let mut refused = None;
    std::thread::scope(|scope| {
        for user in 0..users {
            if refused.is_some() {
                pace.running.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            let shared = pace.clone();
            let pace = pace.clone();
            let script = script.clone();
            let stripe = &stripes[user % stripes.len()];
            let user = crate::stack::spawn_scoped(scope, "tcpscript-user", move || {
                while pace.turn(user)
                    && let Some(claimed) = pace.claim()
                {
                    let began = Instant::now();
                    let conversed = script.run(None, SHOWN_ON_FAILURE);
                    let micros = claimed.latency(began, conversed.elapsed);
                    let failure = conversed.result.as_ref().err().map(|error| {
                        let diagnostic = diagnostic_of(error);
                        let key = match &diagnostic.location {
                            Some(location) => format!("{location}: {}", diagnostic.message),
                            None => diagnostic.message,
                        };
                        (key, error.exit_code())
                    });
                    let ended = pace.started.elapsed();
                    let mut stripe = stripe.lock().unwrap_or_else(|e| e.into_inner());
                    let Stripe { tally, second } = &mut *stripe;
                    let _ = tally.latency.record(micros);
                    if let Some(timeline) = timeline {
                        second.record(ended, micros, failure.is_some(), timeline);
                    }
                    for handshake in &conversed.handshakes {
                        let micros = handshake.as_micros().clamp(1, u64::MAX as u128) as u64;
                        let _ = tally.handshake.record(micros);
                    }
                    match (conversed.result, failure) {
                        (Ok(summary), _) => {
                            tally.passed += 1;
                            tally.sent += summary.sent;
                            tally.received += summary.received;
                        }
                        (Err(_), failure) => {
                            tally.failed += 1;
                            pace.failed.fetch_add(1, Ordering::Relaxed);
                            if let Some((key, code)) = failure {
                                tally.failures.entry(key).or_insert((0, code)).0 += 1;
                            }
                        }
                    }
                    drop(stripe);
                    pace.done.fetch_add(1, Ordering::Relaxed);
                }
                pace.running.fetch_sub(1, Ordering::Relaxed);
            });
            if let Err(error) = user {
                shared.stop.store(true, Ordering::Relaxed);
                shared.running.fetch_sub(1, Ordering::Relaxed);
                refused = Some(error);
            }
        }
        if let Some(bar) = &progress {
            while pace.running.load(Ordering::Relaxed) > 0 {
                let done = pace.done.load(Ordering::Relaxed);
                let elapsed = pace.started.elapsed().as_secs_f64().max(1e-9);
                bar.set_position(match options.until {
                    Until::Iterations(_) => done,
                    Until::Elapsed(_) => pace.started.elapsed().as_millis() as u64,
                });
                bar.set_message(format!(
                    "{done} conversations, {:.0}/s, {} failed",
                    done as f64 / elapsed,
                    pace.failed.load(Ordering::Relaxed)
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        }
    });

    if let Some(error) = refused {
        return Err(error);
    }
    let elapsed = pace.started.elapsed();
    let mut tally = Tally::new();
    for stripe in stripes {
        let Stripe {
            tally: part,
            mut second,
        } = std::mem::take(&mut *stripe.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(timeline) = timeline {
            second.flush(timeline);
        }
        tally.merge(part);
    }
    let timeline = timeline
        .map(|t| std::mem::take(&mut *t.lock().unwrap_or_else(|e| e.into_inner())))
        .unwrap_or_default();
    let run = Run {
        script: options.client.script.display().to_string(),
        users: options.concurrency,
        elapsed,
        tally,
        timeline,
    };
    if let Some(path) = &options.hist_out {
        merge::write(path, &run, options.shard)?;
    }
    finish(&run, &options.report)
}

/// Sleeps until `start`, saying so unless `-q`: shards on several
/// machines compile their scripts, then begin together. A time already
/// past starts at once (the CLI refused one more than a day ahead).
fn wait_for_start(start: SystemTime, options: &LoadOptions) {
    let wait = start.duration_since(SystemTime::now()).unwrap_or_default();
    if !options.report.quiet {
        let when = humantime::format_rfc3339_millis(start);
        crate::console::err(&if wait.is_zero() {
            format!("--start-at {when} has passed: starting now")
        } else {
            format!("waiting {:.1}s until --start-at {when}", wait.as_secs_f64())
        });
    }
    std::thread::sleep(wait);
}

/// A finished run, or shards merged: what the reports are made from.
pub(crate) struct Run {
    pub(crate) script: String,
    pub(crate) users: usize,
    pub(crate) elapsed: Duration,
    pub(crate) tally: Tally,
    /// Figures per second; empty for merged shards.
    pub(crate) timeline: Timeline,
}

/// Prints the summary, writes the reports asked for and says how the run
/// ended: the exit code's rules are `exit_code`'s and `judged_code`'s.
pub(crate) fn finish(run: &Run, options: &ReportOptions) -> Result<(), Error> {
    let tally = &run.tally;
    let per_second = (tally.passed + tally.failed) as f64 / run.elapsed.as_secs_f64().max(1e-9);
    let measured = Measured {
        latency: &tally.latency,
        passed: tally.passed,
        failed: tally.failed,
        per_second,
    };
    let verdicts: Vec<Verdict> = options
        .thresholds
        .iter()
        .map(|threshold| threshold.judge(&measured))
        .collect();
    report(run, &verdicts, options);
    if let Some(path) = &options.junit {
        crate::report::junit::write_thresholds(path, &verdicts, run.elapsed)?;
    }
    if let Some(path) = &options.html {
        crate::report::html::load::write(
            path,
            &crate::report::html::load::Figures {
                script: &run.script,
                users: run.users,
                elapsed: run.elapsed,
                passed: tally.passed,
                failed: tally.failed,
                messages: tally.sent + tally.received,
                latency: &tally.latency,
                failures: &sorted_failures(tally),
                timeline: &run.timeline,
                thresholds: &verdicts,
            },
        )?;
    }
    let code = judged_code(tally, &options.thresholds, &verdicts);
    let broken: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.passed)
        .map(|v| v.text.clone())
        .collect();
    if code == exit::OK {
        Ok(())
    } else if !broken.is_empty() {
        Err(Error::ThresholdsBroken {
            broken,
            total: verdicts.len(),
            code,
        })
    } else {
        Err(Error::TestsFailed {
            failed: tally.failed as usize,
            total: (tally.passed + tally.failed) as usize,
            code,
        })
    }
}

/// The exit code once thresholds are judged. Without a `failed`
/// threshold, failed conversations give `exit_code`'s code, as they do
/// with no thresholds at all. A `failed` threshold says how many failures
/// are acceptable, so failures within it do not fail the run; when it
/// breaks, the failures' code applies (1 for expectations, 3 or 4 when a
/// script or network error was the most frequent). Any other broken
/// threshold makes an otherwise successful run exit 1; a run that already
/// exits 3 or 4 keeps that code, which says more.
fn judged_code(tally: &Tally, thresholds: &[Threshold], verdicts: &[Verdict]) -> u8 {
    let failure_rate_judged = thresholds.iter().any(Threshold::is_failure_rate);
    let failure_rate_broken = thresholds
        .iter()
        .zip(verdicts)
        .any(|(t, v)| t.is_failure_rate() && !v.passed);
    let code = if failure_rate_judged && !failure_rate_broken {
        exit::OK
    } else {
        exit_code(tally)
    };
    if code == exit::OK && verdicts.iter().any(|v| !v.passed) {
        exit::FAILED
    } else {
        code
    }
}

fn progress_bar(options: &LoadOptions) -> Option<ProgressBar> {
    if options.report.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match options.until {
        Until::Iterations(total) => ProgressBar::new(total),
        Until::Elapsed(limit) => ProgressBar::new(limit.as_millis() as u64),
    };
    let template = "{spinner} [{elapsed_precise}] {wide_bar} {msg}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    Some(bar)
}

/// 0 when every conversation passed; 1 when only expectations failed;
/// else the code of the most frequent other failure (script 3, network
/// 4...), ties going to the message that sorts first: the same failures
/// always give the same code, whatever order the users met them in.
fn exit_code(tally: &Tally) -> u8 {
    if tally.failed == 0 {
        return exit::OK;
    }
    tally
        .failures
        .iter()
        .filter(|(_, (_, code))| *code != exit::FAILED)
        .max_by(|(a, (a_count, _)), (b, (b_count, _))| a_count.cmp(b_count).then(b.cmp(a)))
        .map_or(exit::FAILED, |(_, (_, code))| *code)
}

fn report(run: &Run, verdicts: &[Verdict], options: &ReportOptions) {
    let tally = &run.tally;
    let seconds = run.elapsed.as_secs_f64().max(1e-9);
    let conversations = tally.passed + tally.failed;
    let per_second = conversations as f64 / seconds;
    let messages = tally.sent + tally.received;
    let tls = !tally.handshake.is_empty();
    let failures = sorted_failures(tally);

    if options.json {
        let mut summary = json!({
            "event": "load",
            "concurrency": run.users,
            "duration": seconds,
            "conversations": conversations,
            "passed": tally.passed,
            "failed": tally.failed,
            "conversations_per_second": per_second,
            "messages": messages,
            "messages_per_second": messages as f64 / seconds,
            "latency_ms": Spread::of(&tally.latency).json(),
            "failures": failures
                .iter()
                .map(|(message, count)| json!({ "message": message, "count": count }))
                .collect::<Vec<_>>(),
            "thresholds": verdicts
                .iter()
                .map(|v| json!({ "expr": v.text, "passed": v.passed, "actual": v.actual }))
                .collect::<Vec<_>>(),
        });
        if tls {
            let mut handshake = Spread::of(&tally.handshake).json();
            handshake["count"] = json!(tally.handshake.len());
            summary["handshake_ms"] = handshake;
        }
        println!("{summary}");
        return;
    }
    if options.quiet && tally.failed == 0 && verdicts.iter().all(|v| v.passed) {
        return;
    }
    crate::console::err(&format!(
        "{conversations} conversations in {seconds:.2}s with {} users: {per_second:.1} conversations/s, \
         {:.1} messages/s",
        run.users,
        messages as f64 / seconds
    ));
    crate::console::err(&format!(
        "latency per conversation: {}",
        Spread::of(&tally.latency).text()
    ));
    if tls {
        crate::console::err(&format!(
            "TLS handshake (within the above): {}",
            Spread::of(&tally.handshake).text()
        ));
    }
    crate::console::err(&format!("{} passed, {} failed", tally.passed, tally.failed));
    for (message, count) in failures {
        crate::console::err(&format!(
            "  {count} × {}",
            crate::message::escape_controls(message)
        ));
    }
    for verdict in verdicts {
        crate::console::err(&verdict.to_string());
    }
}

/// Failure messages and their counts, most frequent first.
fn sorted_failures(tally: &Tally) -> Vec<(&String, u64)> {
    let mut failures: Vec<(&String, u64)> = tally
        .failures
        .iter()
        .map(|(message, (count, _))| (message, *count))
        .collect();
    failures.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    failures
}

/// A histogram of microseconds as the milliseconds a report shows.
struct Spread {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Spread {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Spread {
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({ "p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max })
    }

    fn text(&self) -> String {
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            self.p50, self.p90, self.p99, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(failures: &[(&str, u64, u8)]) -> Tally {
        let mut tally = Tally::new();
        for (message, count, code) in failures {
            tally.failed += count;
            tally.failures.insert(message.to_string(), (*count, *code));
        }
        tally
    }

    #[test]
    fn all_passed_is_ok() {
        assert_eq!(exit_code(&tally(&[])), exit::OK);
    }

    #[test]
    fn only_expectations_failed_is_one() {
        let failures = [("a", 5, exit::FAILED), ("b", 1, exit::FAILED)];
        assert_eq!(exit_code(&tally(&failures)), exit::FAILED);
    }

    // Each `HashMap` gets its own random iteration order: asking many of
    // them shows whether the answer depends on it.
    const MAPS: usize = 64;

    #[test]
    fn the_most_frequent_other_failure_decides() {
        let failures = [
            ("x.rhai:1:1: values differ", 50, exit::FAILED),
            ("cannot connect", 3, exit::NETWORK),
            ("x.rhai:2:1: script threw", 7, exit::SCRIPT),
        ];
        for _ in 0..MAPS {
            assert_eq!(exit_code(&tally(&failures)), exit::SCRIPT);
        }
    }

    #[test]
    fn a_tie_goes_to_the_message_that_sorts_first() {
        let failures = [
            ("b: reset", 4, exit::NETWORK),
            ("a: threw", 4, exit::SCRIPT),
        ];
        for _ in 0..MAPS {
            assert_eq!(exit_code(&tally(&failures)), exit::SCRIPT);
        }
    }

    fn judged(failures: &[(&str, u64, u8)], thresholds: &[(&str, bool)]) -> u8 {
        let tally = tally(failures);
        let parsed: Vec<Threshold> = thresholds
            .iter()
            .map(|(text, _)| Threshold::parse(text).unwrap())
            .collect();
        let verdicts: Vec<Verdict> = thresholds
            .iter()
            .map(|(text, passed)| Verdict {
                text: text.to_string(),
                passed: *passed,
                actual: 0.0,
                shown: String::new(),
                figure: "",
            })
            .collect();
        judged_code(&tally, &parsed, &verdicts)
    }

    #[test]
    fn a_broken_threshold_fails_a_clean_run() {
        assert_eq!(judged(&[], &[("p99<1ms", true)]), exit::OK);
        assert_eq!(judged(&[], &[("p99<1ms", false)]), exit::FAILED);
    }

    #[test]
    fn failures_within_a_failed_threshold_pass() {
        let failures = [("cannot connect", 1, exit::NETWORK)];
        assert_eq!(judged(&failures, &[("failed<1%", true)]), exit::OK);
        assert_eq!(judged(&failures, &[("failed<1%", false)]), exit::NETWORK);
        // With no failure threshold, failures keep their code.
        assert_eq!(judged(&failures, &[("p99<1ms", true)]), exit::NETWORK);
        assert_eq!(
            judged(&failures, &[("failed<1%", true), ("p99<1ms", false)]),
            exit::FAILED
        );
    }
}
