//! Reading request bodies under the configured size limit, with V2 errors
//! (never axum's plain-text rejections).

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::config::ServerConfig;
use crate::protocol::rest::HEADER_CONTENT_LENGTH;
use crate::protocol::{ApiError, ErrorKind};

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorKind::PayloadTooLarge,
        format!("request body exceeds the limit of {limit} bytes (server.max_body_bytes)"),
    )
}

/// How the request body is encoded (`Content-Encoding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    /// HTTP's `deflate`: a zlib stream (RFC 9110), or a raw deflate stream
    /// as some clients send.
    Deflate,
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let Some(value) = headers.get(http::header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let name = value.as_bytes().trim_ascii();
    if name.eq_ignore_ascii_case(b"identity") || name.is_empty() {
        Ok(Encoding::Identity)
    } else if name.eq_ignore_ascii_case(b"gzip") || name.eq_ignore_ascii_case(b"x-gzip") {
        Ok(Encoding::Gzip)
    } else if name.eq_ignore_ascii_case(b"deflate") {
        Ok(Encoding::Deflate)
    } else {
        Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            format!(
                "Content-Encoding {value:?} is not supported; send the body as gzip, deflate or uncompressed"
            ),
        ))
    }
}

/// Reads the whole body within `server.body_read_timeout_secs`, refusing
/// more than `server.max_body_bytes`, and inflates a gzip or deflate body
/// (`Content-Encoding`, as `tritonclient`'s `request_compression_algorithm`
/// sends it); the limit holds for the compressed body and again for the
/// inflated one.
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    server: &ServerConfig,
) -> Result<Bytes, ApiError> {
    let limit = server.max_body_bytes;
    let timeout = std::time::Duration::from_secs(server.body_read_timeout_secs);
    let encoding = encoding(headers)?;
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large(limit));
    }
    let collected = match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(c) => c,
        Err(_) => {
            return Err(ApiError::new(
                ErrorKind::RequestTimeout,
                format!(
                    "the request body did not arrive within {} s (server.body_read_timeout_secs)",
                    timeout.as_secs()
                ),
            ));
        }
    };
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large(limit)),
        Err(e) => {
            return Err(ApiError::invalid(format!(
                "request body could not be read: {e}"
            )));
        }
    };
    if encoding == Encoding::Identity {
        return Ok(bytes);
    }
    // On the blocking pool whatever the compressed size: a few KiB can
    // inflate to `limit` (deflate reaches about 1000:1).
    tokio::task::spawn_blocking(move || inflate(&bytes, encoding, limit))
        .await
        .map_err(|e| ApiError::internal(&e))?
}

/// Inflates `compressed`, refusing more than `limit` bytes of output.
fn inflate(compressed: &[u8], encoding: Encoding, limit: usize) -> Result<Bytes, ApiError> {
    use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
    use std::io::Read;
    let reader: Box<dyn Read + '_> = match encoding {
        Encoding::Gzip => Box::new(MultiGzDecoder::new(compressed)),
        // A zlib stream starts with a header whose two bytes, read as a
        // big-endian number, are a multiple of 31 with method 8 (deflate).
        Encoding::Deflate
            if compressed.len() >= 2
                && compressed[0] & 0x0f == 8
                && u16::from_be_bytes([compressed[0], compressed[1]]).is_multiple_of(31) =>
        {
            Box::new(ZlibDecoder::new(compressed))
        }
        Encoding::Deflate => Box::new(DeflateDecoder::new(compressed)),
        Encoding::Identity => return Ok(Bytes::copy_from_slice(compressed)),
    };
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            let name = if encoding == Encoding::Gzip {
                "gzip"
            } else {
                "deflate"
            };
            ApiError::invalid(format!(
                "the {name} request body could not be inflated: {e}"
            ))
        })?;
    if out.len() > limit {
        return Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the inflated request body exceeds the limit of {limit} bytes (server.max_body_bytes)"
            ),
        ));
    }
    Ok(Bytes::from(out))
}

/// Responses at least this large are compressed when the client accepts it.
/// Smaller ones gain less than the work costs; most HTTP libraries (Python's
/// `requests`, Go's `net/http`) send `Accept-Encoding: gzip` by default, so
/// the typical few-row answer must not pay for it.
const COMPRESS_MIN_BYTES: usize = 16 * 1024;
/// Responses larger than this go out uncompressed (HTTP lets a server
/// decline): compressing them would hold an async worker for more than the
/// encoding of the answer itself (about 1 ms at 256 KiB).
const COMPRESS_MAX_BYTES: usize = 256 * 1024;

/// The response body compressed as the request's `Accept-Encoding` asks
/// (gzip, else deflate; `tritonclient`'s `response_compression_algorithm`),
/// with the `Content-Encoding` to send; `None` to send it as it is.
pub fn compress_response(headers: &HeaderMap, body: &[u8]) -> Option<(Vec<u8>, &'static str)> {
    use flate2::Compression;
    use std::io::Write;
    if !(COMPRESS_MIN_BYTES..=COMPRESS_MAX_BYTES).contains(&body.len()) {
        return None;
    }
    let accept = headers.get(http::header::ACCEPT_ENCODING)?.to_str().ok()?;
    let accepts = |name: &str| {
        accept.split(',').any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            coding.eq_ignore_ascii_case(name) && !refused
        })
    };
    let level = Compression::fast();
    if accepts("gzip") {
        let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 2), level);
        e.write_all(body).ok()?;
        Some((e.finish().ok()?, "gzip"))
    } else if accepts("deflate") {
        let mut e = flate2::write::ZlibEncoder::new(Vec::with_capacity(body.len() / 2), level);
        e.write_all(body).ok()?;
        Some((e.finish().ok()?, "deflate"))
    } else {
        None
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
