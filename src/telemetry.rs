//! Metric names (one place), their descriptions, typed emitters, and tracing
//! set-up. Names follow `contender_<subsystem>_<noun>_<unit>`; labels are
//! bounded (`deployment`, `model`, `version`, `error_type`, `runner`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::ErrorKind;

pub const INFER_REQUESTS: &str = "contender_inference_requests_total";
pub const INFER_FAILURES: &str = "contender_inference_failures_total";
pub const INFER_ROWS: &str = "contender_inference_rows_total";
pub const INFER_DURATION: &str = "contender_inference_request_duration_seconds";
pub const INFER_QUEUE: &str = "contender_inference_queue_duration_seconds";
pub const INFER_COMPUTE: &str = "contender_inference_compute_duration_seconds";
pub const QUEUE_REJECTIONS: &str = "contender_inference_queue_rejections_total";
pub const HTTP_ERRORS: &str = "contender_http_errors_total";
pub const MODEL_LOAD_DURATION: &str = "contender_model_load_duration_seconds";
pub const MODEL_LOAD_FAILURES: &str = "contender_model_load_failures_total";
pub const MODELS_READY: &str = "contender_models_ready";
pub const MODEL_INLINE_MAX_ROWS: &str = "contender_model_inline_max_rows";
pub const MIRROR_DROPPED: &str = "contender_mirror_dropped_total";
pub const MIRROR_FAILED: &str = "contender_mirror_failures_total";
pub const MIRROR_COMPLETED: &str = "contender_mirror_completed_total";
pub const FEEDBACK_LABELS: &str = "contender_feedback_labels_total";
pub const PROMOTIONS: &str = "contender_promotions_total";
pub const DRIFT_STATE: &str = "contender_drift_state";
pub const DRIFT_PSI: &str = "contender_drift_psi";
pub const WEBHOOKS: &str = "contender_drift_webhooks_total";
pub const PREDICTIONS_DROPPED: &str = "contender_prediction_log_dropped_total";
pub const PREDICTIONS_EVICTED: &str = "contender_prediction_log_evicted_total";
pub const PREDICTIONS_WRITE_FAILED: &str = "contender_prediction_log_write_failures_total";
pub const PREDICTIONS_DUPLICATE_IDS: &str = "contender_prediction_log_duplicate_ids_total";
pub const STORE_BATCH_ROWS: &str = "contender_store_batch_rows";
pub const STORE_BATCH_DURATION: &str = "contender_store_batch_duration_seconds";
pub const DYNAMIC_BATCH: &str = "contender_inference_batch_requests";

const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and describes every metric.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(DYNAMIC_BATCH.into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
                )
                .expect("bucket list is not empty")
                .install_recorder()
                .unwrap_or_else(|e| {
                    // Another recorder is installed (embedding program); keep a private one for rendering.
                    tracing::warn!(error = %e, "a metrics recorder is already installed");
                    PrometheusBuilder::new().build_recorder().handle()
                });
            describe();
            // Histograms keep raw samples until upkeep folds them in: without
            // it memory grows with every request.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            handle
        })
        .clone()
}

