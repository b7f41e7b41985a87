//! HTTP load: POST one body to one URL over keep-alive HTTP/1.1 connections
//! (hyper 1 + hyper-util), closed loop or open loop.
//!
//! - Closed loop (`--concurrency N`): N workers, each with its own client and
//!   so its own connection, sending the next request when the previous answer
//!   has arrived. Latency runs from the actual send. This is how throughput
//!   is measured; note it hides queueing (coordinated omission): a stalled
//!   server simply receives fewer requests.
//! - Open loop (`--rate R`): request *i* is due at `start + i / R`, whatever
//!   happened to earlier ones. A dedicated thread dispatches on that
//!   schedule; latency runs from the *intended* send time, so a late
//!   dispatch or a slow answer both show up. At most `--max-in-flight`
//!   requests are outstanding: the dispatcher waits for a free slot (the
//!   wait counts in the latency), and scheduled requests it could not send
//!   before the end are counted as failures.
//!
//! Requests due (open) or sent (closed) after the warm-up and before the end
//! are measured; failures are counted over the whole run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use crate::report::{Recorder, Setup};

/// Longest run this tool agrees to make (it always stops by itself).
const MAX_RUN_SECS: f64 = 3600.0;

#[derive(clap::Args)]
pub struct Args {
    /// URL to POST to, e.g. http://127.0.0.1:8000/v2/models/breast_cancer/infer
    #[arg(long)]
    url: String,
    /// File whose bytes are the request body (see `body`).
    #[arg(long)]
    body: PathBuf,
    /// Content-Type of the body.
    #[arg(long, default_value = "application/json")]
    content_type: String,
    /// Extra request header "name: value" (repeatable), e.g. for
    /// Inference-Header-Content-Length with a binary body.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Closed loop: this many connections, one request outstanding on each.
    #[arg(long, conflicts_with = "rate", required_unless_present = "rate")]
    concurrency: Option<usize>,
    /// Open loop: requests per second, sent on a fixed schedule.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: most requests outstanding at once.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Per-request timeout in seconds (a timeout is a failure).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Tokio worker threads of the load generator (it shares the CPU with
    /// the server on one machine: keep it small).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Rows per request, recorded in the result (informational).
    #[arg(long)]
    rows: Option<usize>,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct WaitArgs {
    /// URL that answers 200 when the server is ready.
    #[arg(long)]
    url: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

pub(crate) type HttpClient<B> = Client<HttpConnector, B>;

/// Everything one request needs, shared by every worker.
pub(crate) struct Target {
    uri: Uri,
    /// Request bodies, sent in turn (usually one).
    bodies: Vec<Bytes>,
    next: AtomicUsize,
    headers: HeaderMap,
    pub(crate) timeout: Duration,
}

/// A successful (2xx) answer.
pub(crate) struct Answer {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Target {
    fn new(args: &Args) -> anyhow::Result<Target> {
        let uri = parse_url(&args.url)?;
        let body = std::fs::read(&args.body)
            .with_context(|| format!("reading the body file {}", args.body.display()))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(&args.content_type).context("--content-type")?,
        );
        for h in &args.headers {
            let (name, value) = h
                .split_once(':')
                .with_context(|| format!("--header {h:?} is not \"name: value\""))?;
            headers.insert(
                HeaderName::from_bytes(name.trim().as_bytes())
                    .with_context(|| format!("--header {h:?}: bad name"))?,
                HeaderValue::from_str(value.trim())
                    .with_context(|| format!("--header {h:?}: bad value"))?,
            );
        }
        ensure!(
            args.timeout > 0.0 && args.timeout <= MAX_RUN_SECS,
            "--timeout must be in (0, {MAX_RUN_SECS}] seconds"
        );
        Ok(Target {
            uri,
            bodies: vec![Bytes::from(body)],
            next: AtomicUsize::new(0),
            headers,
            timeout: Duration::from_secs_f64(args.timeout),
        })
    }

    /// A JSON POST of `body` to `url`.
    pub(crate) fn json(url: &str, body: Bytes, timeout: Duration) -> anyhow::Result<Target> {
        Target::json_bodies(url, vec![body], timeout)
    }

    /// JSON POSTs to `url` of each of `bodies` in turn.
    pub(crate) fn json_bodies(
        url: &str,
        bodies: Vec<Bytes>,
        timeout: Duration,
    ) -> anyhow::Result<Target> {
        ensure!(!bodies.is_empty(), "no request body");
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(Target {
            uri: parse_url(url)?,
            bodies,
            next: AtomicUsize::new(0),
            headers,
            timeout,
        })
    }

    /// The body of the next request.
    fn next_body(&self) -> Bytes {
        match self.bodies.as_slice() {
            [one] => one.clone(),
            all => all[self.next.fetch_add(1, Ordering::Relaxed) % all.len()].clone(),
        }
    }

    pub(crate) fn uri_string(&self) -> String {
        self.uri.to_string()
    }

    /// Sends one request and reads the whole answer. `Err` is the failure kind.
    pub(crate) async fn send(&self, client: &HttpClient<Full<Bytes>>) -> Result<(), String> {
        self.exchange(client, self.next_body()).await.map(drop)
    }

    /// Sends `body` (instead of the target's own) and returns the answer.
    pub(crate) async fn exchange(
        &self,
        client: &HttpClient<Full<Bytes>>,
        body: Bytes,
    ) -> Result<Answer, String> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        let exchange = async {
            let resp = client.request(req).await.map_err(|e| transport(&e))?;
            let status = resp.status();
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("transport: reading the answer: {e}"))?
                .to_bytes();
            if status.is_success() {
                Ok(Answer {
                    headers: parts.headers,
                    body,
                })
            } else {
                Err(format!(
                    "status {}: {}",
                    status.as_u16(),
                    error_message(&body)
                ))
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("timeout after {:?}", self.timeout)),
        }
    }
}

