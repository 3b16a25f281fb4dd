//! `tcpscript test --html FILE`, opened in a real browser: headless
//! Chromium dumps the DOM it built from the report (so what is asserted is
//! what a person would see, after the browser's own parsing) and takes a
//! screenshot of it.
//!
//! Chromium takes seconds to start on a small machine: one report of mixed
//! cases is run and dumped once, and several tests read that one dump.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use regex::Regex;

use crate::support::{Running, tcpscript};

/// Replies as told: markup for `hostile`, bytes that are not text for
/// `binary`, and anything else echoed.
const SERVER: &str = r#"
fn on_message(msg) {
    if msg == "hostile" {
        return "<script>alert(1)</script><img src=x onerror=alert(1)>";
    }
    if msg == "binary" {
        let b = blob(4, 0);
        b[1] = 255;
        b[2] = 60;
        return b;
    }
    msg
}
"#;

const CASES: &[(&str, &str)] = &[
    (
        "a_pass.rhai",
        "send(\"hello\");\nexpect(\"^hello$\");\nlet two = connect();\ntwo.send(\"hi\");\nassert_eq(two.recv(), \"hi\");\n",
    ),
    (
        "b_fail.rhai",
        "send(\"one\");\nassert_eq(recv(), \"two\");\n",
    ),
    (
        "c_hostile.rhai",
        "send(\"hostile\");\nlet m = recv();\nassert_eq(m, \"safe\");\n",
    ),
    (
        "d_binary.rhai",
        "send(\"binary\");\nlet m = recv();\nassert_eq(m, \"x\");\n",
    ),
    ("e_broken.rhai", "let x = 1;\nx.no_such_method();\n"),
    ("f_pass.rhai", "send(\"ping\");\nexpect(\"^ping$\");\n"),
    (
        "g_diff.rhai",
        "assert_eq(\"one\\n-two\\nthree\", \"one\\n-two\\n3\");\n",
    ),
];

/// The browser: `$CHROMIUM`, or the first of Debian's, Ubuntu's and
/// Google's names on the PATH. Missing, the tests fail: CI installs it
/// (`.ci/run`), and a check that skips itself checks nothing.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return path.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "no chromium on the PATH: the HTML report tests open it in a real browser \
         (apt-get install chromium, as .ci/run does, or set CHROMIUM)"
    );
}

/// Runs headless Chromium on `report` with `args`; its stdout. Each run
/// gets its own profile, so runs in parallel do not share one.
fn run_chromium(report: &Path, args: &[&str], limit: Duration) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", report.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium {args:?} failed: {status}");
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "chromium {args:?} took over {limit:?} to open {}",
                report.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

fn dump_dom(report: &Path, limit: Duration) -> String {
    let dom = run_chromium(report, &["--dump-dom"], limit);
    assert!(dom.contains("</html>"), "no DOM dumped: {dom}");
    dom
}

/// A run of `cases` against `server`, written as an HTML report.
struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new(server: &str, cases: &[(String, String)], args: &[&str]) -> Run {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.rhai"), server).unwrap();
        let folder = dir.path().join("cases");
        std::fs::create_dir(&folder).unwrap();
        for (name, source) in cases {
            std::fs::write(folder.join(name), source).unwrap();
        }
        let run = Run { dir };
        tcpscript()
            .current_dir(run.dir.path())
            .args(["test", "--server", "server.rhai", "cases", "--html"])
            .arg(run.report())
            .args(args)
            .timeout(Duration::from_secs(600))
            .assert()
            .failure();
        run
    }

    fn report(&self) -> PathBuf {
        self.dir.path().join("report.html")
    }
}

/// The mixed run, and its DOM as Chromium built it.
fn mixed() -> &'static (Run, String) {
    static MIXED: OnceLock<(Run, String)> = OnceLock::new();
    MIXED.get_or_init(|| {
        let cases: Vec<(String, String)> = CASES
            .iter()
            .map(|(name, source)| (name.to_string(), source.to_string()))
            .collect();
        let run = Run::new(SERVER, &cases, &[]);
        let dom = dump_dom(&run.report(), Duration::from_secs(120));
        (run, dom)
    })
}

