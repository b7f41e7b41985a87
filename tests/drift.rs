//! Drift monitoring on a real server with the example models: an unchanged
//! stream raises nothing; one shifted feature raises one alert, delivered
//! once (with retries) to a real HTTP receiver started here; a persisting
//! alert recommends retraining (webhook and command); alert state survives a
//! restart and clears with hysteresis; flipped labels show accuracy decay;
//! `contender drift` prints the report.
//!
//! The monitor scores every `evaluate_every` sampled rows, at most every
//! 250 ms (and re-scores on a 2 s timer when no sample arrives); the traffic
//! here is paced on its scorings (see [`step`]), every wait is a bounded
//! poll of the drift report or of the receiver, and no assertion is about
//! time.

mod support;

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_contender");
const DEPLOYMENT: &str = "breast_cancer";
const CHAMPION: &str = "breast_cancer@1";

/// The drift settings of these tests (`[deployments.breast_cancer.drift]`):
/// the documented defaults but for a smaller window, which makes the bound
/// below smaller.
const WINDOW: usize = 300;
const MIN_ROWS: usize = 100;
const EVALUATE_EVERY: usize = 50;
const RAISE_AFTER: usize = 2;
const CLEAR_AFTER: usize = 3;

/// The shifted feature: `mean radius` (column 0), moved by this many
/// training standard deviations (from `breast_cancer/1/reference.json`).
const SHIFTED_FEATURE: &str = "mean radius";
const SHIFTED_COLUMN: usize = 0;
const SHIFT_STDS: f64 = 3.0;

/// The monitor scores on traffic at most this often
/// (`drift::monitor::MIN_INTERVAL_MS`), and re-scores after `TICK_MS`
/// without a sample (`drift::monitor::TICK`).
const MIN_INTERVAL_MS: i64 = 250;
const TICK_MS: i64 = 2000;

/// At most this many shifted single-row requests raise the alert, with the
/// traffic paced so that every `EVALUATE_EVERY` rows bring one scoring (see
/// [`step`]). Once `WINDOW` shifted rows have been sent the window holds
/// nothing else, so that scoring and every later one are at alert level,
/// and `RAISE_AFTER` consecutive ones raise the state:
/// `WINDOW + (RAISE_AFTER - 1) * EVALUATE_EVERY` = 350. (In practice it
/// comes much sooner: a window a quarter shifted already scores at alert
/// level, and a fresh stream of shifted rows raises it at the second
/// scoring, `MIN_ROWS + (RAISE_AFTER - 1) * EVALUATE_EVERY` = 150 rows.)
const MAX_SHIFTED_REQUESTS_TO_ALERT: usize = WINDOW + (RAISE_AFTER - 1) * EVALUATE_EVERY;

/// The drift table of a deployment with these settings and `extra` lines.
fn drift_toml(extra: &str) -> String {
    format!(
        "[deployments.{DEPLOYMENT}.drift]\n\
         window = {WINDOW}\n\
         min_rows = {MIN_ROWS}\n\
         evaluate_every = {EVALUATE_EVERY}\n\
         raise_after = {RAISE_AFTER}\n\
         clear_after = {CLEAR_AFTER}\n\
         {extra}\n"
    )
}

/// A TOML string (a JSON string of ASCII text is a TOML basic string).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

// ---------------------------------------------------------------------------
// A real webhook receiver.

/// One POST the receiver got.
#[derive(Clone, Debug)]
struct Delivery {
    path: &'static str,
    content_type: String,
    body: Value,
}

#[derive(Clone, Default)]
struct Hooks {
    accepted: Arc<Mutex<Vec<Delivery>>>,
    /// POSTs to `/flaky`, refused or not.
    flaky_attempts: Arc<AtomicUsize>,
}

