//! Reading request bodies under the configured size limit, with V2 errors
//! (never axum's plain-text rejections).

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::protocol::rest::HEADER_CONTENT_LENGTH;
use crate::protocol::{ApiError, ErrorKind};

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorKind::PayloadTooLarge,
        format!("request body exceeds the limit of {limit} bytes (server.max_body_bytes)"),
    )
}

/// Reads the whole body, refusing more than `limit` bytes.
pub async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(encoding) = headers.get(http::header::CONTENT_ENCODING)
        && encoding.as_bytes() != b"identity"
    {
        return Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            format!("Content-Encoding {encoding:?} is not supported; send the body uncompressed"),
        ));
    }
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large(limit)),
        Err(e) => Err(ApiError::invalid(format!(
            "request body could not be read: {e}"
        ))),
    }
}

/// The `Inference-Header-Content-Length` header, when present.
pub fn json_header_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    headers
        .get(HEADER_CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::invalid(format!("{HEADER_CONTENT_LENGTH} must be a byte count"))
                })
        })
        .transpose()
}
