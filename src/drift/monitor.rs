//! The live side of drift monitoring.
//!
//! Requests are sampled (a hash of the request id against
//! `drift.sample_rate`, at most `drift.max_rows_per_sec` rows a second; see
//! [`Sampling`]) and their input rows and predictions handed to one
//! monitor thread through a bounded queue — a full queue drops the sample
//! (counted), so monitoring never slows inference. The thread keeps a
//! window of the last `drift.window` rows per feature and per model's
//! predictions, scores them against the model version's `reference.json`
//! every `drift.evaluate_every` rows (at most four times a second, and every
//! two seconds when traffic is idle, so its cost is bounded), and moves each feature's state
//! ok → warning → alert with hysteresis (`raise_after` / `clear_after`
//! consecutive scorings).
//!
//! A numeric feature's level is set by effect size *and* significance:
//! the KS test must reject at `ks_p / m` (Bonferroni over the `m` monitored
//! features, since every feature is tested at every scoring), and then
//! PSI ≥ `psi_alert` is an alert, PSI ≥ `psi_warn` or normalised
//! Wasserstein ≥ `wasserstein` a warning. Categorical features and class
//! predictions use chi-square (at `chi2_p / m`) with PSI and the
//! Jensen–Shannon distance. Requiring significance keeps small windows of
//! an unchanged stream from flapping on noise; requiring an effect size
//! keeps huge windows from alerting on negligible shifts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::reference::{FeatureReference, PredictionReference, ReferenceStats};
use super::stats::{self, Thresholds};
use crate::clock::now_ms;
use crate::config::DriftConfig;
use crate::evaluation::prediction::Prediction;
use crate::evaluation::{Evaluator, key_label};

/// How bad one thing looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    #[default]
    Ok,
    Warning,
    Alert,
}

/// One sampled request.
pub struct Sample {
    pub deployment: Arc<str>,
    /// The model that produced `predictions` (`model@version`).
    pub model: String,
    /// Whether this model is the deployment's champion (its reference and
    /// training metrics are the ones inputs and accuracy are judged against).
    pub champion: bool,
    pub reference: Option<Arc<ReferenceStats>>,
    /// Row-major rows of the first input (columns, values), once per sampled request.
    pub rows: Option<(usize, Vec<f64>)>,
    pub predictions: Vec<Prediction>,
    /// The training metrics from model.toml (champion samples only).
    pub training: Option<Arc<BTreeMap<String, f64>>>,
}

/// Which requests feed a deployment's drift windows: the share
/// `sample_rate` of request ids (a hash, so the same id is always in or
/// out), and at most `max_rows_per_sec` rows in each second.
///
/// The cap keeps monitoring cheap under heavy traffic: a window of 500 rows
/// says as much about the input distribution at 40,000 requests a second as
/// at 1,000, while copying every request's rows to the monitor thread cost
/// several microseconds of CPU each. The counter is a fixed one-second
/// window in two atomics (no lock on the request path); a request is
/// sampled whole when the second's budget was not used up before it.
#[derive(Debug)]
pub struct Sampling {
    rate: f64,
    max_rows_per_sec: u64,
    since: Instant,
    second: AtomicU64,
    used: AtomicU64,
}

impl Sampling {
    pub fn new(rate: f64, max_rows_per_sec: u64) -> Sampling {
        Sampling {
            rate,
            max_rows_per_sec,
            since: Instant::now(),
            second: AtomicU64::new(0),
            used: AtomicU64::new(0),
        }
    }

    /// Whether request `id` (of `rows` rows, arrived at `now`) is sampled.
    pub fn sample(&self, id: &str, rows: usize, now: Instant) -> bool {
        let by_id = self.rate >= 1.0
            || (self.rate > 0.0 && crate::traffic::unit(0x5eed_d1f7, 0, id) < self.rate);
        by_id && self.within_budget(rows, now)
    }

    fn within_budget(&self, rows: usize, now: Instant) -> bool {
        if self.max_rows_per_sec == 0 {
            return true;
        }
        let second = now.saturating_duration_since(self.since).as_secs();
        let current = self.second.load(Ordering::Relaxed);
        if second > current
            && self
                .second
                .compare_exchange(current, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        // Read before adding: once the second's budget is spent, requests
        // only read the shared counter (no cache-line ping-pong between cores).
        self.used.load(Ordering::Relaxed) < self.max_rows_per_sec
            && self.used.fetch_add(rows as u64, Ordering::Relaxed) < self.max_rows_per_sec
    }
}

/// A state with hysteresis.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tracked {
    pub state: Level,
    /// Consecutive scorings above / below the state.
    pub higher: u32,
    pub lower: u32,
    /// When the state last became `Alert` (ms), while it is.
    pub alert_since_ms: Option<i64>,
    /// Whether the retraining event for this alert episode was sent.
    pub retrain_sent: bool,
}

