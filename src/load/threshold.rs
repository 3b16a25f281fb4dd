//! `--threshold EXPR`: a pass mark for a load run, as k6 has them. One
//! figure, one comparison, one bound:
//!
//! ```text
//! p99<50ms      latency: p50, p90, p99 or max, in us, ms or s
//! failed<0.1%   the share of conversations that failed: a percentage or a fraction (0.001)
//! rate>1000     conversations per second
//! ```
//!
//! Parsed when the command line is, so a typo is a usage error before any
//! connection; judged on the figures of the whole run (or of the merged
//! shards).

use std::fmt;

use hdrhistogram::Histogram;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Threshold {
    /// As given, without spaces: what every report calls it.
    pub(crate) text: String,
    metric: Metric,
    op: Op,
    /// In the metric's base unit: microseconds, a fraction, per second.
    bound: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    /// A quantile of the conversations' latency; 1.0 is the maximum.
    Latency(&'static str, f64),
    Failed,
    Rate,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

/// Why an expression is not a threshold; clap prints it after the expression.
#[derive(Debug, Error, PartialEq)]
pub(crate) enum ThresholdError {
    #[error("unknown figure `{0}`: use p50, p90, p99, max (latency), failed or rate")]
    Metric(String),
    #[error("no comparison after `{0}`: use <, <=, > or >= (e.g. p99<50ms)")]
    Operator(String),
    #[error("no bound after the comparison (e.g. p99<50ms)")]
    Missing,
    #[error(
        "latency bound `{0}` needs a unit: us, ms or s (e.g. 50ms); a bare number is ambiguous"
    )]
    NoUnit(String),
    #[error("`{0}` is not a latency: give a number of 0 or more with us, ms or s (e.g. 50ms)")]
    Latency(String),
    #[error("`{0}` is not a failure rate: give a percentage (0.1%) or a fraction from 0 to 1")]
    Failed(String),
    #[error("`{0}` is not a number of conversations per second of 0 or more")]
    Rate(String),
}

/// A threshold judged against a run's figures.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    pub(crate) text: String,
    pub(crate) passed: bool,
    /// The figure, in the unit JSON reports use: milliseconds for latency,
    /// a fraction for `failed`, conversations per second for `rate`.
    pub(crate) actual: f64,
    /// The figure for people: `73.200ms`, `2.500%`, `1234.5/s`.
    pub(crate) shown: String,
    /// What was measured: `p99`, `failed` or `rate`.
    pub(crate) figure: &'static str,
}

/// What thresholds are judged on.
pub(crate) struct Measured<'a> {
    /// Conversation durations in microseconds.
    pub(crate) latency: &'a Histogram<u64>,
    pub(crate) passed: u64,
    pub(crate) failed: u64,
    pub(crate) per_second: f64,
}

impl Threshold {
    pub(crate) fn parse(expression: &str) -> Result<Threshold, ThresholdError> {
        let text: String = expression.chars().filter(|c| !c.is_whitespace()).collect();
        let name_end = text
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(text.len());
        let (name, rest) = text.split_at(name_end);
        let metric = match name.to_ascii_lowercase().as_str() {
            "p50" => Metric::Latency("p50", 0.5),
            "p90" => Metric::Latency("p90", 0.9),
            "p99" => Metric::Latency("p99", 0.99),
            "max" => Metric::Latency("max", 1.0),
            "failed" => Metric::Failed,
            "rate" => Metric::Rate,
            _ => return Err(ThresholdError::Metric(name.to_string())),
        };
        let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
            (Op::LessOrEqual, v)
        } else if let Some(v) = rest.strip_prefix(">=") {
            (Op::GreaterOrEqual, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (Op::Less, v)
        } else if let Some(v) = rest.strip_prefix('>') {
            (Op::Greater, v)
        } else {
            return Err(ThresholdError::Operator(name.to_string()));
        };
        if value.is_empty() {
            return Err(ThresholdError::Missing);
        }
        let bound = match metric {
            Metric::Latency(..) => latency_micros(value)?,
            Metric::Failed => failed_fraction(value)?,
            Metric::Rate => {
                let number = value.strip_suffix("/s").unwrap_or(value);
                non_negative(number).ok_or_else(|| ThresholdError::Rate(value.to_string()))?
            }
        };
        Ok(Threshold {
            text,
            metric,
            op,
            bound,
        })
    }

    pub(crate) fn judge(&self, measured: &Measured) -> Verdict {
        let conversations = measured.passed + measured.failed;
        // The figure in the bound's unit, then as reports show it.
        let (value, actual, shown, figure) = match self.metric {
            Metric::Latency(name, quantile) => {
                let micros = if quantile >= 1.0 {
                    measured.latency.max()
                } else {
                    measured.latency.value_at_quantile(quantile)
                } as f64;
                let ms = micros / 1000.0;
                (micros, ms, format!("{ms:.3}ms"), name)
            }
            Metric::Failed => {
                let share = if conversations == 0 {
                    0.0
                } else {
                    measured.failed as f64 / conversations as f64
                };
                (share, share, format!("{:.3}%", share * 100.0), "failed")
            }
            Metric::Rate => {
                let rate = measured.per_second;
                (rate, rate, format!("{rate:.1}/s"), "rate")
            }
        };
        let passed = match self.op {
            Op::Less => value < self.bound,
            Op::LessOrEqual => value <= self.bound,
            Op::Greater => value > self.bound,
            Op::GreaterOrEqual => value >= self.bound,
        };
        Verdict {
            text: self.text.clone(),
            passed,
            actual,
            shown,
            figure,
        }
    }

    /// Whether this threshold judges the failure rate: then failed
    /// conversations within it do not fail the run on their own.
    pub(crate) fn is_failure_rate(&self) -> bool {
        self.metric == Metric::Failed
    }
}

