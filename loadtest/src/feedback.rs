//! `feedback`: label ingestion rate of `POST /v2/models/{deployment}/feedback`
//! with durability on (a 2xx means the labels are on disk).
//!
//! 1. Prepare: inference requests from the held-out rows (`--prepare-rows`
//!    rows each, offsets cycling) until `--labels` (request id, row) pairs
//!    exist; the ids come from the answers (`x-request-id`). With `--admin`,
//!    waits until the prediction log has written them.
//! 2. For each `--batch` size: closed-loop feedback posts, each label (the
//!    row's true class) used once, `--duration` seconds after a short
//!    warm-up. Size 1 posts single `{"id", "row", "label"}` objects;
//!    larger sizes post `{"labels": [...]}`. Reported: labels accepted per
//!    second, requests per second and their latency. Anything but
//!    `accepted` is reported (and fails the run).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::http::{self, Answer, Target, Window};
use crate::report::{Recorder, Report, Setup};

#[derive(clap::Args)]
pub struct Args {
    /// Inference URL of the deployment (…/v2/models/<deployment>/infer).
    #[arg(long)]
    infer_url: String,
    /// Feedback URL of the deployment (…/v2/models/<deployment>/feedback).
    #[arg(long)]
    feedback_url: String,
    /// The deployment's admin URL (http://HOST/admin/deployments/<deployment>):
    /// before measuring, wait until the prediction log has caught up.
    #[arg(long)]
    admin: Option<String>,
    /// Held-out samples (`features` rows and their `labels`).
    #[arg(long, default_value = "models/_data/breast_cancer_holdout.json")]
    holdout: PathBuf,
    /// Name of the model input.
    #[arg(long, default_value = "input")]
    input: String,
    /// (request id, row) pairs to prepare: the most labels the runs can post.
    #[arg(long, default_value_t = 200_000)]
    labels: usize,
    /// Rows per preparing inference request.
    #[arg(long, default_value_t = 10)]
    prepare_rows: usize,
    /// Connections of the preparing inference requests.
    #[arg(long, default_value_t = 8)]
    prepare_concurrency: usize,
    /// Labels per feedback request (repeat: one measurement each, in order).
    #[arg(long = "batch", default_values_t = [1, 100, 1000])]
    batches: Vec<usize>,
    /// Connections posting single labels.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Connections posting batches.
    #[arg(long, default_value_t = 4)]
    batch_concurrency: usize,
    /// Measured seconds per batch size (shorter if the labels run out).
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Unmeasured seconds before each measurement.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Per-request timeout in seconds (a timeout is a failure).
    #[arg(long, default_value_t = 30.0)]
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

#[derive(Deserialize)]
struct Holdout {
    features: Vec<Vec<f64>>,
    labels: Vec<Value>,
}

/// One label to post.
struct Label {
    id: Arc<str>,
    row: u32,
    label: Value,
}

/// Labels handed out once each, in order.
struct Pool {
    labels: Vec<Label>,
    next: AtomicUsize,
}

impl Pool {
    /// The next `n` labels (fewer at the end), or `None` when all are used.
    fn take(&self, n: usize) -> Option<&[Label]> {
        let start = self.next.fetch_add(n, Ordering::Relaxed);
        (start < self.labels.len()).then(|| &self.labels[start..(start + n).min(self.labels.len())])
    }
}

/// The feedback body for `labels`: one object for a single label, else a batch.
fn feedback_body(labels: &[Label], single: bool) -> Bytes {
    let item = |l: &Label| json!({"id": &*l.id, "row": l.row, "label": l.label});
    let doc = if single && labels.len() == 1 {
        item(&labels[0])
    } else {
        json!({ "labels": labels.iter().map(item).collect::<Vec<_>>() })
    };
    Bytes::from(serde_json::to_vec(&doc).expect("JSON values serialise"))
}

/// Labels accepted, and the other per-item statuses by name, of an answer.
fn tally(answer: &Answer, single: bool, sent: usize) -> (u64, BTreeMap<String, u64>) {
    let doc: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    let mut other = BTreeMap::new();
    if single {
        return match doc["status"].as_str() {
            Some("accepted") => (1, other),
            s => {
                other.insert(s.unwrap_or("unreadable answer").to_owned(), 1);
                (0, other)
            }
        };
    }
    let summary = &doc["summary"];
    let mut counted = 0;
    let mut accepted = 0;
    if let Some(map) = summary.as_object() {
        for (status, n) in map {
            let n = n.as_u64().unwrap_or(0);
            counted += n;
            if status == "accepted" {
                accepted = n;
            } else if n > 0 {
                other.insert(status.clone(), n);
            }
        }
    }
    let missing = (sent as u64).saturating_sub(counted);
    if missing > 0 {
        other.insert("missing from the answer".into(), missing);
    }
    (accepted, other)
}

#[derive(Default)]
struct PhaseState {
    rec: Recorder,
    labels: u64,
    statuses: BTreeMap<String, u64>,
    last_done: Option<Instant>,
}

#[derive(Serialize)]
struct Phase {
    batch: usize,
    concurrency: usize,
    /// Measured window (shorter than asked when the labels ran out).
    measured_s: f64,
    exhausted: bool,
    requests: u64,
    labels_accepted: u64,
    labels_per_s: f64,
    requests_per_s: f64,
    latency: Report,
    /// Per-item statuses other than `accepted`, by name.
    not_accepted: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Prepared {
    requests: u64,
    rows_per_request: usize,
    labels: usize,
    seconds: f64,
    failed: u64,
    prediction_log_rows: Option<u64>,
    prediction_log_dropped: Option<u64>,
}

#[derive(Serialize)]
struct Output {
    prepared: Prepared,
    phases: Vec<Phase>,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    ensure!((1..=64).contains(&args.threads), "--threads must be 1..=64");
    ensure!(
        (1..=10_000_000).contains(&args.labels),
        "--labels must be 1..=10000000"
    );
    ensure!(
        (1..=1024).contains(&args.prepare_rows),
        "--prepare-rows must be 1..=1024"
    );
    ensure!(
        args.batches.iter().all(|b| (1..=10_000).contains(b)),
        "--batch must be 1..=10000 (the gateway's limit)"
    );
    for c in [
        args.concurrency,
        args.batch_concurrency,
        args.prepare_concurrency,
    ] {
        ensure!((1..=1024).contains(&c), "connections must be 1..=1024");
    }
    ensure!(
        args.timeout > 0.0 && args.timeout <= 600.0,
        "--timeout must be in (0, 600] seconds"
    );
    let text = std::fs::read(&args.holdout)
        .with_context(|| format!("reading {}", args.holdout.display()))?;
    let holdout: Holdout = serde_json::from_slice(&text)
        .with_context(|| format!("{} has no `features` and `labels`", args.holdout.display()))?;
    let n = holdout.features.len();
    ensure!(
        n > 0 && holdout.labels.len() == n,
        "the held-out file needs as many labels as rows"
    );
    let timeout = Duration::from_secs_f64(args.timeout);
    // One body per starting offset into the held-out rows.
    let bodies: Vec<Bytes> = (0..n)
        .map(|offset| {
            let data: Vec<f64> = (0..args.prepare_rows)
                .flat_map(|r| holdout.features[(offset + r) % n].iter().copied())
                .collect();
            let width = holdout.features[0].len();
            let doc = json!({"inputs": [{
                "name": args.input, "shape": [args.prepare_rows, width],
                "datatype": "FP32", "data": data,
            }]});
            Bytes::from(serde_json::to_vec(&doc).expect("JSON values serialise"))
        })
        .collect();
    let infer = Arc::new(Target::json(&args.infer_url, bodies[0].clone(), timeout)?);
    let feedback = Arc::new(Target::json(&args.feedback_url, Bytes::new(), timeout)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    // 1. Prepare the request ids.
    let requests = args.labels.div_ceil(args.prepare_rows);
    println!(
        "== preparing {requests} inference requests × {} rows ({} connections)",
        args.prepare_rows, args.prepare_concurrency
    );
    let started = Instant::now();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let (ids, prepare_failed) = rt.block_on(async {
        let workers: Vec<_> = (0..args.prepare_concurrency)
            .map(|_| {
                let (infer, bodies, next) =
                    (Arc::clone(&infer), Arc::clone(&bodies), Arc::clone(&next));
                let rows = args.prepare_rows;
                tokio::spawn(async move {
                    let client = http::client::<Full<Bytes>>(1);
                    let mut ids = Vec::new();
                    let mut failed = BTreeMap::<String, u64>::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= requests {
                            break;
                        }
                        // Consecutive requests take consecutive held-out rows.
                        let offset = (i * rows) % bodies.len();
                        match infer.exchange(&client, bodies[offset].clone()).await {
                            Ok(a) => match request_id(&a) {
                                Some(id) => ids.push((Arc::<str>::from(id), offset)),
                                None => {
                                    *failed.entry("answer without an id".into()).or_default() += 1
                                }
                            },
                            Err(kind) => *failed.entry(kind).or_default() += 1,
                        }
                    }
                    (ids, failed)
                })
            })
            .collect();
        let mut ids = Vec::new();
        let mut failed = BTreeMap::<String, u64>::new();
        for w in workers {
            match w.await {
                Ok((i, f)) => {
                    ids.extend(i);
                    for (k, n) in f {
                        *failed.entry(k).or_default() += n;
                    }
                }
                Err(e) => *failed.entry(format!("worker failed: {e}")).or_default() += 1,
            }
        }
        (ids, failed)
    });
    let prepare_s = started.elapsed().as_secs_f64();
    for (kind, n) in &prepare_failed {
        eprintln!("  preparing: {n} requests failed: {kind}");
    }
    let mut labels = Vec::with_capacity(ids.len() * args.prepare_rows);
    for (id, offset) in &ids {
        for row in 0..args.prepare_rows {
            labels.push(Label {
                id: Arc::clone(id),
                row: row as u32,
                label: holdout.labels[(offset + row) % n].clone(),
            });
        }
    }
    println!(
        "  {} ids ({} labels) in {prepare_s:.1} s",
        ids.len(),
        labels.len()
    );
    // Wait until the prediction log has written everything (bounded).
    let (mut log_rows, mut log_dropped) = (None, None);
    if let Some(admin) = &args.admin {
        let client = http::client::<Full<Bytes>>(1);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        while Instant::now() < deadline {
            let doc = rt.block_on(http::get_json(&client, admin))?;
            let rows = doc["prediction_log"]["rows"].as_u64();
            log_dropped = doc["prediction_log"]["dropped"].as_u64();
            if rows.is_some() && rows == last {
                break;
            }
            last = rows;
            std::thread::sleep(Duration::from_millis(500));
        }
        log_rows = last;
        println!(
            "  prediction log: {} rows, {} dropped",
            log_rows.map_or_else(|| "?".into(), |r| r.to_string()),
            log_dropped.map_or_else(|| "?".into(), |r| r.to_string())
        );
    }
    let prepared = Prepared {
        requests: ids.len() as u64,
        rows_per_request: args.prepare_rows,
        labels: labels.len(),
        seconds: prepare_s,
        failed: prepare_failed.values().sum(),
        prediction_log_rows: log_rows,
        prediction_log_dropped: log_dropped,
    };
    let pool = Arc::new(Pool {
        labels,
        next: AtomicUsize::new(0),
    });

