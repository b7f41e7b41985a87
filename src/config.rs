//! Configuration: `contender.toml` (or `--config FILE`) with every key
//! overridable by an environment variable `CONTENDER_<SECTION>__<KEY>`, e.g.
//! `CONTENDER_SERVER__HTTP_ADDR=127.0.0.1:9000` or
//! `CONTENDER_DEPLOYMENTS__BREAST_CANCER__CHAMPION__VERSION=2`.
//!
//! Relative paths are resolved against the directory of the config file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use crate::evaluation::metrics::MetricKind;

/// File read when no `--config` is given (when it exists).
pub const DEFAULT_CONFIG_FILE: &str = "contender.toml";

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: `{key}`: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub repository: RepositoryConfig,
    pub runtime: RuntimeConfig,
    /// Per-model engine settings, overriding the `[runtime]` table of the
    /// model's `model.toml`. Keyed by model name.
    pub models: BTreeMap<String, ModelSettings>,
    /// Deployments by the name applications call.
    pub deployments: BTreeMap<String, DeploymentConfig>,
    /// Durable state: deployments, prediction log, labels, metrics.
    pub store: StoreConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of the embedded database (`contender.db`, SQLite in WAL mode).
    pub data_dir: PathBuf,
    /// Predictions older than this are dropped from the log (labels for
    /// them are then refused as expired).
    pub retention_hours: f64,
    /// Most predictions kept; beyond it the oldest are evicted (and counted).
    pub max_predictions: u64,
    /// Predictions waiting to be written; when full, new ones are dropped
    /// (and counted) rather than slowing requests.
    pub queue_capacity: usize,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            data_dir: PathBuf::from("data"),
            retention_hours: 24.0 * 7.0,
            max_predictions: 5_000_000,
            queue_capacity: 65_536,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the HTTP (REST) listener.
    pub http_addr: SocketAddr,
    /// Largest request body accepted, in bytes; bigger ones get 413.
    pub max_body_bytes: usize,
    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT.
    pub drain_timeout_secs: u64,
    /// Seconds a client has to send a request's headers, counted from when
    /// the connection is ready for the next request: a connection that sends
    /// nothing for this long (a slow client, or an idle keep-alive
    /// connection) is closed. Keep it above a load balancer's idle timeout
    /// (60 s on AWS ALB), or the balancer may send on a closed connection.
    pub header_read_timeout_secs: u64,
    /// Seconds a client has to send a request's whole body once its headers
    /// are in; a slower body gets 408.
    pub body_read_timeout_secs: u64,
    /// Most open client connections; further ones wait in the listen
    /// backlog until one closes (the process's open-file limit stays clear).
    pub max_connections: usize,
    /// Bearer token the admin API (`/admin/...`) requires. Without one, the
    /// admin API answers only clients on this machine (loopback).
    /// Better set through `CONTENDER_SERVER__ADMIN_TOKEN` than in a file.
    pub admin_token: Option<String>,
    /// Bearer token the inference and feedback endpoints require, when set.
    pub inference_token: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8000)),
            max_body_bytes: 16 * 1024 * 1024,
            drain_timeout_secs: 30,
            header_read_timeout_secs: 75,
            body_read_timeout_secs: 60,
            max_connections: 10_000,
            admin_token: None,
            inference_token: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Preload {
    /// Load every valid model version in the repository at start.
    #[default]
    All,
    /// Load only the models deployments use.
    Deployed,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Root of the model repository (`<path>/<name>/<version>/`).
    pub path: PathBuf,
    pub preload: Preload,
}

impl Default for RepositoryConfig {
    fn default() -> RepositoryConfig {
        RepositoryConfig {
            path: PathBuf::from("models"),
            preload: Preload::All,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(from = "RuntimeFields")]
pub struct RuntimeConfig {
    /// The ONNX Runtime shared library; default: the set-up script's cache.
    pub onnxruntime_library: Option<PathBuf>,
    /// Requests estimated to run within this many microseconds execute
    /// inline on the async worker; longer ones go to the model's threads.
    pub inline_budget_us: f64,
    /// Defaults for every model, overridden per model.
    #[serde(flatten)]
    pub defaults: ModelDefaults,
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            onnxruntime_library: None,
            inline_budget_us: 50.0,
            defaults: ModelDefaults::default(),
        }
    }
}