pub(crate) fn parse_url(url: &str) -> anyhow::Result<Uri> {
    let uri: Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
    ensure!(
        uri.scheme_str() == Some("http") && uri.host().is_some(),
        "URL {url:?} must be http://host[:port]/path (no TLS here)"
    );
    Ok(uri)
}

/// A client with at most `connections` kept-alive connections, TCP_NODELAY.
pub(crate) fn client<B>(connections: usize) -> HttpClient<B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build(connector)
}

/// The failure kind of a transport error: its message and causes.
pub(crate) fn transport(e: &hyper_util::client::legacy::Error) -> String {
    let mut kind = String::from("transport: ");
    kind.push_str(&e.to_string());
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        kind.push_str(": ");
        kind.push_str(&s.to_string());
        source = s.source();
    }
    kind
}

/// The V2 error message from an error body (`{"error": "..."}`), shortened.
fn error_message(body: &[u8]) -> String {
    let text = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    const MAX: usize = 120;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The measurement window of a run.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    pub start: Instant,
    pub measure_from: Instant,
    pub end: Instant,
}

impl Window {
    pub(crate) fn new(warmup: f64, duration: f64) -> anyhow::Result<Window> {
        ensure!(
            warmup >= 0.0 && duration > 0.0 && warmup + duration <= MAX_RUN_SECS,
            "--warmup must be ≥ 0 and --duration > 0, together at most {MAX_RUN_SECS} s"
        );
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(warmup);
        Ok(Window {
            start,
            measure_from,
            end: measure_from + Duration::from_secs_f64(duration),
        })
    }

    pub(crate) fn measured(&self, t: Instant) -> bool {
        t >= self.measure_from && t < self.end
    }
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let target = Arc::new(Target::new(args)?);
    ensure!((1..=64).contains(&args.threads), "--threads must be 1..=64");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (mode, recorder, window) = match (args.concurrency, args.rate) {
        (Some(n), _) => {
            ensure!((1..=10_000).contains(&n), "--concurrency must be 1..=10000");
            let window = Window::new(args.warmup, args.duration)?;
            let rec = rt.block_on(closed_loop(&target, n, window));
            ("closed", rec, window)
        }
        (None, Some(rate)) => {
            ensure!(
                rate > 0.0 && rate <= 1e6,
                "--rate must be in (0, 1000000] requests/s"
            );
            ensure!(
                (1..=100_000).contains(&args.max_in_flight),
                "--max-in-flight must be 1..=100000"
            );
            let window = Window::new(args.warmup, args.duration)?;
            let rec = open_loop(&rt, &target, rate, args.max_in_flight, window);
            ("open", rec, window)
        }
        (None, None) => bail!("give --concurrency (closed loop) or --rate (open loop)"),
    };
    drop(rt);
    let setup = Setup {
        source: "http".into(),
        target: args.url.clone(),
        mode: mode.into(),
        concurrency: args.concurrency,
        rate: args.rate,
        max_in_flight: args.rate.map(|_| args.max_in_flight),
        rows: args.rows,
        warmup_s: args.warmup,
        duration_s: args.duration,
    };
    let measured = window.end - window.measure_from;
    recorder.finish(setup, measured).emit(args.json.as_deref())
}