fn describe() {
    describe_histogram!(
        DYNAMIC_BATCH,
        "Requests run together in one dynamic batch (recorded for batches of two or more), by runner (model@version, `-mirror` for a challenger's mirrored copies)."
    );
    describe_counter!(
        INFER_REQUESTS,
        "Inference requests answered, by model and version."
    );
    describe_counter!(
        INFER_FAILURES,
        "Inference requests addressed to a model (or a deployment's champion) that failed, from reading the body to the answer, by error_type."
    );
    describe_counter!(INFER_ROWS, "Rows (batch elements) inferred.");
    describe_histogram!(
        INFER_DURATION,
        metrics::Unit::Seconds,
        "Whole request time inside the gateway."
    );
    describe_histogram!(
        INFER_QUEUE,
        metrics::Unit::Seconds,
        "Time waiting for a model worker."
    );
    describe_histogram!(
        INFER_COMPUTE,
        metrics::Unit::Seconds,
        "Time inside the engine."
    );
    describe_counter!(
        QUEUE_REJECTIONS,
        "Requests refused because the model's queue was full."
    );
    describe_counter!(HTTP_ERRORS, "Error responses, by error_type.");
    describe_histogram!(
        MODEL_LOAD_DURATION,
        metrics::Unit::Seconds,
        "Model load plus warm-up time."
    );
    describe_counter!(MODEL_LOAD_FAILURES, "Model versions that failed to load.");
    describe_gauge!(MODELS_READY, "Model versions loaded and warmed.");
    describe_gauge!(
        MODEL_INLINE_MAX_ROWS,
        "Largest batch run inline on the async runtime (0 = always on workers)."
    );
    describe_counter!(
        FEEDBACK_LABELS,
        "Labels posted, by deployment and status (accepted, duplicate, ...)."
    );
    describe_counter!(
        MIRROR_DROPPED,
        "Mirrored requests dropped because the challenger's queue was full."
    );
    describe_counter!(
        MIRROR_COMPLETED,
        "Mirrored requests a challenger (or, beside a canary, the champion) ran and logged, by deployment, model and version. Its repository model's own statistics count only the requests it answered."
    );
    describe_counter!(
        MIRROR_FAILED,
        "Mirrored requests that failed, timed out, or were rejected (more rows than the model's max_batch_size), by error_type."
    );
    describe_counter!(
        PREDICTIONS_DROPPED,
        "Predictions not logged because the store's queue was full."
    );
    describe_counter!(
        PREDICTIONS_EVICTED,
        "Predictions removed from the log by retention or the size cap."
    );
    describe_counter!(
        PREDICTIONS_WRITE_FAILED,
        "Predictions lost because the store could not write them (after one retry)."
    );
    describe_counter!(
        PREDICTIONS_DUPLICATE_IDS,
        "Predictions not logged because their request id was already logged (the first request's are kept)."
    );
    describe_histogram!(
        STORE_BATCH_ROWS,
        "Predictions written per store transaction."
    );
    describe_histogram!(
        STORE_BATCH_DURATION,
        metrics::Unit::Seconds,
        "Time to write one batch of predictions."
    );
}

/// Counts an error response by kind.
pub fn record_error(kind: ErrorKind) {
    counter!(HTTP_ERRORS, "error_type" => kind.code()).increment(1);
}

/// Metric handles for one model version, registered once at load time so the
/// request path does no label formatting or registry look-up.
#[derive(Clone)]
pub struct ModelMetrics {
    requests: Counter,
    rows: Counter,
    duration: Histogram,
    queue: Histogram,
    compute: Histogram,
    rejections: Counter,
    model: String,
    version: String,
}

impl ModelMetrics {
    pub fn new(model: &str, version: u64) -> ModelMetrics {
        let labels = [
            ("model", model.to_owned()),
            ("version", version.to_string()),
        ];
        ModelMetrics {
            requests: counter!(INFER_REQUESTS, &labels),
            rows: counter!(INFER_ROWS, &labels),
            duration: histogram!(INFER_DURATION, &labels),
            queue: histogram!(INFER_QUEUE, &labels),
            compute: histogram!(INFER_COMPUTE, &labels),
            rejections: counter!(QUEUE_REJECTIONS, &labels),
            model: model.to_owned(),
            version: version.to_string(),
        }
    }

    pub fn success(&self, rows: usize, total: Duration, queue: Duration, compute: Duration) {
        self.requests.increment(1);
        self.rows.increment(rows as u64);
        self.duration.record(total.as_secs_f64());
        self.queue.record(queue.as_secs_f64());
        self.compute.record(compute.as_secs_f64());
    }

    pub fn failure(&self, kind: ErrorKind) {
        counter!(INFER_FAILURES, "model" => self.model.clone(), "version" => self.version.clone(), "error_type" => kind.code())
            .increment(1);
    }

    pub fn rejected(&self) {
        self.rejections.increment(1);
    }

