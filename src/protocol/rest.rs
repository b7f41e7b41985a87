//! Open Inference Protocol over REST: JSON request/response bodies and the
//! binary tensor data extension, translated once into [`Tensor`]s.
//!
//! Decoding never builds a `serde_json::Value` tree for tensor data: each
//! input's `data` is kept as a borrowed raw JSON slice until its datatype is
//! known, then flattened straight into a typed `Vec` sized from the shape.
//! Floating-point data is read from that slice by a correctly rounding
//! float parser (see [`scan_floats`]); serde reads everything else, and
//! any float data the scanner leaves.

use serde::de::{DeserializeSeed, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::tensor::{DataType, Tensor, TensorData, element_count, shape_string};

/// HTTP header carrying the length of the JSON part of a binary request or response.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// Why a request body could not be decoded. Every variant is the client's fault (400).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed request body: {0}")]
    Json(#[source] serde_json::Error),
    #[error("request body is not valid JSON up to the {HEADER_CONTENT_LENGTH} of {0} bytes")]
    HeaderLength(usize),
    #[error("input '{input}': unknown datatype '{datatype}'")]
    UnknownDatatype { input: String, datatype: String },
    #[error("input '{input}': datatype {datatype} is not supported by contender")]
    UnsupportedDatatype { input: String, datatype: DataType },
    #[error("input '{input}': invalid shape {shape}")]
    InvalidShape { input: String, shape: String },
    #[error("input '{input}': shape {shape} needs {expected} elements but data has {got}")]
    DataLength {
        input: String,
        shape: String,
        expected: usize,
        got: usize,
    },
    #[error("input '{input}': invalid data: {}", without_position(source))]
    Data {
        input: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("input '{input}': no data (give 'data' or the binary_data_size parameter)")]
    MissingData { input: String },
    #[error(
        "input '{input}': binary data of {got} bytes does not fit shape {shape} of {datatype} ({expected} bytes)"
    )]
    BinaryLength {
        input: String,
        shape: String,
        datatype: DataType,
        expected: usize,
        got: usize,
    },
    #[error("input '{input}': binary_data_size {size} exceeds the {left} bytes left in the body")]
    BinaryOverrun {
        input: String,
        size: usize,
        left: usize,
    },
    #[error("input '{input}': malformed BYTES element in binary data")]
    BinaryBytes { input: String },
    #[error("{0} bytes of binary data are not claimed by any input")]
    BinaryTrailing(usize),
    #[error(
        "{what} '{name}': the shared-memory extension is not supported (parameter '{parameter}'); send the tensor in the request"
    )]
    SharedMemory {
        what: &'static str,
        name: String,
        parameter: &'static str,
    },
    #[error("parameter '{name}' must be {expected}")]
    Parameter {
        name: String,
        expected: &'static str,
    },
}

/// A decoded inference request, independent of the wire format.
#[derive(Debug, Default)]
pub struct InferRequest {
    pub id: Option<String>,
    pub parameters: Map<String, Value>,
    pub inputs: Vec<Tensor>,
    /// Requested outputs; empty means every output.
    pub outputs: Vec<RequestedOutput>,
    /// Request-level `binary_data_output`.
    pub binary_data_output: bool,
}

#[derive(Debug, Clone)]
pub struct RequestedOutput {
    pub name: String,
    /// Per-output `binary_data`, when given.
    pub binary_data: Option<bool>,
    /// Triton's classification extension: `"classification": N` asks for
    /// the top N classes of each row instead of the raw tensor.
    pub classification: Option<usize>,
}

impl InferRequest {
    /// Whether output `name` goes back in the binary section.
    pub fn wants_binary(&self, name: &str) -> bool {
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.binary_data)
            .unwrap_or(self.binary_data_output)
    }

    /// Rows in the batch: the first dimension of the first input.
    pub fn batch_rows(&self) -> usize {
        self.inputs
            .first()
            .and_then(|t| t.shape.first())
            .map_or(1, |&d| usize::try_from(d).unwrap_or(0))
    }
}

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    inputs: Vec<WireInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<WireOutput>>,
}

