//! TorchScript engine on libtorch (`tch`, cargo feature `torchscript`).
//!
//! TorchScript files carry no typed signature, so the model's `model.toml`
//! declares inputs and outputs; the declaration is checked at load time by a
//! forward pass on a dummy batch — a mismatch is a load error, never a
//! failure at the first request. The model's `forward` may return one
//! tensor, a tuple or list of tensors (matched to the declared outputs by
//! position), or a dict of name → tensor (matched by name).
//!
//! One `CModule` is shared by every instance: `forward` takes `&self` and
//! libtorch runs concurrent forwards on one module safely, so instances only
//! set how many worker threads may run it at once. Grad mode is per thread
//! in libtorch; every forward runs under `no_grad` on whatever thread calls
//! it. libtorch's intra-op thread count is process-wide: the first
//! TorchScript model loaded sets it (1 by default).

use std::path::Path;
use std::sync::Once;

use tch::{CModule, Device, IValue, Kind, Tensor as TchTensor};

use super::{EngineSettings, Model, RuntimeError};
use crate::protocol::{DataType, Tensor, TensorData, TensorSpec, shape_string};

static THREADS: Once = Once::new();

pub struct TorchScriptModel {
    module: CModule,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    instances: usize,
}

fn kind(datatype: DataType) -> Option<Kind> {
    Some(match datatype {
        DataType::Bool => Kind::Bool,
        DataType::Uint8 => Kind::Uint8,
        DataType::Int8 => Kind::Int8,
        DataType::Int16 => Kind::Int16,
        DataType::Int32 => Kind::Int,
        DataType::Int64 => Kind::Int64,
        DataType::Fp32 => Kind::Float,
        DataType::Fp64 => Kind::Double,
        _ => return None,
    })
}

impl TorchScriptModel {
    pub fn load(
        path: &Path,
        inputs: &[TensorSpec],
        outputs: &[TensorSpec],
        settings: &EngineSettings,
    ) -> Result<TorchScriptModel, RuntimeError> {
        let sig_err = |message: String| RuntimeError::Signature {
            path: path.display().to_string(),
            message,
        };
        if inputs.is_empty() || outputs.is_empty() {
            return Err(sig_err(
                "TorchScript needs [[inputs]] and [[outputs]] declared in model.toml".into(),
            ));
        }
        for spec in inputs.iter().chain(outputs) {
            if kind(spec.datatype).is_none() {
                return Err(sig_err(format!(
                    "'{}': datatype {} has no libtorch equivalent served by contender",
                    spec.name, spec.datatype
                )));
            }
        }
        THREADS.call_once(|| {
            tch::set_num_threads(settings.intra_op_threads.max(1) as i32);
            tch::set_num_interop_threads(1);
        });
        let mut module =
            CModule::load_on_device(path, Device::Cpu).map_err(|e| RuntimeError::Load {
                path: path.display().to_string(),
                message: torch_message(&e.to_string()),
            })?;
        module.set_eval();
        let model = TorchScriptModel {
            module,
            inputs: inputs.to_vec(),
            outputs: outputs.to_vec(),
            instances: settings.instances.max(1),
        };
        model.check_declaration().map_err(sig_err)?;
        Ok(model)
    }

    /// A forward pass on a dummy batch must give exactly the declared outputs.
    fn check_declaration(&self) -> Result<(), String> {
        let rows = if self.inputs.iter().all(TensorSpec::has_batch_dim) {
            2
        } else {
            1
        };
        let batch = crate::deployment::dummy_batch(&self.inputs, rows);
        let produced = self.forward(&batch).map_err(|e| {
            format!("forward pass on a dummy batch of the declared inputs failed: {e}")
        })?;
        for (spec, t) in self.outputs.iter().zip(&produced) {
            let got_kind = t.kind();
            if Some(got_kind) != kind(spec.datatype) {
                return Err(format!(
                    "output '{}' is declared {} but the model returns {got_kind:?}",
                    spec.name, spec.datatype
                ));
            }
            let shape = t.size();
            if !spec.accepts_shape(&shape) || (spec.has_batch_dim() && shape[0] != rows as i64) {
                return Err(format!(
                    "output '{}' is declared {} but the model returns shape {} for a batch of {rows}",
                    spec.name,
                    shape_string(&spec.shape),
                    shape_string(&shape)
                ));
            }
        }
        Ok(())
    }

