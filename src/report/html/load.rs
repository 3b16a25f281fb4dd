//! Load mode's `--html FILE`: the run's figures, then charts drawn as
//! inline SVG (no script, no library): conversations and failures per
//! second, p50/p90/p99 latency over time, the latency by percentile from
//! the run's HDR histogram, and the failures grouped by message.
//!
//! ```html
//! <figure class="chart" id="throughput"><figcaption>Conversations per second</figcaption>
//!   <svg viewBox="0 0 900 300" …><g class="axis x">…</g><g class="axis y">…</g>
//!     <polyline class="series" data-series="conversations/s" points="64,120 …"/>
//!     <g class="legend">…</g></svg></figure>
//! ```

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{escape, head};
use crate::error::Error;
use crate::report::timeline::Timeline;

/// What a load run measured, as `load` hands it over.
pub(crate) struct Figures<'a> {
    pub(crate) script: &'a str,
    pub(crate) users: usize,
    pub(crate) elapsed: Duration,
    pub(crate) passed: u64,
    pub(crate) failed: u64,
    pub(crate) messages: u64,
    /// Every conversation's duration, in microseconds.
    pub(crate) latency: &'a Histogram<u64>,
    /// Failure messages and how often, most frequent first.
    pub(crate) failures: &'a [(&'a String, u64)],
    /// Empty for merged shards: only the whole run's figures travel.
    pub(crate) timeline: &'a Timeline,
    /// `--threshold`s as judged on the run.
    pub(crate) thresholds: &'a [crate::load::threshold::Verdict],
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 40.0;
/// Room for the legend above the plot.
const TOP: f64 = 40.0;
/// Room for the tick labels and the axis' name below it.
const BOTTOM: f64 = 48.0;

struct Series {
    name: &'static str,
    colour: &'static str,
    points: Vec<(f64, f64)>,
}

struct Chart<'a> {
    id: &'a str,
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    /// The x axis' extent and its labelled ticks; the y axis is scaled to
    /// the data.
    x_max: f64,
    x_ticks: Vec<(f64, String)>,
    series: Vec<Series>,
}

/// Round steps (1, 2 or 5 × 10ⁿ) from 0 to at least `max`: the finest
/// step that needs at most 8 of them, so the axis ends near the data.
fn ticks(max: f64) -> (f64, Vec<f64>) {
    let max = if max > 0.0 && max.is_finite() {
        max
    } else {
        1.0
    };
    let mut magnitude = 10f64.powf((max / 10.0).log10().floor());
    let (step, count) = loop {
        if let Some(found) = [1.0, 2.0, 5.0].iter().find_map(|m| {
            let step = m * magnitude;
            let count = (max / step - 1e-9).ceil().max(1.0);
            (count <= 8.0).then_some((step, count as usize))
        }) {
            break found;
        }
        magnitude *= 10.0;
    };
    let values = (0..=count).map(|i| i as f64 * step).collect();
    (count as f64 * step, values)
}

/// A tick's label: as many decimals as its step needs.
fn label(value: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{value:.decimals$}")
}

