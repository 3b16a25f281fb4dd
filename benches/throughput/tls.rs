//! The `tls` section: echo and load mode over rustls (ring), against a
//! tokio-rustls floor (in `floor.rs`); and its tables.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::echo::{EchoRun, measure_echo};
use crate::load::LOAD_USERS;
use crate::loadgen::STALL_LIMIT;
use crate::measure::median;
use crate::report::{Verdict, spread, thousands, times};
use crate::run::Context;
use crate::servers::{Kind, Server, tcpscript};

/// Connections of the TLS echo run.
const TLS_CONNECTIONS: usize = 50;

/// The floor's self-signed certificate and key, in the temp dir.
pub(crate) const FLOOR_CERT: &str = "floor_cert.pem";
pub(crate) const FLOOR_KEY: &str = "floor_key.pem";
/// Where `tcpscript server --tls` writes its throwaway CA.
pub(crate) const TCPSCRIPT_CA: &str = "ca.pem";

/// A self-signed certificate for the floor, for `localhost` and 127.0.0.1
/// (the name load mode verifies when connecting to 127.0.0.1).
fn write_floor_identity(context: &Context) -> Result<(), String> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| format!("rcgen: {e}"))?;
    fs::write(context.path(FLOOR_CERT), made.cert.pem()).map_err(|e| e.to_string())?;
    fs::write(context.path(FLOOR_KEY), made.signing_key.serialize_pem())
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A connector trusting the certificates in `pem` (a CA, or the floor's
/// self-signed certificate), sharing one ClientConfig (and its session cache).
fn tls_connector(pem: &Path) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pem).map_err(|e| format!("{}: {e}", pem.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", pem.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", pem.display()))?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

type TlsClientStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect_tls(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<TlsClientStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
    connector.connect(name, stream).await
}

/// Opens `n` TLS connections at once, each handshaken.
async fn connect_many_tls(
    addr: SocketAddr,
    n: usize,
    connector: tokio_rustls::TlsConnector,
) -> (Vec<TlsClientStream>, Vec<String>) {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let connector = connector.clone();
        set.spawn(async move {
            tokio::time::timeout(STALL_LIMIT, connect_tls(addr, &connector))
                .await
                .map_err(|_| "TLS connect timed out".to_string())?
                .map_err(|e| format!("TLS connect: {e}"))
        });
    }
    let mut streams = Vec::with_capacity(n);
    let mut errors = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(stream)) => streams.push(stream),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("task: {e}")),
        }
    }
    (streams, errors)
}

/// The TLS reference for load mode: LOAD_USERS tasks, each connecting,
/// handshaking, sending one line, reading the echo and closing (close_notify
/// and FIN), in a loop, for `time`.
fn tokio_rustls_connect_loop(
    context: &Context,
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    time: Duration,
) -> (u64, u64, f64) {
    context.runtime.block_on(async {
        let started = Instant::now();
        let deadline = started + time;
        let mut tasks = Vec::new();
        for _ in 0..LOAD_USERS {
            let connector = connector.clone();
            tasks.push(tokio::spawn(async move {
                let (mut done, mut errors) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let once = async {
                        let mut stream = connect_tls(addr, &connector).await?;
                        stream.write_all(b"ping\n").await?;
                        stream.flush().await?;
                        let mut reply = [0u8; 5];
                        stream.read_exact(&mut reply).await?;
                        let _ = stream.shutdown().await;
                        Ok::<_, std::io::Error>(reply == *b"ping\n")
                    };
                    match once.await {
                        Ok(true) => done += 1,
                        _ => errors += 1,
                    }
                }
                (done, errors)
            }));
        }
        let (mut done, mut errors) = (0, 0);
        for task in tasks {
            if let Ok((d, e)) = task.await {
                done += d;
                errors += e;
            }
        }
        (done, errors, started.elapsed().as_secs_f64())
    })
}

pub(crate) struct TlsResults {
    /// Totals over the rounds of the echo runs.
    floor: EchoRun,
    ours: EchoRun,
    /// Per round: tcpscript's (round trips/s, CPU per message) over the floor's.
    echo_ratios: Vec<(f64, f64)>,
    /// Per round: (tcpscript load mode conversations/s, tokio-rustls loop's).
    load_rounds: Vec<(f64, f64)>,
    load_failed: u64,
    loop_errors: u64,
}