#[derive(Deserialize)]
struct WireInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: &'a str,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

fn bool_param(
    params: Option<&Map<String, Value>>,
    name: &str,
) -> Result<Option<bool>, DecodeError> {
    match params.and_then(|p| p.get(name)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(DecodeError::Parameter {
            name: name.to_owned(),
            expected: "a boolean",
        }),
    }
}

/// The shared-memory parameter a tensor carries (Triton's system and CUDA
/// shared-memory extensions), which contender does not serve: such a tensor
/// is refused rather than read as if it had no data.
fn shared_memory(params: Option<&Map<String, Value>>) -> Option<&'static str> {
    let params = params?;
    [
        "shared_memory_region",
        "shared_memory_byte_size",
        "shared_memory_offset",
    ]
    .into_iter()
    .find(|p| params.contains_key(*p))
}

fn size_param(
    params: Option<&Map<String, Value>>,
    name: &str,
) -> Result<Option<usize>, DecodeError> {
    match params.and_then(|p| p.get(name)) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| DecodeError::Parameter {
                name: name.to_owned(),
                expected: "a non-negative integer",
            }),
    }
}

/// Decodes a V2 REST inference body. `json_len` is the value of the
/// `Inference-Header-Content-Length` header when the body carries binary tensors.
pub fn decode_request(body: &[u8], json_len: Option<usize>) -> Result<InferRequest, DecodeError> {
    let (json, mut binary) = match json_len {
        Some(n) if n > body.len() => return Err(DecodeError::HeaderLength(n)),
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let wire: WireRequest<'_> = serde_json::from_slice(json).map_err(DecodeError::Json)?;
    let mut inputs = Vec::with_capacity(wire.inputs.len());
    for input in wire.inputs {
        if let Some(parameter) = shared_memory(input.parameters.as_ref()) {
            return Err(DecodeError::SharedMemory {
                what: "input",
                name: input.name,
                parameter,
            });
        }
        let datatype =
            DataType::parse(input.datatype).ok_or_else(|| DecodeError::UnknownDatatype {
                input: input.name.clone(),
                datatype: input.datatype.to_owned(),
            })?;
        if datatype == DataType::Fp16 {
            return Err(DecodeError::UnsupportedDatatype {
                input: input.name,
                datatype,
            });
        }
        let count = element_count(&input.shape).ok_or_else(|| DecodeError::InvalidShape {
            input: input.name.clone(),
            shape: shape_string(&input.shape),
        })?;
        let binary_size = size_param(input.parameters.as_ref(), "binary_data_size")?;
        let data = match (binary_size, input.data) {
            (Some(size), _) => {
                if size > binary.len() {
                    return Err(DecodeError::BinaryOverrun {
                        input: input.name,
                        size,
                        left: binary.len(),
                    });
                }
                let (chunk, rest) = binary.split_at(size);
                binary = rest;
                decode_binary(&input.name, &input.shape, datatype, count, chunk)?
            }
            (None, Some(raw)) => decode_json_data(&input.name, &input.shape, datatype, count, raw)?,
            (None, None) => return Err(DecodeError::MissingData { input: input.name }),
        };
        inputs.push(Tensor {
            name: input.name,
            shape: input.shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(DecodeError::BinaryTrailing(binary.len()));
    }
    let binary_data_output =
        bool_param(wire.parameters.as_ref(), "binary_data_output")?.unwrap_or(false);
    let outputs = wire
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            if let Some(parameter) = shared_memory(o.parameters.as_ref()) {
                return Err(DecodeError::SharedMemory {
                    what: "output",
                    name: o.name,
                    parameter,
                });
            }
            let classification = match size_param(o.parameters.as_ref(), "classification") {
                Ok(Some(0)) | Err(_) => {
                    return Err(DecodeError::Parameter {
                        name: "classification".to_owned(),
                        expected: "a positive integer (how many classes to return)",
                    });
                }
                Ok(n) => n,
            };
            Ok(RequestedOutput {
                binary_data: bool_param(o.parameters.as_ref(), "binary_data")?,
                classification,
                name: o.name,
            })
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    Ok(InferRequest {
        id: wire.id.filter(|id| !id.is_empty()),
        parameters: wire.parameters.unwrap_or_default(),
        inputs,
        outputs,
        binary_data_output,
    })
}

fn decode_json_data(
    name: &str,
    shape: &[i64],
    datatype: DataType,
    count: usize,
    raw: &RawValue,
) -> Result<TensorData, DecodeError> {
    // The JSON text bounds how many elements it can hold (at least one byte
    // each), so a huge claimed shape cannot make us reserve huge buffers.
    let capacity = count.min(raw.get().len());
    macro_rules! flatten {
        ($variant:ident, $t:ty) => {{
            let mut out: Vec<$t> = Vec::with_capacity(capacity);
            let mut de = serde_json::Deserializer::from_str(raw.get());
            Flatten { out: &mut out }
                .deserialize(&mut de)
                .and_then(|()| de.end())
                .map_err(|source| DecodeError::Data {
                    input: name.to_owned(),
                    source,
                })?;
            checked_len(name, shape, count, TensorData::$variant(out))?
        }};
    }
    Ok(match datatype {
        DataType::Bool => flatten!(Bool, bool),
        DataType::Uint8 => flatten!(Uint8, u8),
        DataType::Uint16 => flatten!(Uint16, u16),
        DataType::Uint32 => flatten!(Uint32, u32),
        DataType::Uint64 => flatten!(Uint64, u64),
        DataType::Int8 => flatten!(Int8, i8),
        DataType::Int16 => flatten!(Int16, i16),
        DataType::Int32 => flatten!(Int32, i32),
        DataType::Int64 => flatten!(Int64, i64),
        DataType::Fp32 => match scan_floats::<f32>(raw.get(), capacity) {
            Some(out) => checked_len(name, shape, count, TensorData::Fp32(out))?,
            None => flatten!(Fp32, f32),
        },
        DataType::Fp64 => match scan_floats::<f64>(raw.get(), capacity) {
            Some(out) => checked_len(name, shape, count, TensorData::Fp64(out))?,
            None => flatten!(Fp64, f64),
        },
        DataType::Bytes => flatten!(Bytes, Vec<u8>),
        DataType::Fp16 => unreachable!("rejected before decoding"),
    })
}

fn checked_len(
    name: &str,
    shape: &[i64],
    count: usize,
    data: TensorData,
) -> Result<TensorData, DecodeError> {
    if data.len() != count {
        return Err(DecodeError::DataLength {
            input: name.to_owned(),
            shape: shape_string(shape),
            expected: count,
            got: data.len(),
        });
    }
    Ok(data)
}

/// Floating-point data read straight from its JSON text: a (possibly
/// nested) array of numbers, each parsed to `T` by a correctly rounding
/// parser (Eisel–Lemire, `fast-float2`).
///
/// Clients that send float32 tensors as JSON usually print each value
/// widened to float64 (`16.700000762939453`): 17 digits, which serde_json's
/// exact float parser takes its slow path for (about 40 ns a number, most
/// of a 32-row request's decoding). `text` was already checked to be valid
/// JSON when the body was parsed, so every token is a valid JSON number or
/// punctuation; anything else (a string, `true`, `null`, an object) or a
/// number out of `T`'s range gives `None`, and the serde path decodes the
/// data and reports what is wrong with it.
fn scan_floats<T: fast_float2::FastFloat + Into<f64>>(
    text: &str,
    capacity: usize,
) -> Option<Vec<T>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(capacity);
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'[' | b']' | b',' | b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'-' | b'0'..=b'9' => {
                let (v, used) = fast_float2::parse_partial::<T, _>(&bytes[i..]).ok()?;
                if !v.into().is_finite() {
                    return None;
                }
                out.push(v);
                i += used;
            }
            _ => return None,
        }
    }
    Some(out)
}

