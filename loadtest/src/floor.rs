//! The HTTP + JSON floor: a bare axum server on the same stack as the gateway
//! (tokio multi-thread runtime, hyper 1, TCP_NODELAY) whose infer route only
//! decodes the V2 body with contender's own decoder and answers a response
//! of the gateway's shape (`label` INT64 `[N]`, `probabilities` FP32
//! `[N, 2]`, fixed values) with contender's own encoder. No model, no
//! validation, no metrics: what is left is the cost of HTTP and JSON, which
//! the gateway cannot go below.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::Path;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use bytes::Bytes;
use contender::protocol::rest::{self, HEADER_CONTENT_LENGTH, InferResponse};
use contender::protocol::{Tensor, TensorData};
use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: SocketAddr,
    /// Tokio worker threads (default: one per core, as the gateway).
    #[arg(long)]
    threads: Option<usize>,
    /// Stop by itself after this many seconds (a guard for scripts).
    #[arg(long)]
    exit_after: Option<u64>,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n.max(1));
    }
    let rt = builder
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let listener = TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        println!("floor listening on {}", listener.local_addr()?);
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let exit_after = args.exit_after;
        let stop = async move {
            match exit_after {
                Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
                None => std::future::pending::<()>().await,
            }
        };
        axum::serve(listener, app())
            .with_graceful_shutdown(stop)
            .await
            .context("serving")
    })?;
    Ok(ExitCode::SUCCESS)
}

fn app() -> Router {
    Router::new()
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}/infer", post(infer))
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

async fn ready() -> Response {
    json(StatusCode::OK, br#"{"ready":true}"#.to_vec())
}

async fn infer(Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let json_len = headers
        .get(HEADER_CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok());
    match rest::decode_request(&body, json_len) {
        Ok(request) => {
            let encoded = rest::encode_response(&answer(name, request.batch_rows()), |_| false);
            json(StatusCode::OK, encoded.body)
        }
        Err(e) => {
            let body = serde_json::json!({ "error": e.to_string() }).to_string();
            json(StatusCode::BAD_REQUEST, body.into_bytes())
        }
    }
}

/// A classifier's answer for `rows` rows, as the gateway shapes it.
fn answer(model_name: String, rows: usize) -> InferResponse {
    let n = i64::try_from(rows).unwrap_or(i64::MAX);
    InferResponse {
        model_name,
        model_version: "1".into(),
        // As long as the gateway's generated UUIDv7 ids.
        id: "00000000-0000-7000-8000-000000000000".into(),
        parameters: serde_json::Map::new(),
        outputs: vec![
            Tensor::new("label", vec![n], TensorData::Int64(vec![0; rows])),
            Tensor::new(
                "probabilities",
                vec![n, 2],
                TensorData::Fp32(vec![0.5; rows * 2]),
            ),
        ],
    }
}