    /// Runs `forward` and returns the outputs in declaration order.
    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<TchTensor>, RuntimeError> {
        let args = inputs
            .iter()
            .map(to_ivalue)
            .collect::<Result<Vec<_>, _>>()?;
        let result = tch::no_grad(|| self.module.forward_is(&args))
            .map_err(|e| RuntimeError::Inference(torch_message(&e.to_string())))?;
        let mismatch = |what: String| {
            RuntimeError::Inference(format!(
                "{what}; model.toml declares {} output(s): {}",
                self.outputs.len(),
                self.outputs
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        let tensors = match result {
            IValue::Tensor(t) => vec![t],
            IValue::TensorList(v) => v,
            IValue::Tuple(v) | IValue::GenericList(v) => v
                .into_iter()
                .map(|iv| match iv {
                    IValue::Tensor(t) => Ok(t),
                    _ => Err(mismatch(
                        "forward returned a sequence holding a non-tensor".into(),
                    )),
                })
                .collect::<Result<_, _>>()?,
            IValue::GenericDict(pairs) => {
                let mut by_name: Vec<(String, TchTensor)> = pairs
                    .into_iter()
                    .filter_map(|(k, v)| match (k, v) {
                        (IValue::String(k), IValue::Tensor(t)) => Some((k, t)),
                        _ => None,
                    })
                    .collect();
                self.outputs
                    .iter()
                    .map(|spec| {
                        let i = by_name
                            .iter()
                            .position(|(k, _)| *k == spec.name)
                            .ok_or_else(|| {
                                mismatch(format!("forward's dict has no key '{}'", spec.name))
                            })?;
                        Ok(by_name.swap_remove(i).1)
                    })
                    .collect::<Result<_, _>>()?
            }
            other => return Err(mismatch(format!("forward returned {other:?}, not tensors"))),
        };
        if tensors.len() != self.outputs.len() {
            return Err(mismatch(format!(
                "forward returned {} tensor(s)",
                tensors.len()
            )));
        }
        Ok(tensors)
    }
}

fn to_ivalue(t: &Tensor) -> Result<IValue, RuntimeError> {
    let err = |e: tch::TchError| RuntimeError::InvalidInput(format!("input '{}': {e}", t.name));
    let flat = match &t.data {
        TensorData::Bool(v) => TchTensor::f_from_slice(v),
        TensorData::Uint8(v) => TchTensor::f_from_slice(v),
        TensorData::Int8(v) => TchTensor::f_from_slice(v),
        TensorData::Int16(v) => TchTensor::f_from_slice(v),
        TensorData::Int32(v) => TchTensor::f_from_slice(v),
        TensorData::Int64(v) => TchTensor::f_from_slice(v),
        TensorData::Fp32(v) => TchTensor::f_from_slice(v),
        TensorData::Fp64(v) => TchTensor::f_from_slice(v),
        other => {
            return Err(RuntimeError::InvalidInput(format!(
                "input '{}': datatype {} is not served by the TorchScript engine",
                t.name,
                other.datatype()
            )));
        }
    }
    .map_err(err)?;
    Ok(IValue::Tensor(
        flat.f_reshape(t.shape.as_slice()).map_err(err)?,
    ))
}

fn from_tch(spec: &TensorSpec, t: &TchTensor) -> Result<Tensor, RuntimeError> {
    let err = |e: tch::TchError| RuntimeError::Inference(format!("output '{}': {e}", spec.name));
    if Some(t.kind()) != kind(spec.datatype) {
        return Err(RuntimeError::Inference(format!(
            "output '{}' is declared {} but the model returned {:?}",
            spec.name,
            spec.datatype,
            t.kind()
        )));
    }
    let shape = t.size();
    let flat = t
        .f_contiguous()
        .and_then(|c| c.f_reshape([-1]))
        .map_err(err)?;
    macro_rules! copy {
        ($variant:ident, $t:ty) => {
            TensorData::$variant(Vec::<$t>::try_from(&flat).map_err(err)?)
        };
    }
    let data = match spec.datatype {
        DataType::Bool => copy!(Bool, bool),
        DataType::Uint8 => copy!(Uint8, u8),
        DataType::Int8 => copy!(Int8, i8),
        DataType::Int16 => copy!(Int16, i16),
        DataType::Int32 => copy!(Int32, i32),
        DataType::Int64 => copy!(Int64, i64),
        DataType::Fp32 => copy!(Fp32, f32),
        DataType::Fp64 => copy!(Fp64, f64),
        other => {
            return Err(RuntimeError::Inference(format!(
                "output datatype {other} is not served"
            )));
        }
    };
    Ok(Tensor::new(spec.name.clone(), shape, data))
}

impl Model for TorchScriptModel {
    fn platform(&self) -> &'static str {
        "pytorch_torchscript"
    }
    fn backend(&self) -> &'static str {
        "pytorch"
    }
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }
    fn instances(&self) -> usize {
        self.instances
    }
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let produced = self.forward(inputs)?;
        self.outputs
            .iter()
            .zip(&produced)
            .map(|(spec, t)| from_tch(spec, t))
            .collect()
    }
    fn infer_on(&self, _instance: usize, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        self.infer(inputs)
    }
}

/// libtorch's message without the C++ stack trace it appends ("Exception
/// raised from …" and the `frame #N` lines): what a person reads in an
/// error, the log or `contender validate`.
fn torch_message(full: &str) -> String {
    let cut = ["Exception raised from", "\nframe #"]
        .iter()
        .filter_map(|m| full.find(m))
        .min()
        .unwrap_or(full.len());
    let message = full[..cut].trim();
    if message.is_empty() {
        full.lines().next().unwrap_or("").trim().to_owned()
    } else {
        message.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_traces_are_cut_from_libtorch_messages() {
        let full = "PytorchStreamReader failed reading zip archive: failed finding central directory\nException raised from valid at ../caffe2/serialize/inline_container.cc:236 (most recent call first):\nframe #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x8e (0x7f in libc10.so)\nframe #1: ...";
        assert_eq!(
            torch_message(full),
            "PytorchStreamReader failed reading zip archive: failed finding central directory"
        );
        assert_eq!(torch_message("plain message"), "plain message");
    }
}