fn decode_binary(
    name: &str,
    shape: &[i64],
    datatype: DataType,
    count: usize,
    chunk: &[u8],
) -> Result<TensorData, DecodeError> {
    let Some(size) = datatype.byte_size() else {
        return decode_binary_bytes(name, shape, count, chunk);
    };
    let expected = count.saturating_mul(size);
    if chunk.len() != expected {
        return Err(DecodeError::BinaryLength {
            input: name.to_owned(),
            shape: shape_string(shape),
            datatype,
            expected,
            got: chunk.len(),
        });
    }
    macro_rules! le {
        ($variant:ident, $t:ty) => {
            TensorData::$variant(
                chunk
                    .chunks_exact(size_of::<$t>())
                    .map(|b| <$t>::from_le_bytes(b.try_into().expect("chunk size")))
                    .collect(),
            )
        };
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(chunk.iter().map(|&b| b != 0).collect()),
        DataType::Uint8 => TensorData::Uint8(chunk.to_vec()),
        DataType::Int8 => TensorData::Int8(chunk.iter().map(|&b| b as i8).collect()),
        DataType::Uint16 => le!(Uint16, u16),
        DataType::Uint32 => le!(Uint32, u32),
        DataType::Uint64 => le!(Uint64, u64),
        DataType::Int16 => le!(Int16, i16),
        DataType::Int32 => le!(Int32, i32),
        DataType::Int64 => le!(Int64, i64),
        DataType::Fp32 => le!(Fp32, f32),
        DataType::Fp64 => le!(Fp64, f64),
        DataType::Fp16 | DataType::Bytes => unreachable!("handled above"),
    })
}

