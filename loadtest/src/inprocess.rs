//! The in-process baseline: the model called with contender's own engine
//! code from plain OS threads, no HTTP, no JSON. The body is decoded and
//! bound once up front; each thread then calls `Model::infer` back to back.
//! Engine settings are the gateway's: one intra-op thread per session, one
//! session per calling thread.
//!
//! A TorchScript `model.pt` carries no signature: the one its `model.toml`
//! declares is read from the repository entry (as the gateway does), and the
//! binary needs the `torchscript` feature (`--features torchscript`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use contender::protocol::rest::decode_request;
use contender::protocol::validate::bind_inputs;
use contender::repository::read_entry;
use contender::runtime::{self, EngineSettings};

use crate::report::{Recorder, Setup};

#[derive(clap::Args)]
pub struct Args {
    /// Model file (`model.onnx`, or `model.pt` in a repository version
    /// directory whose `model.toml` declares its signature).
    #[arg(long, default_value = "models/breast_cancer/1/model.onnx")]
    model: PathBuf,
    /// Request body file (V2 JSON) whose inputs are fed to the model.
    #[arg(long)]
    body: PathBuf,
    /// Calling threads (and model sessions).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of calls before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// ONNX Runtime shared library (default: where the set-up script puts it).
    #[arg(long)]
    onnxruntime: Option<PathBuf>,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    ensure!(
        (1..=1024).contains(&args.threads),
        "--threads must be 1..=1024"
    );
    ensure!(
        args.warmup >= 0.0 && args.duration > 0.0 && args.warmup + args.duration <= 3600.0,
        "--warmup must be ≥ 0 and --duration > 0, together at most 3600 s"
    );
    let settings = EngineSettings {
        instances: args.threads,
        intra_op_threads: 1,
    };
    let model = if args.model.extension().is_some_and(|e| e == "onnx") {
        let library = args
            .onnxruntime
            .clone()
            .unwrap_or_else(runtime::onnx::default_library_path);
        runtime::onnx::init(&library)?;
        runtime::load(&args.model, &settings)?
    } else {
        // The signature comes from the entry's model.toml.
        let dir = args
            .model
            .parent()
            .context("--model names a file inside a model version directory")?;
        let entry = read_entry(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let meta = &entry.metadata;
        runtime::load_declared(&args.model, &meta.inputs, &meta.outputs, &settings)?
    };
    let body = std::fs::read(&args.body)
        .with_context(|| format!("reading the body file {}", args.body.display()))?;
    let request = decode_request(&body, None)?;
    let (inputs, rows) = bind_inputs("model", request.inputs, model.inputs(), usize::MAX)
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    model.infer(&inputs).context("the first inference failed")?;

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let model = &*model;
    let inputs = &inputs;
    let recorder = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..args.threads)
            .map(|_| {
                scope.spawn(move || {
                    let mut rec = Recorder::new();
                    loop {
                        let t = Instant::now();
                        if t >= end {
                            break;
                        }
                        match model.infer(inputs) {
                            Ok(out) if t >= measure_from => {
                                let latency = t.elapsed();
                                drop(out);
                                rec.success(latency);
                            }
                            Ok(_) => {}
                            Err(e) => rec.error(format!("inference: {e}")),
                        }
                    }
                    rec
                })
            })
            .collect();
        let mut total = Recorder::new();
        for w in workers {
            match w.join() {
                Ok(rec) => total.merge(&rec),
                Err(_) => total.error("a calling thread panicked"),
            }
        }
        total
    });
    let setup = Setup {
        source: "inprocess".into(),
        target: args.model.display().to_string(),
        mode: "closed".into(),
        concurrency: Some(args.threads),
        rate: None,
        max_in_flight: None,
        rows: Some(rows),
        warmup_s: args.warmup,
        duration_s: args.duration,
    };
    recorder
        .finish(setup, end - measure_from)
        .emit(args.json.as_deref())
}