pub(crate) fn tls_section(config: &Config, context: &Context) -> Result<TlsResults, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    write_floor_identity(context)?;
    eprintln!(
        "== tls: ping-pong of 32-byte lines over {TLS_CONNECTIONS} TLS connections, {} s measured per run after {} ms warm-up, {} round(s), servers alternating",
        config.echo_time.as_secs_f64(),
        config.echo_warmup.as_millis(),
        config.echo_rounds
    );
    let servers = [
        Server::start(Kind::FloorTls, context)?,
        Server::start(Kind::TcpscriptTls, context)?,
    ];
    eprintln!(
        "  pids: {} {}, {} {}",
        servers[0].kind.name(),
        servers[0].pid(),
        servers[1].kind.name(),
        servers[1].pid()
    );
    let connectors = [
        tls_connector(&context.path(FLOOR_CERT))?,
        tls_connector(&context.path(TCPSCRIPT_CA))?,
    ];
    let mut results = TlsResults {
        floor: EchoRun::empty(),
        ours: EchoRun::empty(),
        echo_ratios: Vec::new(),
        load_rounds: Vec::new(),
        load_failed: 0,
        loop_errors: 0,
    };
    for round in 0..config.echo_rounds {
        let mut this_round: [Option<EchoRun>; 2] = [None, None];
        for i in 0..servers.len() {
            let index = (i + round) % servers.len();
            let server = &servers[index];
            let (streams, errors) = context.runtime.block_on(connect_many_tls(
                server.addr,
                TLS_CONNECTIONS,
                connectors[index].clone(),
            ));
            let run = measure_echo(
                context,
                server,
                streams,
                errors,
                config.echo_warmup,
                config.echo_time,
            )?;
            eprintln!(
                "  {TLS_CONNECTIONS:>3} conn  round {}  {:<20} {:>9} rt/s  p50 {:>8.1} us  p99 {:>8.1} us  server cpu {:>6.2} us/msg  load gen {:>6.2} us/msg  errors {}",
                round + 1,
                server.kind.name(),
                thousands(run.per_second()),
                run.p50_us(),
                run.p99_us(),
                run.cpu_per_message_us(),
                run.loadgen_cpu_per_message_us(),
                run.errors,
            );
            if let Some(e) = &run.first_error {
                eprintln!("      first error: {e}");
            }
            this_round[index] = Some(run);
        }
        let [Some(floor), Some(ours)] = this_round else {
            unreachable!("both servers ran");
        };
        results.echo_ratios.push((
            ours.per_second() / floor.per_second().max(1e-9),
            ours.cpu_per_message_us() / floor.cpu_per_message_us().max(1e-9),
        ));
        results.floor.add(&floor);
        results.ours.add(&ours);
    }
    let [floor, ours] = servers;
    let stderr = ours.stop();
    let noted = stderr
        .lines()
        .filter(|l| !l.starts_with("tls fingerprint") && !l.trim().is_empty())
        .filter(|l| !l.starts_with("shut down:") || !l.ends_with(" 0 errors"))
        .collect::<Vec<_>>();
    if !noted.is_empty() {
        eprintln!(
            "  {} said on stderr: {}",
            Kind::TcpscriptTls.name(),
            noted.join(" | ")
        );
    }

    let rounds = if config.quick { 1 } else { 3 };
    let time = Duration::from_millis(if config.quick { 1000 } else { 2000 });
    eprintln!(
        "== tls load: {LOAD_USERS} users, one-exchange echo conversations over TLS against the TLS floor, {rounds} round(s) of {:.1} s, alternating",
        time.as_secs_f64()
    );
    for round in 0..rounds {
        let output = Command::new(tcpscript())
            .arg("client")
            .arg(context.path("load.rhai"))
            .args(["--connect", &floor.addr.to_string(), "--json", "--tls"])
            .arg("--tls-ca")
            .arg(context.path(FLOOR_CERT))
            .args(["--concurrency", &LOAD_USERS.to_string()])
            .args(["--duration", &format!("{}ms", time.as_millis())])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("tcpscript client --tls --concurrency: {e}"))?;
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("TLS load mode printed no JSON summary: {e}"))?;
        let ours = summary["conversations_per_second"].as_f64().unwrap_or(0.0);
        results.load_failed += summary["failed"].as_u64().unwrap_or(0);
        let (done, errors, seconds) =
            tokio_rustls_connect_loop(context, floor.addr, &connectors[0], time);
        results.loop_errors += errors;
        let reference = done as f64 / seconds.max(1e-9);
        eprintln!(
            "  round {}  tcpscript --tls {:>9}/s  tokio-rustls loop {:>9}/s  ratio {:.2}",
            round + 1,
            thousands(ours),
            thousands(reference),
            ours / reference.max(1e-9)
        );
        results.load_rounds.push((ours, reference));
    }
    drop(floor);
    eprintln!();
    Ok(results)
}