impl fmt::Display for Verdict {
    /// `threshold p99<50ms: FAILED (p99 was 73.200ms)`
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let outcome = if self.passed { "passed" } else { "FAILED" };
        write!(
            f,
            "threshold {}: {outcome} ({} was {})",
            self.text, self.figure, self.shown
        )
    }
}

fn non_negative(text: &str) -> Option<f64> {
    // `parse::<f64>` takes `inf` and `NaN`: neither is a bound.
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// `50ms`, `1.5s`, `800us` (or `800µs`) as microseconds.
fn latency_micros(text: &str) -> Result<f64, ThresholdError> {
    let digits = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let factor = match unit {
        "" if non_negative(number).is_some() => {
            return Err(ThresholdError::NoUnit(text.to_string()));
        }
        "us" | "µs" => 1.0,
        "ms" => 1_000.0,
        "s" => 1_000_000.0,
        _ => return Err(ThresholdError::Latency(text.to_string())),
    };
    non_negative(number)
        .map(|n| n * factor)
        .ok_or_else(|| ThresholdError::Latency(text.to_string()))
}

/// `0.1%` or `0.001` as a fraction from 0 to 1.
fn failed_fraction(text: &str) -> Result<f64, ThresholdError> {
    let fraction = match text.strip_suffix('%') {
        Some(percent) => non_negative(percent).map(|p| p / 100.0),
        None => non_negative(text),
    };
    fraction
        .filter(|f| *f <= 1.0)
        .ok_or_else(|| ThresholdError::Failed(text.to_string()))
}

/// For clap: the error names the expression, then what is wrong with it.
pub(crate) fn parse_arg(text: &str) -> Result<Threshold, String> {
    Threshold::parse(text).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(values: &[u64]) -> Histogram<u64> {
        let mut histogram = Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for value in values {
            histogram.record(*value).unwrap();
        }
        histogram
    }

    fn judge(text: &str, measured: &Measured) -> bool {
        Threshold::parse(text).unwrap().judge(measured).passed
    }

    #[test]
    fn latency_bounds_take_their_unit() {
        let bound = |text: &str| Threshold::parse(text).unwrap().bound;
        assert_eq!(bound("p99<50ms"), 50_000.0);
        assert_eq!(bound("p50 <= 1.5s"), 1_500_000.0);
        assert_eq!(bound("max<800us"), 800.0);
        assert_eq!(bound("p90<800µs"), 800.0);
    }

    #[test]
    fn failure_rates_are_percentages_or_fractions() {
        let bound = |text: &str| Threshold::parse(text).unwrap().bound;
        assert!((bound("failed<0.1%") - 0.001).abs() < 1e-12);
        assert_eq!(bound("failed<0.001"), 0.001);
        assert_eq!(bound("failed<=0"), 0.0);
    }

    #[test]
    fn spaces_are_dropped_from_the_name() {
        let threshold = Threshold::parse(" p99 < 50ms ").unwrap();
        assert_eq!(threshold.text, "p99<50ms");
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        use ThresholdError::*;
        let cases = [
            ("p95<50ms", Metric("p95".into())),
            ("p99=50ms", Operator("p99".into())),
            ("p99", Operator("p99".into())),
            ("p99<", Missing),
            ("p99<50", NoUnit("50".into())),
            ("p99<50h", Latency("50h".into())),
            ("p99<-5ms", Latency("-5ms".into())),
            ("failed<2", Failed("2".into())),
            ("failed<150%", Failed("150%".into())),
            ("rate>fast", Rate("fast".into())),
            ("rate>inf", Rate("inf".into())),
            ("rate>NaN", Rate("NaN".into())),
        ];
        for (text, error) in cases {
            assert_eq!(Threshold::parse(text), Err(error), "{text}");
        }
        let message = parse_arg("p99<50").unwrap_err();
        assert!(message.starts_with("`p99<50`: "), "{message}");
        assert!(message.contains("needs a unit"), "{message}");
    }

    #[test]
    fn each_kind_passes_and_fails() {
        let histogram = latency(&[1_000, 2_000, 3_000, 100_000]);
        let measured = Measured {
            latency: &histogram,
            passed: 999,
            failed: 1,
            per_second: 500.0,
        };
        assert!(judge("max<101ms", &measured));
        assert!(!judge("max<99ms", &measured));
        assert!(judge("p50<=2ms", &measured));
        assert!(!judge("p50<2ms", &measured));
        assert!(judge("failed<0.2%", &measured));
        assert!(!judge("failed<0.1%", &measured));
        assert!(judge("failed<=0.001", &measured));
        assert!(judge("rate>=500", &measured));
        assert!(!judge("rate>500", &measured));
        assert!(judge("rate<600/s", &measured));
    }

    #[test]
    fn the_verdict_names_the_figure() {
        let histogram = latency(&[73_200]);
        let measured = Measured {
            latency: &histogram,
            passed: 1,
            failed: 0,
            per_second: 1.0,
        };
        let verdict = Threshold::parse("p99<50ms").unwrap().judge(&measured);
        // The histogram keeps 3 significant digits: 73.2 ms is 73.215 ms.
        assert_eq!(
            verdict.to_string(),
            "threshold p99<50ms: FAILED (p99 was 73.215ms)"
        );
        assert!((verdict.actual - 73.215).abs() < 1e-9, "{}", verdict.actual);
    }

    #[test]
    fn no_conversations_is_no_failure_rate() {
        let histogram = latency(&[]);
        let measured = Measured {
            latency: &histogram,
            passed: 0,
            failed: 0,
            per_second: 0.0,
        };
        assert!(judge("failed<1%", &measured));
    }
}
