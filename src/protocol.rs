//! Open Inference Protocol (KServe V2) wire formats, translated once into
//! internal [`Tensor`]s; handlers never touch wire JSON.

pub mod classification;
mod error;
pub mod rest;
mod tensor;
pub mod validate;

pub use error::{ApiError, ErrorKind};
pub use rest::{DecodeError, InferRequest, InferResponse, RequestedOutput};
pub use tensor::{DataType, Tensor, TensorData, TensorSpec, element_count, shape_string};