fn chart(out: &mut String, chart: &Chart) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y_max_data = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let (y_max, y_ticks) = ticks(y_max_data);
    let x_max = if chart.x_max > 0.0 { chart.x_max } else { 1.0 };
    let x = |v: f64| LEFT + v / x_max * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_max * plot_h;

    let _ = write!(
        out,
        "<figure class=\"chart\" id=\"{}\"><figcaption>{}</figcaption>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\">\n",
        escape(chart.id),
        escape(chart.title),
        escape(chart.title)
    );
    // Grid and y axis.
    let step = y_ticks.get(1).copied().unwrap_or(1.0);
    out.push_str("<g class=\"axis y\" font-size=\"12\" fill=\"#57606a\">\n");
    for value in &y_ticks {
        let at = y(*value);
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{at:.1}\" y2=\"{at:.1}\" stroke=\"#d0d7de\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + plot_w,
            LEFT - 6.0,
            at + 4.0,
            escape(&label(*value, step))
        );
    }
    let middle = TOP + plot_h / 2.0;
    let _ = writeln!(
        out,
        "<text class=\"label\" x=\"16\" y=\"{middle:.1}\" text-anchor=\"middle\" \
         transform=\"rotate(-90 16 {middle:.1})\">{}</text>\n</g>",
        escape(chart.y_label)
    );
    // X axis.
    let bottom = TOP + plot_h;
    out.push_str("<g class=\"axis x\" font-size=\"12\" fill=\"#57606a\">\n");
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{bottom}\" y2=\"{bottom}\" stroke=\"#57606a\"/>",
        LEFT + plot_w
    );
    for (value, text) in &chart.x_ticks {
        let at = x(*value);
        let _ = writeln!(
            out,
            "<line x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"{bottom}\" y2=\"{}\" stroke=\"#57606a\"/>\
             <text x=\"{at:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            bottom + 5.0,
            bottom + 18.0,
            escape(text)
        );
    }
    let _ = writeln!(
        out,
        "<text class=\"label\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n</g>",
        LEFT + plot_w / 2.0,
        HEIGHT - 8.0,
        escape(chart.x_label)
    );
    // Lines, and a dot where a series has a single point.
    for series in &chart.series {
        let points: Vec<String> = series
            .points
            .iter()
            .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline class=\"series\" data-series=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            escape(series.name),
            series.colour,
            points.join(" ")
        );
        if let [(px, py)] = series.points[..] {
            let _ = writeln!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                x(px),
                y(py),
                series.colour
            );
        }
    }
    // Legend, above the plot.
    out.push_str("<g class=\"legend\" font-size=\"12\">\n");
    let mut at = LEFT;
    for series in &chart.series {
        let _ = writeln!(
            out,
            "<rect x=\"{at:.1}\" y=\"12\" width=\"14\" height=\"4\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"18\" fill=\"#1f2328\">{}</text>",
            series.colour,
            at + 20.0,
            escape(series.name)
        );
        at += 30.0 + 7.5 * series.name.chars().count() as f64;
    }
    out.push_str("</g>\n</svg></figure>\n");
}

/// Ticks for seconds since the start.
fn time_ticks(max: f64) -> (f64, Vec<(f64, String)>) {
    let (top, values) = ticks(max);
    let step = values.get(1).copied().unwrap_or(1.0);
    let labelled = values.iter().map(|v| (*v, label(*v, step))).collect();
    (top, labelled)
}

/// Per-bucket points: x in the middle of the time the bucket covers, in
/// seconds. The last
/// bucket is usually cut short by the run's end, so it is divided by the
/// time it covered, not its width; under a quarter of its width, it is
/// left out: a run that ends 10 ms into a second would draw a cliff.
fn over_time(
    timeline: &Timeline,
    elapsed: Duration,
    value: impl Fn(&crate::report::timeline::Bucket, f64) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let width = timeline.width() as f64;
    let elapsed = elapsed.as_secs_f64();
    let buckets = timeline.buckets();
    buckets
        .iter()
        .enumerate()
        .filter_map(|(i, bucket)| {
            let start = i as f64 * width;
            let covered = (elapsed - start).clamp(0.0, width);
            if covered < width / 4.0 && i + 1 == buckets.len() {
                return None;
            }
            value(bucket, covered.max(width / 4.0)).map(|v| (start + covered / 2.0, v))
        })
        .collect()
}

/// Percentiles as the HDR plots show them: x is the number of nines,
/// log10(1 / (1 - q)), so 90% is 1, 99% is 2 and the tail gets room.
fn percentile_curve(latency: &Histogram<u64>) -> (f64, Vec<(f64, f64)>) {
    let count = latency.len().max(1) as f64;
    let mut points = Vec::new();
    for tenth in 0..=50 {
        let nines = f64::from(tenth) / 10.0;
        // Past one sample's share, every quantile is the maximum.
        if 10f64.powf(nines) > count && tenth > 0 {
            break;
        }
        let q = 1.0 - 10f64.powf(-nines);
        points.push((nines, latency.value_at_quantile(q) as f64 / 1000.0));
    }
    let last = points.last().map_or(0.0, |p| p.0);
    let x_max = last.ceil().max(1.0);
    points.push((x_max, latency.max() as f64 / 1000.0));
    (x_max, points)
}