impl Tracked {
    fn observe(&mut self, level: Level, raise_after: u32, clear_after: u32, now: i64) -> bool {
        let before = self.state;
        if level > self.state {
            self.higher += 1;
            self.lower = 0;
            if self.higher >= raise_after {
                self.state = level;
                self.higher = 0;
            }
        } else if level < self.state {
            self.lower += 1;
            self.higher = 0;
            if self.lower >= clear_after {
                self.state = level;
                self.lower = 0;
            }
        } else {
            self.higher = 0;
            self.lower = 0;
        }
        match (before == Level::Alert, self.state == Level::Alert) {
            (false, true) => {
                self.alert_since_ms = Some(now);
                self.retrain_sent = false;
            }
            (true, false) => {
                self.alert_since_ms = None;
                self.retrain_sent = false;
            }
            _ => {}
        }
        before != self.state
    }
}

/// Durable part of a deployment's drift monitoring.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DriftState {
    /// By key: `feature:<name>`, `predictions:<model@version>`, `accuracy`.
    pub tracked: BTreeMap<String, Tracked>,
    /// The alerting keys last notified, and when.
    pub last_alert: Option<(Vec<String>, i64)>,
    /// Alerts and retraining events raised (most recent last, bounded).
    pub events: VecDeque<Value>,
    /// Earlier windowed accuracies of the champion, oldest first (bounded).
    pub accuracy_history: VecDeque<(i64, f64)>,
}

const MAX_EVENTS: usize = 100;

impl DriftState {
    /// Keys in alert for at least `after_secs` whose retraining event is
    /// not sent yet; marks them sent.
    fn take_overdue(&mut self, now: i64, after_secs: u64) -> Vec<String> {
        let mut overdue = Vec::new();
        for (k, t) in &mut self.tracked {
            if t.state == Level::Alert
                && !t.retrain_sent
                && t.alert_since_ms
                    .is_some_and(|since| now - since >= after_secs as i64 * 1000)
            {
                t.retrain_sent = true;
                overdue.push(k.clone());
            }
        }
        overdue
    }

    /// Keeps an event (the last `MAX_EVENTS`).
    fn push_event(&mut self, e: Value) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }
}

fn retrain_event(
    deployment: &str,
    champion: Option<&str>,
    now: i64,
    overdue: &[String],
    after_secs: u64,
    evidence: Vec<Value>,
) -> Value {
    json!({
        "event": "retrain_recommended",
        "deployment": deployment,
        "model": champion,
        "at_ms": now,
        "reason": format!("{} stayed in alert for at least {after_secs} s", overdue.join(", ")),
        "evidence": evidence,
    })
}
const MAX_ACCURACY_HISTORY: usize = 50;

/// What a person reads: the latest scores.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DriftReport {
    pub deployment: String,
    pub champion: Option<String>,
    pub evaluated_at_ms: Option<i64>,
    pub window_rows: usize,
    pub state: Level,
    pub features: Vec<Value>,
    pub predictions: Vec<Value>,
    pub accuracy: Option<Value>,
    pub before_labels: Value,
    pub events: Vec<Value>,
    pub samples_dropped: u64,
}

struct Windows {
    columns: Vec<VecDeque<f64>>,
    predictions: BTreeMap<String, VecDeque<Prediction>>,
    since_eval: usize,
    reference: Option<Arc<ReferenceStats>>,
    references: BTreeMap<String, Arc<ReferenceStats>>,
    champion: Option<String>,
    training: Option<Arc<BTreeMap<String, f64>>>,
    first_ms: i64,
    last_ms: i64,
    last_eval_ms: i64,
    /// Rows added since the last scoring (of any trigger).
    fresh_rows: usize,
    /// Labelled rows of the deployment at the last scoring.
    last_labelled: u64,
}

/// Stores a deployment's drift state, with the event that changed it.
pub type Persist = Box<dyn Fn(&str, &DriftState, Option<&Value>) + Send>;

/// Events for delivery (webhooks, retraining command).
#[derive(Clone, Debug)]
pub struct Notice {
    pub deployment: String,
    pub event: Value,
    pub retrain: bool,
}

/// The monitor's handle, shared by request handlers.
pub struct DriftMonitor {
    tx: Sender<Sample>,
    reports: Arc<Mutex<HashMap<String, DriftReport>>>,
    dropped: Arc<AtomicU64>,
}