    pub fn loaded(&self, load: Duration, inline_max_rows: usize) {
        histogram!(MODEL_LOAD_DURATION, "model" => self.model.clone(), "version" => self.version.clone())
            .record(load.as_secs_f64());
        gauge!(MODEL_INLINE_MAX_ROWS, "model" => self.model.clone(), "version" => self.version.clone())
            .set(inline_max_rows as f64);
        models_ready().increment(1.0);
    }
}

pub fn models_ready() -> Gauge {
    gauge!(MODELS_READY)
}

pub fn load_failed(model: &str, version: u64) {
    counter!(MODEL_LOAD_FAILURES, "model" => model.to_owned(), "version" => version.to_string())
        .increment(1);
}

/// The batch-size histogram of one runner's workers.
pub fn dynamic_batch(runner: &str) -> Histogram {
    histogram!(DYNAMIC_BATCH, "runner" => runner.to_owned())
}

/// The counter of one challenger's mirrored copies dropped (queue full).
pub fn mirror_dropped(deployment: &str, model: &str, version: u64) -> Counter {
    counter!(MIRROR_DROPPED, "deployment" => deployment.to_owned(), "model" => model.to_owned(), "version" => version.to_string())
}

pub fn mirror_completed(deployment: &str, model: &str, version: u64) -> Counter {
    counter!(MIRROR_COMPLETED, "deployment" => deployment.to_owned(), "model" => model.to_owned(), "version" => version.to_string())
}

pub fn mirror_failed(deployment: &str, model: &str, version: u64, error_type: &'static str) {
    counter!(
        MIRROR_FAILED,
        "deployment" => deployment.to_owned(),
        "model" => model.to_owned(),
        "version" => version.to_string(),
        "error_type" => error_type
    )
    .increment(1);
}

pub fn feedback(deployment: &str, results: &[crate::store::FeedbackResult]) {
    for r in results {
        let status = serde_json::to_value(r.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        counter!(FEEDBACK_LABELS, "deployment" => deployment.to_owned(), "status" => status)
            .increment(1);
    }
}

pub fn promotion(deployment: &str, action: &'static str) {
    counter!(PROMOTIONS, "deployment" => deployment.to_owned(), "action" => action).increment(1);
}

pub fn drift_levels(
    deployment: &str,
    levels: &[(String, crate::drift::monitor::Level, serde_json::Value)],
    tracked: &std::collections::BTreeMap<String, crate::drift::monitor::Tracked>,
) {
    use crate::drift::monitor::Level;
    for (key, _, scores) in levels {
        let state = tracked.get(key).map_or(Level::Ok, |t| t.state);
        let value = match state {
            Level::Ok => 0.0,
            Level::Warning => 1.0,
            Level::Alert => 2.0,
        };
        gauge!(DRIFT_STATE, "deployment" => deployment.to_owned(), "key" => key.clone()).set(value);
        if let Some(psi) = scores["psi"].as_f64() {
            gauge!(DRIFT_PSI, "deployment" => deployment.to_owned(), "key" => key.clone()).set(psi);
        }
    }
}

pub fn webhook(outcome: &'static str) {
    counter!(WEBHOOKS, "outcome" => outcome).increment(1);
}

pub fn predictions_dropped(n: u64) {
    counter!(PREDICTIONS_DROPPED).increment(n);
}

pub fn predictions_evicted(n: u64) {
    counter!(PREDICTIONS_EVICTED).increment(n);
}

pub fn predictions_write_failed(n: u64) {
    counter!(PREDICTIONS_WRITE_FAILED).increment(n);
}

pub fn predictions_duplicate_ids(n: u64) {
    counter!(PREDICTIONS_DUPLICATE_IDS).increment(n);
}

pub fn store_batch(rows: usize, took: Duration) {
    histogram!(STORE_BATCH_ROWS).record(rows as f64);
    histogram!(STORE_BATCH_DURATION).record(took.as_secs_f64());
}

/// Structured logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