/// Conversations, failures and latency per second, from the timeline.
fn over_time_charts(out: &mut String, figures: &Figures, seconds: f64) {
    let (x_max, x_ticks) = time_ticks(seconds);
    let x_label = match figures.timeline.width() {
        1 => "seconds since the start".to_string(),
        n => format!("seconds since the start ({n} s a point)"),
    };
    chart(
        out,
        &Chart {
            id: "throughput",
            title: "Conversations and failures per second",
            x_label: &x_label,
            y_label: "per second",
            x_max,
            x_ticks: x_ticks.clone(),
            series: vec![
                Series {
                    name: "conversations/s",
                    colour: "#0969da",
                    points: over_time(figures.timeline, figures.elapsed, |b, s| {
                        Some(b.done as f64 / s)
                    }),
                },
                Series {
                    name: "failures/s",
                    colour: "#cf222e",
                    points: over_time(figures.timeline, figures.elapsed, |b, s| {
                        Some(b.failed as f64 / s)
                    }),
                },
            ],
        },
    );
    let quantile = |q: f64| move |b: &crate::report::timeline::Bucket, _| b.millis_at(q);
    chart(
        out,
        &Chart {
            id: "latency",
            title: "Latency over time",
            x_label: &x_label,
            y_label: "latency (ms)",
            x_max,
            x_ticks,
            series: vec![
                Series {
                    name: "p50",
                    colour: "#1a7f37",
                    points: over_time(figures.timeline, figures.elapsed, quantile(0.5)),
                },
                Series {
                    name: "p90",
                    colour: "#9a6700",
                    points: over_time(figures.timeline, figures.elapsed, quantile(0.9)),
                },
                Series {
                    name: "p99",
                    colour: "#cf222e",
                    points: over_time(figures.timeline, figures.elapsed, quantile(0.99)),
                },
            ],
        },
    );
}