impl DriftMonitor {
    /// Starts the monitor thread. `states` are the stored states;
    /// `persist` stores a deployment's state (and an event); `notify` gets
    /// the events to deliver.
    pub fn start(
        configs: BTreeMap<String, DriftConfig>,
        states: HashMap<String, DriftState>,
        evaluator: Arc<Evaluator>,
        persist: Persist,
        notify: tokio::sync::mpsc::Sender<Notice>,
    ) -> DriftMonitor {
        let (tx, rx) = crossbeam_channel::bounded(4096);
        let reports = Arc::new(Mutex::new(HashMap::new()));
        let dropped = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            configs,
            states,
            windows: HashMap::new(),
            evaluator,
            persist,
            notify,
            reports: Arc::clone(&reports),
            dropped: Arc::clone(&dropped),
        };
        std::thread::Builder::new()
            .name("drift-monitor".into())
            .spawn(move || worker.run(rx))
            .expect("spawning the drift monitor thread");
        DriftMonitor {
            tx,
            reports,
            dropped,
        }
    }

    /// Queues a sample; never waits (a full queue drops it and counts it).
    pub fn push(&self, s: Sample) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(s) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn report(&self, deployment: &str) -> DriftReport {
        let mut r = self
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(deployment)
            .cloned()
            .unwrap_or_else(|| DriftReport {
                deployment: deployment.to_owned(),
                ..DriftReport::default()
            });
        r.samples_dropped = self.dropped.load(Ordering::Relaxed);
        r
    }
}

struct Worker {
    configs: BTreeMap<String, DriftConfig>,
    states: HashMap<String, DriftState>,
    windows: HashMap<String, Windows>,
    evaluator: Arc<Evaluator>,
    persist: Persist,
    notify: tokio::sync::mpsc::Sender<Notice>,
    reports: Arc<Mutex<HashMap<String, DriftReport>>>,
    dropped: Arc<AtomicU64>,
}

const TICK: Duration = Duration::from_secs(2);
/// How often an idle monitor looks at its queue.
const POLL: Duration = Duration::from_millis(5);
/// Least time between two scorings of one deployment driven by traffic.
const MIN_INTERVAL_MS: i64 = 250;

