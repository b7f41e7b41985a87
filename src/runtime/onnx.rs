//! ONNX engine on ONNX Runtime (`ort`, loaded dynamically from the library the
//! set-up script takes from the PyPI `onnxruntime` wheel).
//!
//! Each model holds `instances` sessions with one intra-op and one inter-op
//! thread each (ONNX Runtime's default gives every session `cores − 1`
//! spinning threads, which doubled CPU use without helping small models).
//! `Session::run` needs `&mut`, so sessions sit behind a mutex each; a call
//! takes the first free one, and outputs are copied out before it unlocks.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use ort::environment::Environment;
use ort::session::{Session, SessionInputValue, builder::GraphOptimizationLevel};
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, TensorRef, ValueType};

use super::{EngineSettings, Model, RuntimeError};
use crate::protocol::{DataType, Tensor, TensorData, TensorSpec};

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Loads the ONNX Runtime shared library and creates the process-wide
/// environment. Idempotent: later calls return the first environment.
pub fn init(library: &Path) -> Result<(), RuntimeError> {
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if ENVIRONMENT.get().is_some() {
        return Ok(());
    }
    let lib_err = |message: String| RuntimeError::Library {
        path: library.display().to_string(),
        message,
    };
    if !library.is_file() {
        return Err(lib_err(
            "no such file; run `make setup` (scripts/setup-onnxruntime.sh) or set runtime.onnxruntime_library"
                .into(),
        ));
    }
    let env = ort::init_from(library)
        .map_err(|e| lib_err(e.to_string()))?
        .with_name("contender")
        .with_telemetry(false)
        .build()
        .map_err(|e| lib_err(e.to_string()))?;
    let _ = ENVIRONMENT.set(env);
    Ok(())
}

fn environment() -> Result<&'static Environment, RuntimeError> {
    ENVIRONMENT.get().ok_or_else(|| RuntimeError::Library {
        path: "(not set)".into(),
        message: "ONNX Runtime was not initialised before loading a model".into(),
    })
}

/// The default place the set-up script caches the ONNX Runtime library.
pub fn default_library_path() -> PathBuf {
    crate::config::cache_dir()
        .join("onnxruntime-1.31.1")
        .join("libonnxruntime.so.1.31.1")
}

pub struct OnnxModel {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl OnnxModel {
    pub fn load(path: &Path, settings: &EngineSettings) -> Result<OnnxModel, RuntimeError> {
        let env = environment()?;
        let load_err = |message: String| RuntimeError::Load {
            path: path.display().to_string(),
            message,
        };
        let instances = settings.instances.max(1);
        let mut sessions = Vec::with_capacity(instances);
        for _ in 0..instances {
            // Builder errors carry the builder back and are not Send: keep only the message.
            let session = Session::builder(env)
                .map_err(|e| load_err(e.to_string()))?
                .with_intra_threads(settings.intra_op_threads.max(1))
                .map_err(|e| load_err(e.to_string()))?
                .with_inter_threads(1)
                .map_err(|e| load_err(e.to_string()))?
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(|e| load_err(e.to_string()))?
                .commit_from_file(path)
                .map_err(|e| load_err(e.to_string()))?;
            sessions.push(session);
        }
        let sig_err = |message: String| RuntimeError::Signature {
            path: path.display().to_string(),
            message,
        };
        let first = &sessions[0];
        let inputs = first
            .inputs()
            .iter()
            .map(|o| {
                spec(o.name(), o.dtype()).map_err(|m| sig_err(format!("input '{}': {m}", o.name())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = first
            .outputs()
            .iter()
            .map(|o| {
                spec(o.name(), o.dtype())
                    .map_err(|m| sig_err(format!("output '{}': {m}", o.name())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OnnxModel {
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
            inputs,
            outputs,
        })
    }

    /// The first free session, always trying them in the same order: at low
    /// load every call runs on session 0, whose buffers are the ones most
    /// likely still in the CPU caches; under load the others take the rest.
    /// When all are busy it waits on one, in turn (for at most one inference).
    fn session(&self) -> MutexGuard<'_, Session> {
        for s in &self.sessions {
            if let Ok(guard) = s.try_lock() {
                return guard;
            }
        }
        let n = self.sessions.len();
        lock(&self.sessions[self.next.fetch_add(1, Ordering::Relaxed) % n])
    }

    fn run(&self, session: &mut Session, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let mut feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        // String tensors are copied into ONNX Runtime's own buffers; keep them alive here.
        for t in inputs {
            let value = input_value(t).map_err(|e| classify(&e))?;
            feeds.push((Cow::Borrowed(t.name.as_str()), value));
        }
        let outputs = session.run(feeds).map_err(|e| classify(&e))?;
        self.outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(&spec.name).ok_or_else(|| {
                    RuntimeError::Inference(format!("output '{}' missing", spec.name))
                })?;
                extract(&spec.name, value)
            })
            .collect()
    }
}

fn lock(m: &Mutex<Session>) -> MutexGuard<'_, Session> {
    // A panic inside ONNX Runtime's run cannot leave the session half-mutated
    // from Rust's point of view; keep serving with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Model for OnnxModel {
    fn platform(&self) -> &'static str {
        "onnx_onnxv1"
    }
    fn backend(&self) -> &'static str {
        "onnxruntime"
    }
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }
    fn instances(&self) -> usize {
        self.sessions.len()
    }
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let mut session = self.session();
        self.run(&mut session, inputs)
    }
    fn infer_on(&self, instance: usize, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let mut session = lock(&self.sessions[instance % self.sessions.len()]);
        self.run(&mut session, inputs)
    }
}