fn decode_binary_bytes(
    name: &str,
    shape: &[i64],
    count: usize,
    mut chunk: &[u8],
) -> Result<TensorData, DecodeError> {
    let bad = || DecodeError::BinaryBytes {
        input: name.to_owned(),
    };
    let mut out = Vec::with_capacity(count.min(chunk.len() / 4));
    while !chunk.is_empty() {
        let (len, rest) = chunk.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(bad());
        }
        let (item, rest) = rest.split_at(len);
        out.push(item.to_vec());
        chunk = rest;
    }
    checked_len(name, shape, count, TensorData::Bytes(out))
}

/// A JSON element convertible to a tensor element without loss.
trait Element: Sized {
    const EXPECTED: &'static str;
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
}

macro_rules! int_element {
    ($($t:ty => $name:literal $range:literal),*) => {$(
        impl Element for $t {
            const EXPECTED: &'static str =
                concat!("an integer in the range of ", $name, " (", $range, ")");
            fn from_u64(v: u64) -> Option<Self> { <$t>::try_from(v).ok() }
            fn from_i64(v: i64) -> Option<Self> { <$t>::try_from(v).ok() }
            fn from_f64(v: f64) -> Option<Self> {
                // Integral floats such as `3.0` are accepted; fractions are not.
                (v.fract() == 0.0 && v >= <$t>::MIN as f64 && v <= <$t>::MAX as f64).then(|| v as $t)
            }
        }
    )*};
}
int_element!(
    u8 => "UINT8" "0 to 255",
    u16 => "UINT16" "0 to 65535",
    u32 => "UINT32" "0 to 4294967295",
    u64 => "UINT64" "0 to 18446744073709551615",
    i8 => "INT8" "-128 to 127",
    i16 => "INT16" "-32768 to 32767",
    i32 => "INT32" "-2147483648 to 2147483647",
    i64 => "INT64" "-9223372036854775808 to 9223372036854775807"
);

impl Element for f32 {
    const EXPECTED: &'static str = "a number in the range of FP32 (magnitude at most 3.4028235e38)";
    fn from_u64(v: u64) -> Option<Self> {
        Some(v as f32)
    }
    fn from_i64(v: i64) -> Option<Self> {
        Some(v as f32)
    }
    fn from_f64(v: f64) -> Option<Self> {
        let f = v as f32;
        (f.is_finite() || !v.is_finite()).then_some(f)
    }
}