/// `[runtime]` as written: every key by name. (Deserialising
/// [`RuntimeConfig`] with `#[serde(flatten)]` would buffer the section, and
/// an error would then name only `runtime`, not the key.)
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RuntimeFields {
    onnxruntime_library: Option<PathBuf>,
    inline_budget_us: f64,
    instances: usize,
    intra_op_threads: usize,
    queue_capacity: usize,
    max_batch_size: usize,
    execution: Execution,
    dynamic_batching: bool,
    warmup_batch_sizes: Vec<usize>,
}

impl Default for RuntimeFields {
    fn default() -> RuntimeFields {
        let RuntimeConfig {
            onnxruntime_library,
            inline_budget_us,
            defaults: d,
        } = RuntimeConfig::default();
        RuntimeFields {
            onnxruntime_library,
            inline_budget_us,
            instances: d.instances,
            intra_op_threads: d.intra_op_threads,
            queue_capacity: d.queue_capacity,
            max_batch_size: d.max_batch_size,
            execution: d.execution,
            dynamic_batching: d.dynamic_batching,
            warmup_batch_sizes: d.warmup_batch_sizes,
        }
    }
}

impl From<RuntimeFields> for RuntimeConfig {
    fn from(f: RuntimeFields) -> RuntimeConfig {
        RuntimeConfig {
            onnxruntime_library: f.onnxruntime_library,
            inline_budget_us: f.inline_budget_us,
            defaults: ModelDefaults {
                instances: f.instances,
                intra_op_threads: f.intra_op_threads,
                queue_capacity: f.queue_capacity,
                max_batch_size: f.max_batch_size,
                execution: f.execution,
                dynamic_batching: f.dynamic_batching,
                warmup_batch_sizes: f.warmup_batch_sizes,
            },
        }
    }
}

impl RuntimeConfig {
    pub fn onnxruntime_library(&self) -> PathBuf {
        self.onnxruntime_library
            .clone()
            .unwrap_or_else(crate::runtime::onnx::default_library_path)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelDefaults {
    pub instances: usize,
    pub intra_op_threads: usize,
    pub queue_capacity: usize,
    pub max_batch_size: usize,
    pub execution: Execution,
    /// Dynamic batching: a worker thread runs the requests already waiting in
    /// its queue as one batch (never waiting for more), when every input and
    /// output of the model has a batch dimension.
    pub dynamic_batching: bool,
    /// Batch sizes run through every instance before the model takes traffic
    /// (engines that specialise per input shape pay that cost here); sizes
    /// above `max_batch_size` are skipped.
    pub warmup_batch_sizes: Vec<usize>,
}

impl Default for ModelDefaults {
    fn default() -> ModelDefaults {
        ModelDefaults {
            instances: default_instances(),
            intra_op_threads: 1,
            queue_capacity: 256,
            max_batch_size: 1024,
            execution: Execution::Auto,
            dynamic_batching: true,
            warmup_batch_sizes: vec![1, 2, 4, 8, 16, 32],
        }
    }
}

/// One session per core (at most 4): requests running inline on the async
/// workers then rarely wait for each other's session. Set `instances = 1`
/// for large models where memory matters more.
fn default_instances() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Where a model's inference runs (see `runtime` module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Execution {
    /// Decide per request from warm-up measurements and the inline budget.
    #[default]
    Auto,
    /// Always on the async worker (only for microsecond models).
    Inline,
    /// Always on the model's own worker threads.
    Pool,
}

/// Per-model settings; unset fields fall back to the next level.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    pub instances: Option<usize>,
    pub intra_op_threads: Option<usize>,
    pub queue_capacity: Option<usize>,
    pub max_batch_size: Option<usize>,
    pub execution: Option<Execution>,
    pub dynamic_batching: Option<bool>,
    pub warmup_batch_sizes: Option<Vec<usize>>,
}