fn classify(e: &ort::Error) -> RuntimeError {
    match e.code() {
        ort::error::ErrorCode::InvalidArgument => {
            RuntimeError::InvalidInput(e.message().to_owned())
        }
        _ => RuntimeError::Inference(e.message().to_owned()),
    }
}

fn datatype(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn spec(name: &str, ty: &ValueType) -> Result<TensorSpec, String> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => Ok(TensorSpec {
            name: name.to_owned(),
            datatype: datatype(*ty)
                .ok_or_else(|| format!("element type {ty:?} is not served by contender"))?,
            shape: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
        }),
        other => Err(format!(
            "{other:?} is not a tensor; export classifiers without ZipMap (skl2onnx option zipmap=False)"
        )),
    }
}

fn input_value(t: &Tensor) -> Result<SessionInputValue<'_>, ort::Error> {
    let shape = t.shape.clone();
    macro_rules! view {
        ($v:expr) => {
            TensorRef::from_array_view((shape, $v.as_slice()))?.into()
        };
    }
    Ok(match &t.data {
        TensorData::Bool(v) => view!(v),
        TensorData::Uint8(v) => view!(v),
        TensorData::Uint16(v) => view!(v),
        TensorData::Uint32(v) => view!(v),
        TensorData::Uint64(v) => view!(v),
        TensorData::Int8(v) => view!(v),
        TensorData::Int16(v) => view!(v),
        TensorData::Int32(v) => view!(v),
        TensorData::Int64(v) => view!(v),
        TensorData::Fp32(v) => view!(v),
        TensorData::Fp64(v) => view!(v),
        TensorData::Bytes(v) => {
            let strings: Vec<String> = v
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            OrtTensor::from_string_array((shape, strings.as_slice()))?.into()
        }
    })
}

fn extract(name: &str, value: &DynValue) -> Result<Tensor, RuntimeError> {
    let err = |e: ort::Error| RuntimeError::Inference(format!("output '{name}': {e}"));
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => {
            return Err(RuntimeError::Inference(format!(
                "output '{name}' is {other:?}, not a tensor"
            )));
        }
    };
    macro_rules! copy {
        ($variant:ident, $t:ty) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(err)?;
            (shape.to_vec(), TensorData::$variant(data.to_vec()))
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Bool => copy!(Bool, bool),
        TensorElementType::Uint8 => copy!(Uint8, u8),
        TensorElementType::Uint16 => copy!(Uint16, u16),
        TensorElementType::Uint32 => copy!(Uint32, u32),
        TensorElementType::Uint64 => copy!(Uint64, u64),
        TensorElementType::Int8 => copy!(Int8, i8),
        TensorElementType::Int16 => copy!(Int16, i16),
        TensorElementType::Int32 => copy!(Int32, i32),
        TensorElementType::Int64 => copy!(Int64, i64),
        TensorElementType::Float32 => copy!(Fp32, f32),
        TensorElementType::Float64 => copy!(Fp64, f64),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings().map_err(err)?;
            (
                shape.to_vec(),
                TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect()),
            )
        }
        other => {
            return Err(RuntimeError::Inference(format!(
                "output '{name}' has element type {other:?}, not served by contender"
            )));
        }
    };
    Ok(Tensor {
        name: name.to_owned(),
        shape,
        data,
    })
}
