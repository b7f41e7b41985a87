//! `swap`: latency and failures while a deployment's champion is swapped
//! under load.
//!
//! Open-loop load (latency from the intended send time) runs against a
//! deployment that has a shadow challenger, while the admin API promotes the
//! challenger and rolls it back in turn, every `--every` seconds. Each swap's
//! window is `[promote/rollback sent − W, answered + W]` (`W` =
//! `--window-ms`); requests due inside any window are the *swap window*
//! sample, the others the *steady state*. Every request must succeed, and
//! each answer names the one model version that produced it (counted per
//! version). The rate is `--rate`, or `--load` × the closed-loop capacity
//! measured first on the same deployment.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Method;
use serde::Serialize;
use serde_json::json;

use crate::http::{self, Answer, Target, Window};
use crate::report::{Recorder, Report, Setup};

#[derive(clap::Args)]
pub struct Args {
    /// Inference URL of the deployment (…/v2/models/<deployment>/infer).
    #[arg(long)]
    url: String,
    /// The deployment's admin URL (http://HOST/admin/deployments/<deployment>).
    #[arg(long)]
    admin: String,
    /// The challenger promoted and rolled back in turn, as MODEL@VERSION.
    #[arg(long)]
    promote: String,
    /// File whose bytes are the (JSON) request body.
    #[arg(long, required_unless_present = "holdout", conflicts_with = "holdout")]
    body: Option<PathBuf>,
    /// Instead of --body: 1-row requests rotating through these held-out rows.
    #[arg(long)]
    holdout: Option<PathBuf>,
    /// Name of the model input (with --holdout).
    #[arg(long, default_value = "input")]
    input: String,
    /// Rows per request (informational).
    #[arg(long)]
    rows: Option<usize>,
    /// Open loop at this share of the closed-loop capacity measured first
    /// (default 0.5 when --rate is not given).
    #[arg(long, conflicts_with = "rate")]
    load: Option<f64>,
    /// Open loop at this many requests per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Connections of the capacity measurement.
    #[arg(long, default_value_t = 32)]
    capacity_concurrency: usize,
    /// Measured seconds of the capacity measurement.
    #[arg(long, default_value_t = 3.0)]
    capacity_duration: f64,
    /// Seconds between two swaps.
    #[arg(long, default_value_t = 2.0)]
    every: f64,
    /// Half-width of a swap window, milliseconds.
    #[arg(long, default_value_t = 250)]
    window_ms: u64,
    /// Measured seconds (swaps happen inside them).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Unmeasured seconds of load before.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Open loop: most requests outstanding at once.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Per-request timeout in seconds (a timeout is a failure).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Heading of the markdown section.
    #[arg(long)]
    title: Option<String>,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the markdown section here (it is printed too).
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// One promotion or rollback through the admin API.
#[derive(Clone, Debug, Serialize)]
struct Swap {
    action: &'static str,
    /// Seconds from the start of the measured window.
    sent_s: f64,
    took_ms: f64,
    status: u16,
    /// Champion after the call, as the answer names it.
    champion: Option<String>,
    error: Option<String>,
    #[serde(skip)]
    sent: Instant,
    #[serde(skip)]
    answered: Instant,
}

/// Every answer of the run, kept to be split by time afterwards.
#[derive(Default)]
struct Samples {
    /// (intended send time, latency µs, index into `versions`).
    ok: Vec<(Instant, u64, usize)>,
    /// (intended send time, failure kind).
    failed: Vec<(Instant, String)>,
    /// "model@version" names seen in answers.
    versions: Vec<String>,
}

/// `"model_name":"…"` and `"model_version":"…"` of a V2 JSON answer, read
/// without parsing the whole body.
fn answered_by(body: &[u8]) -> String {
    let field = |key: &str| -> Option<&str> {
        let text = std::str::from_utf8(body).ok()?;
        let start = text.find(key)? + key.len();
        let rest = text[start..].trim_start().strip_prefix(':')?.trim_start();
        let rest = rest.strip_prefix('"')?;
        Some(&rest[..rest.find('"')?])
    };
    match (field("\"model_name\""), field("\"model_version\"")) {
        (Some(m), Some(v)) => format!("{m}@{v}"),
        _ => "?".into(),
    }
}

impl Samples {
    fn record(&mut self, intended: Instant, done: Instant, answer: Result<Answer, String>) {
        match answer {
            Ok(a) => {
                let who = answered_by(&a.body);
                let idx = match self.versions.iter().position(|v| *v == who) {
                    Some(i) => i,
                    None => {
                        self.versions.push(who);
                        self.versions.len() - 1
                    }
                };
                let us = u64::try_from((done - intended).as_micros()).unwrap_or(u64::MAX);
                self.ok.push((intended, us, idx));
            }
            Err(kind) => self.failed.push((intended, kind)),
        }
    }
}

#[derive(Serialize)]
struct Output {
    rate: f64,
    capacity: Option<Report>,
    steady: Report,
    swap_windows: Report,
    all: Report,
    swaps: Vec<Swap>,
    answers_by_version: BTreeMap<String, u64>,
    failed_in_windows: u64,
    failed_steady: u64,
    failed_outside_measurement: u64,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let (model, version) = args
        .promote
        .rsplit_once('@')
        .and_then(|(m, v)| Some((m.to_owned(), v.parse::<u64>().ok()?)))
        .context("--promote is MODEL@VERSION")?;
    ensure!((1..=64).contains(&args.threads), "--threads must be 1..=64");
    ensure!(
        args.every >= 0.5 && args.every <= 600.0,
        "--every must be in [0.5, 600] s"
    );
    ensure!(
        (args.window_ms as f64) * 2.0 < args.every * 1000.0,
        "--window-ms must be under half of --every"
    );
    ensure!(
        args.timeout > 0.0 && args.timeout <= 600.0,
        "--timeout must be in (0, 600] seconds"
    );
    http::parse_url(&args.admin)?;
    let bodies = match (&args.body, &args.holdout) {
        (Some(path), _) => {
            vec![Bytes::from(std::fs::read(path).with_context(|| {
                format!("reading the body file {}", path.display())
            })?)]
        }
        (None, Some(holdout)) => crate::body::holdout_bodies(holdout, &args.input)?,
        (None, None) => anyhow::bail!("give --body or --holdout"),
    };
    let target = Arc::new(Target::json_bodies(
        &args.url,
        bodies,
        Duration::from_secs_f64(args.timeout),
    )?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    let (rate, capacity) = match args.rate {
        Some(rate) => {
            ensure!(rate > 0.0 && rate <= 1e6, "--rate must be in (0, 1000000]");
            (rate, None)
        }
        None => {
            let load = args.load.unwrap_or(0.5);
            ensure!(load > 0.0 && load <= 2.0, "--load must be in (0, 2]");
            println!(
                "== capacity: closed loop, {} connections",
                args.capacity_concurrency
            );
            let cap = http::capacity(
                &rt,
                &target,
                args.capacity_concurrency,
                1.0,
                args.capacity_duration,
            )?;
            cap.emit(None)?;
            ensure!(cap.throughput_rps > 0.0, "the deployment answered nothing");
            (load * cap.throughput_rps, Some(cap))
        }
    };

    println!(
        "== open loop at {rate:.0} req/s for {} s (+{} s warm-up); promote {model}@{version} / roll back every {} s",
        args.duration, args.warmup, args.every
    );
    let window = Window::new(args.warmup, args.duration)?;
    let half = Duration::from_millis(args.window_ms);
    let swaps: Arc<Mutex<Vec<Swap>>> = Arc::default();
    let swapper = {
        let swaps = Arc::clone(&swaps);
        let admin = args.admin.trim_end_matches('/').to_owned();
        let every = Duration::from_secs_f64(args.every);
        let (model, version) = (model.clone(), version);
        rt.spawn(async move {
            let client = http::client::<Full<Bytes>>(1);
            let mut k: u32 = 0;
            loop {
                // The first swap half a period into the measurement; the
                // last one's window must end inside it.
                let at = window.measure_from + every / 2 + every * k;
                if at + half * 4 >= window.end {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let (action, body) = if k.is_multiple_of(2) {
                    (
                        "promote",
                        json!({"model": model, "version": version, "by": "contender-loadtest", "reason": "swap benchmark"}),
                    )
                } else {
                    (
                        "rollback",
                        json!({"by": "contender-loadtest", "reason": "swap benchmark"}),
                    )
                };
                let sent = Instant::now();
                let result = http::call_json(
                    &client,
                    Method::POST,
                    &format!("{admin}/{action}"),
                    Some(&body),
                    Duration::from_secs(30),
                )
                .await;
                let answered = Instant::now();
                let (status, champion, error) = match result {
                    Ok((status, doc)) => {
                        let champion = doc["champion"]["model"].as_str().map(|m| {
                            format!("{m}@{}", doc["champion"]["version"].as_u64().unwrap_or(0))
                        });
                        let error = (!status.is_success())
                            .then(|| doc["error"].as_str().unwrap_or("?").to_owned());
                        (status.as_u16(), champion, error)
                    }
                    Err(e) => (0, None, Some(e)),
                };
                swaps.lock().unwrap_or_else(|e| e.into_inner()).push(Swap {
                    action,
                    sent_s: sent.saturating_duration_since(window.measure_from).as_secs_f64(),
                    took_ms: (answered - sent).as_secs_f64() * 1000.0,
                    status,
                    champion,
                    error,
                    sent,
                    answered,
                });
                k += 1;
            }
            // Leave the deployment as it was: undo an odd promotion.
            if !k.is_multiple_of(2) {
                let _ = http::call_json(
                    &client,
                    Method::POST,
                    &format!("{admin}/rollback"),
                    Some(&json!({"by": "contender-loadtest", "reason": "swap benchmark: restore"})),
                    Duration::from_secs(30),
                )
                .await;
            }
        })
    };
    let samples: Arc<Mutex<Samples>> = Arc::default();
    let outcome = http::open_loop_with(
        &rt,
        &target,
        rate,
        args.max_in_flight,
        window,
        &samples,
        Samples::record,
    );
    if let Err(e) = rt.block_on(swapper) {
        anyhow::bail!("the swapping task failed: {e}");
    }
    drop(rt);

    let swaps = std::mem::take(&mut *swaps.lock().unwrap_or_else(|e| e.into_inner()));
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    let windows: Vec<(Instant, Instant)> = swaps
        .iter()
        .map(|s| (s.sent - half, s.answered + half))
        .collect();
    let in_window = |t: Instant| windows.iter().any(|&(a, b)| t >= a && t <= b);
    let (mut steady, mut swapping, mut all) = (Recorder::new(), Recorder::new(), Recorder::new());
    let mut by_version: BTreeMap<String, u64> = BTreeMap::new();
    for &(intended, us, v) in &samples.ok {
        if !window.measured(intended) {
            continue;
        }
        let d = Duration::from_micros(us);
        all.success(d);
        if in_window(intended) {
            swapping.success(d);
        } else {
            steady.success(d);
        }
        *by_version.entry(samples.versions[v].clone()).or_default() += 1;
    }
    let (mut failed_in, mut failed_steady, mut failed_out) = (0, 0, 0);
    for (intended, kind) in &samples.failed {
        all.error(kind.clone());
        if !window.measured(*intended) {
            failed_out += 1;
        } else if in_window(*intended) {
            swapping.error(kind.clone());
            failed_in += 1;
        } else {
            steady.error(kind.clone());
            failed_steady += 1;
        }
    }
    outcome.count_into(&mut all, args.max_in_flight);
    let measured = window.end - window.measure_from;
    let windowed: Duration = windows
        .iter()
        .map(|&(a, b)| b.min(window.end) - a.max(window.measure_from))
        .sum();
    let setup = |what: &str| Setup {
        source: "http".into(),
        target: format!("{} ({what})", args.url),
        mode: "open".into(),
        concurrency: None,
        rate: Some(rate),
        max_in_flight: Some(args.max_in_flight),
        rows: args.rows,
        warmup_s: args.warmup,
        duration_s: args.duration,
    };
    let output = Output {
        rate,
        capacity,
        steady: steady.finish(setup("steady state"), measured.saturating_sub(windowed)),
        swap_windows: swapping.finish(setup("swap windows"), windowed),
        all: all.finish(setup("all"), measured),
        swaps,
        answers_by_version: by_version,
        failed_in_windows: failed_in,
        failed_steady,
        failed_outside_measurement: failed_out,
    };
    output.all.emit(None)?;
    for s in &output.swaps {
        println!(
            "  {:>8} at {:6.2} s: {} in {:.1} ms{}",
            s.action,
            s.sent_s,
            s.status,
            s.took_ms,
            s.error
                .as_ref()
                .map_or_else(String::new, |e| format!(": {e}"))
        );
    }
    let md = markdown(args, &output, &format!("{model}@{version}"));
    println!("\n{md}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&output)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    let swaps_ok = output.swaps.iter().all(|s| s.error.is_none()) && !output.swaps.is_empty();
    Ok(if output.all.error_total == 0 && swaps_ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("failed requests or failed swaps: see above");
        ExitCode::FAILURE
    })
}

fn markdown(args: &Args, out: &Output, challenger: &str) -> String {
    let mut md = String::new();
    if let Some(t) = &args.title {
        let _ = writeln!(md, "{t}\n");
    }
    match &out.capacity {
        Some(cap) => {
            let _ = writeln!(
                md,
                "Open loop at {:.0} req/s = {:.0} % of the deployment's capacity ({:.0} req/s: closed loop, {} connections, {} s), latency from the intended send time.",
                out.rate,
                100.0 * out.rate / cap.throughput_rps,
                cap.throughput_rps,
                args.capacity_concurrency,
                args.capacity_duration
            );
        }
        None => {
            let _ = writeln!(
                md,
                "Open loop at {:.0} req/s, latency from the intended send time.",
                out.rate
            );
        }
    }
    let promotions = out.swaps.iter().filter(|s| s.action == "promote").count();
    let rollbacks = out.swaps.len() - promotions;
    let took: Vec<f64> = out.swaps.iter().map(|s| s.took_ms).collect();
    let took = crate::table::stats(took).unwrap_or((0.0, 0.0, 0.0));
    let failed_swaps = out.swaps.iter().filter(|s| s.error.is_some()).count();
    let _ = writeln!(
        md,
        "{} s measured after {} s warm-up; {} swaps through the admin API, one every {} s, alternating promote {challenger} ({promotions}) and roll back ({rollbacks}); each call took {:.1} ms median ({:.1}–{:.1}); failed swap calls: {failed_swaps}. A swap window is the call ±{} ms.\n",
        args.duration,
        args.warmup,
        out.swaps.len(),
        args.every,
        took.0,
        took.1,
        took.2,
        args.window_ms,
    );
    md.push_str("| period | time s | requests | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | failed |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (label, r, failed) in [
        ("steady state", &out.steady, out.failed_steady),
        ("swap windows", &out.swap_windows, out.failed_in_windows),
        ("all", &out.all, out.all.error_total),
    ] {
        let l = &r.latency_us;
        let _ = writeln!(
            md,
            "| {label} | {:.1} | {} | {} | {} | {} | {} | {} | {failed} |",
            r.measured_s, r.requests, l.p50, l.p90, l.p99, l.p999, l.max
        );
    }
    let ratio = |a: u64, b: u64| {
        if b == 0 {
            "—".to_owned()
        } else {
            format!("{:.2}×", a as f64 / b as f64)
        }
    };
    let s = &out.steady.latency_us;
    let w = &out.swap_windows.latency_us;
    let versions: Vec<String> = out
        .answers_by_version
        .iter()
        .map(|(v, n)| format!("{v}: {n}"))
        .collect();
    let _ = writeln!(
        md,
        "\nSwap windows ÷ steady state: p99 {}, p99.9 {}. Failed requests: {} (target 0: {}){}. Answers by model version: {}.",
        ratio(w.p99, s.p99),
        ratio(w.p999, s.p999),
        out.all.error_total,
        crate::table::verdict(out.all.error_total == 0),
        if out.failed_outside_measurement > 0 {
            format!(
                ", {} of them in the warm-up",
                out.failed_outside_measurement
            )
        } else {
            String::new()
        },
        versions.join(", ")
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answering_version_is_read_from_the_body() {
        let body = br#"{"model_name":"breast_cancer","model_version":"2","id":"x","outputs":[]}"#;
        assert_eq!(answered_by(body), "breast_cancer@2");
        let spaced = br#"{"model_name" : "m", "model_version": "10"}"#;
        assert_eq!(answered_by(spaced), "m@10");
        assert_eq!(answered_by(b"{}"), "?");
    }
}