pub(crate) fn tls_table(
    out: &mut String,
    tls: &TlsResults,
    config: &Config,
    verdicts: &mut Vec<Verdict>,
) {
    let rate_ratio = median(tls.echo_ratios.iter().map(|r| r.0).collect());
    let cpu_ratio = median(tls.echo_ratios.iter().map(|r| r.1).collect());
    let _ = writeln!(
        out,
        "\n## TLS echo ping-pong ({TLS_CONNECTIONS} connections, 32-byte lines, rustls with ring on both sides, {} round(s) x {} s per server, alternating)\n",
        tls.echo_ratios.len(),
        config.echo_time.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| server               | round trips/s | vs floor | p50 us  | p99 us   | errors | server CPU us/msg | vs floor | load gen CPU us/msg |"
    );
    let _ = writeln!(
        out,
        "|----------------------|--------------:|---------:|--------:|---------:|-------:|------------------:|---------:|--------------------:|"
    );
    for (kind, run, rate, cpu) in [
        (Kind::FloorTls, &tls.floor, 1.0, 1.0),
        (Kind::TcpscriptTls, &tls.ours, rate_ratio, cpu_ratio),
    ] {
        let _ = writeln!(
            out,
            "| {:<20} | {:>13} | {:>8} | {:>7.1} | {:>8.1} | {:>6} | {:>17.2} | {:>8} | {:>19.2} |",
            kind.name(),
            thousands(run.per_second()),
            times(rate),
            run.p50_us(),
            run.p99_us(),
            run.errors,
            run.cpu_per_message_us(),
            times(cpu),
            run.loadgen_cpu_per_message_us(),
        );
    }
    for (kind, run) in [
        (Kind::FloorTls, &tls.floor),
        (Kind::TcpscriptTls, &tls.ours),
    ] {
        if let Some(e) = &run.first_error {
            let _ = writeln!(out, "first error, {}: {e}", kind.name());
        }
    }
    if !tls.echo_ratios.is_empty() {
        let _ = writeln!(
            out,
            "\n\"vs floor\" is the median over the rounds; lowest..highest round: round trips/s {}, server CPU/msg {}",
            spread(&tls.echo_ratios.iter().map(|r| r.0).collect::<Vec<_>>()),
            spread(&tls.echo_ratios.iter().map(|r| r.1).collect::<Vec<_>>()),
        );
        verdicts.push(Verdict {
            row: 9,
            measured: format!(
                "{}/s vs {}/s, {:.2}x floor, {} errors",
                thousands(tls.ours.per_second()),
                thousands(tls.floor.per_second()),
                rate_ratio,
                tls.ours.errors
            ),
            pass: rate_ratio >= 0.9 && tls.ours.errors == 0,
        });
        verdicts.push(Verdict {
            row: 10,
            measured: format!(
                "{:.2} us vs {:.2} us, {:.2}x floor",
                tls.ours.cpu_per_message_us(),
                tls.floor.cpu_per_message_us(),
                cpu_ratio
            ),
            pass: cpu_ratio <= 1.2,
        });
    }

    if tls.load_rounds.is_empty() {
        return;
    }
    let ours = median(tls.load_rounds.iter().map(|r| r.0).collect());
    let reference = median(tls.load_rounds.iter().map(|r| r.1).collect());
    let ratio = median(
        tls.load_rounds
            .iter()
            .map(|r| r.0 / r.1.max(1e-9))
            .collect(),
    );
    let _ = writeln!(
        out,
        "\n## TLS load mode: {LOAD_USERS} users, one-exchange echo conversations (connect, handshake, send, receive, close), against the TLS floor (median of {} round(s))\n",
        tls.load_rounds.len()
    );
    let _ = writeln!(out, "| {:<46} | conversations/s | failures |", "client");
    let _ = writeln!(out, "|{}|----------------:|---------:|", "-".repeat(48));
    let _ = writeln!(
        out,
        "| {:<46} | {:>15} | {:>8} |",
        format!("tcpscript client --tls --concurrency {LOAD_USERS}"),
        thousands(ours),
        tls.load_failed
    );
    let _ = writeln!(
        out,
        "| {:<46} | {:>15} | {:>8} |",
        "tokio-rustls connect/handshake/echo/close loop",
        thousands(reference),
        tls.loop_errors
    );
    verdicts.push(Verdict {
        row: 11,
        measured: format!(
            "{}/s vs {}/s = {:.2}x",
            thousands(ours),
            thousands(reference),
            ratio
        ),
        pass: ratio >= 0.8 && tls.load_failed == 0,
    });
}