/// An HTTP server on `127.0.0.1:0`: `POST /hook` records the JSON body and
/// answers 200; `POST /flaky` answers 503 to every odd attempt (so each
/// delivery needs a retry) and records and accepts the even ones.
struct Receiver {
    base: String,
    hooks: Hooks,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(hooks: &Hooks, path: &'static str, headers: &HeaderMap, body: &Bytes) {
    let body: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {body:?}"));
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    hooks.accepted.lock().unwrap().push(Delivery {
        path,
        content_type,
        body,
    });
}

async fn hook(State(hooks): State<Hooks>, headers: HeaderMap, body: Bytes) -> StatusCode {
    record(&hooks, "/hook", &headers, &body);
    StatusCode::OK
}

async fn flaky(State(hooks): State<Hooks>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let attempt = hooks.flaky_attempts.fetch_add(1, Ordering::SeqCst) + 1;
    if attempt % 2 == 1 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    record(&hooks, "/flaky", &headers, &body);
    StatusCode::OK
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the receiver binds");
        let addr = listener.local_addr().expect("the receiver's address");
        let hooks = Hooks::default();
        let app = Router::new()
            .route("/hook", post(hook))
            .route("/flaky", post(flaky))
            .with_state(hooks.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the receiver serves");
        });
        Receiver {
            base: format!("http://{addr}"),
            hooks,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Bodies accepted at `path` whose `event` is `event`.
    fn events(&self, path: &str, event: &str) -> Vec<Value> {
        self.hooks
            .accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.path == path && d.body["event"] == event)
            .map(|d| {
                assert!(
                    d.content_type.starts_with("application/json"),
                    "webhook content type {:?}",
                    d.content_type
                );
                d.body.clone()
            })
            .collect()
    }

    fn all(&self) -> Vec<Delivery> {
        self.hooks.accepted.lock().unwrap().clone()
    }