impl ModelSettings {
    /// `self` over `lower` over the runtime defaults.
    pub fn resolve(&self, lower: &ModelSettings, defaults: &ModelDefaults) -> ModelDefaults {
        ModelDefaults {
            instances: self
                .instances
                .or(lower.instances)
                .unwrap_or(defaults.instances),
            intra_op_threads: self
                .intra_op_threads
                .or(lower.intra_op_threads)
                .unwrap_or(defaults.intra_op_threads),
            queue_capacity: self
                .queue_capacity
                .or(lower.queue_capacity)
                .unwrap_or(defaults.queue_capacity),
            max_batch_size: self
                .max_batch_size
                .or(lower.max_batch_size)
                .unwrap_or(defaults.max_batch_size),
            execution: self
                .execution
                .or(lower.execution)
                .unwrap_or(defaults.execution),
            dynamic_batching: self
                .dynamic_batching
                .or(lower.dynamic_batching)
                .unwrap_or(defaults.dynamic_batching),
            warmup_batch_sizes: self
                .warmup_batch_sizes
                .clone()
                .or_else(|| lower.warmup_batch_sizes.clone())
                .unwrap_or_else(|| defaults.warmup_batch_sizes.clone()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    pub champion: ModelRef,
    /// Models that see the same requests as the champion.
    #[serde(default)]
    pub challengers: Vec<ChallengerConfig>,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub evaluation: EvaluationConfig,
    #[serde(default)]
    pub promotion: PromotionConfig,
    #[serde(default)]
    pub drift: DriftConfig,
}

/// Drift monitoring of a deployment (see the `drift` module).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftConfig {
    pub enabled: bool,
    /// Rows in each live window (per feature and per model's predictions).
    pub window: usize,
    /// Rows a window needs before it is scored.
    pub min_rows: usize,
    /// Share of requests sampled into the windows.
    pub sample_rate: f64,
    /// Most rows sampled in any one second (0: no cap). Beyond it requests
    /// are not sampled until the next second, which bounds the cost of
    /// monitoring under heavy traffic.
    pub max_rows_per_sec: u64,
    /// New rows between two scorings.
    pub evaluate_every: usize,
    /// Thresholds for every feature and the predictions.
    pub thresholds: crate::drift::stats::Thresholds,
    /// Per-feature thresholds (by feature name), overriding `thresholds`.
    pub features: BTreeMap<String, crate::drift::stats::Thresholds>,
    /// Consecutive scorings at a higher level before the state rises.
    pub raise_after: u32,
    /// Consecutive scorings at a lower level before the state falls.
    pub clear_after: u32,
    /// The same alert is not sent again within this many seconds.
    pub cooldown_secs: u64,
    /// Accuracy decay alert: the champion's windowed accuracy (or, for a
    /// regressor, MAE relative to training) worse than its training metric
    /// by at least this much.
    pub accuracy_drop: f64,
    /// Labelled rows the window needs before accuracy decay is judged.
    pub min_labels: u64,
    /// An alert that lasts this long triggers `retrain_recommended`.
    pub retrain_after_secs: u64,
    /// URLs that receive alerts and retraining events as JSON (POST).
    pub webhooks: Vec<String>,
    /// Attempts per webhook delivery (with exponential back-off from 1 s).
    pub webhook_attempts: u32,
    /// Optional command run on `retrain_recommended`, the event as JSON on stdin.
    pub retrain_command: Vec<String>,
}

impl Default for DriftConfig {
    fn default() -> DriftConfig {
        DriftConfig {
            enabled: true,
            window: 500,
            min_rows: 100,
            sample_rate: 1.0,
            max_rows_per_sec: 1000,
            evaluate_every: 50,
            thresholds: crate::drift::stats::Thresholds::default(),
            features: BTreeMap::new(),
            raise_after: 2,
            clear_after: 3,
            cooldown_secs: 3600,
            accuracy_drop: 0.05,
            min_labels: 100,
            retrain_after_secs: 3600,
            webhooks: Vec::new(),
            webhook_attempts: 3,
            retrain_command: Vec::new(),
        }
    }
}

impl DriftConfig {
    pub fn thresholds_for(&self, feature: &str) -> crate::drift::stats::Thresholds {
        self.features
            .get(feature)
            .copied()
            .unwrap_or(self.thresholds)
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.window == 0 || self.evaluate_every == 0 {
            return Err(ConfigError::new(
                format!("{key}.drift"),
                "window and evaluate_every must be at least 1",
            ));
        }
        if self.min_rows > self.window {
            return Err(ConfigError::new(
                format!("{key}.drift.min_rows"),
                "cannot exceed drift.window",
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_rate) {
            return Err(ConfigError::new(
                format!("{key}.drift.sample_rate"),
                "must be between 0 and 1",
            ));
        }
        if self.raise_after == 0 || self.clear_after == 0 {
            return Err(ConfigError::new(
                format!("{key}.drift"),
                "raise_after and clear_after must be at least 1",
            ));
        }
        self.thresholds
            .validate()
            .map_err(|e| ConfigError::new(format!("{key}.drift.thresholds"), e))?;
        for (name, t) in &self.features {
            t.validate()
                .map_err(|e| ConfigError::new(format!("{key}.drift.features.{name}"), e))?;
        }
        for (i, url) in self.webhooks.iter().enumerate() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::new(
                    format!("{key}.drift.webhooks[{i}]"),
                    "must be an http(s) URL",
                ));
            }
        }
        Ok(())
    }
}

/// How a challenger sees traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChallengerMode {
    /// Receives a mirrored copy of `fraction` of the requests; its answer is
    /// recorded, never returned.
    Shadow,
    /// Answers `fraction` of live traffic (the champion still sees those
    /// requests, mirrored, so the two can be compared).
    Canary,
}