fn dom() -> &'static str {
    &mixed().1
}

/// The `<section>` of the case whose file is `name`.
fn section<'a>(dom: &'a str, name: &str) -> &'a str {
    let sections = Regex::new(r#"(?s)<section class="case [^"]*".*?</section>"#).unwrap();
    sections
        .find_iter(dom)
        .map(|m| m.as_str())
        .find(|s| s.contains(&format!("cases/{name}</span>")))
        .unwrap_or_else(|| panic!("no section for {name} in {dom}"))
}

#[test]
fn every_case_has_a_row_with_its_status_failures_first() {
    let rows = Regex::new(
        r#"<tr class="case (\w+)"><td class="status">(\w+)</td><td class="name"><a href="\#case-\d+">cases/(\w+)\.rhai</a>"#,
    )
    .unwrap();
    let found: Vec<(String, String, String)> = rows
        .captures_iter(dom())
        .map(|c| (c[1].to_string(), c[2].to_string(), c[3].to_string()))
        .collect();
    let expected = [
        ("failed", "FAIL", "b_fail"),
        ("failed", "FAIL", "c_hostile"),
        ("failed", "FAIL", "d_binary"),
        ("error", "ERROR", "e_broken"),
        ("failed", "FAIL", "g_diff"),
        ("passed", "PASS", "a_pass"),
        ("passed", "PASS", "f_pass"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(found, expected, "{}", dom());
    // And a section each, in the same order.
    assert_eq!(dom().matches("<section class=\"case ").count(), CASES.len());
}

#[test]
fn the_summary_counts_passed_failed_and_errors() {
    for count in [
        r#"<span class="count passed">2 passed</span>"#,
        r#"<span class="count failed">4 failed</span>"#,
        r#"<span class="count error">1 error</span>"#,
        r#"<span class="count total">7 cases</span>"#,
    ] {
        assert!(dom().contains(count), "no {count} in {}", dom());
    }
    assert!(dom().contains("<title>tcpscript: 2 passed, 4 failed, 1 error</title>"));
}

#[test]
fn a_failure_shows_its_source_line_caret_expected_and_actual() {
    let failed = section(dom(), "b_fail.rhai");
    assert!(failed.contains("<details open=\"\">"), "{failed}");
    assert!(failed.contains(r#"<span class="headline">error: values differ</span>"#));
    assert!(failed.contains("b_fail.rhai:2:1\n"), "{failed}");
    assert!(
        failed.contains("2 | assert_eq(recv(), \"two\");\n  | ^\n"),
        "{failed}"
    );
    assert!(failed.contains(r#"<span class="expected">  = expected: "two"</span>"#));
    assert!(failed.contains(r#"<span class="actual">  =   actual: "one"</span>"#));
    // A line diff, each side in its colour; a context line that starts
    // with a sign is still context.
    let diff = section(dom(), "g_diff.rhai");
    assert!(
        diff.contains("<span class=\"removed\">    -3</span>"),
        "{diff}"
    );
    assert!(
        diff.contains("<span class=\"added\">    +three</span>"),
        "{diff}"
    );
    assert!(diff.contains("\n     -two\n"), "{diff}");
    let broken = section(dom(), "e_broken.rhai");
    assert!(
        broken.contains("Function not found: no_such_method"),
        "{broken}"
    );
    // A passed case is there too, folded.
    assert!(section(dom(), "a_pass.rhai").contains("<details>"));
}

#[test]
fn the_transcript_shows_time_direction_connection_and_hex() {
    let passed = section(dom(), "a_pass.rhai");
    let row = Regex::new(
        r#"<tr class="(sent|received)"><td class="at">\+\d+\.\d{3}s</td><td class="conn">(#2)?</td><td class="dir">(→ sent|← recv)</td><td class="msg">(\w+)</td></tr>"#,
    )
    .unwrap();
    let rows: Vec<(String, String, String)> = row
        .captures_iter(passed)
        .map(|c| {
            let conn = c.get(2).map_or("", |m| m.as_str());
            (c[1].to_string(), conn.to_string(), c[4].to_string())
        })
        .collect();
    let expected = [
        ("sent", "", "hello"),
        ("received", "", "hello"),
        ("sent", "#2", "hi"),
        ("received", "#2", "hi"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(rows, expected, "{passed}");
    let binary = section(dom(), "d_binary.rhai");
    assert!(
        binary.contains(r#"<td class="msg hex">&lt;4 bytes: 00 ff 3c 00&gt;</td>"#),
        "{binary}"
    );
}

#[test]
fn a_peers_markup_is_text_and_never_an_element() {
    let hostile = section(dom(), "c_hostile.rhai");
    let text = "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;";
    // In the actual value and in the transcript.
    assert_eq!(hostile.matches(text).count(), 2, "{hostile}");
    let lower = dom().to_lowercase();
    assert_eq!(lower.matches("<script").count(), 0, "{}", dom());
    assert_eq!(lower.matches("<img").count(), 0, "{}", dom());
    assert!(!lower.contains("onerror=\""), "{}", dom());
}

#[test]
fn a_report_is_self_contained_and_lets_nothing_else_in() {
    // Text's `<` is serialised as `&lt;`: every `<` left opens an element.
    let tags = Regex::new(r"<[a-zA-Z][^>]*>").unwrap();
    let links = Regex::new(r#"href="([^"]*)""#).unwrap();
    for dom in [dom(), load_run().1.as_str()] {
        for tag in tags.find_iter(dom).map(|m| m.as_str()) {
            assert!(!tag.contains(" src="), "{tag} fetches");
            assert!(
                !tag.starts_with("<link") && !tag.starts_with("<script"),
                "{tag}"
            );
        }
        for link in links.captures_iter(dom) {
            assert!(link[1].starts_with("#case-"), "a link out: {}", &link[1]);
        }
        let style = &dom[dom.find("<style>").unwrap()..dom.find("</style>").unwrap()];
        assert!(
            !style.contains("url(") && !style.contains("@import"),
            "{style}"
        );
        assert!(dom.contains(
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        ));
    }
}

/// How many distinct colours the PNG at `path` has, and whether it has
/// `rgb`: decoded by Python's zlib, since the tests have no image crate.
fn png_colours(path: &Path, rgb: [u8; 3]) -> (usize, bool) {
    const DECODE: &str = r#"
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat = 8, b""
while pos < len(data):
    (n,) = struct.unpack(">I", data[pos:pos + 4])
    kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
    pos += 12 + n
    if kind == b"IHDR":
        width, height, depth, colour = struct.unpack(">IIBB", body[:10])
    elif kind == b"IDAT":
        idat += body
assert depth == 8 and colour in (2, 6), (depth, colour)
bpp = 3 if colour == 2 else 4
raw, stride = zlib.decompress(idat), width * bpp
prev, colours, at = bytearray(stride), set(), 0
for _ in range(height):
    kind, row = raw[at], bytearray(raw[at + 1:at + 1 + stride])
    at += 1 + stride
    for x in range(stride):
        a = row[x - bpp] if x >= bpp else 0
        b = prev[x]
        c = prev[x - bpp] if x >= bpp else 0
        if kind == 1: row[x] = (row[x] + a) & 255
        elif kind == 2: row[x] = (row[x] + b) & 255
        elif kind == 3: row[x] = (row[x] + (a + b) // 2) & 255
        elif kind == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            row[x] = (row[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    colours.update(bytes(row[x:x + 3]) for x in range(0, stride, bpp))
    prev = row
wanted = bytes(int(v) for v in sys.argv[2:5])
print(len(colours), wanted in colours)
"#;
    let output = Command::new("python3")
        .args(["-c", DECODE])
        .arg(path)
        .args(rgb.map(|v| v.to_string()))
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let (count, found) = text.trim().split_once(' ').unwrap();
    (count.parse().unwrap(), found == "True")
}

#[test]
fn a_screenshot_of_the_report_is_not_blank() {
    let (run, _) = mixed();
    let png = run.dir.path().join("report.png");
    run_chromium(
        &run.report(),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,900",
            "--hide-scrollbars",
        ],
        Duration::from_secs(120),
    );
    let size = std::fs::metadata(&png).unwrap().len();
    // A blank page of that size compresses to a few KB.
    assert!(size > 20_000, "screenshot of {size} bytes");
    // The failed cases' red border (the style applied), and text.
    let (colours, red) = png_colours(&png, [0xcf, 0x22, 0x2e]);
    assert!(colours > 16, "{colours} colours");
    assert!(red, "no failure red in the screenshot");
}

#[test]
fn two_hundred_cases_of_megabyte_messages_make_a_small_report_that_opens() {
    // Each case sends a megabyte and gets it back; every other one then
    // fails comparing it, so the report quotes it in a diagnostic too.
    let cases: Vec<(String, String)> = (0..200)
        .map(|i| {
            let check = if i % 2 == 0 {
                "assert_eq(recv().len(), 1000000);"
            } else {
                "assert_eq(recv(), \"short\");"
            };
            let source =
                format!("let big = \"\";\nbig.pad(1000000, \"x\");\nsend(big);\n{check}\n");
            (format!("case{i:03}.rhai"), source)
        })
        .collect();
    let run = Run::new("fn on_message(msg) { msg }\n", &cases, &["--jobs", "4"]);
    let size = std::fs::metadata(run.report()).unwrap().len();
    assert!(size < 3_000_000, "a report of {size} bytes");
    let started = Instant::now();
    let dom = dump_dom(&run.report(), Duration::from_secs(120));
    eprintln!("dumped in {:?}", started.elapsed());
    assert_eq!(dom.matches("<tr class=\"case failed\">").count(), 100);
    assert_eq!(dom.matches("<tr class=\"case passed\">").count(), 100);
    // Messages and values are shown by their start and their length.
    assert!(dom.contains("x… (1000000 bytes)</td>"));
    assert!(dom.contains("x… (1000002 bytes in all)"));
}

/// Every third conversation gets markup instead of its echo, and the
/// client throws what it got: failures grouped by a peer's text.
const LOAD_SERVER: &str = r#"
fn on_message(msg) {
    if shared_add("seen", 1) % 3 == 0 {
        return "<script>alert(1)</script>";
    }
    msg
}
"#;
const LOAD_CLIENT: &str =
    "send(\"ping\");\nlet reply = recv();\nif reply != \"ping\" { throw reply; }\n";

/// The load run, its report and the DOM Chromium built from it.
fn load_run() -> &'static (tempfile::TempDir, String) {
    static LOAD: OnceLock<(tempfile::TempDir, String)> = OnceLock::new();
    LOAD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let server_script = dir.path().join("server.rhai");
        std::fs::write(&server_script, LOAD_SERVER).unwrap();
        let client = dir.path().join("client.rhai");
        std::fs::write(&client, LOAD_CLIENT).unwrap();
        let server = Running::server(&[server_script.to_str().unwrap(), "-q"]);
        let report = dir.path().join("load.html");
        tcpscript()
            .arg("client")
            .arg(&client)
            .args(["--connect", &server.addr()])
            .args(["--concurrency", "2", "--duration", "2500ms", "--html"])
            .arg(&report)
            .assert()
            .code(3);
        let dom = dump_dom(&report, Duration::from_secs(120));
        (dir, dom)
    })
}

/// The `<figure>` of the chart `id`.
fn figure<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<figure class=\"chart\" id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no chart {id} in {dom}"));
    let end = start + dom[start..].find("</figure>").unwrap();
    &dom[start..end]
}

#[test]
fn a_load_report_has_three_svg_charts_with_axes_units_and_legends() {
    let dom = &load_run().1;
    let ticks =
        Regex::new(r#"<text x="[\d.]+" y="[\d.]+" text-anchor="(end|middle)">[\d.%]+</text>"#)
            .unwrap();
    for (id, x_label, y_label, legend) in [
        (
            "throughput",
            "seconds since the start",
            "per second",
            &["conversations/s", "failures/s"][..],
        ),
        (
            "latency",
            "seconds since the start",
            "latency (ms)",
            &["p50", "p90", "p99"][..],
        ),
        (
            "distribution",
            "percentile",
            "latency (ms)",
            &["latency"][..],
        ),
    ] {
        let chart = figure(dom, id);
        assert_eq!(chart.matches("<svg ").count(), 1, "{chart}");
        assert!(chart.contains("<g class=\"axis x\""), "{chart}");
        assert!(chart.contains("<g class=\"axis y\""), "{chart}");
        assert!(chart.contains(&format!(">{x_label}</text>")), "{chart}");
        assert!(chart.contains(&format!(">{y_label}</text>")), "{chart}");
        // Two labelled ticks or more on each axis.
        assert!(ticks.find_iter(chart).count() >= 4, "{chart}");
        for name in legend {
            assert!(
                chart.contains(&format!(
                    "<polyline class=\"series\" data-series=\"{name}\""
                )),
                "no {name} line in {chart}"
            );
            assert!(
                chart.contains(&format!(">{name}</text>")),
                "no {name} legend in {chart}"
            );
        }
    }
    // The run lasted 2.5 s: throughput has a point for each of its seconds.
    let throughput = figure(dom, "throughput");
    let points = Regex::new(r#"data-series="conversations/s"[^>]*points="([^"]*)""#).unwrap();
    let points = &points.captures(throughput).unwrap()[1];
    assert!(points.split(' ').count() >= 2, "{points}");
}

#[test]
fn a_load_report_groups_failures_by_message_and_escapes_them() {
    let dom = &load_run().1;
    let failures = Regex::new(
        r#"<tr><td class="time">(\d+)</td><td class="time">[\d.]+%</td><td class="message">[^<]*&lt;script&gt;alert\(1\)&lt;/script&gt;[^<]*</td></tr>"#,
    )
    .unwrap();
    let rows: Vec<_> = failures.captures_iter(dom).collect();
    assert_eq!(rows.len(), 1, "{dom}");
    assert!(rows[0][1].parse::<u64>().unwrap() > 0);
    assert_eq!(dom.to_lowercase().matches("<script").count(), 0, "{dom}");
}

#[test]
fn a_screenshot_of_the_load_report_is_not_blank() {
    let dir = &load_run().0;
    let png = dir.path().join("load.png");
    run_chromium(
        &dir.path().join("load.html"),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1000,900",
            "--hide-scrollbars",
        ],
        Duration::from_secs(120),
    );
    let size = std::fs::metadata(&png).unwrap().len();
    assert!(size > 20_000, "screenshot of {size} bytes");
    // The conversations/s line's blue: a chart was drawn.
    let (colours, blue) = png_colours(&png, [0x09, 0x69, 0xda]);
    assert!(colours > 16, "{colours} colours");
    assert!(blue, "no chart line in the screenshot");
}

#[test]
fn a_load_report_needs_a_load_run_that_stops() {
    let dir = tempfile::tempdir().unwrap();
    let client = dir.path().join("client.rhai");
    std::fs::write(&client, LOAD_CLIENT).unwrap();
    let report = dir.path().join("load.html");
    tcpscript()
        .arg("client")
        .arg(&client)
        .arg("--html")
        .arg(&report)
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "load mode needs --duration, --iterations or --stages",
        ));
    assert!(!report.exists());
}