impl Element for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_u64(v: u64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_i64(v: i64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_f64(v: f64) -> Option<Self> {
        Some(v)
    }
}

impl Element for bool {
    const EXPECTED: &'static str = "true or false";
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

impl Element for Vec<u8> {
    const EXPECTED: &'static str = "a string";
    fn from_str(v: &str) -> Option<Self> {
        Some(v.as_bytes().to_vec())
    }
}

/// A data error's text without serde's "at line 1 column N": the position
/// is within the input's `data` array, not the request body, and the
/// message already names the element.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(message) if e.line() > 0 => message.to_owned(),
        _ => text,
    }
}

/// A number as an error message shows it: in exponent form when very large
/// or very small (`1e39`, not forty digits).
struct Number(f64);

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        let magnitude = v.abs();
        if v.is_finite() && (magnitude >= 1e16 || (magnitude != 0.0 && magnitude < 1e-6)) {
            write!(f, "{v:e}")
        } else {
            write!(f, "{v}")
        }
    }
}

/// Flattens a (possibly nested) JSON array of scalars into `out`.
struct Flatten<'a, T> {
    out: &'a mut Vec<T>,
}

impl<'de, T: Element> DeserializeSeed<'de> for Flatten<'_, T> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<T: Element> Flatten<'_, T> {
    fn push<E: serde::de::Error>(
        self,
        v: Option<T>,
        found: impl std::fmt::Display,
    ) -> Result<(), E> {
        match v {
            Some(v) => {
                self.out.push(v);
                Ok(())
            }
            None => Err(E::custom(format_args!(
                "element {} is {found}, expected {}",
                self.out.len(),
                T::EXPECTED
            ))),
        }
    }
}

impl<'de, T: Element> Visitor<'de> for Flatten<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an array whose elements are each {}", T::EXPECTED)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v), v)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v), v)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v), Number(v))
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.push(T::from_bool(v), v)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        let found = format!("the string {v:?}");
        self.push(T::from_str(v), found)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.push(None, "null")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.push(None, "an object")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Flatten {
                out: &mut *self.out,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// A decoded inference response, ready to encode.
#[derive(Debug)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub parameters: Map<String, Value>,
    pub outputs: Vec<Tensor>,
}

/// An encoded response body; `json_len` is set when binary tensors follow the JSON.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub json_len: Option<usize>,
}

#[derive(Serialize)]
struct WireResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: &'a Map<String, Value>,
    outputs: Vec<WireOutputTensor<'a>>,
}

#[derive(Serialize)]
struct WireOutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a TensorData>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

impl Serialize for TensorData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TensorData::Bytes(items) => {
                s.collect_seq(items.iter().map(|b| String::from_utf8_lossy(b)))
            }
            other => crate::with_tensor_data!(other, v => v.serialize(s)),
        }
    }
}

/// Appends the binary encoding of `data` to `out`.
pub fn write_binary(data: &TensorData, out: &mut Vec<u8>) {
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        TensorData::Uint8(v) => out.extend_from_slice(v),
        TensorData::Int8(v) => le!(v),
        TensorData::Uint16(v) => le!(v),
        TensorData::Uint32(v) => le!(v),
        TensorData::Uint64(v) => le!(v),
        TensorData::Int16(v) => le!(v),
        TensorData::Int32(v) => le!(v),
        TensorData::Int64(v) => le!(v),
        TensorData::Fp32(v) => le!(v),
        TensorData::Fp64(v) => le!(v),
        TensorData::Bytes(v) => {
            for item in v {
                out.extend_from_slice(&(item.len() as u32).to_le_bytes());
                out.extend_from_slice(item);
            }
        }
    }
}

fn binary_len(data: &TensorData) -> usize {
    match data {
        TensorData::Bytes(v) => v.iter().map(|b| 4 + b.len()).sum(),
        other => other.len() * other.datatype().byte_size().unwrap_or(0),
    }
}

