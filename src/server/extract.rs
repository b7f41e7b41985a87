//! Extractors whose rejections are V2 error bodies (`{"error": "..."}`),
//! not axum's plain text.

use axum::extract::{FromRequestParts, Path};
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::protocol::{ApiError, ErrorKind};

/// [`Path`], rejecting with a V2 error: a path segment that is not UTF-8
/// (`/v2/models/%ff`) gets 400 `{"error": "..."}`.
pub struct V2Path<T>(pub T);

impl<T, S> FromRequestParts<S> for V2Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(V2Path(v)),
            Err(rejection) => {
                let kind = if rejection.status().is_server_error() {
                    ErrorKind::Internal
                } else {
                    ErrorKind::InvalidArgument
                };
                Err(ApiError::new(kind, rejection.body_text()))
            }
        }
    }
}