impl ChallengerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengerMode::Shadow => "shadow",
            ChallengerMode::Canary => "canary",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengerConfig {
    pub model: String,
    pub version: u64,
    pub mode: ChallengerMode,
    /// Shadow: share of requests mirrored to it. Canary: share of live
    /// traffic it answers. Between 0 and 1.
    #[serde(default = "default_fraction")]
    pub fraction: f64,
    /// Worker threads running its mirrored requests (its compute cap).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Mirrored requests waiting for a worker; when full, new ones are
    /// dropped (and counted), never waited for.
    #[serde(default = "default_challenger_queue")]
    pub queue_capacity: usize,
    /// A mirrored request not answered within this many milliseconds is
    /// abandoned and counted as a timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Its workers run at the operating system's idle priority (Linux
    /// `SCHED_IDLE`): they only use CPU time the champion's threads leave,
    /// so under full load its queue fills and mirrored requests are dropped
    /// (and counted) instead of slowing the champion. `false`: normal priority.
    #[serde(default = "default_low_priority")]
    pub low_priority: bool,
    /// Canary: the part of the routing hash's range [0, 1) it answers, as
    /// `[start, end)` intervals whose widths add up to `fraction`. Given by
    /// contender when the canary joins (the lowest free space of that width)
    /// and kept while it stays, so that adding or removing other challengers
    /// never moves its users (see `traffic::assign_slices`). Empty for a
    /// shadow, and in a config entry (unless pinned there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slice: Vec<[f64; 2]>,
}