/// Encodes a response; outputs for which `binary(name)` is true go to the
/// binary section after the JSON header.
pub fn encode_response(resp: &InferResponse, binary: impl Fn(&str) -> bool) -> EncodedResponse {
    let mut any_binary = false;
    let outputs = resp
        .outputs
        .iter()
        .map(|t| {
            let as_binary = binary(&t.name);
            any_binary |= as_binary;
            WireOutputTensor {
                name: &t.name,
                datatype: t.datatype().as_str(),
                shape: &t.shape,
                parameters: as_binary.then(|| BinarySize {
                    binary_data_size: binary_len(&t.data),
                }),
                data: (!as_binary).then_some(&t.data),
            }
        })
        .collect();
    let wire = WireResponse {
        model_name: &resp.model_name,
        model_version: &resp.model_version,
        id: &resp.id,
        parameters: &resp.parameters,
        outputs,
    };
    let mut body = Vec::with_capacity(256);
    serde_json::to_writer(&mut body, &wire).expect("serialising to a Vec cannot fail");
    if !any_binary {
        return EncodedResponse {
            body,
            json_len: None,
        };
    }
    let json_len = body.len();
    for t in &resp.outputs {
        if binary(&t.name) {
            write_binary(&t.data, &mut body);
        }
    }
    EncodedResponse {
        body,
        json_len: Some(json_len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<InferRequest, DecodeError> {
        decode_request(json.as_bytes(), None)
    }

    #[test]
    fn flat_and_nested_data_decode_the_same() {
        let flat = decode(
            r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3.5,4]}]}"#,
        )
        .unwrap();
        let nested = decode(
            r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3.5,4]]}]}"#,
        )
        .unwrap();
        assert_eq!(flat.inputs, nested.inputs);
        assert_eq!(
            flat.inputs[0].data,
            TensorData::Fp32(vec![1.0, 2.0, 3.5, 4.0])
        );
        assert_eq!(flat.batch_rows(), 2);
    }

    #[test]
    fn every_datatype_decodes_from_json() {
        let cases = [
            ("BOOL", "[true,false]", TensorData::Bool(vec![true, false])),
            ("UINT8", "[0,255]", TensorData::Uint8(vec![0, 255])),
            ("INT8", "[-128,127]", TensorData::Int8(vec![-128, 127])),
            ("INT32", "[-5,7]", TensorData::Int32(vec![-5, 7])),
            (
                "INT64",
                "[-9007199254740993,3.0]",
                TensorData::Int64(vec![-9007199254740993, 3]),
            ),
            (
                "UINT64",
                "[18446744073709551615,0]",
                TensorData::Uint64(vec![u64::MAX, 0]),
            ),
            ("FP64", "[0.1,-2e300]", TensorData::Fp64(vec![0.1, -2e300])),
            (
                "BYTES",
                r#"["a","bc"]"#,
                TensorData::Bytes(vec![b"a".to_vec(), b"bc".to_vec()]),
            ),
        ];
        for (dt, data, want) in cases {
            let req = decode(&format!(
                r#"{{"inputs":[{{"name":"x","shape":[2],"datatype":"{dt}","data":{data}}}]}}"#
            ))
            .unwrap();
            assert_eq!(req.inputs[0].data, want, "{dt}");
        }
    }

    #[test]
    fn bad_data_is_reported_with_the_input_name() {
        let err =
            decode(r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,"a"]}]}"#)
                .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("input 'x'") && msg.contains("string"), "{msg}");

        let err = decode(r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#)
            .unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::DataLength {
                    expected: 3,
                    got: 2,
                    ..
                }
            ),
            "{err}"
        );

        let err =
            decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#)
                .unwrap_err();
        assert!(matches!(err, DecodeError::Data { .. }), "{err}");

        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[300]}]}"#)
            .unwrap_err();
        assert!(matches!(err, DecodeError::Data { .. }), "{err}");
        assert!(
            err.to_string().contains(
                "element 0 is 300, expected an integer in the range of INT8 (-128 to 127)"
            ),
            "{err}"
        );

        // A float beyond FP32's range says so, with the number as written
        // in exponent form.
        let err =
            decode(r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,1e39]}]}"#)
                .unwrap_err();
        assert!(matches!(err, DecodeError::Data { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("input 'x'")
                && msg.contains("element 1 is 1e39, expected a number in the range of FP32")
                && !msg.contains("column"),
            "{msg}"
        );
        // FP64 takes it.
        assert!(
            decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP64","data":[1e39]}]}"#)
                .is_ok()
        );

        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#)
            .unwrap_err();
        assert!(matches!(err, DecodeError::UnknownDatatype { .. }), "{err}");

        let err = decode(r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#)
            .unwrap_err();
        assert!(matches!(err, DecodeError::InvalidShape { .. }), "{err}");

        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#).unwrap_err();
        assert!(matches!(err, DecodeError::MissingData { .. }), "{err}");

        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}"#)
            .unwrap_err();
        assert!(matches!(err, DecodeError::Json(_)), "{err}");

        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL","data":[1]}]}"#)
            .unwrap_err();
        assert!(matches!(err, DecodeError::Data { .. }), "{err}");

        let err =
            decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[null]}]}"#)
                .unwrap_err();
        assert!(matches!(err, DecodeError::Data { .. }), "{err}");
    }

    #[test]
    fn floats_read_from_the_text_equal_the_correctly_rounded_values() {
        // Widened float32 values (as clients print them), long and short
        // decimals, exponents, integers, signed zero, extremes, subnormals.
        let mut numbers: Vec<String> = [
            "16.700000762939453",
            "0.0075090001337230206",
            "-0",
            "0",
            "12",
            "-7",
            "1e5",
            "1E+5",
            "2.5e-3",
            "0.1",
            "0.30000000000000004",
            "123456789012345678901234567890",
            "1.7976931348623157e308",
            "2.2250738585072014e-308",
            "5e-324",
            "4.9e-324",
            "3.4028234663852886e38",
            "1.401298464324817e-45",
            "-1.1754943508222875e-38",
        ]
        .map(str::to_owned)
        .to_vec();
        // And pseudo-random ones, printed as float64 and as widened float32.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = f64::from_bits(x);
            if f.is_finite() {
                numbers.push(format!("{f:?}"));
                let g = f as f32;
                if g.is_finite() {
                    numbers.push(format!("{:?}", f64::from(g)));
                }
            }
        }
        let text = format!("[{}]", numbers.join(", "));
        let got64 = scan_floats::<f64>(&text, 0).expect("all are numbers");
        let want64: Vec<f64> = numbers
            .iter()
            .map(|n| n.parse().expect("std parses"))
            .collect();
        assert_eq!(got64.len(), want64.len());
        for ((g, w), n) in got64.iter().zip(&want64).zip(&numbers) {
            assert_eq!(g.to_bits(), w.to_bits(), "FP64 {n}");
        }
        // As the serde path reads FP64 (serde_json's exact parser).
        let serde64: Vec<f64> = serde_json::from_str(&text).expect("serde parses");
        assert_eq!(got64, serde64);
        // FP32: the float32 nearest to each decimal, where one is finite.
        let finite32: Vec<&String> = numbers
            .iter()
            .filter(|n| n.parse::<f32>().is_ok_and(f32::is_finite))
            .collect();
        let text32 = format!(
            "[{}]",
            finite32
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let got32 = scan_floats::<f32>(&text32, 0).expect("all in range");
        for (g, n) in got32.iter().zip(&finite32) {
            assert_eq!(g.to_bits(), n.parse::<f32>().unwrap().to_bits(), "FP32 {n}");
        }
        assert_eq!(got32.len(), finite32.len());
    }

    #[test]
    fn shared_memory_tensors_are_refused_by_name() {
        let err = decode(
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32",
                "parameters":{"shared_memory_region":"r0","shared_memory_byte_size":4}}]}"#,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("input 'x'") && msg.contains("shared_memory_region"),
            "{msg}"
        );
        let err = decode(
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],
                "outputs":[{"name":"y","parameters":{"shared_memory_region":"out"}}]}"#,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("output 'y'") && msg.contains("shared-memory"),
            "{msg}"
        );
    }

    #[test]
    fn float_data_the_scanner_leaves_goes_to_the_serde_path() {
        assert_eq!(
            scan_floats::<f64>("[[1, 2.5],\n [-3e0]]", 0),
            Some(vec![1.0, 2.5, -3.0])
        );
        assert_eq!(scan_floats::<f32>("[]", 4), Some(vec![]));
        for text in [r#"[1, "2"]"#, "[null]", "[true]", r#"[{"a": 1}]"#, "[1e39]"] {
            assert_eq!(scan_floats::<f32>(text, 0), None, "{text}");
        }
        assert_eq!(scan_floats::<f64>("[1e400]", 0), None);
        // Which then reports it, naming the input.
        for data in ["[1e39]", r#"["a"]"#, "[null]"] {
            let body = format!(
                r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":{data}}}]}}"#
            );
            let err = decode(&body).unwrap_err();
            assert!(
                matches!(err, DecodeError::Data { ref input, .. } if input == "x"),
                "{data}: {err}"
            );
        }
        let err =
            decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP64","data":[1e400]}]}"#)
                .unwrap_err();
        assert!(
            matches!(err, DecodeError::Json(_) | DecodeError::Data { .. }),
            "{err}"
        );
        // Lengths are checked the same way.
        let err =
            decode(r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP64","data":[[1],[2]]}]}"#)
                .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("needs 3 elements but data has 2"), "{msg}");
    }

    #[test]
    fn huge_claimed_shape_does_not_allocate_it() {
        let err = decode(
            r#"{"inputs":[{"name":"x","shape":[100000000000],"datatype":"FP64","data":[1]}]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, DecodeError::DataLength { got: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn binary_inputs_and_outputs_round_trip() {
        let header = r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"b","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":7}}],"parameters":{"binary_data_output":true}}"#;
        let mut body = header.as_bytes().to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2.0f32).to_le_bytes());
        body.extend_from_slice(&3u32.to_le_bytes());
        body.extend_from_slice(b"abc");
        let req = decode_request(&body, Some(header.len())).unwrap();
        assert_eq!(req.inputs[0].data, TensorData::Fp32(vec![1.5, -2.0]));
        assert_eq!(req.inputs[1].data, TensorData::Bytes(vec![b"abc".to_vec()]));
        assert!(req.wants_binary("anything"));

        let resp = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: "r".into(),
            parameters: Map::new(),
            outputs: vec![req.inputs[0].clone()],
        };
        let enc = encode_response(&resp, |_| true);
        let json_len = enc.json_len.unwrap();
        let header: Value = serde_json::from_slice(&enc.body[..json_len]).unwrap();
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(header["outputs"][0].get("data").is_none());
        assert_eq!(&enc.body[json_len..json_len + 4], &1.5f32.to_le_bytes());
    }

    #[test]
    fn binary_size_mismatches_are_errors() {
        let header = r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = header.as_bytes().to_vec();
        body.extend_from_slice(&[0u8; 4]);
        let err = decode_request(&body, Some(header.len())).unwrap_err();
        assert!(matches!(err, DecodeError::BinaryOverrun { .. }), "{err}");

        let header = r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        let mut body = header.as_bytes().to_vec();
        body.extend_from_slice(&[0u8; 6]);
        let err = decode_request(&body, Some(header.len())).unwrap_err();
        assert!(matches!(err, DecodeError::BinaryTrailing(2)), "{err}");

        let err = decode_request(b"{}", Some(10)).unwrap_err();
        assert!(matches!(err, DecodeError::HeaderLength(10)), "{err}");
    }

    #[test]
    fn json_response_has_id_and_typed_data() {
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: "2".into(),
            id: "abc".into(),
            parameters: Map::new(),
            outputs: vec![Tensor::new("label", vec![2], TensorData::Int64(vec![0, 1]))],
        };
        let enc = encode_response(&resp, |_| false);
        assert!(enc.json_len.is_none());
        let v: Value = serde_json::from_slice(&enc.body).unwrap();
        assert_eq!(v["id"], "abc");
        assert_eq!(v["model_version"], "2");
        assert_eq!(v["outputs"][0]["datatype"], "INT64");
        assert_eq!(v["outputs"][0]["data"], serde_json::json!([0, 1]));
    }
}
