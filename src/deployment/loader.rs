//! Loading a model version: engine, consistency with `model.toml`, warm-up
//! and the measured execution plan.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::stats::ModelStats;
use std::collections::BTreeMap;

use crate::config::{Execution, ModelDefaults, ModelRef};
use crate::drift::reference::{ReferenceError, ReferenceStats};
use crate::evaluation::prediction::PredictionReader;
use crate::protocol::{DataType, Tensor, TensorData, TensorSpec};
use crate::repository::{ModelEntry, Task};
use crate::runtime::{self, EngineSettings, ExecutionPlan, Model, Runner};
use crate::telemetry::ModelMetrics;

/// A model version loaded, warmed and ready to take traffic.
pub struct LoadedModel {
    pub entry: Arc<ModelEntry>,
    /// The model name, shared by every prediction record.
    pub name_arc: Arc<str>,
    /// How its outputs read as predictions (from the task and signature).
    pub reader: PredictionReader,
    /// Reference statistics for drift (`reference.json`), when shipped.
    pub reference: Option<Arc<ReferenceStats>>,
    /// Training metrics from `model.toml`.
    pub training_metrics: Arc<BTreeMap<String, f64>>,
    /// The version as the protocol spells it (`"1"`).
    pub version_label: String,
    pub runner: Runner,
    pub settings: ModelDefaults,
    pub stats: ModelStats,
    pub metrics: ModelMetrics,
    pub loaded_at: SystemTime,
    pub load_duration: Duration,
}

impl LoadedModel {
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    pub fn version(&self) -> u64 {
        self.entry.version
    }

    pub fn model(&self) -> &Arc<dyn Model> {
        self.runner.model()
    }

