//! Internal tensors: what every wire format decodes into and every engine consumes.

use std::fmt;

/// Open Inference Protocol datatypes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The protocol's spelling (`"FP32"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    pub fn parse(s: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Bytes per element in the binary tensor encoding; `None` for BYTES.
    pub fn byte_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }

    /// Triton model-configuration spelling (`TYPE_FP32`, …).
    pub fn triton_config_name(self) -> &'static str {
        match self {
            DataType::Bool => "TYPE_BOOL",
            DataType::Uint8 => "TYPE_UINT8",
            DataType::Uint16 => "TYPE_UINT16",
            DataType::Uint32 => "TYPE_UINT32",
            DataType::Uint64 => "TYPE_UINT64",
            DataType::Int8 => "TYPE_INT8",
            DataType::Int16 => "TYPE_INT16",
            DataType::Int32 => "TYPE_INT32",
            DataType::Int64 => "TYPE_INT64",
            DataType::Fp16 => "TYPE_FP16",
            DataType::Fp32 => "TYPE_FP32",
            DataType::Fp64 => "TYPE_FP64",
            DataType::Bytes => "TYPE_STRING",
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Row-major tensor contents, one variant per element type contender serves.
///
/// FP16 is accepted on the wire only as a datatype name so the error can say
/// so; no engine here takes it yet.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

/// Calls `$body` with `$v` bound to the inner `Vec` of any variant.
#[macro_export]
#[doc(hidden)]
macro_rules! with_tensor_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::protocol::TensorData::Bool($v) => $body,
            $crate::protocol::TensorData::Uint8($v) => $body,
            $crate::protocol::TensorData::Uint16($v) => $body,
            $crate::protocol::TensorData::Uint32($v) => $body,
            $crate::protocol::TensorData::Uint64($v) => $body,
            $crate::protocol::TensorData::Int8($v) => $body,
            $crate::protocol::TensorData::Int16($v) => $body,
            $crate::protocol::TensorData::Int32($v) => $body,
            $crate::protocol::TensorData::Int64($v) => $body,
            $crate::protocol::TensorData::Fp32($v) => $body,
            $crate::protocol::TensorData::Fp64($v) => $body,
            $crate::protocol::TensorData::Bytes($v) => $body,
        }
    };
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        crate::with_tensor_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `other`'s elements; `false` (and nothing appended) when the
    /// datatypes differ.
    pub fn append(&mut self, other: TensorData) -> bool {
        macro_rules! arms {
            ($($v:ident),*) => {
                match (self, other) {
                    $((TensorData::$v(a), TensorData::$v(b)) => {
                        a.extend(b);
                        true
                    })*
                    _ => false,
                }
            };
        }
        arms!(
            Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp32, Fp64, Bytes
        )
    }

    /// Splits into consecutive pieces of `lens` elements each (their sum
    /// must be [`TensorData::len`]).
    pub fn split(self, lens: &[usize]) -> Vec<TensorData> {
        macro_rules! arms {
            ($($v:ident),*) => {
                match self {
                    $(TensorData::$v(a) => {
                        let mut it = a.into_iter();
                        lens.iter()
                            .map(|&n| TensorData::$v(it.by_ref().take(n).collect()))
                            .collect()
                    })*
                }
            };
        }
        arms!(
            Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp32, Fp64, Bytes
        )
    }

    /// A zero-filled buffer of `len` elements (used for warm-up batches).
    pub fn zeros(datatype: DataType, len: usize) -> Option<TensorData> {
        Some(match datatype {
            DataType::Bool => TensorData::Bool(vec![false; len]),
            DataType::Uint8 => TensorData::Uint8(vec![0; len]),
            DataType::Uint16 => TensorData::Uint16(vec![0; len]),
            DataType::Uint32 => TensorData::Uint32(vec![0; len]),
            DataType::Uint64 => TensorData::Uint64(vec![0; len]),
            DataType::Int8 => TensorData::Int8(vec![0; len]),
            DataType::Int16 => TensorData::Int16(vec![0; len]),
            DataType::Int32 => TensorData::Int32(vec![0; len]),
            DataType::Int64 => TensorData::Int64(vec![0; len]),
            DataType::Fp32 => TensorData::Fp32(vec![0.0; len]),
            DataType::Fp64 => TensorData::Fp64(vec![0.0; len]),
            DataType::Bytes => TensorData::Bytes(vec![Vec::new(); len]),
            DataType::Fp16 => return None,
        })
    }
}

/// A named tensor with a concrete shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

impl Tensor {
    pub fn new(name: impl Into<String>, shape: Vec<i64>, data: TensorData) -> Tensor {
        Tensor {
            name: name.into(),
            shape,
            data,
        }
    }

    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }
}

/// Number of elements a shape holds, or `None` when a dimension is negative
/// or the product overflows.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d).ok()?;
        acc.checked_mul(d)
    })
}

/// Declared tensor signature: name, datatype and shape with `-1` for a
/// variable dimension.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl serde::Serialize for DataType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for DataType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DataType, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DataType::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format_args!(
                "unknown datatype '{s}' (expected one of BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES)"
            ))
        })
    }
}

impl TensorSpec {
    /// Whether `shape` fits this declaration (same rank, fixed dims equal).
    pub fn accepts_shape(&self, shape: &[i64]) -> bool {
        self.shape.len() == shape.len()
            && self
                .shape
                .iter()
                .zip(shape)
                .all(|(&want, &got)| got >= 0 && (want < 0 || want == got))
    }

    /// Whether the first dimension is variable (a batch dimension).
    pub fn has_batch_dim(&self) -> bool {
        self.shape.first().is_some_and(|&d| d < 0)
    }
}

/// Formats a shape as `[-1, 30]`.
pub fn shape_string(shape: &[i64]) -> String {
    let mut s = String::from("[");
    for (i, d) in shape.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&d.to_string());
    }
    s.push(']');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.as_str()), Some(d));
        }
        assert_eq!(DataType::parse("fp32"), None);
        assert_eq!(DataType::parse("FLOAT"), None);
    }

    #[test]
    fn element_count_rejects_negative_and_overflow() {
        assert_eq!(element_count(&[2, 3]), Some(6));
        assert_eq!(element_count(&[]), Some(1));
        assert_eq!(element_count(&[0, 5]), Some(0));
        assert_eq!(element_count(&[-1, 3]), None);
        assert_eq!(element_count(&[i64::MAX, i64::MAX]), None);
    }

    #[test]
    fn spec_accepts_variable_batch_only() {
        let spec = TensorSpec {
            name: "input".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 30],
        };
        assert!(spec.accepts_shape(&[1, 30]));
        assert!(spec.accepts_shape(&[64, 30]));
        assert!(!spec.accepts_shape(&[1, 29]));
        assert!(!spec.accepts_shape(&[30]));
        assert!(!spec.accepts_shape(&[1, 30, 1]));
        assert!(spec.has_batch_dim());
    }
}