fn default_fraction() -> f64 {
    1.0
}
fn default_workers() -> usize {
    1
}
fn default_challenger_queue() -> usize {
    64
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_low_priority() -> bool {
    true
}

impl ChallengerConfig {
    pub fn model_ref(&self) -> ModelRef {
        ModelRef {
            model: self.model.clone(),
            version: self.version,
        }
    }

    /// Checks one challenger; `key` names it in errors.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !valid_name(&self.model) {
            return Err(ConfigError::new(
                format!("{key}.model"),
                "not a valid model name",
            ));
        }
        if self.version == 0 {
            return Err(ConfigError::new(
                format!("{key}.version"),
                "versions start at 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.fraction) {
            return Err(ConfigError::new(
                format!("{key}.fraction"),
                "must be between 0 and 1",
            ));
        }
        for (field, value, max) in [
            ("workers", self.workers as u64, limits::MAX_THREADS as u64),
            (
                "queue_capacity",
                self.queue_capacity as u64,
                limits::MAX_QUEUE_CAPACITY as u64,
            ),
            ("timeout_ms", self.timeout_ms, limits::MAX_TIMEOUT_MS),
        ] {
            limits::check(key, field, value, max)?;
        }
        crate::traffic::check_slice(self)
            .map_err(|why| ConfigError::new(format!("{key}.slice"), why))
    }
}

/// Canary assignment and shadow sampling.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Request header carrying a routing key (e.g. a user id): requests with
    /// the same key always get the same canary assignment.
    pub header: String,
    /// Request parameter carrying a routing key (used when the header is absent).
    pub parameter: String,
    /// Request parameter carrying the segment (e.g. a region) results are broken down by.
    pub segment_parameter: String,
    /// Seed of the assignment hash; change it to reshuffle assignments.
    pub seed: u64,
}

impl Default for RoutingConfig {
    fn default() -> RoutingConfig {
        RoutingConfig {
            header: "x-routing-key".into(),
            parameter: "routing_key".into(),
            segment_parameter: "segment".into(),
            seed: 0,
        }
    }
}

/// How model quality is measured when labels arrive.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Size of the sliding window of labelled rows, per model.
    pub window_labels: usize,
    /// The metric challengers are compared on, through its per-row loss
    /// (default: `accuracy` for classifiers, `absolute_error` for regressors).
    pub metric: Option<MetricKind>,
    /// Per-row losses above this are clipped for the comparison (needed by
    /// the bounded test): default 10 for log loss, 2 for Brier, and for
    /// regression errors 1000 — set it to the scale of your target.
    pub loss_cap: Option<f64>,
    /// A segment's comparison counts for the "no harm to a segment"
    /// guardrail once it has this many labelled pairs.
    pub segment_min_pairs: u64,
}

impl Default for EvaluationConfig {
    fn default() -> EvaluationConfig {
        EvaluationConfig {
            window_labels: 1000,
            metric: None,
            loss_cap: None,
            segment_min_pairs: 100,
        }
    }
}

impl EvaluationConfig {
    /// The comparison metric for a model of `task`.
    pub fn metric_for(&self, classification: bool) -> MetricKind {
        self.metric.unwrap_or(if classification {
            MetricKind::Accuracy
        } else {
            MetricKind::AbsoluteError
        })
    }

    /// The clip applied to per-row losses of `metric`.
    pub fn cap_for(&self, metric: MetricKind) -> f64 {
        self.loss_cap.unwrap_or(match metric {
            MetricKind::Accuracy => 1.0,
            MetricKind::LogLoss => 10.0,
            MetricKind::Brier => 2.0,
            MetricKind::AbsoluteError | MetricKind::SquaredError => 1000.0,
        })
    }
}

/// What happens when a challenger is significantly better.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionMode {
    /// Promote automatically when the policy's conditions hold.
    Auto,
    /// Recommend only; a person promotes (`contender promote`).
    #[default]
    Manual,
    /// No recommendation, no promotion.
    Off,
}

/// The promotion policy of a deployment.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromotionConfig {
    pub mode: PromotionMode,
    /// Level of the sequential test (always-valid, see `evaluation::sequential`).
    pub alpha: f64,
    /// Smallest improvement worth a promotion, in the metric's units
    /// (accuracy points as a fraction, or loss): the test's confidence bound
    /// must clear it.
    pub min_effect: f64,
    /// Labelled pairs (rows both models answered) needed before any decision.
    pub min_pairs: u64,
    /// Largest share of a challenger's mirrored requests that may fail or time out.
    pub max_error_rate: f64,
    /// A challenger's p99 latency may be at most this many times the champion's.
    pub max_latency_ratio: f64,
    /// How long the previous champion keeps shadowing after a promotion,
    /// for instant rollback and the post-promotion watch (0 = until removed).
    pub keep_previous_secs: u64,
    /// Roll back automatically when the new champion proves significantly
    /// worse than the previous one while it shadows.
    pub auto_rollback: bool,
}