    // 2. One measurement per batch size.
    let mut phases = Vec::new();
    let mut ok = prepared.failed == 0;
    for &batch in &args.batches {
        let single = batch == 1;
        let concurrency = if single {
            args.concurrency
        } else {
            args.batch_concurrency
        };
        println!("== feedback: {batch} label(s) per request, {concurrency} connections");
        let window = Window::new(args.warmup, args.duration)?;
        let state = Arc::new(Mutex::new(PhaseState::default()));
        let exhausted = rt.block_on(async {
            let workers: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (feedback, pool, state) =
                        (Arc::clone(&feedback), Arc::clone(&pool), Arc::clone(&state));
                    tokio::spawn(async move {
                        let client = http::client::<Full<Bytes>>(1);
                        loop {
                            let sent = Instant::now();
                            if sent >= window.end {
                                return false;
                            }
                            let Some(items) = pool.take(batch) else {
                                return true;
                            };
                            let body = feedback_body(items, single);
                            let answer = feedback.exchange(&client, body).await;
                            let done = Instant::now();
                            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                            match answer {
                                Ok(a) => {
                                    let (accepted, other) = tally(&a, single, items.len());
                                    for (k, n) in other {
                                        *s.statuses.entry(k).or_default() += n;
                                    }
                                    if window.measured(sent) {
                                        s.rec.success(done - sent);
                                        s.labels += accepted;
                                        s.last_done = Some(done);
                                    }
                                }
                                Err(kind) => s.rec.error(kind),
                            }
                        }
                    })
                })
                .collect();
            let mut exhausted = false;
            for w in workers {
                exhausted |= w.await.unwrap_or(false);
            }
            exhausted
        });
        let s = std::mem::take(&mut *state.lock().unwrap_or_else(|e| e.into_inner()));
        let measured = match (exhausted, s.last_done) {
            (true, Some(t)) if t < window.end => t.saturating_duration_since(window.measure_from),
            _ => window.end - window.measure_from,
        };
        let setup = Setup {
            source: "http".into(),
            target: args.feedback_url.clone(),
            mode: "closed".into(),
            concurrency: Some(concurrency),
            rate: None,
            max_in_flight: None,
            rows: Some(batch),
            warmup_s: args.warmup,
            duration_s: args.duration,
        };
        let latency = s.rec.finish(setup, measured);
        if latency.emit(None)? != ExitCode::SUCCESS {
            ok = false;
        }
        let secs = measured.as_secs_f64().max(f64::MIN_POSITIVE);
        println!(
            "  {} labels accepted: {:.0} labels/s{}",
            s.labels,
            s.labels as f64 / secs,
            if exhausted {
                " (the prepared labels ran out: prepare more with --labels)"
            } else {
                ""
            }
        );
        for (status, n) in &s.statuses {
            eprintln!("  {n} labels not accepted: {status}");
            ok = false;
        }
        phases.push(Phase {
            batch,
            concurrency,
            measured_s: secs,
            exhausted,
            requests: latency.requests,
            labels_accepted: s.labels,
            labels_per_s: s.labels as f64 / secs,
            requests_per_s: latency.requests as f64 / secs,
            latency,
            not_accepted: s.statuses,
        });
    }
    drop(rt);
    let output = Output { prepared, phases };
    let md = markdown(args, &output);
    println!("\n{md}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&output)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The request id of an inference answer: the `x-request-id` header, else
/// the body's `id`.
fn request_id(a: &Answer) -> Option<String> {
    if let Some(v) = a.headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        return Some(v.to_owned());
    }
    let doc: Value = serde_json::from_slice(&a.body).ok()?;
    doc["id"].as_str().map(str::to_owned)
}

fn markdown(args: &Args, out: &Output) -> String {
    let mut md = String::new();
    if let Some(t) = &args.title {
        let _ = writeln!(md, "{t}\n");
    }
    let p = &out.prepared;
    let _ = writeln!(
        md,
        "Prepared first: {} inference requests × {} rows ({} labelled (id, row) pairs) in {:.1} s, ids from the answers; prediction log {} rows, {} dropped. Each label (the row's true class) is posted once; every measurement is closed loop, {} s after {} s warm-up (shorter when the prepared labels ran out).\n",
        p.requests,
        p.rows_per_request,
        p.labels,
        p.seconds,
        p.prediction_log_rows
            .map_or_else(|| "?".into(), |r| r.to_string()),
        p.prediction_log_dropped
            .map_or_else(|| "?".into(), |r| r.to_string()),
        args.duration,
        args.warmup,
    );
    md.push_str("| labels per request | connections | measured s | requests | labels accepted | labels/s | requests/s | p50 ms | p99 ms | max ms | not accepted | failed |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for ph in &out.phases {
        let l = &ph.latency.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let _ = writeln!(
            md,
            "| {} | {} | {:.2}{} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
            ph.batch,
            ph.concurrency,
            ph.measured_s,
            if ph.exhausted { " (ran out)" } else { "" },
            ph.requests,
            ph.labels_accepted,
            ph.labels_per_s,
            ph.requests_per_s,
            ms(l.p50),
            ms(l.p99),
            ms(l.max),
            ph.not_accepted.values().sum::<u64>(),
            ph.latency.error_total,
        );
    }
    if let Some(single) = out.phases.iter().find(|p| p.batch == 1)
        && single.labels_per_s > 0.0
    {
        let ratios: Vec<String> = out
            .phases
            .iter()
            .filter(|p| p.batch > 1)
            .map(|p| {
                format!(
                    "{} per request {:.0}×",
                    p.batch,
                    p.labels_per_s / single.labels_per_s
                )
            })
            .collect();
        if !ratios.is_empty() {
            let _ = writeln!(md, "\nBatched ÷ single labels/s: {}.", ratios.join(", "));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(id: &str, row: u32, v: i64) -> Label {
        Label {
            id: Arc::from(id),
            row,
            label: json!(v),
        }
    }

    #[test]
    fn bodies_are_single_objects_or_batches() {
        let one = [label("a", 0, 1)];
        let v: Value = serde_json::from_slice(&feedback_body(&one, true)).unwrap();
        assert_eq!(v, json!({"id": "a", "row": 0, "label": 1}));
        let two = [label("a", 0, 1), label("b", 3, 0)];
        let v: Value = serde_json::from_slice(&feedback_body(&two, false)).unwrap();
        assert_eq!(v["labels"][1], json!({"id": "b", "row": 3, "label": 0}));
    }

    #[test]
    fn the_pool_hands_out_each_label_once() {
        let pool = Pool {
            labels: (0..5).map(|i| label("x", i, 0)).collect(),
            next: AtomicUsize::new(0),
        };
        assert_eq!(pool.take(2).unwrap().len(), 2);
        assert_eq!(pool.take(2).unwrap()[0].row, 2);
        assert_eq!(pool.take(2).unwrap().len(), 1);
        assert!(pool.take(2).is_none());
    }

    #[test]
    fn answers_are_tallied_per_status() {
        let answer = |v: Value| Answer {
            headers: Default::default(),
            body: Bytes::from(serde_json::to_vec(&v).unwrap()),
        };
        let (n, other) = tally(&answer(json!({"status": "accepted"})), true, 1);
        assert_eq!((n, other.len()), (1, 0));
        let (n, other) = tally(&answer(json!({"status": "duplicate"})), true, 1);
        assert_eq!((n, other["duplicate"]), (0, 1));
        let batch = json!({"summary": {"accepted": 98, "unknown_id": 1, "conflict": 0}});
        let (n, other) = tally(&answer(batch), false, 100);
        assert_eq!(n, 98);
        assert_eq!(other["unknown_id"], 1);
        assert_eq!(other["missing from the answer"], 1);
        assert!(!other.contains_key("conflict"));
    }
}
