//! `compare`: two or more HTTP paths (typically the same gateway build under
//! different configurations) loaded in interleaved rounds, each compared
//! with the first, the baseline, paired per round.
//!
//! - Closed loop (`--concurrency N`): throughput, e.g. drift monitoring on
//!   vs off.
//! - Open loop at a share of capacity (`--load 0.5`): the baseline's
//!   closed-loop capacity is measured first (at `--capacity-concurrency`,
//!   every path's capacity is shown), then every path is loaded at
//!   `load × baseline capacity` requests per second and its latency
//!   compared, e.g. a champion with and without shadow challengers.
//!
//! With `--admin NAME=URL` (a deployment's `/admin/deployments/<name>`), the
//! challengers' mirror counters (mirrored, dropped, errors, timeouts) and the
//! prediction log's drops are read before and after every run and the
//! differences reported.
//!
//! With `--idle-load NAME=THREADS`, path NAME's runs (not its capacity
//! measurement) have THREADS busy threads at the operating system's idle
//! priority running beside them, in this process: a reference for what any
//! idle-priority work (such as shadow challengers' inference) costs the
//! request path on this machine, whoever does it. Its ratio is shown as a
//! reference, not judged against the targets.
//!
//! With `--pid NAME=PID` (the process serving path NAME), the CPU time that
//! process and the whole machine spent over each measured window is read
//! from `/proc` and reported per request: a cost that moves far less with
//! the machine's phase than throughput does.
//!
//! On a small shared machine throughput drifts from minute to minute, so the
//! order of the paths alternates from round to round and ratios are taken
//! within a round.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http_body_util::Full;
use serde::Serialize;
use serde_json::Value;

use crate::cpu::{CpuUse, Meter};
use crate::http::{self, Target, Window};
use crate::report::{Report, Setup};
use crate::table::{spread, stats, verdict};

#[derive(clap::Args)]
pub struct Args {
    /// A path as "NAME=URL" (repeat; at least two). The first is the baseline.
    #[arg(long = "path", required = true)]
    paths: Vec<String>,
    /// A path's deployment admin URL as "NAME=URL"
    /// (http://HOST/admin/deployments/<deployment>): mirror and
    /// prediction-log counters are read around every run.
    #[arg(long = "admin")]
    admin: Vec<String>,
    /// "NAME=PID": the process serving path NAME; its CPU time and the
    /// machine's over each measured window are reported per request.
    #[arg(long = "pid")]
    pids: Vec<String>,
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
    /// Closed loop: this many connections, one request outstanding on each.
    #[arg(long, conflicts_with_all = ["load", "rate"], required_unless_present_any = ["load", "rate"])]
    concurrency: Option<usize>,
    /// Open loop at this share of the baseline's measured capacity.
    #[arg(long, conflicts_with = "rate")]
    load: Option<f64>,
    /// Open loop at this many requests per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Connections of the closed-loop capacity measurement (`--load`).
    #[arg(long, default_value_t = 32)]
    capacity_concurrency: usize,
    /// The path whose capacity `--load` refers to (default: the baseline).
    #[arg(long)]
    capacity_of: Option<String>,
    /// Open loop: most requests outstanding at once.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Interleaved rounds (each path once per round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per run (after the warm-up).
    #[arg(long, default_value_t = 4.0)]
    duration: f64,
    /// Unmeasured seconds of load before each run.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Per-request timeout in seconds (a timeout is a failure).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// "NAME=THREADS": while path NAME is measured, THREADS threads spin at
    /// idle priority in this process (a reference path; repeat the same
    /// URL under another name to have it with and without).
    #[arg(long = "idle-load")]
    idle_load: Vec<String>,
    /// Target: every path's throughput at least this share of the baseline's.
    #[arg(long)]
    min_throughput_ratio: Option<f64>,
    /// Target: every path's p99 at most this multiple of the baseline's.
    #[arg(long)]
    max_p99_ratio: Option<f64>,
    /// Heading of the markdown section.
    #[arg(long)]
    title: Option<String>,
    /// Write every run's result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the markdown section here (it is printed too).
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// Differences of a deployment's admin counters over one run.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Requests mirrored to challengers (summed over challengers).
    pub mirrored: u64,
    /// Mirrored requests dropped because a challenger's queue was full.
    pub dropped: u64,
    /// Mirrored requests that failed or timed out.
    pub failed: u64,
    /// Mirrored requests a challenger answered in time.
    pub completed: u64,
    /// Prediction-log records dropped (its queue was full).
    pub log_dropped: u64,
}