pub(crate) async fn closed_loop(
    target: &Arc<Target>,
    concurrency: usize,
    window: Window,
) -> Recorder {
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let target = Arc::clone(target);
            tokio::spawn(async move {
                // Its own client: one kept-alive connection per worker.
                let client = client::<Full<Bytes>>(1);
                let mut rec = Recorder::new();
                loop {
                    let sent = Instant::now();
                    if sent >= window.end {
                        break;
                    }
                    match target.send(&client).await {
                        Ok(()) if window.measured(sent) => rec.success(sent.elapsed()),
                        Ok(()) => {}
                        Err(kind) => {
                            // Do not spin on a server that refuses connections.
                            if kind.starts_with("transport") {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            rec.error(kind);
                        }
                    }
                }
                rec
            })
        })
        .collect();
    let mut total = Recorder::new();
    for w in workers {
        match w.await {
            Ok(rec) => total.merge(&rec),
            Err(e) => total.error(format!("load generator worker failed: {e}")),
        }
    }
    total
}

/// Open-loop dispatch into a [`Recorder`]: latency from the intended send
/// time, measured when the request was due inside the window.
pub(crate) fn open_loop(
    rt: &tokio::runtime::Runtime,
    target: &Arc<Target>,
    rate: f64,
    max_in_flight: usize,
    window: Window,
) -> Recorder {
    let shared = Arc::new(Mutex::new(Recorder::new()));
    let outcome = open_loop_with(
        rt,
        target,
        rate,
        max_in_flight,
        window,
        &shared,
        move |rec: &mut Recorder, intended, done, answer| match answer {
            Ok(_) if window.measured(intended) => rec.success(done - intended),
            Ok(_) => {}
            Err(kind) => rec.error(kind),
        },
    );
    let mut rec = shared.lock().unwrap_or_else(|e| e.into_inner());
    outcome.count_into(&mut rec, max_in_flight);
    std::mem::take(&mut *rec)
}

/// What the open-loop dispatcher itself could not do.
pub(crate) struct OpenOutcome {
    /// Requests the schedule called for but the in-flight bound held back.
    pub unsent: u64,
    /// Whether every outstanding request finished before the grace ran out.
    pub drained: bool,
}

impl OpenOutcome {
    /// Counts the dispatcher's failures into `rec`.
    pub(crate) fn count_into(&self, rec: &mut Recorder, max_in_flight: usize) {
        rec.error_n(
            format!(
                "not sent: {max_in_flight} requests already in flight (server slower than --rate)"
            ),
            self.unsent,
        );
        if !self.drained {
            rec.error("load generator: outstanding requests did not finish");
        }
    }
}

/// Dispatches on the schedule from this (non-runtime) thread, so the timing
/// does not depend on the tokio workers being free. Each answer goes to
/// `record(sink, intended, done, answer)`, for every request of the run
/// (warm-up included: `record` decides what it measures).
pub(crate) fn open_loop_with<S, F>(
    rt: &tokio::runtime::Runtime,
    target: &Arc<Target>,
    rate: f64,
    max_in_flight: usize,
    window: Window,
    sink: &Arc<Mutex<S>>,
    record: F,
) -> OpenOutcome
where
    S: Send + 'static,
    F: Fn(&mut S, Instant, Instant, Result<Answer, String>) + Send + Sync + 'static,
{
    let record = Arc::new(record);
    let client = client::<Full<Bytes>>(max_in_flight);
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let due = |i: u64| window.start + Duration::from_secs_f64(i as f64 / rate);
    let mut i: u64 = 0;
    loop {
        let intended = due(i);
        if intended >= window.end {
            break;
        }
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            // Every slot is busy: wait for one, but never past the end.
            Err(_) => match rt.block_on(async {
                let free = Arc::clone(&slots).acquire_owned();
                tokio::time::timeout_at(window.end.into(), free).await
            }) {
                Ok(Ok(p)) => p,
                _ => break,
            },
        };
        let target = Arc::clone(target);
        let client = client.clone();
        let sink = Arc::clone(sink);
        let record = Arc::clone(&record);
        rt.spawn(async move {
            let answer = target.exchange(&client, target.next_body()).await;
            let done = Instant::now();
            {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                record(&mut s, intended, done, answer);
            }
            // Freed only once recorded: the final drain waits for every slot.
            drop(permit);
        });
        i += 1;
    }
    let scheduled = ((window.end - window.start).as_secs_f64() * rate).ceil() as u64;
    let unsent = scheduled.saturating_sub(i);
    // Let the outstanding requests finish (each is bounded by its timeout).
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let drained = rt.block_on(async {
        let grace = target.timeout + Duration::from_secs(1);
        tokio::time::timeout(grace, slots.acquire_many(all)).await
    });
    OpenOutcome {
        unsent,
        drained: drained.is_ok(),
    }
}