impl Worker {
    fn run(mut self, rx: Receiver<Sample>) {
        // Publish the stored states at once (alerts survive restarts).
        let names: Vec<String> = self.configs.keys().cloned().collect();
        for name in &names {
            self.publish(name, None);
        }
        // Polls instead of parking on the queue, so a request that pushes a
        // sample never pays for waking this thread.
        // The timer runs once the queue has been quiet for TICK (traffic
        // scores on its own), and then every TICK.
        let mut last_tick = std::time::Instant::now();
        let mut last_sample = std::time::Instant::now();
        loop {
            let mut idle = true;
            loop {
                match rx.try_recv() {
                    Ok(s) => {
                        idle = false;
                        last_sample = std::time::Instant::now();
                        self.add(s);
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                }
            }
            if last_tick.elapsed() >= TICK && last_sample.elapsed() >= TICK {
                last_tick = std::time::Instant::now();
                for name in &names {
                    self.tick(name);
                }
            }
            if idle {
                std::thread::sleep(POLL);
            }
        }
    }

    fn add(&mut self, s: Sample) {
        let name = s.deployment.to_string();
        let Some(cfg) = self.configs.get(&name) else {
            return;
        };
        let window = cfg.window;
        let now = now_ms();
        let w = self.windows.entry(name.clone()).or_insert_with(|| Windows {
            columns: Vec::new(),
            predictions: BTreeMap::new(),
            since_eval: 0,
            reference: None,
            references: BTreeMap::new(),
            champion: None,
            training: None,
            first_ms: now,
            last_ms: now,
            last_eval_ms: 0,
            fresh_rows: 0,
            last_labelled: 0,
        });
        w.last_ms = now;
        if let Some(r) = &s.reference {
            w.references.insert(s.model.clone(), Arc::clone(r));
        }
        let preds = w.predictions.entry(s.model.clone()).or_default();
        for p in s.predictions {
            if preds.len() == window {
                preds.pop_front();
            }
            preds.push_back(p);
        }
        if s.champion {
            if w.champion.as_deref() != Some(s.model.as_str()) {
                w.champion = Some(s.model.clone());
            }
            w.reference = s.reference;
            w.training = s.training;
        }
        {
            if let Some((cols, data)) = s.rows {
                if w.columns.len() != cols {
                    w.columns = vec![VecDeque::with_capacity(window); cols];
                }
                for row in data.chunks_exact(cols.max(1)) {
                    for (c, &v) in w.columns.iter_mut().zip(row) {
                        if c.len() == window {
                            c.pop_front();
                        }
                        c.push_back(v);
                    }
                    w.since_eval += 1;
                    w.fresh_rows += 1;
                }
            }
        }
        let rows = w.columns.first().map_or(0, VecDeque::len);
        // Score after `evaluate_every` new rows, but not more often than
        // MIN_INTERVAL: the cost of monitoring stays bounded at any traffic.
        if w.since_eval >= cfg.evaluate_every
            && rows >= cfg.min_rows
            && now - w.last_eval_ms >= MIN_INTERVAL_MS
        {
            w.since_eval = 0;
            w.last_eval_ms = now;
            self.evaluate(&name, false);
        }
    }

    /// Timer work: rows the rate limit held back, new labels (accuracy
    /// decay), and retraining deadlines — also for alerts restored at start.
    fn tick(&mut self, name: &str) {
        self.evaluate(name, true);
    }

    /// Scores a deployment. A scoring counts towards the hysteresis only
    /// when new rows or labels arrived since the last one, so an idle window
    /// is never re-counted; a timer scoring without new data only checks the
    /// retraining deadlines.
    fn evaluate(&mut self, name: &str, timer: bool) {
        let Some(cfg) = self.configs.get(name).cloned() else {
            return;
        };
        let labelled = self.evaluator.counters(name).1;
        let fresh = match self.windows.get_mut(name) {
            Some(w) => {
                let fresh = w.fresh_rows > 0 || w.last_labelled != labelled;
                w.fresh_rows = 0;
                w.last_labelled = labelled;
                fresh
            }
            None => false,
        };
        if timer && !fresh {
            self.check_deadlines(name, &cfg);
            return;
        }
        let Some(w) = self.windows.get(name) else {
            return;
        };
        let now = now_ms();
        let rows = w.columns.first().map_or(0, VecDeque::len);
        let mut levels: Vec<(String, Level, Value)> = Vec::new();
        // Input features against the champion's reference.
        if let Some(reference) = &w.reference
            && rows >= cfg.min_rows
        {
            let m = reference.features.len().max(1) as f64;
            for f in &reference.features {
                let Some(col) = w.columns.get(f.column()) else {
                    continue;
                };
                let live: Vec<f64> = col.iter().copied().collect();
                let t = cfg.thresholds_for(f.name());
                let (level, scores) = score_feature(f, &live, &t, m);
                levels.push((format!("feature:{}", f.name()), level, scores));
            }
        }
        // Each model's predictions against its own reference.
        for (model, preds) in &w.predictions {
            let Some(reference) = w.references.get(model) else {
                continue;
            };
            let Some(pr) = &reference.predictions else {
                continue;
            };
            if preds.len() < cfg.min_rows {
                continue;
            }
            let (level, mut scores) = score_predictions(pr, preds, &cfg.thresholds);
            scores["model"] = json!(model);
            levels.push((format!("predictions:{model}"), level, scores));
        }
        // Accuracy decay of the champion, once labels arrive.
        let accuracy = w
            .champion
            .as_ref()
            .and_then(|c| self.accuracy(name, c, w.training.as_deref(), &cfg));
        if let Some((level, v)) = &accuracy {
            levels.push(("accuracy".into(), *level, v.clone()));
        }
        let before_labels = self.before_labels(name, w);
        let (first_ms, last_ms, champion) = (w.first_ms, w.last_ms, w.champion.clone());

        let state = self.states.entry(name.to_owned()).or_default();
        let mut changed = false;
        for (key, level, _) in &levels {
            let t = state.tracked.entry(key.clone()).or_default();
            changed |= t.observe(*level, cfg.raise_after, cfg.clear_after, now);
        }
        if let Some((_, v)) = &accuracy
            && let Some(acc) = v["window"].as_f64()
            && state
                .accuracy_history
                .back()
                .is_none_or(|(_, a)| (a - acc).abs() > f64::EPSILON)
        {
            if state.accuracy_history.len() == MAX_ACCURACY_HISTORY {
                state.accuracy_history.pop_front();
            }
            state.accuracy_history.push_back((now, acc));
        }
        // Alert: the alerting keys, worst first, deduplicated with a cool-down.
        let mut alerting: Vec<&(String, Level, Value)> = levels
            .iter()
            .filter(|(k, _, _)| {
                state
                    .tracked
                    .get(k)
                    .is_some_and(|t| t.state == Level::Alert)
            })
            .collect();
        alerting.sort_by(|a, b| severity(&b.2).total_cmp(&severity(&a.2)));
        let keys: Vec<String> = alerting.iter().map(|(k, _, _)| k.clone()).collect();
        let mut event = None;
        if !keys.is_empty() {
            let new_keys = state
                .last_alert
                .as_ref()
                .is_none_or(|(sent, _)| keys.iter().any(|k| !sent.contains(k)));
            let cooled = state
                .last_alert
                .as_ref()
                .is_none_or(|(_, at)| now - at >= cfg.cooldown_secs as i64 * 1000);
            if new_keys || cooled {
                let e = json!({
                    "event": "drift_alert",
                    "deployment": name,
                    "model": champion,
                    "at_ms": now,
                    "window": { "rows": rows, "from_ms": first_ms, "to_ms": last_ms },
                    "drifted": alerting.iter().map(|(k, _, v)| {
                        let mut v = v.clone();
                        v["key"] = json!(k);
                        v
                    }).collect::<Vec<_>>(),
                });
                state.last_alert = Some((keys.clone(), now));
                event = Some(e);
            }
        } else if state.last_alert.is_some()
            && !state.tracked.values().any(|t| t.state == Level::Alert)
        {
            state.last_alert = None;
        }
        // Retraining: an alert that has lasted retrain_after_secs.
        let mut retrain = None;
        let overdue = state.take_overdue(now, cfg.retrain_after_secs);
        if !overdue.is_empty() {
            let evidence: Vec<Value> = levels
                .iter()
                .filter(|(k, _, _)| overdue.contains(k))
                .map(|(k, _, v)| {
                    let mut v = v.clone();
                    v["key"] = json!(k);
                    v["alert_since_ms"] =
                        json!(state.tracked.get(k).and_then(|t| t.alert_since_ms));
                    v
                })
                .collect();
            retrain = Some(retrain_event(
                name,
                champion.as_deref(),
                now,
                &overdue,
                cfg.retrain_after_secs,
                evidence,
            ));
        }
        for e in [&event, &retrain].into_iter().flatten() {
            state.push_event(e.clone());
        }
        let state = state.clone();
        if changed || event.is_some() || retrain.is_some() {
            (self.persist)(name, &state, event.as_ref().or(retrain.as_ref()));
        }
        for (e, is_retrain) in [(event, false), (retrain, true)] {
            if let Some(e) = e {
                self.deliver(name, e, is_retrain);
            }
        }
        crate::telemetry::drift_levels(name, &levels, &state.tracked);
        self.publish(
            name,
            Some(Scored {
                levels,
                accuracy: accuracy.map(|(_, v)| v),
                before_labels,
                rows,
                champion,
                at: now,
            }),
        );
    }

    /// Sends `retrain_recommended` for alerts that have lasted long enough,
    /// without scoring (no new data).
    fn check_deadlines(&mut self, name: &str, cfg: &DriftConfig) {
        let now = now_ms();
        let Some(state) = self.states.get_mut(name) else {
            return;
        };
        let overdue = state.take_overdue(now, cfg.retrain_after_secs);
        if overdue.is_empty() {
            return;
        }
        let evidence: Vec<Value> = overdue
            .iter()
            .map(|k| json!({ "key": k, "alert_since_ms": state.tracked.get(k).and_then(|t| t.alert_since_ms) }))
            .collect();
        let champion = self.windows.get(name).and_then(|w| w.champion.clone());
        let event = retrain_event(
            name,
            champion.as_deref(),
            now,
            &overdue,
            cfg.retrain_after_secs,
            evidence,
        );
        state.push_event(event.clone());
        let snapshot = state.clone();
        (self.persist)(name, &snapshot, Some(&event));
        self.deliver(name, event, true);
        self.publish(name, None);
    }

    /// Logs an event and hands it to the notifier (never waits).
    fn deliver(&self, name: &str, event: Value, retrain: bool) {
        tracing::warn!(deployment = name, event = %event["event"], "drift event");
        let _ = self.notify.try_send(Notice {
            deployment: name.to_owned(),
            event,
            retrain,
        });
    }

    fn accuracy(
        &self,
        name: &str,
        champion: &str,
        training: Option<&BTreeMap<String, f64>>,
        cfg: &DriftConfig,
    ) -> Option<(Level, Value)> {
        let snap = self.evaluator.snapshot(name);
        let m = snap
            .models
            .iter()
            .find(|m| key_label(&(m.model.clone(), m.version)) == champion)?;
        if m.window.labelled < cfg.min_labels {
            return None;
        }
        let state = self.states.get(name);
        let earlier = state.and_then(|s| s.accuracy_history.front().map(|(_, a)| *a));
        let (metric, window, train, drop) = if let Some(acc) = m.window.accuracy {
            let train = training.and_then(|t| t.get("accuracy").copied());
            ("accuracy", acc, train, train.map(|t| t - acc))
        } else if let Some(mae) = m.window.mae {
            let train = training.and_then(|t| t.get("mae").copied());
            // Relative increase of the error over training.
            (
                "mae",
                mae,
                train,
                train.filter(|t| *t > 0.0).map(|t| (mae - t) / t),
            )
        } else {
            return None;
        };
        let level = match drop {
            Some(d) if d >= 2.0 * cfg.accuracy_drop => Level::Alert,
            Some(d) if d >= cfg.accuracy_drop => Level::Warning,
            _ => Level::Ok,
        };
        Some((
            level,
            json!({
                "metric": metric,
                "window": window,
                "training": train,
                "drop_vs_training": drop,
                "earliest_window": earlier,
                "labelled_in_window": m.window.labelled,
                "threshold": cfg.accuracy_drop,
                "level": level,
            }),
        ))
    }

    fn before_labels(&self, name: &str, w: &Windows) -> Value {
        let snap = self.evaluator.snapshot(name);
        let disagreement: BTreeMap<String, f64> = snap
            .models
            .iter()
            .filter_map(|m| {
                m.agreement_with_champion
                    .map(|a| (key_label(&(m.model.clone(), m.version)), 1.0 - a))
            })
            .collect();
        let estimated = w
            .champion
            .as_ref()
            .and_then(|c| w.predictions.get(c))
            .and_then(|preds| {
                let conf: Vec<f64> = preds
                    .iter()
                    .filter_map(|p| match p {
                        Prediction::Class {
                            probabilities: Some(p),
                            ..
                        } => p
                            .iter()
                            .copied()
                            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
                        _ => None,
                    })
                    .collect();
                (!conf.is_empty()).then(|| conf.iter().sum::<f64>() / conf.len() as f64)
            });
        json!({
            "estimated_accuracy": estimated,
            "estimate": "mean highest class probability of the champion over the window (exact for a calibrated model)",
            "disagreement_with_champion": disagreement,
        })
    }

    fn publish(&self, name: &str, scored: Option<Scored>) {
        let state = self.states.get(name).cloned().unwrap_or_default();
        let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        let r = reports
            .entry(name.to_owned())
            .or_insert_with(|| DriftReport {
                deployment: name.to_owned(),
                ..DriftReport::default()
            });
        r.events = state.events.iter().cloned().collect();
        r.state = state
            .tracked
            .values()
            .map(|t| t.state)
            .max()
            .unwrap_or_default();
        let Some(s) = scored else {
            // Nothing scored yet since the start: show the stored states (a
            // restored alert names its feature at once), worst first.
            if r.evaluated_at_ms.is_none() {
                let stored = |prefix: &str, field: &str| -> Vec<Value> {
                    let mut v: Vec<(Level, Value)> = state
                        .tracked
                        .iter()
                        .filter_map(|(k, t)| {
                            let id = k.strip_prefix(prefix)?;
                            Some((
                                t.state,
                                json!({ field: id, "state": t.state, "alert_since_ms": t.alert_since_ms }),
                            ))
                        })
                        .collect();
                    v.sort_by_key(|(level, _)| std::cmp::Reverse(*level));
                    v.into_iter().map(|(_, v)| v).collect()
                };
                r.features = stored("feature:", "name");
                r.predictions = stored("predictions:", "model");
                r.accuracy = state.tracked.get("accuracy").map(
                    |t| json!({ "state": t.state, "alert_since_ms": t.alert_since_ms, "history": state.accuracy_history }),
                );
            }
            return;
        };
        let with_state = |key: &str, mut v: Value| {
            if let Some(t) = state.tracked.get(key) {
                v["state"] = json!(t.state);
                v["alert_since_ms"] = json!(t.alert_since_ms);
            }
            v
        };
        let mut features: Vec<Value> = s
            .levels
            .iter()
            .filter(|(k, _, _)| k.starts_with("feature:"))
            .map(|(k, _, v)| with_state(k, v.clone()))
            .collect();
        features.sort_by(|a, b| severity(b).total_cmp(&severity(a)));
        r.features = features;
        r.predictions = s
            .levels
            .iter()
            .filter(|(k, _, _)| k.starts_with("predictions:"))
            .map(|(k, _, v)| with_state(k, v.clone()))
            .collect();
        r.accuracy = s.accuracy.map(|v| {
            let mut v = with_state("accuracy", v);
            v["history"] = json!(state.accuracy_history);
            v
        });
        r.before_labels = s.before_labels;
        r.window_rows = s.rows;
        r.champion = s.champion;
        r.evaluated_at_ms = Some(s.at);
        let _ = self.dropped.load(Ordering::Relaxed);
    }
}

struct Scored {
    levels: Vec<(String, Level, Value)>,
    accuracy: Option<Value>,
    before_labels: Value,
    rows: usize,
    champion: Option<String>,
    at: i64,
}

/// Orders findings: level first, then the size of the effect.
fn severity(v: &Value) -> f64 {
    let level = match v["level"].as_str() {
        Some("alert") => 2.0,
        Some("warning") => 1.0,
        _ => 0.0,
    };
    level * 1e6 + v["psi"].as_f64().unwrap_or(0.0).min(1e5)
}

fn level_of(significant: bool, alert: bool, warn: bool) -> Level {
    match (significant, alert, warn) {
        (true, true, _) => Level::Alert,
        (true, false, true) => Level::Warning,
        _ => Level::Ok,
    }
}

/// Scores one feature window; `m` features are tested at once (Bonferroni).
fn score_feature(f: &FeatureReference, live: &[f64], t: &Thresholds, m: f64) -> (Level, Value) {
    match f {
        FeatureReference::Numeric {
            name,
            edges,
            fractions,
            std,
            sample,
            ..
        } => {
            let counts = stats::histogram(edges, live.iter().copied());
            let psi = stats::psi(fractions, &counts);
            let ks = stats::ks_2samp(sample, live);
            let w = stats::wasserstein_normalised(sample, live, *std);
            let ks_threshold = t.ks_p / m;
            let significant = ks.is_some_and(|(_, p)| p < ks_threshold);
            let psi_v = psi.unwrap_or(0.0);
            let level = level_of(
                significant,
                psi_v >= t.psi_alert,
                psi_v >= t.psi_warn || w.is_some_and(|w| w >= t.wasserstein),
            );
            (
                level,
                json!({
                    "name": name, "kind": "numeric", "rows": live.len(), "level": level,
                    "psi": psi, "psi_warn": t.psi_warn, "psi_alert": t.psi_alert,
                    "ks_statistic": ks.map(|k| k.0), "ks_p_value": ks.map(|k| k.1),
                    "ks_p_threshold": ks_threshold,
                    "wasserstein_normalised": w, "wasserstein_threshold": t.wasserstein,
                }),
            )
        }
        FeatureReference::Categorical {
            name, frequencies, ..
        } => {
            let keys: Vec<&String> = frequencies.keys().collect();
            let mut reference: Vec<f64> = keys.iter().map(|k| frequencies[*k]).collect();
            reference.push(0.0);
            let mut counts = vec![0u64; keys.len() + 1];
            for v in live {
                let label = format_category(*v);
                match keys.iter().position(|k| **k == label) {
                    Some(i) => counts[i] += 1,
                    None => counts[keys.len()] += 1,
                }
            }
            let chi = stats::chi_square(&reference, &counts);
            let total: u64 = counts.iter().sum();
            let live_frac: Vec<f64> = counts
                .iter()
                .map(|&c| c as f64 / total.max(1) as f64)
                .collect();
            let js = stats::jensen_shannon(&reference, &live_frac);
            let threshold = t.chi2_p / m;
            let significant = chi.is_some_and(|(_, p)| p < threshold);
            let js_v = js.unwrap_or(0.0);
            let level = level_of(significant, js_v >= 2.0 * t.js, js_v >= t.js);
            (
                level,
                json!({
                    "name": name, "kind": "categorical", "rows": live.len(), "level": level,
                    "chi2": chi.map(|c| c.0), "chi2_p_value": chi.map(|c| c.1), "chi2_p_threshold": threshold,
                    "js_distance": js, "js_threshold": t.js,
                }),
            )
        }
    }
}

fn format_category(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn score_predictions(
    pr: &PredictionReference,
    preds: &VecDeque<Prediction>,
    t: &Thresholds,
) -> (Level, Value) {
    match pr {
        PredictionReference::Classes {
            labels,
            fractions,
            mean_confidence,
        } => {
            let mut counts = vec![0u64; fractions.len()];
            let mut confidence = Vec::new();
            for p in preds {
                if let Prediction::Class {
                    label,
                    probabilities,
                } = p
                {
                    if let Some(c) = usize::try_from(*label).ok().and_then(|l| counts.get_mut(l)) {
                        *c += 1;
                    }
                    if let Some(ps) = probabilities {
                        confidence.push(ps.iter().copied().fold(f64::MIN, f64::max));
                    }
                }
            }
            let psi = stats::psi(fractions, &counts);
            let chi = stats::chi_square(fractions, &counts);
            let total: u64 = counts.iter().sum();
            let live: Vec<f64> = counts
                .iter()
                .map(|&c| c as f64 / total.max(1) as f64)
                .collect();
            let js = stats::jensen_shannon(fractions, &live);
            let significant = chi.is_some_and(|(_, p)| p < t.chi2_p);
            let psi_v = psi.unwrap_or(0.0);
            let level = level_of(
                significant,
                psi_v >= t.psi_alert,
                psi_v >= t.psi_warn || js.is_some_and(|j| j >= t.js),
            );
            let mean_conf = (!confidence.is_empty())
                .then(|| confidence.iter().sum::<f64>() / confidence.len() as f64);
            (
                level,
                json!({
                    "kind": "classes", "rows": preds.len(), "level": level, "labels": labels,
                    "reference_fractions": fractions, "live_fractions": live,
                    "psi": psi, "chi2_p_value": chi.map(|c| c.1), "js_distance": js,
                    "mean_confidence": mean_conf, "reference_mean_confidence": mean_confidence,
                }),
            )
        }
        PredictionReference::Numeric {
            edges,
            fractions,
            std,
            sample,
            ..
        } => {
            let live: Vec<f64> = preds
                .iter()
                .filter_map(|p| match p {
                    Prediction::Value { value } => Some(*value),
                    _ => None,
                })
                .collect();
            let counts = stats::histogram(edges, live.iter().copied());
            let psi = stats::psi(fractions, &counts);
            let ks = stats::ks_2samp(sample, &live);
            let w = stats::wasserstein_normalised(sample, &live, *std);
            let significant = ks.is_some_and(|(_, p)| p < t.ks_p);
            let psi_v = psi.unwrap_or(0.0);
            let level = level_of(
                significant,
                psi_v >= t.psi_alert,
                psi_v >= t.psi_warn || w.is_some_and(|w| w >= t.wasserstein),
            );
            (
                level,
                json!({
                    "kind": "numeric", "rows": live.len(), "level": level, "psi": psi,
                    "ks_p_value": ks.map(|k| k.1), "wasserstein_normalised": w,
                }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_admits_at_most_the_rows_of_each_second() {
        let s = Sampling::new(1.0, 10);
        let t0 = s.since;
        // 3-row requests: admitted while fewer than 10 rows were taken.
        let admitted = (0..20)
            .filter(|i| s.sample(&format!("id-{i}"), 3, t0))
            .count();
        assert_eq!(
            admitted, 4,
            "0, 3, 6 and 9 rows taken before each admitted request"
        );
        // The next second has a fresh budget.
        let t1 = t0 + Duration::from_millis(1_500);
        assert!(s.sample("next", 3, t1));
        // No cap: everything is sampled; a rate of 0 samples nothing.
        let all = Sampling::new(1.0, 0);
        assert!((0..1000).all(|i| all.sample(&i.to_string(), 32, t0)));
        let none = Sampling::new(0.0, 0);
        assert!(!(0..1000).any(|i| none.sample(&i.to_string(), 1, t0)));
        // A share of ids, decided by the id alone.
        let half = Sampling::new(0.5, 0);
        let n = (0..10_000)
            .filter(|i| half.sample(&format!("r{i}"), 1, t0))
            .count();
        assert!((4_700..=5_300).contains(&n), "{n} of 10000 at rate 0.5");
        assert_eq!(half.sample("same", 1, t0), half.sample("same", 1, t1));
    }

    #[test]
    fn hysteresis_needs_consecutive_scorings() {
        let mut t = Tracked::default();
        assert!(!t.observe(Level::Alert, 2, 3, 0));
        assert_eq!(t.state, Level::Ok);
        assert!(t.observe(Level::Alert, 2, 3, 10));
        assert_eq!((t.state, t.alert_since_ms), (Level::Alert, Some(10)));
        // One good scoring does not clear it; nor does an interrupted run.
        t.observe(Level::Ok, 2, 3, 20);
        t.observe(Level::Ok, 2, 3, 30);
        t.observe(Level::Alert, 2, 3, 40);
        t.observe(Level::Ok, 2, 3, 50);
        assert_eq!(t.state, Level::Alert);
        t.observe(Level::Ok, 2, 3, 60);
        assert!(t.observe(Level::Ok, 2, 3, 70));
        assert_eq!((t.state, t.alert_since_ms), (Level::Ok, None));
    }

    #[test]
    fn a_shifted_numeric_feature_alerts_and_an_unchanged_one_does_not() {
        let sample: Vec<f64> = (0..200).map(|i| f64::from(i) / 200.0).collect();
        let edges: Vec<f64> = (1..10).map(|i| f64::from(i) / 10.0).collect();
        let f = FeatureReference::Numeric {
            name: "x".into(),
            column: 0,
            edges,
            fractions: vec![0.1; 10],
            mean: 0.5,
            std: 0.29,
            min: 0.0,
            max: 1.0,
            sample: sample.clone(),
        };
        let t = Thresholds::default();
        let same: Vec<f64> = (0..300).map(|i| (f64::from(i) * 0.618).fract()).collect();
        assert_eq!(score_feature(&f, &same, &t, 30.0).0, Level::Ok);
        let shifted: Vec<f64> = same.iter().map(|v| v + 0.6).collect();
        let (level, v) = score_feature(&f, &shifted, &t, 30.0);
        assert_eq!(level, Level::Alert, "{v}");
    }
}