impl Counters {
    /// The counters of an admin deployment document.
    pub fn read(doc: &Value) -> Counters {
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        let mut c = Counters {
            log_dropped: n(&doc["prediction_log"]["dropped"]),
            ..Counters::default()
        };
        for ch in doc["challengers"].as_array().into_iter().flatten() {
            let s = &ch["stats"];
            c.mirrored += n(&s["mirrored"]);
            c.dropped += n(&s["dropped"]);
            c.failed += n(&s["errors"]) + n(&s["timeouts"]);
            c.completed += n(&s["completed"]);
        }
        c
    }

    /// `self − before` (counters only grow; a restart would reset them).
    pub fn since(self, before: Counters) -> Counters {
        Counters {
            mirrored: self.mirrored.saturating_sub(before.mirrored),
            dropped: self.dropped.saturating_sub(before.dropped),
            failed: self.failed.saturating_sub(before.failed),
            completed: self.completed.saturating_sub(before.completed),
            log_dropped: self.log_dropped.saturating_sub(before.log_dropped),
        }
    }

    fn add(&mut self, o: Counters) {
        self.mirrored += o.mirrored;
        self.dropped += o.dropped;
        self.failed += o.failed;
        self.completed += o.completed;
        self.log_dropped += o.log_dropped;
    }
}

/// One path: its name, load target and optional admin URL.
struct Path {
    name: String,
    target: Arc<Target>,
    admin: Option<String>,
    /// Idle-priority busy threads running while it is measured.
    idle_load: usize,
    /// The process serving it, whose CPU time is metered.
    pid: Option<u32>,
}