    pub fn model_ref(&self) -> ModelRef {
        ModelRef {
            model: self.entry.name.clone(),
            version: self.entry.version,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("model.toml does not match the model file: {0}")]
    Metadata(String),
    #[error("warm-up inference failed: {0}")]
    WarmUp(runtime::RuntimeError),
    #[error("reference statistics: {0}")]
    Reference(#[from] ReferenceError),
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Workers(#[from] runtime::SpawnError),
}

/// Loads, checks and warms `entry`. Blocking: call from a blocking thread.
pub fn load_model(
    entry: Arc<ModelEntry>,
    settings: ModelDefaults,
    inline_budget_us: f64,
) -> Result<LoadedModel, LoadError> {
    let started = Instant::now();
    // The `[runtime]` table of model.toml, bounded as the gateway's own
    // settings are (a version dropped in at run time is checked here too);
    // the other layers of `settings` were checked with the configuration.
    crate::config::check_settings(
        "model.toml runtime",
        &entry
            .metadata
            .runtime
            .resolve(&Default::default(), &ModelDefaults::default()),
    )
    .map_err(|e| LoadError::Settings(format!("{}: {}", e.key, e.reason)))?;
    let engine = EngineSettings {
        instances: settings.instances,
        intra_op_threads: settings.intra_op_threads,
    };
    let meta = &entry.metadata;
    let model: Arc<dyn Model> = Arc::from(runtime::load_declared(
        &entry.artifact(),
        &meta.inputs,
        &meta.outputs,
        &engine,
    )?);
    check_metadata(&entry, model.as_ref())?;
    let reference_path = ReferenceStats::path_in(&entry.dir);
    let reference = if reference_path.is_file() {
        let r = ReferenceStats::load(&reference_path)?;
        let columns = model
            .inputs()
            .first()
            .and_then(|i| i.shape.get(1))
            .and_then(|&c| usize::try_from(c).ok());
        r.validate(columns)?;
        Some(Arc::new(r))
    } else {
        None
    };
    let (single_row_us, per_row_us) = warm_up(model.as_ref(), &settings)?;
    let plan = match settings.execution {
        Execution::Auto => ExecutionPlan::from_measurements(
            single_row_us,
            per_row_us,
            inline_budget_us,
            settings.max_batch_size,
        ),
        Execution::Inline => ExecutionPlan {
            inline_max_rows: settings.max_batch_size,
            single_row_us,
            per_row_us,
            batch_max_rows: 0,
            inline_when_idle: false,
        },
        Execution::Pool => ExecutionPlan::always_pool(single_row_us, per_row_us),
    };
    // Requests can share a run only when every tensor has a batch dimension.
    let batchable = model
        .inputs()
        .iter()
        .chain(model.outputs())
        .all(TensorSpec::has_batch_dim);
    let plan = if settings.dynamic_batching && batchable && settings.execution != Execution::Inline
    {
        ExecutionPlan {
            inline_when_idle: settings.execution == Execution::Auto,
            ..plan.with_batching(settings.max_batch_size)
        }
    } else {
        plan
    };
    let label = format!("{}@{}", entry.name, entry.version);
    let runner = Runner::start(&label, model, plan, settings.queue_capacity)?;
    let load_duration = started.elapsed();
    let metrics = ModelMetrics::new(&entry.name, entry.version);
    metrics.loaded(load_duration, plan.inline_max_rows);
    tracing::info!(
        model = %label,
        load_ms = load_duration.as_secs_f64() * 1e3,
        single_row_us = format_args!("{single_row_us:.1}"),
        per_row_us = format_args!("{per_row_us:.2}"),
        inline_max_rows = plan.inline_max_rows,
        instances = settings.instances,
        "model loaded and warmed"
    );
    let reader = PredictionReader::for_model(entry.metadata.task, runner.model().outputs());
    Ok(LoadedModel {
        name_arc: Arc::from(entry.name.as_str()),
        reader,
        reference,
        training_metrics: Arc::new(entry.metadata.metrics.clone()),
        version_label: entry.version.to_string(),
        entry,
        runner,
        settings,
        stats: ModelStats::default(),
        metrics,
        loaded_at: SystemTime::now(),
        load_duration,
    })
}

/// What `model.toml` says must agree with what the file says.
fn check_metadata(entry: &ModelEntry, model: &dyn Model) -> Result<(), LoadError> {
    let meta = &entry.metadata;
    if !meta.feature_names.is_empty()
        && let Some(input) = model.inputs().first()
        && let Some(&cols) = input.shape.get(1)
        && cols > 0
        && cols as usize != meta.feature_names.len()
    {
        return Err(LoadError::Metadata(format!(
            "feature_names lists {} names but input '{}' has {cols} columns",
            meta.feature_names.len(),
            input.name
        )));
    }
    if meta.task == Some(Task::Classification) && !meta.labels.is_empty() {
        for out in model.outputs() {
            let float = matches!(out.datatype, DataType::Fp32 | DataType::Fp64);
            if float
                && out.shape.len() == 2
                && out.shape[1] > 0
                && out.shape[1] as usize != meta.labels.len()
            {
                return Err(LoadError::Metadata(format!(
                    "labels lists {} classes but output '{}' has {} columns",
                    meta.labels.len(),
                    out.name,
                    out.shape[1]
                )));
            }
        }
    }
    Ok(())
}

/// A zero-filled batch of `rows` rows for the model's inputs.
pub fn dummy_batch(inputs: &[TensorSpec], rows: usize) -> Vec<Tensor> {
    inputs
        .iter()
        .map(|spec| {
            let shape: Vec<i64> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| match (i, d) {
                    (0, d) if d < 0 => rows as i64,
                    (_, d) if d < 0 => 1,
                    (_, d) => d,
                })
                .collect();
            let len = crate::protocol::element_count(&shape).unwrap_or(0);
            let data =
                TensorData::zeros(spec.datatype, len).unwrap_or(TensorData::Fp32(Vec::new()));
            Tensor::new(spec.name.clone(), shape, data)
        })
        .collect()
}

fn median_us(model: &dyn Model, batch: &[Tensor], runs: usize) -> Result<f64, LoadError> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        model.infer(batch).map_err(LoadError::WarmUp)?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// Runs every instance through its first (slow) calls over the configured
/// warm-up batch sizes, then measures the one-row latency and the marginal
/// cost of a row. No request pays for first-call or new-shape costs, and the
/// execution plan rests on numbers.
fn warm_up(model: &dyn Model, settings: &ModelDefaults) -> Result<(f64, f64), LoadError> {
    let batched = model.inputs().iter().all(TensorSpec::has_batch_dim);
    let mut sizes: Vec<usize> = if batched {
        let max = settings.max_batch_size;
        settings
            .warmup_batch_sizes
            .iter()
            .copied()
            .filter(|&b| b <= max)
            .collect()
    } else {
        vec![1]
    };
    let big_rows = if batched {
        settings.max_batch_size.clamp(1, 32)
    } else {
        1
    };
    sizes.extend([1, big_rows]);
    sizes.sort_unstable();
    sizes.dedup();
    for &rows in &sizes {
        let batch = dummy_batch(model.inputs(), rows);
        for instance in 0..model.instances() {
            for _ in 0..3 {
                model
                    .infer_on(instance, &batch)
                    .map_err(LoadError::WarmUp)?;
            }
        }
    }
    let single = median_us(model, &dummy_batch(model.inputs(), 1), 31)?;
    if big_rows == 1 {
        return Ok((single, 0.0));
    }
    let many = median_us(model, &dummy_batch(model.inputs(), big_rows), 11)?;
    Ok((single, ((many - single) / (big_rows - 1) as f64).max(0.0)))
}