/// Closed-loop capacity of `target`: throughput at `concurrency` connections.
pub(crate) fn capacity(
    rt: &tokio::runtime::Runtime,
    target: &Arc<Target>,
    concurrency: usize,
    warmup: f64,
    duration: f64,
) -> anyhow::Result<crate::report::Report> {
    let window = Window::new(warmup, duration)?;
    let rec = rt.block_on(closed_loop(target, concurrency, window));
    let setup = Setup {
        source: "http".into(),
        target: target.uri.to_string(),
        mode: "closed".into(),
        concurrency: Some(concurrency),
        rate: None,
        max_in_flight: None,
        rows: None,
        warmup_s: warmup,
        duration_s: duration,
    };
    Ok(rec.finish(setup, window.end - window.measure_from))
}

/// `method` `url` with an optional JSON body; the status and the JSON answer
/// (`Value::Null` when the answer is not JSON). For the admin API.
pub(crate) async fn call_json(
    client: &HttpClient<Full<Bytes>>,
    method: Method,
    url: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(hyper::StatusCode, serde_json::Value), String> {
    let uri = parse_url(url).map_err(|e| format!("{e:#}"))?;
    let bytes = match body {
        Some(v) => Bytes::from(serde_json::to_vec(v).map_err(|e| e.to_string())?),
        None => Bytes::new(),
    };
    let mut req = Request::new(Full::new(bytes));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    if body.is_some() {
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| transport(&e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("transport: reading the answer: {e}"))?
            .to_bytes();
        let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Ok((status, value))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {timeout:?}")),
    }
}

/// GET `url` as JSON, failing on a non-2xx answer.
pub(crate) async fn get_json(
    client: &HttpClient<Full<Bytes>>,
    url: &str,
) -> anyhow::Result<serde_json::Value> {
    let (status, value) = call_json(client, Method::GET, url, None, Duration::from_secs(10))
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    ensure!(status.is_success(), "GET {url}: status {status}: {value}");
    Ok(value)
}

/// Polls `url` with GET until it answers 200, at most `--timeout` seconds.
pub fn wait(args: &WaitArgs) -> anyhow::Result<ExitCode> {
    let uri = parse_url(&args.url)?;
    ensure!(
        args.timeout > 0.0 && args.timeout <= MAX_RUN_SECS,
        "--timeout must be in (0, {MAX_RUN_SECS}] seconds"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    rt.block_on(async {
        let client = client::<Empty<Bytes>>(1);
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            let req = Request::get(uri.clone())
                .body(Empty::new())
                .expect("a GET with a parsed URI is valid");
            match tokio::time::timeout(Duration::from_secs(2), client.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => return Ok(ExitCode::SUCCESS),
                Ok(Ok(resp)) => last = format!("status {}", resp.status()),
                Ok(Err(e)) => last = transport(&e),
                Err(_) => last = "timeout".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{} not ready after {} s (last: {last})",
            args.url,
            args.timeout
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_shortened_to_the_message() {
        assert_eq!(error_message(br#"{"error":"queue full"}"#), "queue full");
        assert_eq!(error_message(b"plain text"), "plain text");
        let long = "é".repeat(200);
        let short = error_message(long.as_bytes());
        assert_eq!(short.chars().count(), 121);
    }

    #[test]
    fn only_plain_http_urls_are_accepted() {
        assert!(parse_url("http://127.0.0.1:8000/v2").is_ok());
        assert!(parse_url("https://example.com/").is_err());
        assert!(parse_url("/v2/models").is_err());
    }
}
