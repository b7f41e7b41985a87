//! Bearer-token access control: the admin API, and optionally inference and
//! feedback. Tokens are compared in constant time; a refused request gets
//! 401 and changes nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header;
use subtle::ConstantTimeEq;

use super::AppState;
use crate::protocol::{ApiError, ErrorKind};

fn bearer(req: &Request) -> Option<&[u8]> {
    let v = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = v.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
}

fn matches(given: Option<&[u8]>, expected: &str) -> bool {
    given.is_some_and(|g| bool::from(g.ct_eq(expected.as_bytes())))
}

fn unauthorized(message: &str) -> Response {
    let mut resp = ApiError::new(ErrorKind::Unauthorized, message).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// `/admin/...`: the admin token when configured, else loopback clients only.
pub async fn admin(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match &s.gateway.config().server.admin_token {
        Some(token) => {
            if !matches(bearer(&req), token) {
                return unauthorized(
                    "the admin API needs `Authorization: Bearer <server.admin_token>`",
                );
            }
        }
        None => {
            let local = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .is_some_and(|ConnectInfo(addr)| addr.ip().is_loopback());
            if !local {
                return unauthorized(
                    "the admin API answers only local clients unless server.admin_token is set",
                );
            }
        }
    }
    next.run(req).await
}

/// Inference and feedback: the inference token, when configured.
pub async fn inference(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.gateway.config().server.inference_token
        && !matches(bearer(&req), token)
    {
        return unauthorized(
            "this endpoint needs `Authorization: Bearer <server.inference_token>`",
        );
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_match_exactly() {
        assert!(matches(Some(b"s3cret-token-0123"), "s3cret-token-0123"));
        assert!(!matches(Some(b"s3cret-token-012"), "s3cret-token-0123"));
        assert!(!matches(Some(b""), "s3cret-token-0123"));
        assert!(!matches(None, "s3cret-token-0123"));
    }
}