impl Default for PromotionConfig {
    fn default() -> PromotionConfig {
        PromotionConfig {
            mode: PromotionMode::Manual,
            alpha: 0.05,
            min_effect: 0.0,
            min_pairs: 200,
            max_error_rate: 0.01,
            max_latency_ratio: 3.0,
            keep_previous_secs: 3600,
            auto_rollback: true,
        }
    }
}

impl DeploymentConfig {
    /// The champion, then every challenger.
    pub fn members(&self) -> impl Iterator<Item = ModelRef> + '_ {
        std::iter::once(self.champion.clone())
            .chain(self.challengers.iter().map(ChallengerConfig::model_ref))
    }

    /// Whether `r` is the champion or a challenger.
    pub fn has_member(&self, r: &ModelRef) -> bool {
        &self.champion == r || self.challengers.iter().any(|c| &c.model_ref() == r)
    }

    /// Checks the deployment's own consistency; `key` is `deployments.<name>`.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.champion.version == 0 {
            return Err(ConfigError::new(
                format!("{key}.champion.version"),
                "versions start at 1",
            ));
        }
        if !valid_name(&self.champion.model) {
            return Err(ConfigError::new(
                format!("{key}.champion.model"),
                "not a valid model name",
            ));
        }
        let mut canary_share = 0.0;
        for (i, c) in self.challengers.iter().enumerate() {
            let ckey = format!("{key}.challengers[{i}]");
            c.validate(&ckey)?;
            if c.model_ref() == self.champion {
                return Err(ConfigError::new(
                    ckey,
                    format!("{} is the champion", self.champion),
                ));
            }
            if self.challengers[..i]
                .iter()
                .any(|o| o.model_ref() == c.model_ref())
            {
                return Err(ConfigError::new(
                    ckey,
                    format!("{} is listed twice", c.model_ref()),
                ));
            }
            if c.mode == ChallengerMode::Canary {
                canary_share += c.fraction;
            }
        }
        if canary_share > 1.0 + 1e-9 {
            return Err(ConfigError::new(
                format!("{key}.challengers"),
                format!("canary fractions add up to {canary_share}, more than all traffic"),
            ));
        }
        crate::traffic::check_overlaps(&self.challengers)
            .map_err(|why| ConfigError::new(format!("{key}.challengers"), why))?;
        if self.evaluation.window_labels == 0 {
            return Err(ConfigError::new(
                format!("{key}.evaluation.window_labels"),
                "must be at least 1",
            ));
        }
        if let Some(cap) = self.evaluation.loss_cap
            && !(cap > 0.0 && cap.is_finite())
        {
            return Err(ConfigError::new(
                format!("{key}.evaluation.loss_cap"),
                "must be a positive number",
            ));
        }
        self.drift.validate(key)?;
        let p = &self.promotion;
        if !(p.alpha > 0.0 && p.alpha < 0.5) {
            return Err(ConfigError::new(
                format!("{key}.promotion.alpha"),
                "must be between 0 and 0.5",
            ));
        }
        if !(p.min_effect >= 0.0 && p.min_effect.is_finite()) {
            return Err(ConfigError::new(
                format!("{key}.promotion.min_effect"),
                "must be 0 or more",
            ));
        }
        if !(0.0..=1.0).contains(&p.max_error_rate) {
            return Err(ConfigError::new(
                format!("{key}.promotion.max_error_rate"),
                "must be between 0 and 1",
            ));
        }
        if p.max_latency_ratio.is_nan() || p.max_latency_ratio < 1.0 {
            return Err(ConfigError::new(
                format!("{key}.promotion.max_latency_ratio"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A model version in the repository.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    pub model: String,
    pub version: u64,
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.model, self.version)
    }
}

impl Config {
    /// Loads `path` (or `contender.toml` when present), then the
    /// `CONTENDER_*` environment, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (file, base) = match path {
            Some(p) if !p.is_file() => {
                return Err(ConfigError::new(
                    "--config",
                    format!("{}: no such file", p.display()),
                ));
            }
            Some(p) => (
                Some(p.to_path_buf()),
                p.parent().map(Path::to_path_buf).unwrap_or_default(),
            ),
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
                (Some(PathBuf::from(DEFAULT_CONFIG_FILE)), PathBuf::new())
            }
            None => (None, PathBuf::new()),
        };
        let mut figment = Figment::new();
        if let Some(file) = &file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(
            // The command line's own variables (CONTENDER_CONFIG,
            // CONTENDER_CACHE_DIR, and CONTENDER_URL / CONTENDER_ADMIN_TOKEN
            // of the remote commands) are not configuration keys.
            Env::prefixed("CONTENDER_").split("__").ignore(&[
                "config",
                "cache_dir",
                "url",
                "admin_token",
            ]),
        );
        let mut config: Config = figment.extract().map_err(|e| {
            let key = if e.path.is_empty() {
                "(top level)".to_owned()
            } else {
                e.path.join(".")
            };
            let origin = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            ConfigError::new(key, format!("{}{origin}", e.kind))
        })?;
        config.resolve_paths(&base);
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML string (no environment), for tests and tools.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::new(e.path.join("."), e.kind.to_string()))?;
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        if self.repository.path.is_relative() {
            self.repository.path = base.join(&self.repository.path);
        }
        if self.store.data_dir.is_relative() {
            self.store.data_dir = base.join(&self.store.data_dir);
        }
        if let Some(lib) = &self.runtime.onnxruntime_library
            && lib.is_relative()
        {
            self.runtime.onnxruntime_library = Some(base.join(lib));
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, token) in [
            ("server.admin_token", &self.server.admin_token),
            ("server.inference_token", &self.server.inference_token),
        ] {
            if let Some(t) = token
                && t.trim().len() < 16
            {
                return Err(ConfigError::new(
                    key,
                    "a token needs at least 16 characters",
                ));
            }
        }
        for (key, value) in [
            ("server.max_body_bytes", self.server.max_body_bytes as u64),
            (
                "server.header_read_timeout_secs",
                self.server.header_read_timeout_secs,
            ),
            (
                "server.body_read_timeout_secs",
                self.server.body_read_timeout_secs,
            ),
            ("server.max_connections", self.server.max_connections as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        if self.server.max_connections > 1_000_000 {
            return Err(ConfigError::new(
                "server.max_connections",
                "at most 1000000 (each connection is a file descriptor)",
            ));
        }
        if !(self.runtime.inline_budget_us >= 0.0 && self.runtime.inline_budget_us.is_finite()) {
            return Err(ConfigError::new(
                "runtime.inline_budget_us",
                "must be a non-negative number",
            ));
        }
        check_settings("runtime", &self.runtime.defaults)?;
        for (name, s) in &self.models {
            let key = format!("models.{name}");
            check_settings(
                &key,
                &s.resolve(&ModelSettings::default(), &self.runtime.defaults),
            )?;
        }
        for (name, d) in &self.deployments {
            let key = format!("deployments.{name}");
            if !valid_name(name) {
                return Err(ConfigError::new(
                    key,
                    "a deployment name uses letters, digits, '_', '-' and '.', and does not start with '.' or '_'",
                ));
            }
            d.validate(&key)?;
        }
        if !(self.store.retention_hours > 0.0 && self.store.retention_hours.is_finite()) {
            return Err(ConfigError::new(
                "store.retention_hours",
                "must be a positive number",
            ));
        }
        if self.store.max_predictions == 0 || self.store.queue_capacity == 0 {
            return Err(ConfigError::new(
                "store",
                "max_predictions and queue_capacity must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Checks resolved engine settings (`runtime`, `models.*`, a `model.toml`
/// `[runtime]` table); `key` names them in errors.
pub fn check_settings(key: &str, s: &ModelDefaults) -> Result<(), ConfigError> {
    for (field, value, max) in [
        ("instances", s.instances, limits::MAX_THREADS),
        ("intra_op_threads", s.intra_op_threads, limits::MAX_THREADS),
        (
            "queue_capacity",
            s.queue_capacity,
            limits::MAX_QUEUE_CAPACITY,
        ),
        ("max_batch_size", s.max_batch_size, limits::MAX_BATCH_SIZE),
    ] {
        limits::check(key, field, value as u64, max as u64)?;
    }
    if s.warmup_batch_sizes.contains(&0) {
        return Err(ConfigError::new(
            format!("{key}.warmup_batch_sizes"),
            "batch sizes start at 1",
        ));
    }
    Ok(())
}

/// Upper bounds of the per-model and per-challenger settings: each worker
/// or instance is a thread (and a session), and a queue's slots are
/// reserved up front, so an unbounded value would take the machine down.
pub mod limits {
    use super::ConfigError;

    /// `workers` of a challenger; `instances` and `intra_op_threads` of a model.
    pub const MAX_THREADS: usize = 64;
    /// `queue_capacity` of a challenger or a model.
    pub const MAX_QUEUE_CAPACITY: usize = 65_536;
    /// `max_batch_size` of a model (rows in one request).
    pub const MAX_BATCH_SIZE: usize = 1 << 20;
    /// `timeout_ms` of a challenger (10 minutes).
    pub const MAX_TIMEOUT_MS: u64 = 600_000;

    /// `key.field` between 1 and `max`.
    pub(super) fn check(key: &str, field: &str, value: u64, max: u64) -> Result<(), ConfigError> {
        if value == 0 {
            return Err(ConfigError::new(
                format!("{key}.{field}"),
                "must be at least 1",
            ));
        }
        if value > max {
            return Err(ConfigError::new(
                format!("{key}.{field}"),
                format!("{value} is too large: at most {max}"),
            ));
        }
        Ok(())
    }
}

/// Names of models and deployments: they appear in URLs and metric labels.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '_'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Where set-up downloads (ONNX Runtime, libtorch) are cached:
/// `$CONTENDER_CACHE_DIR`, else `$XDG_CACHE_HOME/contender`, else `~/.cache/contender`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONTENDER_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("contender");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("contender")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sane() {
        let c = Config::from_toml("", Path::new("/srv")).unwrap();
        assert_eq!(c.server.http_addr.port(), 8000);
        assert_eq!(c.repository.path, Path::new("/srv/models"));
        assert_eq!(c.runtime.defaults.intra_op_threads, 1);
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::from_toml("[server]\nhttp_addr = \"nope\"", Path::new(".")).unwrap_err();
        assert_eq!(err.key, "server.http_addr");
        let err =
            Config::from_toml("[server]\nhttp_adr = \"0.0.0.0:1\"", Path::new(".")).unwrap_err();
        assert!(err.reason.contains("http_adr"), "{err}");
        let err = Config::from_toml(
            "[deployments.x.champion]\nmodel = \"m\"\nversion = 0",
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(err.key, "deployments.x.champion.version");
        let err = Config::from_toml("[runtime]\ninstances = 0", Path::new(".")).unwrap_err();
        assert_eq!(err.key, "runtime.instances");
    }

    #[test]
    fn per_model_settings_override_in_order() {
        let defaults = ModelDefaults::default();
        let file = ModelSettings {
            instances: Some(2),
            execution: Some(Execution::Pool),
            ..ModelSettings::default()
        };
        let config = ModelSettings {
            instances: Some(3),
            ..ModelSettings::default()
        };
        let r = config.resolve(&file, &defaults);
        assert_eq!(r.instances, 3);
        assert_eq!(r.execution, Execution::Pool);
        assert_eq!(r.intra_op_threads, 1);
    }
}