pub(crate) fn render(figures: &Figures) -> String {
    let seconds = figures.elapsed.as_secs_f64().max(1e-9);
    let conversations = figures.passed + figures.failed;
    let mut out = String::with_capacity(64 * 1024);
    let title = format!(
        "tcpscript load: {} conversations, {} failed",
        conversations, figures.failed
    );
    head(&mut out, &title);
    let ms = |q: f64| figures.latency.value_at_quantile(q) as f64 / 1000.0;
    let _ = write!(
        out,
        "<header>\n<h1>tcpscript load report</h1>\n<p class=\"script\">{}</p>\n<p class=\"summary\">\
         <span class=\"count total\">{conversations} conversations</span> \
         <span class=\"count passed\">{} passed</span> \
         <span class=\"count failed\">{} failed</span> \
         <span class=\"duration\">in {seconds:.2} s with {} users</span></p>\n</header>\n<main>\n",
        escape(figures.script),
        figures.passed,
        figures.failed,
        figures.users,
    );
    let _ = write!(
        out,
        "<table class=\"figures\"><tbody>\n\
         <tr><th>conversations/s</th><td>{:.1}</td><th>messages/s</th><td>{:.1}</td></tr>\n\
         <tr><th>latency p50</th><td>{:.3} ms</td><th>p90</th><td>{:.3} ms</td></tr>\n\
         <tr><th>p99</th><td>{:.3} ms</td><th>max</th><td>{:.3} ms</td></tr>\n\
         </tbody></table>\n",
        conversations as f64 / seconds,
        figures.messages as f64 / seconds,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        figures.latency.max() as f64 / 1000.0,
    );

    if !figures.thresholds.is_empty() {
        out.push_str(
            "<h2>Thresholds</h2>\n<table class=\"thresholds\">\n<thead><tr><th>threshold</th><th>result</th><th>measured</th></tr></thead>\n<tbody>\n",
        );
        for verdict in figures.thresholds {
            let (class, outcome) = if verdict.passed {
                ("passed", "passed")
            } else {
                ("failed", "FAILED")
            };
            let _ = writeln!(
                out,
                "<tr class=\"{class}\"><td>{}</td><td>{outcome}</td><td>{} {}</td></tr>",
                escape(&verdict.text),
                verdict.figure,
                escape(&verdict.shown)
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }

    // Merged shards bring no figures over time: no charts of nothing.
    if !figures.timeline.buckets().is_empty() {
        over_time_charts(&mut out, figures, seconds);
    }

    if !figures.latency.is_empty() {
        let (x_max, points) = percentile_curve(figures.latency);
        let names = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
        let x_ticks = names
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as f64 <= x_max)
            .map(|(i, name)| (i as f64, name.to_string()))
            .collect();
        chart(
            &mut out,
            &Chart {
                id: "distribution",
                title: "Latency by percentile (whole run)",
                x_label: "percentile",
                y_label: "latency (ms)",
                x_max,
                x_ticks,
                series: vec![Series {
                    name: "latency",
                    colour: "#8250df",
                    points,
                }],
            },
        );
    }

    out.push_str("<h2>Failures</h2>\n");
    if figures.failures.is_empty() {
        out.push_str("<p class=\"empty\">None.</p>\n");
    } else {
        out.push_str(
            "<table class=\"failures\">\n<thead><tr><th>count</th><th>share</th><th>message</th></tr></thead>\n<tbody>\n",
        );
        for (message, count) in figures.failures {
            let _ = writeln!(
                out,
                "<tr><td class=\"time\">{count}</td><td class=\"time\">{:.1}%</td><td class=\"message\">{}</td></tr>",
                *count as f64 * 100.0 / conversations.max(1) as f64,
                escape(&crate::diagnostic::shorten(message, super::LINE_HEAD))
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

pub(crate) fn write(path: &Path, figures: &Figures) -> Result<(), Error> {
    std::fs::write(path, render(figures)).map_err(|source| Error::WriteFile {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_data() {
        assert_eq!(ticks(9.0), (10.0, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]));
        assert_eq!(ticks(0.0).0, 1.0);
        assert_eq!(ticks(6.02).0, 7.0);
        assert_eq!(ticks(1500.0).0, 1600.0);
        let (top, values) = ticks(0.37);
        assert!(top >= 0.37 && values.len() <= 11, "{top} {values:?}");
        assert_eq!(label(0.1, 0.1), "0.1");
        assert_eq!(label(200.0, 50.0), "200");
    }

    #[test]
    fn the_percentile_curve_stops_where_the_samples_do() {
        let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for micros in 1..=100 {
            latency.record(micros * 1000).unwrap();
        }
        let (x_max, points) = percentile_curve(&latency);
        assert_eq!(x_max, 2.0);
        assert_eq!(points.first().unwrap().0, 0.0);
        // The histogram's buckets are within 0.1% of the values recorded.
        let (x, top) = *points.last().unwrap();
        assert_eq!(x, 2.0);
        assert!((100.0..100.1).contains(&top), "{top}");
    }

    #[test]
    fn a_failure_message_is_escaped() {
        let latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        let message = "<script>alert(1)</script>".to_string();
        let failures = [(&message, 3)];
        let timeline = Timeline::default();
        let page = render(&Figures {
            script: "<b>.rhai",
            users: 1,
            elapsed: Duration::from_secs(1),
            passed: 0,
            failed: 3,
            messages: 0,
            latency: &latency,
            failures: &failures,
            timeline: &timeline,
            thresholds: &[],
        });
        assert!(!page.contains("<script") && !page.contains("<b>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }
}
