//! Bearer-token access control: the admin API, and optionally inference and
//! feedback. Tokens are compared in constant time; a refused request gets
//! 401 and changes nothing.
//!
//! The admin API and feedback also refuse (403) requests a browser sends on
//! behalf of a page from another origin. Without this, any web page open on
//! the gateway's machine could post a label or roll a deployment back with a
//! "simple" cross-origin request (a form or `fetch` with a `text/plain`
//! body needs no CORS preflight), since with no admin token the admin API
//! trusts local clients. Browsers mark such requests with `Sec-Fetch-Site`
//! and `Origin`; command-line and application clients send neither.

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

/// Refuses a request a browser made for a page of another origin: one whose
/// `Sec-Fetch-Site` is not `same-origin` or `none`, or, from browsers that do
/// not send that header, whose `Origin` does not name this server's `Host`.
pub fn same_origin(headers: &http::HeaderMap) -> Result<(), ApiError> {
    let refuse = |why: String| {
        Err(ApiError::new(
            ErrorKind::Forbidden,
            format!("cross-origin browser requests are refused here ({why})"),
        ))
    };
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.as_bytes();
        return if site.eq_ignore_ascii_case(b"same-origin") || site.eq_ignore_ascii_case(b"none") {
            Ok(())
        } else {
            refuse(format!("Sec-Fetch-Site: {}", String::from_utf8_lossy(site)))
        };
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => refuse(format!(
            "Origin {origin:?} is not this server, {:?}",
            host.unwrap_or("")
        )),
    }
}

/// Whether a `Host` header names this machine's loopback interface
/// (`localhost`, `127.0.0.1`, `[::1]`, with or without a port). Without an
/// admin token, local clients are trusted; a browser on this machine can be
/// made to send a local request under an attacker's name (DNS rebinding:
/// `evil.example` resolving to 127.0.0.1), which then counts as that page's
/// own origin — the name in `Host` gives it away.
fn is_loopback_host(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(ip, _)| ip),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A layer of [`same_origin`] alone.
pub async fn not_cross_origin(req: Request, next: Next) -> Response {
    match same_origin(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// `/admin/...`: the admin token when configured, else loopback clients only;
/// never for another origin's page ([`same_origin`]).
pub async fn admin(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Err(e) = same_origin(req.headers()) {
        return e.into_response();
    }
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
            if let Some(host) = req.headers().get(header::HOST)
                && !is_loopback_host(host.as_bytes())
            {
                return ApiError::new(
                    ErrorKind::Forbidden,
                    format!(
                        "without server.admin_token the admin API answers only clients that address it as localhost or a loopback address, not {:?}",
                        String::from_utf8_lossy(host.as_bytes())
                    ),
                )
                .into_response();
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

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn browser_requests_from_other_origins_are_refused() {
        // Command-line and application clients send neither header.
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8000")])).is_ok());
        // The gateway's own pages, and a URL typed into the browser.
        for ok in [
            &[("sec-fetch-site", "same-origin")][..],
            &[("sec-fetch-site", "none")],
            &[
                ("host", "127.0.0.1:8000"),
                ("origin", "http://127.0.0.1:8000"),
            ],
            &[
                ("host", "Gateway:8000"),
                ("origin", "https://gateway:8000/"),
            ],
        ] {
            assert!(same_origin(&headers(ok)).is_ok(), "{ok:?}");
        }
        for refused in [
            &[("sec-fetch-site", "cross-site")][..],
            &[("sec-fetch-site", "same-site")],
            &[
                ("sec-fetch-site", "cross-site"),
                ("host", "127.0.0.1:8000"),
                ("origin", "http://127.0.0.1:8000"),
            ],
            &[
                ("host", "127.0.0.1:8000"),
                ("origin", "http://evil.example"),
            ],
            &[
                ("host", "127.0.0.1:8000"),
                ("origin", "http://127.0.0.1:9000"),
            ],
            &[("host", "127.0.0.1:8000"), ("origin", "null")],
            &[("origin", "http://127.0.0.1:8000")],
        ] {
            let e = same_origin(&headers(refused)).expect_err("refused");
            assert_eq!(e.kind(), ErrorKind::Forbidden, "{refused:?}");
        }
    }

    #[test]
    fn loopback_hosts_are_told_apart_from_other_names() {
        for ok in [
            "localhost",
            "localhost:8000",
            "LOCALHOST:8000",
            "127.0.0.1",
            "127.0.0.1:8000",
            "127.1.2.3:9",
            "[::1]",
            "[::1]:8000",
        ] {
            assert!(is_loopback_host(ok.as_bytes()), "{ok}");
        }
        for refused in [
            "evil.example:8000",
            "evil.example",
            "10.0.0.5:8000",
            "[2001:db8::1]:8000",
            "localhost.evil.example",
            "127.0.0.1.evil.example:8000",
        ] {
            assert!(!is_loopback_host(refused.as_bytes()), "{refused}");
        }
    }

    #[test]
    fn tokens_must_match_exactly() {
        assert!(matches(Some(b"s3cret-token-0123"), "s3cret-token-0123"));
        assert!(!matches(Some(b"s3cret-token-012"), "s3cret-token-0123"));
        assert!(!matches(Some(b""), "s3cret-token-0123"));
        assert!(!matches(None, "s3cret-token-0123"));
    }
}
