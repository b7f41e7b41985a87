//! Engines behind one [`Model`] abstraction, and the [`Runner`] that decides
//! where each inference runs.
//!
//! # Execution strategy (measured, not assumed)
//!
//! A small tabular model answers one row in 6–20 µs of CPU with one ONNX
//! Runtime thread, while handing work to another thread (`spawn_blocking` or
//! a channel to a worker) costs ~25–30 µs before any inference happens. A
//! heavy model, or a big batch, runs for milliseconds and must never occupy a
//! tokio worker: that would stall every other connection on that worker.
//!
//! So each loaded model measures itself during warm-up: the median latency of
//! a 1-row batch and of a larger batch give a fixed cost and a per-row cost.
//! A request whose estimated cost fits the *inline budget*
//! (`runtime.inline_budget_us`, 50 µs by default — about two hand-offs) runs
//! inline on the tokio worker that decoded it; anything bigger goes to the
//! model's own worker threads through a bounded queue. When the queue is full
//! the request is refused at once with 503 (never an unbounded backlog). A
//! model can pin either path with `execution = "inline"` / `"pool"` in its
//! `model.toml` `[runtime]` table. `BENCHMARKS.md` has the numbers behind
//! the default.
//!
//! # Dynamic batching
//!
//! For a tiny model most of a call is the engine's fixed cost: the example
//! logistic regression takes ~4 µs for one row in a hot loop and ~6 µs for 32.
//! So when every input and output has a batch dimension
//! (`dynamic_batching = true`, the default), a worker thread that takes a
//! request also takes the requests already waiting behind it with the same
//! shape (up to `max_batch_size` rows), runs them as one batch and splits
//! the outputs by rows. It never waits for more requests, so batching adds
//! no latency; it only forms when requests queue. Should the combined run
//! fail, each request runs again alone and gets its own answer or error.
//! Batched results equal single-row results up to the last float32 bits
//! (matrix-matrix vs. matrix-vector kernels).
//!
//! Under `execution = "auto"` a batchable model runs a request inline only
//! while the model is idle (nothing queued or running) and its requests do
//! not come in quick succession: a lone request keeps the inline path's
//! latency, and under load every request queues and is batched. The load
//! is a moving average of the gap between a model's requests: batching
//! starts when it falls below 40 µs and stops when it is back above 60 µs,
//! so that a rate near the threshold does not flip the choice back and
//! forth. On 2 vCPUs inline was faster at concurrency 1–2 and batching at
//! 8 and more; keying the choice on the arrival rate rather than on the
//! model being found busy gained 3–8 % at concurrency 2–32
//! (BENCHMARKS.md). A challenger's mirrored copies are batched the same
//! way on its own workers.

pub mod onnx;
mod runner;
#[cfg(feature = "torchscript")]
pub mod torchscript;

use std::path::Path;

pub use runner::{
    Answer, ExecutionPlan, Runner, RunnerError, SpawnError, Timings, WorkerOptions,
    lower_to_idle_priority,
};

use crate::protocol::{Tensor, TensorSpec};

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library could not be loaded from {path}: {message}")]
    Library { path: String, message: String },
    #[error("model {path} could not be loaded: {message}")]
    Load { path: String, message: String },
    #[error("model {path}: {message}")]
    Signature { path: String, message: String },
    /// The engine rejected the inputs (shape or value the graph cannot take).
    #[error("{0}")]
    InvalidInput(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("{0}")]
    Unsupported(String),
}

/// Per-model engine settings.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Independent sessions (model instances) that can run concurrently.
    pub instances: usize,
    /// Intra-op threads per session.
    pub intra_op_threads: usize,
}

/// A loaded model: thread-safe, blocking inference over internal tensors.
///
/// `infer` receives the inputs in signature order, already validated against
/// [`Model::inputs`], and returns every output in signature order.
pub trait Model: Send + Sync + 'static {
    /// Open Inference Protocol platform name (`onnx_onnxv1`, …).
    fn platform(&self) -> &'static str;
    /// Triton backend name for the model configuration endpoint.
    fn backend(&self) -> &'static str;
    fn inputs(&self) -> &[TensorSpec];
    fn outputs(&self) -> &[TensorSpec];
    fn instances(&self) -> usize;
    /// Runs one batch on any free instance.
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError>;
    /// Runs one batch on instance `instance` (worker threads own one each).
    fn infer_on(&self, instance: usize, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError>;
}

/// Loads a model artifact with the engine its file name selects (ONNX, or
/// TorchScript with its signature declared elsewhere: see [`load_declared`]).
pub fn load(path: &Path, settings: &EngineSettings) -> Result<Box<dyn Model>, RuntimeError> {
    load_declared(path, &[], &[], settings)
}

/// Loads a model artifact; `inputs`/`outputs` are the signature declared in
/// `model.toml`, required by formats that carry none (TorchScript).
pub fn load_declared(
    path: &Path,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
    settings: &EngineSettings,
) -> Result<Box<dyn Model>, RuntimeError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("onnx") => Ok(Box::new(onnx::OnnxModel::load(path, settings)?)),
        #[cfg(feature = "torchscript")]
        Some("pt") => Ok(Box::new(torchscript::TorchScriptModel::load(
            path, inputs, outputs, settings,
        )?)),
        #[cfg(not(feature = "torchscript"))]
        Some("pt") => {
            let _ = (inputs, outputs);
            Err(RuntimeError::Unsupported(format!(
                "{}: TorchScript models need contender built with the `torchscript` cargo feature \
                 (cargo build --features torchscript; `make run` does)",
                path.display()
            )))
        }
        _ => Err(RuntimeError::Unsupported(format!(
            "{}: unknown model format (expected model.onnx or model.pt)",
            path.display()
        ))),
    }
}