/// Threads spinning at idle priority (Linux `SCHED_IDLE`) until dropped:
/// CPU work that only ever runs when nothing else wants the CPU.
struct IdleLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl IdleLoad {
    fn start(n: usize) -> anyhow::Result<IdleLoad> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = IdleLoad {
            stop: Arc::clone(&stop),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let stop = Arc::clone(&stop);
            let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
            let t = std::thread::Builder::new()
                .name(format!("idle-load-{i}"))
                .spawn(move || {
                    let lowered = lower_to_idle();
                    let ok = lowered.is_ok();
                    let _ = ready_tx.send(lowered);
                    if !ok {
                        return;
                    }
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
                .context("starting an idle-load thread")?;
            load.threads.push(t);
            ready
                .recv()
                .context("idle-load thread")?
                .context("moving an idle-load thread to idle priority")?;
        }
        Ok(load)
    }
}

impl Drop for IdleLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The calling thread at the idle priority the gateway gives its mirror
/// workers (the same function).
fn lower_to_idle() -> anyhow::Result<()> {
    contender::runtime::lower_to_idle_priority().map_err(anyhow::Error::msg)
}

#[derive(Serialize)]
struct Run {
    path: String,
    round: usize,
    report: Report,
    counters: Option<Counters>,
    cpu: Option<CpuUse>,
}

#[derive(Serialize)]
struct Output {
    mode: String,
    rate: Option<f64>,
    capacity: BTreeMap<String, Report>,
    runs: Vec<Run>,
}

fn split_named(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    let (name, url) = s
        .split_once('=')
        .with_context(|| format!("{what} {s:?} is not NAME=URL"))?;
    ensure!(!name.is_empty(), "{what} {s:?} has no name");
    Ok((name.to_owned(), url.to_owned()))
}

/// The `NAME=VALUE` options `values` of `flag`, by name, each value read by
/// `parse(name, value)`.
fn by_name<T>(
    values: &[String],
    flag: &str,
    parse: impl Fn(&str, String) -> anyhow::Result<T>,
) -> anyhow::Result<BTreeMap<String, T>> {
    let mut out = BTreeMap::new();
    for v in values {
        let (name, value) = split_named(v, flag)?;
        let value = parse(&name, value)?;
        out.insert(name, value);
    }
    Ok(out)
}

/// The process id of `--pid NAME=PID`.
fn pid_of(name: &str, pid: String) -> anyhow::Result<u32> {
    pid.parse()
        .with_context(|| format!("--pid {name}={pid}: PID must be a process id"))
}

/// Fails when a `flag` option is left over: its name is no `--path`'s.
fn all_taken<T>(left: &BTreeMap<String, T>, flag: &str) -> anyhow::Result<()> {
    match left.keys().next() {
        Some(name) => bail!("{flag} {name}=… names no --path"),
        None => Ok(()),
    }
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    ensure!(args.paths.len() >= 2, "give at least two --path NAME=URL");
    ensure!((1..=100).contains(&args.rounds), "--rounds must be 1..=100");
    ensure!((1..=64).contains(&args.threads), "--threads must be 1..=64");
    ensure!(
        args.timeout > 0.0 && args.timeout <= 600.0,
        "--timeout must be in (0, 600] seconds"
    );
    let bodies = match (&args.body, &args.holdout) {
        (Some(path), _) => {
            vec![Bytes::from(std::fs::read(path).with_context(|| {
                format!("reading the body file {}", path.display())
            })?)]
        }
        (None, Some(holdout)) => crate::body::holdout_bodies(holdout, &args.input)?,
        (None, None) => bail!("give --body or --holdout"),
    };
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut admin = by_name(&args.admin, "--admin", |_, url| {
        http::parse_url(&url)?;
        Ok(url)
    })?;
    let mut idle_load = by_name(&args.idle_load, "--idle-load", |name, n| {
        n.parse()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .with_context(|| format!("--idle-load {name}={n}: THREADS must be 1..=64"))
    })?;
    let mut pids = by_name(&args.pids, "--pid", pid_of)?;
    let mut paths = Vec::new();
    for p in &args.paths {
        let (name, url) = split_named(p, "--path")?;
        ensure!(
            paths.iter().all(|q: &Path| q.name != name),
            "path {name:?} given twice"
        );
        paths.push(Path {
            target: Arc::new(Target::json_bodies(&url, bodies.clone(), timeout)?),
            admin: admin.remove(&name),
            idle_load: idle_load.remove(&name).unwrap_or(0),
            pid: pids.remove(&name),
            name,
        });
    }
    all_taken(&admin, "--admin")?;
    all_taken(&idle_load, "--idle-load")?;
    all_taken(&pids, "--pid")?;
    ensure!(
        paths[0].idle_load == 0,
        "the baseline ({}) cannot have --idle-load",
        paths[0].name
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let admin_client = http::client::<Full<Bytes>>(1);

    // Open loop at a share of capacity: measure every path's capacity first.
    let mut capacity = BTreeMap::new();
    let rate = match (args.concurrency, args.load, args.rate) {
        (Some(n), _, _) => {
            ensure!((1..=10_000).contains(&n), "--concurrency must be 1..=10000");
            None
        }
        (None, Some(load), _) => {
            ensure!(load > 0.0 && load <= 2.0, "--load must be in (0, 2]");
            for p in &paths {
                println!(
                    "== capacity of {}: closed loop, {} connections",
                    p.name, args.capacity_concurrency
                );
                let r = http::capacity(
                    &rt,
                    &p.target,
                    args.capacity_concurrency,
                    args.warmup,
                    args.duration,
                )?;
                r.emit(None)?;
                capacity.insert(p.name.clone(), r);
            }
            let of = args.capacity_of.as_deref().unwrap_or(&paths[0].name);
            let base = capacity
                .get(of)
                .with_context(|| format!("--capacity-of {of:?} names no --path"))?
                .throughput_rps;
            ensure!(base > 0.0, "{of} answered nothing");
            Some(load * base)
        }
        (None, None, Some(rate)) => {
            ensure!(
                rate > 0.0 && rate <= 1e6,
                "--rate must be in (0, 1000000] requests/s"
            );
            Some(rate)
        }
        (None, None, None) => bail!("give --concurrency, --load or --rate"),
    };

    let mut runs = Vec::new();
    let mut failed = false;
    for round in 1..=args.rounds {
        // Alternate the order so neither path always runs first.
        let order: Vec<&Path> = if round % 2 == 1 {
            paths.iter().collect()
        } else {
            paths.iter().rev().collect()
        };
        for p in order {
            let mode = match rate {
                Some(r) => format!("open loop at {r:.0} req/s"),
                None => format!("closed loop, {} connections", args.concurrency.unwrap_or(0)),
            };
            println!("== round {round}: {} ({mode})", p.name);
            let before = match &p.admin {
                Some(url) => Some(Counters::read(
                    &rt.block_on(http::get_json(&admin_client, url))?,
                )),
                None => None,
            };
            let window = Window::new(args.warmup, args.duration)?;
            let idle = (p.idle_load > 0)
                .then(|| IdleLoad::start(p.idle_load))
                .transpose()?;
            let meter = p
                .pid
                .map(|pid| Meter::start(pid, window.measure_from, window.end))
                .transpose()?;
            let rec = match rate {
                Some(rate) => http::open_loop(&rt, &p.target, rate, args.max_in_flight, window),
                None => rt.block_on(http::closed_loop(
                    &p.target,
                    args.concurrency.unwrap_or(1),
                    window,
                )),
            };
            let setup = Setup {
                source: "http".into(),
                target: p.target.uri_string(),
                mode: if rate.is_some() { "open" } else { "closed" }.into(),
                concurrency: args.concurrency,
                rate,
                max_in_flight: rate.map(|_| args.max_in_flight),
                rows: args.rows,
                warmup_s: args.warmup,
                duration_s: args.duration,
            };
            drop(idle);
            let cpu = meter.map(Meter::finish).transpose()?;
            let report = rec.finish(setup, window.end - window.measure_from);
            if report.emit(None)? != ExitCode::SUCCESS {
                failed = true;
            }
            if let Some(c) = cpu {
                println!(
                    "  CPU per request: server {:.1} µs, machine {:.1} µs (steal {:.1} µs)",
                    per_request(c.process_s, &report),
                    per_request(c.machine_s, &report),
                    per_request(c.steal_s, &report),
                );
            }
            let counters = match (&p.admin, before) {
                (Some(url), Some(before)) => {
                    // Let the challengers' queues drain into the counters.
                    std::thread::sleep(Duration::from_millis(300));
                    let after = Counters::read(&rt.block_on(http::get_json(&admin_client, url))?);
                    let c = after.since(before);
                    println!(
                        "  challengers: {} mirrored, {} completed, {} dropped (queue full), {} failed; prediction log: {} dropped",
                        c.mirrored, c.completed, c.dropped, c.failed, c.log_dropped
                    );
                    Some(c)
                }
                _ => None,
            };
            runs.push(Run {
                path: p.name.clone(),
                round,
                report,
                counters,
                cpu,
            });
        }
    }
    drop(rt);

    let output = Output {
        mode: if rate.is_some() { "open" } else { "closed" }.into(),
        rate,
        capacity,
        runs,
    };
    let md = markdown(args, &paths, &output);
    println!("\n{md}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&output)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if failed {
        eprintln!("some runs had failed requests: see above");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Microseconds of CPU per request answered in the measured window.
fn per_request(seconds: f64, r: &Report) -> f64 {
    if r.requests == 0 {
        return 0.0;
    }
    seconds * 1e6 / r.requests as f64
}

/// Median over the runs of `name` of `f`, with the range.
fn over(runs: &[&Run], f: impl Fn(&Report) -> f64) -> (f64, f64, f64) {
    stats(runs.iter().map(|r| f(&r.report)).collect()).unwrap_or((0.0, 0.0, 0.0))
}

/// Per-round ratio `f(path run) / f(baseline run)`, median and range; a
/// round where either has no value is left out.
fn paired_by(
    runs: &[Run],
    path: &str,
    base: &str,
    f: impl Fn(&Run) -> Option<f64>,
) -> Option<(f64, f64, f64)> {
    stats(
        runs.iter()
            .filter(|r| r.path == path)
            .filter_map(|r| {
                let b = runs
                    .iter()
                    .find(|q| q.path == base && q.round == r.round)
                    .and_then(&f)?;
                let v = f(r)?;
                (b > 0.0).then(|| v / b)
            })
            .collect(),
    )
}

/// Per-round ratio `f(path) / f(baseline)` of a report figure.
fn paired(
    runs: &[Run],
    path: &str,
    base: &str,
    f: impl Fn(&Report) -> f64,
) -> Option<(f64, f64, f64)> {
    paired_by(runs, path, base, |r| Some(f(&r.report)))
}

/// Per-round ratio of the server's CPU per request, `path` to `base`.
fn paired_cpu(runs: &[Run], path: &str, base: &str) -> Option<(f64, f64, f64)> {
    paired_by(runs, path, base, |r| {
        r.cpu.map(|c| per_request(c.process_s, &r.report))
    })
}

/// A markdown table's head row and alignment row: the first column left,
/// the others right, and the last left too when `last_left`.
fn table_head(md: &mut String, titles: &[String], last_left: bool) {
    md.push('|');
    for t in titles {
        let _ = write!(md, " {t} |");
    }
    md.push('\n');
    md.push('|');
    for i in 0..titles.len() {
        let left = i == 0 || (last_left && i + 1 == titles.len());
        md.push_str(if left { " --- |" } else { " ---: |" });
    }
    md.push('\n');
}

fn markdown(args: &Args, paths: &[Path], out: &Output) -> String {
    let mut md = String::new();
    if let Some(t) = &args.title {
        let _ = writeln!(md, "{t}\n");
    }
    let base = &paths[0].name;
    match (out.rate, args.load) {
        (Some(rate), Some(load)) => {
            let of = args.capacity_of.as_deref().unwrap_or(base);
            let cap = out.capacity.get(of).map_or(0.0, |r| r.throughput_rps);
            let _ = writeln!(
                md,
                "Open loop at {rate:.0} req/s = {:.0} % of the capacity of *{of}* ({cap:.0} req/s: closed loop, {} connections, {} s), latency from the intended send time; at most {} requests in flight.",
                load * 100.0,
                args.capacity_concurrency,
                args.duration,
                args.max_in_flight
            );
        }
        (Some(rate), None) => {
            let _ = writeln!(
                md,
                "Open loop at {rate:.0} req/s, latency from the intended send time; at most {} requests in flight.",
                args.max_in_flight
            );
        }
        _ => {
            let _ = writeln!(
                md,
                "Closed loop, {} connections.",
                args.concurrency.unwrap_or(0)
            );
        }
    }
    let _ = writeln!(
        md,
        "{} interleaved rounds (order alternating), each run {} s measured after {} s warm-up; {}. Medians over rounds (range in brackets).\n",
        args.rounds,
        args.duration,
        args.warmup,
        match (&args.holdout, args.rows) {
            (Some(_), _) => "1-row requests rotating through the held-out rows".to_owned(),
            (None, Some(r)) => format!("{r} row(s) per request"),
            (None, None) => "one request body".to_owned(),
        }
    );
    let with_counters = out.runs.iter().any(|r| r.counters.is_some());
    let with_cpu = out.runs.iter().any(|r| r.cpu.is_some());
    let with_capacity = !out.capacity.is_empty();
    let mut titles = vec!["path".to_owned()];
    if with_capacity {
        titles.push(format!("capacity req/s (c{})", args.capacity_concurrency));
    }
    titles.extend(
        [
            "req/s",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "failed",
        ]
        .map(String::from),
    );
    if with_counters {
        titles.extend(
            [
                "mirrored",
                "mirror drops (queue full)",
                "mirror errors + timeouts",
                "prediction-log drops",
            ]
            .map(String::from),
        );
    }
    if with_cpu {
        titles
            .extend(["server CPU µs/req", "machine CPU µs/req", "steal µs/req"].map(String::from));
    }
    table_head(&mut md, &titles, false);
    for p in paths {
        let runs: Vec<&Run> = out.runs.iter().filter(|r| r.path == p.name).collect();
        if runs.is_empty() {
            continue;
        }
        let _ = write!(md, "| {} |", p.name);
        if with_capacity {
            let cap = out.capacity.get(&p.name).map_or(0.0, |r| r.throughput_rps);
            let _ = write!(md, " {cap:.0} |");
        }
        let _ = write!(
            md,
            " {} | {} | {:.0} | {} | {:.0} | {:.0} | {} |",
            spread(over(&runs, |r| r.throughput_rps), 0),
            spread(over(&runs, |r| r.latency_us.p50 as f64), 0),
            over(&runs, |r| r.latency_us.p90 as f64).0,
            spread(over(&runs, |r| r.latency_us.p99 as f64), 0),
            over(&runs, |r| r.latency_us.p999 as f64).0,
            over(&runs, |r| r.latency_us.max as f64).2,
            runs.iter().map(|r| r.report.error_total).sum::<u64>(),
        );
        if with_counters {
            let mut total = Counters::default();
            let mut any = false;
            for c in runs.iter().filter_map(|r| r.counters) {
                total.add(c);
                any = true;
            }
            if any {
                let _ = write!(
                    md,
                    " {} | {} | {} | {} |",
                    total.mirrored, total.dropped, total.failed, total.log_dropped
                );
            } else {
                md.push_str(" — | — | — | — |");
            }
        }
        if with_cpu {
            let cpu = |f: fn(&CpuUse) -> f64| {
                stats(
                    runs.iter()
                        .filter_map(|r| r.cpu.as_ref().map(|c| per_request(f(c), &r.report)))
                        .collect(),
                )
            };
            match cpu(|c| c.process_s) {
                Some(server) => {
                    let _ = write!(
                        md,
                        " {} | {} | {:.1} |",
                        spread(server, 1),
                        spread(cpu(|c| c.machine_s).unwrap_or_default(), 1),
                        cpu(|c| c.steal_s).unwrap_or_default().0,
                    );
                }
                None => md.push_str(" — | — | — |"),
            }
        }
        md.push('\n');
    }
    let cpu_paired = with_cpu && paths[0].pid.is_some();
    let mut titles = [
        "path ÷ baseline (paired per round)",
        "throughput",
        "p50",
        "p99",
        "p99.9",
    ]
    .map(String::from)
    .to_vec();
    if cpu_paired {
        titles.push("server CPU per request".into());
    }
    titles.push("target".into());
    md.push('\n');
    table_head(&mut md, &titles, true);
    for p in &paths[1..] {
        let ratio = |f: fn(&Report) -> f64| paired(&out.runs, &p.name, base, f);
        let fmt = |s: Option<(f64, f64, f64)>| s.map_or_else(|| "—".into(), |s| spread(s, 2));
        let thr = ratio(|r| r.throughput_rps);
        let p99 = ratio(|r| r.latency_us.p99 as f64);
        let mut targets = Vec::new();
        if p.idle_load > 0 {
            targets.push(format!(
                "reference: {} idle-priority busy thread(s) beside the gateway",
                p.idle_load
            ));
        } else if let (Some(min), Some(t)) = (args.min_throughput_ratio, thr) {
            targets.push(format!("throughput ≥ {min:.2}×: {}", verdict(t.0 >= min)));
        }
        if let (Some(max), Some(t), 0) = (args.max_p99_ratio, p99, p.idle_load) {
            targets.push(format!("p99 ≤ {max:.2}×: {}", verdict(t.0 <= max)));
        }
        let _ = write!(
            md,
            "| {} ÷ {base} | {}× | {}× | {}× | {}× |",
            p.name,
            fmt(thr),
            fmt(ratio(|r| r.latency_us.p50 as f64)),
            fmt(p99),
            fmt(ratio(|r| r.latency_us.p999 as f64)),
        );
        if cpu_paired {
            let _ = write!(
                md,
                " {} |",
                paired_cpu(&out.runs, &p.name, base)
                    .map_or_else(|| "—".into(), |s| format!("{}×", spread(s, 2)))
            );
        }
        let _ = writeln!(
            md,
            " {} |",
            if targets.is_empty() {
                "—".into()
            } else {
                targets.join("; ")
            },
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counters_sum_challengers_and_subtract() {
        let doc = json!({
            "prediction_log": {"rows": 10, "dropped": 3},
            "challengers": [
                {"stats": {"mirrored": 10, "dropped": 2, "errors": 1, "timeouts": 1, "completed": 6}},
                {"stats": {"mirrored": 5, "dropped": 0, "errors": 0, "timeouts": 0, "completed": 5}},
            ],
        });
        let c = Counters::read(&doc);
        assert_eq!(
            c,
            Counters {
                mirrored: 15,
                dropped: 2,
                failed: 2,
                completed: 11,
                log_dropped: 3
            }
        );
        let d = c.since(Counters {
            mirrored: 5,
            ..Counters::default()
        });
        assert_eq!(d.mirrored, 10);
        assert_eq!(Counters::read(&json!({})), Counters::default());
    }

    /// The scheduling policy (field 41 of `/proc/self/task/TID/stat`) of
    /// this process's threads named `name`.
    #[cfg(target_os = "linux")]
    fn policies_of(name: &str) -> Vec<u32> {
        let mut policies = Vec::new();
        for task in std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .flatten()
        {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).expect("stat");
            // Fields after the command name, which ends at the last ')'.
            let after = &stat[stat.rfind(')').expect("comm") + 2..];
            let policy = after.split(' ').nth(38).expect("policy field");
            policies.push(policy.parse().expect("a number"));
        }
        policies
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn idle_load_spins_at_idle_priority_until_dropped() {
        const SCHED_IDLE: u32 = 5;
        let load = IdleLoad::start(2).expect("idle load starts");
        assert_eq!(load.threads.len(), 2);
        assert_eq!(policies_of("idle-load-0"), [SCHED_IDLE]);
        assert_eq!(policies_of("idle-load-1"), [SCHED_IDLE]);
        drop(load);
        assert!(policies_of("idle-load-0").is_empty(), "stopped and joined");
    }

    fn run_of(path: &str, round: usize, requests: u64, cpu_s: Option<f64>) -> Run {
        let report: Report = serde_json::from_value(json!({
            "setup": {"source": "http", "target": "t", "mode": "closed", "concurrency": 32,
                      "rate": null, "max_in_flight": null, "rows": 1,
                      "warmup_s": 1.0, "duration_s": 3.0},
            "measured_s": 3.0, "requests": requests, "throughput_rps": requests as f64 / 3.0,
            "latency_us": {"p50": 1, "p90": 1, "p99": 1, "p999": 1, "max": 1, "mean": 1.0},
            "errors": {}, "error_total": 0,
        }))
        .expect("a report");
        Run {
            path: path.into(),
            round,
            report,
            counters: None,
            cpu: cpu_s.map(|s| CpuUse {
                process_s: s,
                machine_s: 2.0 * s,
                steal_s: 0.0,
            }),
        }
    }

    #[test]
    fn cpu_per_request_is_paired_by_round() {
        // 1 s of CPU over 100,000 requests: 10 µs a request.
        let base = run_of("floor", 1, 100_000, Some(1.0));
        assert!((per_request(1.0, &base.report) - 10.0).abs() < 1e-9);
        assert_eq!(per_request(1.0, &run_of("x", 1, 0, None).report), 0.0);
        let runs = vec![
            base,
            run_of("gateway", 1, 50_000, Some(1.0)), // 20 µs: 2×
            run_of("floor", 2, 100_000, Some(2.0)),  // 20 µs
            run_of("gateway", 2, 100_000, Some(3.0)), // 30 µs: 1.5×
            run_of("gateway", 3, 100_000, Some(3.0)), // no baseline in round 3
            run_of("floor", 4, 100_000, None),
            run_of("gateway", 4, 100_000, Some(3.0)), // no baseline CPU
        ];
        let (median, lo, hi) = paired_cpu(&runs, "gateway", "floor").expect("two pairs");
        assert!(
            (lo - 1.5).abs() < 1e-9 && (hi - 2.0).abs() < 1e-9,
            "{lo} {hi}"
        );
        assert!((median - 1.75).abs() < 1e-9, "{median}");
        assert!(paired_cpu(&runs, "other", "floor").is_none());
    }

    #[test]
    fn names_split_at_the_first_equals_sign() {
        assert_eq!(
            split_named("a=http://x/?q=1", "--path").unwrap(),
            ("a".into(), "http://x/?q=1".into())
        );
        assert!(split_named("http://x", "--path").is_err());
        assert!(split_named("=http://x", "--path").is_err());
    }

    #[test]
    fn named_options_are_read_by_name_and_must_name_a_path() {
        let args = ["gateway=42".to_owned(), "floor=7".to_owned()];
        let mut pids = by_name(&args, "--pid", pid_of).expect("read");
        assert_eq!(pids.get("gateway"), Some(&42));
        assert_eq!(pids.get("floor"), Some(&7));
        let e = by_name(&["gateway=x".to_owned()], "--pid", pid_of).unwrap_err();
        assert!(
            format!("{e:#}").contains("--pid gateway=x: PID must be"),
            "{e:#}"
        );
        assert!(by_name(&["42".to_owned()], "--pid", pid_of).is_err());
        // Each path takes its own; one left over names no path.
        assert_eq!(pids.remove("gateway"), Some(42));
        let e = all_taken(&pids, "--pid").unwrap_err();
        assert_eq!(e.to_string(), "--pid floor=… names no --path");
        pids.remove("floor");
        assert!(all_taken(&pids, "--pid").is_ok());
    }
}