    /// Polls until `path` has accepted at least `n` `event`s (bounded).
    async fn wait_events(&self, path: &str, event: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let got = self.events(path, event);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{path} got {} {event} events, not {n}, within {SETTLE_TIMEOUT:?}: {:#?}",
                got.len(),
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Rows and the drift report.

/// The held-out rows with `mean radius` moved by `SHIFT_STDS` training
/// standard deviations.
fn shifted_rows() -> Vec<Vec<f64>> {
    let reference = read_models_json("breast_cancer/1/reference.json");
    let feature = &reference["features"][SHIFTED_COLUMN];
    assert_eq!(feature["name"], SHIFTED_FEATURE, "{feature:.200}");
    let std = feature["std"].as_f64().expect("a numeric std");
    assert!(std > 0.0);
    breast_cancer_features()
        .into_iter()
        .map(|mut row| {
            row[SHIFTED_COLUMN] += SHIFT_STDS * std;
            row
        })
        .collect()
}

/// `n` rows cycling through `rows`, starting at `start`.
fn cycle(rows: &[Vec<f64>], start: usize, n: usize) -> Vec<Vec<f64>> {
    (start..start + n)
        .map(|i| rows[i % rows.len()].clone())
        .collect()
}

async fn report(ts: &TestServer) -> Value {
    let (status, body) = ts
        .get_json(&format!("/admin/deployments/{DEPLOYMENT}/drift"))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls the drift report until `done` holds (bounded).
async fn wait_report(ts: &TestServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let r = report(ts).await;
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {SETTLE_TIMEOUT:?}; last report:\n{r:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for a scoring of everything sent before `sent_ms`. The monitor
/// re-scores on its timer `TICK_MS` after the last sample when rows are left
/// unscored, so a scoring that late follows every queued sample. When a
/// scoring triggered by the row count already took the last rows (it came
/// after `sent_ms`, because the monitor takes samples from its queue a few
/// milliseconds later), the timer has nothing left to score: that scoring
/// is the settled one, recognised once a timer scoring would have come.
async fn wait_settled(ts: &TestServer, sent_ms: i64) -> Value {
    /// Time for the monitor to take the last samples, beyond `TICK_MS`.
    const SLACK_MS: i64 = 1_000;
    wait_report(ts, "an idle re-scoring after the last request", |r| {
        r["evaluated_at_ms"].as_i64().is_some_and(|at| {
            at >= sent_ms + TICK_MS || (at >= sent_ms && now_ms() >= sent_ms + TICK_MS + SLACK_MS)
        })
    })
    .await
}

fn feature<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["features"]
        .as_array()
        .unwrap_or_else(|| panic!("no features in {r:#}"))
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no feature {name:?} in {r:#}"))
}

fn state_of(v: &Value) -> &str {
    v["state"].as_str().unwrap_or("?")
}

/// Names of the features whose state is `alert`.
fn alerting_features(r: &Value) -> Vec<String> {
    r["features"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["state"] == "alert")
        .map(|f| f["name"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// The report's events of kind `event`.
fn report_events(r: &Value, event: &str) -> Vec<Value> {
    r["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events array in {r:#}"))
        .iter()
        .filter(|e| e["event"] == event)
        .cloned()
        .collect()
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// Paced traffic: sends `rows` as single-row requests and returns the
/// report of the one scoring they end with. The monitor scores once
/// `EVALUATE_EVERY` new rows (and `MIN_ROWS` in the window) have come, but
/// not within `MIN_INTERVAL_MS` of its last scoring; so the last row waits
/// (a bounded poll) until that interval has passed, and then triggers the
/// scoring. A step is therefore `EVALUATE_EVERY` rows and one scoring
/// (`MIN_ROWS` for the first), whatever the speed of the machine.
async fn step(ts: &TestServer, rows: &[Vec<f64>]) -> Value {
    let (last, head) = rows.split_last().expect("a step has rows");
    ts.infer_rows(DEPLOYMENT, head).await;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let before = loop {
        let at = report(ts).await["evaluated_at_ms"].as_i64();
        match at {
            Some(at) if now_ms() < at + MIN_INTERVAL_MS => {
                assert!(Instant::now() < deadline, "the clock does not move");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => break at,
        }
    };
    ts.infer_rows(DEPLOYMENT, std::slice::from_ref(last)).await;
    wait_report(ts, "the scoring that ends a step", |r| {
        r["evaluated_at_ms"].as_i64() > before
    })
    .await
}

/// Whether the report shows the shifted feature in alert.
fn raised(r: &Value) -> bool {
    r["state"] == "alert" && alerting_features(r).iter().any(|f| f == SHIFTED_FEATURE)
}

/// Sends shifted rows in steps (the first of `first` rows, then
/// `EVALUATE_EVERY`) until the report shows the shifted feature in alert;
/// returns how many shifted requests that took, at most
/// `MAX_SHIFTED_REQUESTS_TO_ALERT`.
async fn shift_until_alert(ts: &TestServer, first: usize) -> usize {
    let shifted = shifted_rows();
    let mut sent = 0;
    let mut size = first;
    loop {
        let r = step(ts, &cycle(&shifted, sent, size)).await;
        sent += size;
        size = EVALUATE_EVERY;
        if raised(&r) {
            return sent;
        }
        assert!(
            sent < MAX_SHIFTED_REQUESTS_TO_ALERT,
            "{sent} shifted requests did not raise an alert for {SHIFTED_FEATURE:?}:\n{r:#}"
        );
    }
}

/// Asserts a `drift_alert` event for the shifted feature alone among the
/// features, first, with its scores, thresholds and p-value.
fn assert_feature_alert(e: &Value) {
    assert_eq!(e["event"], "drift_alert", "{e:#}");
    assert_eq!(e["deployment"], DEPLOYMENT, "{e:#}");
    assert_eq!(e["model"], CHAMPION, "{e:#}");
    assert!(e["at_ms"].is_i64(), "{e:#}");
    let w = &e["window"];
    let rows = w["rows"].as_u64().expect("window.rows");
    assert!(
        (MIN_ROWS as u64..=WINDOW as u64).contains(&rows),
        "window rows {rows}: {e:#}"
    );
    let (from, to) = (
        w["from_ms"].as_i64().expect("window.from_ms"),
        w["to_ms"].as_i64().expect("window.to_ms"),
    );
    assert!(from <= to, "{e:#}");
    let drifted = e["drifted"].as_array().expect("drifted");
    let first = &drifted[0];
    assert_eq!(first["key"], format!("feature:{SHIFTED_FEATURE}"), "{e:#}");
    assert_eq!(first["name"], SHIFTED_FEATURE, "{e:#}");
    assert_eq!(first["kind"], "numeric", "{e:#}");
    assert_eq!(first["level"], "alert", "{e:#}");
    assert_eq!(first["rows"], rows, "{e:#}");
    let psi = num(&first["psi"], "psi");
    assert_eq!(first["psi_alert"], 0.25, "the documented default: {e:#}");
    assert_eq!(first["psi_warn"], 0.1, "{e:#}");
    assert!(psi >= 0.25, "{e:#}");
    let p = num(&first["ks_p_value"], "ks_p_value");
    let p_threshold = num(&first["ks_p_threshold"], "ks_p_threshold");
    assert!(
        (p_threshold - 0.05 / 30.0).abs() < 1e-15,
        "KS at 0.05, Bonferroni over 30 features: {e:#}"
    );
    assert!(p < p_threshold, "{e:#}");
    assert!(num(&first["ks_statistic"], "ks_statistic") > 0.3, "{e:#}");
    assert_eq!(first["wasserstein_threshold"], 0.1, "{e:#}");
    // At most the shift itself (a window partly shifted by SHIFT_STDS
    // standard deviations), above the threshold.
    let w = num(&first["wasserstein_normalised"], "wasserstein_normalised");
    assert!((0.1..SHIFT_STDS + 0.5).contains(&w), "{e:#}");
    let features: Vec<&Value> = drifted
        .iter()
        .filter(|d| d["key"].as_str().is_some_and(|k| k.starts_with("feature:")))
        .collect();
    assert_eq!(features.len(), 1, "only the shifted feature drifted: {e:#}");
}

/// Runs the `contender` binary (in an empty directory, no configuration).
async fn cli(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().expect("a working directory");
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir.path()).args(&args);
        for (key, _) in std::env::vars_os() {
            if let Some(k) = key.to_str()
                && k.starts_with("CONTENDER_")
                && k != "CONTENDER_CACHE_DIR"
            {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1");
        cmd.stdin(Stdio::null()).output().expect("the binary runs")
    })
    .await
    .expect("the CLI thread does not panic")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_the_held_out_sample_unchanged_raises_no_alert() {
    const PASSES: usize = 4;
    let hooks = Receiver::start().await;
    // A window that holds the whole stream, so the last scoring sees all of it.
    let toml = format!(
        "[deployments.{DEPLOYMENT}.drift]\n\
         window = 1000\n\
         min_rows = {MIN_ROWS}\n\
         evaluate_every = {EVALUATE_EVERY}\n\
         webhooks = [{}]\n",
        toml_str(&hooks.url("/hook"))
    );
    let ts = TestServer::start_with("", &toml).await;
    let rows = breast_cancer_features();
    let n = rows.len() * PASSES;
    for _ in 0..PASSES {
        ts.infer_rows(DEPLOYMENT, &rows).await;
    }
    // Scored every 50 rows from 100 on, and once more when idle with all rows.
    let r = wait_report(&ts, "a scoring of every row", |r| r["window_rows"] == n).await;

    assert_eq!(r["deployment"], DEPLOYMENT, "{r:#}");
    assert_eq!(r["enabled"], true, "{r:#}");
    assert_eq!(r["champion"], CHAMPION, "{r:#}");
    assert_ne!(r["state"], "alert", "{r:#}");
    assert_eq!(r["samples_dropped"], 0, "{r:#}");
    let features = r["features"].as_array().expect("features");
    assert_eq!(features.len(), 30, "{r:#}");
    for f in features {
        assert_eq!(f["rows"], n, "{f}");
        assert_ne!(f["state"], "alert", "{f}");
        assert_ne!(f["level"], "alert", "{f}");
        assert!(f["psi"].is_number() && f["ks_p_value"].is_number(), "{f}");
    }
    assert!(alerting_features(&r).is_empty(), "{r:#}");
    let predictions = r["predictions"].as_array().expect("predictions");
    assert_eq!(predictions.len(), 1, "{r:#}");
    assert_eq!(predictions[0]["model"], CHAMPION, "{r:#}");
    assert_eq!(predictions[0]["rows"], n, "{r:#}");
    assert_ne!(predictions[0]["state"], "alert", "{r:#}");
    assert!(r["accuracy"].is_null(), "no labels yet: {r:#}");
    assert!(report_events(&r, "drift_alert").is_empty(), "{r:#}");
    assert_eq!(r["events"], json!([]), "{r:#}");

    // Before labels: the mean top-class probability of the champion over
    // the window (every held-out row PASSES times), as onnxruntime gives it.
    let probabilities = expected_class_probabilities(1);
    let want = probabilities
        .iter()
        .map(|p| p.iter().copied().fold(f64::MIN, f64::max))
        .sum::<f64>()
        / probabilities.len() as f64;
    let estimated = num(
        &r["before_labels"]["estimated_accuracy"],
        "estimated_accuracy",
    );
    assert!((estimated - want).abs() < 1e-5, "{estimated} vs {want}");

    assert!(
        hooks.all().is_empty(),
        "nothing reaches the webhook: {:#?}",
        hooks.all()
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shifted_feature_raises_one_alert_delivered_once_to_the_webhooks() {
    let hooks = Receiver::start().await;
    let toml = drift_toml(&format!(
        "webhooks = [{}, {}]",
        toml_str(&hooks.url("/hook")),
        toml_str(&hooks.url("/flaky"))
    ));
    let ts = TestServer::start_with("", &toml).await;

    // Normal traffic first: two scorings of held-out rows.
    let rows = breast_cancer_features();
    for (start, size) in [(0, MIN_ROWS), (MIN_ROWS, EVALUATE_EVERY)] {
        let r = step(&ts, &cycle(&rows, start, size)).await;
        assert_ne!(r["state"], "alert", "{r:#}");
    }

    // Then the world changes.
    let needed = shift_until_alert(&ts, EVALUATE_EVERY).await;
    println!(
        "alert for {SHIFTED_FEATURE:?} after {needed} shifted requests (bound {MAX_SHIFTED_REQUESTS_TO_ALERT})"
    );
    assert!(needed <= MAX_SHIFTED_REQUESTS_TO_ALERT);
    let r = report(&ts).await;
    assert_eq!(
        alerting_features(&r),
        [SHIFTED_FEATURE],
        "only the shifted feature is in alert: {r:#}"
    );
    let top = &r["features"][0];
    assert_eq!(top["name"], SHIFTED_FEATURE, "worst feature first: {r:#}");
    assert!(top["alert_since_ms"].is_i64(), "{top}");

    // Delivered to both webhooks; /flaky refused the first attempt.
    let delivered = hooks.wait_events("/hook", "drift_alert", 1).await;
    let alert = delivered[0].clone();
    assert_feature_alert(&alert);
    let flaky = hooks.wait_events("/flaky", "drift_alert", 1).await;
    assert_eq!(flaky[0], alert, "the same event after a retry");
    assert_eq!(hooks.hooks.flaky_attempts.load(Ordering::SeqCst), 2);
    assert_eq!(
        report_events(&r, "drift_alert"),
        std::slice::from_ref(&alert),
        "{r:#}"
    );

    // More shifted traffic: the alert stays, and is not sent again.
    let shifted = shifted_rows();
    ts.infer_rows(DEPLOYMENT, &cycle(&shifted, needed, 4 * EVALUATE_EVERY))
        .await;
    let r = wait_settled(&ts, now_ms()).await;
    assert_eq!(alerting_features(&r), [SHIFTED_FEATURE], "{r:#}");
    assert_eq!(
        report_events(&r, "drift_alert"),
        std::slice::from_ref(&alert),
        "{r:#}"
    );
    assert!(report_events(&r, "retrain_recommended").is_empty(), "{r:#}");
    assert_eq!(
        hooks.events("/hook", "drift_alert"),
        std::slice::from_ref(&alert)
    );
    assert_eq!(
        hooks.events("/flaky", "drift_alert"),
        std::slice::from_ref(&alert)
    );
    assert_eq!(hooks.all().len(), 2, "{:#?}", hooks.all());

    // contender drift: the table, and --json.
    let url = ts.base.clone();
    let out = cli(&["drift", DEPLOYMENT, "--url", &url]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("deployment {DEPLOYMENT}: ALERT"))
            && lines[0].contains(CHAMPION)
            && lines[0].contains(&format!("window {WINDOW} rows")),
        "{stdout}"
    );
    for header in ["FEATURE", "STATE", "PSI", "KS P", "WASSERSTEIN/STD"] {
        assert!(lines[1].contains(header), "{stdout}");
    }
    let feature_lines: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            r["features"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| l.starts_with(f["name"].as_str().unwrap()))
        })
        .collect();
    assert_eq!(feature_lines.len(), 30, "{stdout}");
    assert!(
        lines[2].starts_with(SHIFTED_FEATURE) && lines[2].contains("alert"),
        "the drifted feature first: {stdout}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(" alert ")).count(),
        1,
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("predictions {CHAMPION}:")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("event drift_alert at {}", alert["at_ms"]))
            && stdout.contains(&format!("feature:{SHIFTED_FEATURE}")),
        "{stdout}"
    );
    let out = cli(&["drift", DEPLOYMENT, "--url", &url, "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--json is not JSON ({e}): {}", text(&out.stdout)));
    assert_eq!(v["deployment"], DEPLOYMENT, "{v:#}");
    assert_eq!(v["state"], "alert", "{v:#}");
    assert_eq!(v["features"][0]["name"], SHIFTED_FEATURE, "{v:#}");
    assert_eq!(report_events(&v, "drift_alert"), [alert], "{v:#}");
    let out = cli(&["drift", "nowhere", "--url", &url]).await;
    assert!(!out.status.success(), "an unknown deployment fails");
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));

    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisting_alert_recommends_retraining_by_webhook_and_command() {
    let hooks = Receiver::start().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out_file = dir.path().join("retrain.json");
    let script = format!("cat > '{}'", out_file.display());
    let toml = drift_toml(&format!(
        "retrain_after_secs = 1\n\
         webhooks = [{}]\n\
         retrain_command = [\"sh\", \"-c\", {}]",
        toml_str(&hooks.url("/hook")),
        toml_str(&script)
    ));
    let ts = TestServer::start_with("", &toml).await;

    let needed = shift_until_alert(&ts, MIN_ROWS).await;
    assert_eq!(needed, MIN_ROWS + (RAISE_AFTER - 1) * EVALUATE_EVERY);
    let alert = hooks.wait_events("/hook", "drift_alert", 1).await[0].clone();
    assert_feature_alert(&alert);

    // Keep the alert going until it has lasted retrain_after_secs and a
    // scoring notices.
    let shifted = shifted_rows();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut sent = needed;
    while hooks.events("/hook", "retrain_recommended").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no retrain_recommended within {SETTLE_TIMEOUT:?}: {:#}",
            report(&ts).await
        );
        ts.infer_rows(DEPLOYMENT, &cycle(&shifted, sent, EVALUATE_EVERY))
            .await;
        sent += EVALUATE_EVERY;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let retrain = hooks.events("/hook", "retrain_recommended")[0].clone();
    assert_eq!(retrain["deployment"], DEPLOYMENT, "{retrain:#}");
    assert_eq!(retrain["model"], CHAMPION, "{retrain:#}");
    assert!(retrain["at_ms"].as_i64() >= alert["at_ms"].as_i64());
    let reason = retrain["reason"].as_str().expect("a reason");
    assert!(
        reason.contains(&format!("feature:{SHIFTED_FEATURE}")) && reason.contains("1 s"),
        "{reason}"
    );
    let evidence = retrain["evidence"].as_array().expect("evidence");
    let e = evidence
        .iter()
        .find(|e| e["key"] == format!("feature:{SHIFTED_FEATURE}"))
        .unwrap_or_else(|| panic!("no evidence for the feature: {retrain:#}"));
    assert_eq!(e["level"], "alert", "{e}");
    assert!(num(&e["psi"], "psi") >= 0.25, "{e}");
    assert!(
        num(&e["ks_p_value"], "p") < num(&e["ks_p_threshold"], "threshold"),
        "{e}"
    );
    let since = e["alert_since_ms"].as_i64().expect("alert_since_ms");
    assert!(
        retrain["at_ms"].as_i64().unwrap() - since >= 1000,
        "in alert for retrain_after_secs: {retrain:#}"
    );

    // The command got the same event on stdin.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let from_command = loop {
        if let Ok(text) = std::fs::read_to_string(&out_file)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the retraining command wrote no JSON to {} within {SETTLE_TIMEOUT:?}",
            out_file.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(from_command, retrain);

    // Once per alert episode, however long it lasts.
    ts.infer_rows(DEPLOYMENT, &cycle(&shifted, sent, 2 * EVALUATE_EVERY))
        .await;
    let r = wait_settled(&ts, now_ms()).await;
    assert_eq!(alerting_features(&r), [SHIFTED_FEATURE], "{r:#}");
    assert_eq!(
        report_events(&r, "retrain_recommended"),
        std::slice::from_ref(&retrain)
    );
    assert_eq!(
        report_events(&r, "drift_alert"),
        std::slice::from_ref(&alert)
    );
    assert_eq!(hooks.events("/hook", "retrain_recommended"), [retrain]);
    assert_eq!(hooks.events("/hook", "drift_alert"), [alert]);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_survive_a_restart_and_clear_only_after_clear_after_good_scorings() {
    let hooks = Receiver::start().await;
    let data = tempfile::tempdir().expect("a data directory");
    let toml = drift_toml(&format!("webhooks = [{}]", toml_str(&hooks.url("/hook"))));
    let config = || {
        let mut c = test_config("", &toml);
        c.store.data_dir = data.path().to_path_buf();
        c
    };
    let ts = TestServer::start_in(config()).await;
    shift_until_alert(&ts, MIN_ROWS).await;
    let alert = hooks.wait_events("/hook", "drift_alert", 1).await[0].clone();
    let before = report(&ts).await;
    assert_eq!(
        report_events(&before, "drift_alert"),
        std::slice::from_ref(&alert)
    );
    let since = feature(&before, SHIFTED_FEATURE)["alert_since_ms"].clone();
    assert!(since.is_i64(), "{before:#}");
    ts.stop().await;

    // Restarted on the same data: the alert is still there, at once.
    let ts = TestServer::start_in(config()).await;
    let r = report(&ts).await;
    assert_eq!(r["state"], "alert", "{r:#}");
    assert_eq!(r["events"], before["events"], "the past events: {r:#}");
    let f = feature(&r, SHIFTED_FEATURE);
    assert_eq!(state_of(f), "alert", "{r:#}");
    assert_eq!(f["alert_since_ms"], since, "{r:#}");
    assert_eq!(alerting_features(&r), [SHIFTED_FEATURE], "{r:#}");

    // Unchanged traffic again. The live window starts empty after the
    // restart: the first scoring (at MIN_ROWS rows) is the first good one,
    // and does not clear the alert; CLEAR_AFTER good scorings in a row do.
    let rows = breast_cancer_features();
    let mut sent = 0;
    let mut scorings = 0;
    let cleared = loop {
        let size = if sent == 0 { MIN_ROWS } else { EVALUATE_EVERY };
        let r = step(&ts, &cycle(&rows, sent, size)).await;
        sent += size;
        scorings += 1;
        let f = feature(&r, SHIFTED_FEATURE);
        assert_eq!(f["rows"], sent.min(WINDOW), "one scoring per step: {f}");
        assert_eq!(f["level"], "ok", "an unchanged window scores ok: {f}");
        if state_of(f) != "alert" {
            break r;
        }
        assert_eq!(r["state"], "alert", "{r:#}");
        assert!(
            scorings < CLEAR_AFTER,
            "still in alert after {scorings} good scorings: {r:#}"
        );
    };
    println!("cleared at scoring {scorings} after the restart ({sent} rows)");
    assert_eq!(
        scorings, CLEAR_AFTER,
        "cleared by clear_after good scorings in a row, not before: {cleared:#}"
    );
    let f = feature(&cleared, SHIFTED_FEATURE);
    assert_eq!(state_of(f), "ok", "{f}");
    assert!(f["alert_since_ms"].is_null(), "{f}");
    assert!(alerting_features(&cleared).is_empty(), "{cleared:#}");
    // No new alert was sent for the restored one.
    assert_eq!(
        report_events(&cleared, "drift_alert"),
        std::slice::from_ref(&alert)
    );
    assert_eq!(hooks.events("/hook", "drift_alert"), [alert]);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_labels_show_accuracy_decay_against_the_training_metric() {
    let hooks = Receiver::start().await;
    // A window that holds all the traffic: the inputs never drift here.
    let toml = format!(
        "[deployments.{DEPLOYMENT}.drift]\n\
         window = 1000\n\
         min_rows = {MIN_ROWS}\n\
         evaluate_every = {EVALUATE_EVERY}\n\
         min_labels = 100\n\
         webhooks = [{}]\n",
        toml_str(&hooks.url("/hook"))
    );
    let ts = TestServer::start_with("", &toml).await;
    let rows = breast_cancer_features();
    let truth = breast_cancer_labels();
    let n = rows.len();
    let answers = ts.infer_rows(DEPLOYMENT, &rows).await;
    ts.wait_deployment(DEPLOYMENT, "every prediction is logged", |d| {
        logged(d, DEPLOYMENT, 1) == n as u64
    })
    .await;

    // Every label flipped: the champion is right where it was wrong.
    let labels: Vec<Value> = answers
        .iter()
        .zip(&truth)
        .map(|(a, t)| json!({ "id": a.id, "label": 1 - t }))
        .collect();
    let (status, body) = ts.feedback(DEPLOYMENT, &json!({ "labels": labels })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["summary"]["accepted"], n, "{body}");

    // Scorings come with rows (and on the idle timer); keep traffic going
    // until the accuracy state has risen.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut sent = n;
    let r = loop {
        let r = report(&ts).await;
        if r["accuracy"]["state"] == "alert" {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no accuracy alert within {SETTLE_TIMEOUT:?}: {r:#}"
        );
        ts.infer_rows(DEPLOYMENT, &cycle(&rows, sent, EVALUATE_EVERY))
            .await;
        sent += EVALUATE_EVERY;
    };
    let predicted = expected_classes(1);
    let right = predicted
        .iter()
        .zip(&truth)
        .filter(|(p, t)| **p == 1 - **t)
        .count();
    let want = right as f64 / n as f64;
    let training = 0.986014; // [metrics] accuracy in breast_cancer/1/model.toml
    let a = &r["accuracy"];
    assert_eq!(a["metric"], "accuracy", "{a:#}");
    assert_eq!(a["labelled_in_window"], n, "{a:#}");
    assert!((num(&a["window"], "window") - want).abs() < 1e-12, "{a:#}");
    assert_eq!(a["training"], training, "{a:#}");
    assert!(
        (num(&a["drop_vs_training"], "drop") - (training - want)).abs() < 1e-12,
        "{a:#}"
    );
    assert_eq!(a["threshold"], 0.05, "{a:#}");
    assert_eq!(a["level"], "alert", "{a:#}");
    assert_eq!(r["state"], "alert", "{r:#}");
    assert!(
        alerting_features(&r).is_empty(),
        "inputs did not drift: {r:#}"
    );
    let history = a["history"].as_array().expect("history");
    assert!(
        history
            .iter()
            .any(|h| (num(&h[1], "accuracy") - want).abs() < 1e-12),
        "{a:#}"
    );

    // The alert names accuracy, with its evidence.
    let alert = hooks.wait_events("/hook", "drift_alert", 1).await[0].clone();
    assert_eq!(alert["model"], CHAMPION, "{alert:#}");
    let drifted = alert["drifted"].as_array().expect("drifted");
    let acc = drifted
        .iter()
        .find(|d| d["key"] == "accuracy")
        .unwrap_or_else(|| panic!("no accuracy in the alert: {alert:#}"));
    assert_eq!(acc["training"], training, "{acc}");
    assert!(
        (num(&acc["window"], "window") - want).abs() < 1e-12,
        "{acc}"
    );
    assert_eq!(
        report_events(&r, "drift_alert").last(),
        Some(&alert),
        "{r:#}"
    );
    ts.stop().await;
}
