//! Open Inference Protocol REST handlers, plus Triton's binary tensor data,
//! model configuration, statistics and repository-index extensions.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::AppState;
use super::body;
use crate::deployment::{Gateway, LoadedModel, ModelState};
use crate::protocol::rest::{self, HEADER_CONTENT_LENGTH, InferResponse};
use crate::protocol::validate::{bind_inputs, check_outputs};
use crate::protocol::{ApiError, ErrorKind, Tensor, TensorSpec};
use crate::runtime::{RunnerError, RuntimeError, Timings};

/// Response header echoing the request id, for posting feedback later.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

type Shared = State<Arc<AppState>>;

pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "contender",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_configuration", "model_repository", "statistics"],
    }))
}

pub async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

pub async fn ready(State(s): Shared) -> Response {
    let ready = s.gateway.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

/// What a `{name}[/versions/{v}]` path designates.
enum Target {
    Deployment(String),
    Model(String),
}

fn parse_version(v: &str) -> Result<u64, ApiError> {
    v.parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| ApiError::invalid(format!("model version {v:?} is not a positive integer")))
}

/// Resolves a path to the loaded model that answers it.
///
/// - `{name}`: a deployment (its champion answers), else a repository model
///   (its newest ready version answers).
/// - `{name}/versions/{v}`: version `v` of repository model `{name}`; when
///   `{name}` is only a deployment, version `v` of its champion's model.
fn resolve(
    g: &Gateway,
    name: &str,
    version: Option<&str>,
) -> Result<(Target, Arc<LoadedModel>), ApiError> {
    let Some(version) = version else {
        if let Some(d) = g.deployment(name) {
            let live = d.live().ok_or_else(|| {
                ApiError::unavailable(format!(
                    "deployment '{name}' is not ready: its champion {} is loading or failed to load",
                    d.champion
                ))
            })?;
            return Ok((
                Target::Deployment(name.to_owned()),
                Arc::clone(&live.champion),
            ));
        }
        if g.repository().contains_model(name) {
            let m = g.latest_ready(name).ok_or_else(|| {
                ApiError::unavailable(format!("model '{name}' has no ready version yet"))
            })?;
            return Ok((Target::Model(name.to_owned()), m));
        }
        return Err(unknown(name));
    };
    let v = parse_version(version)?;
    let model = if g.repository().contains_model(name) {
        name
    } else if let Some(d) = g.deployment(name) {
        d.champion.model.as_str()
    } else {
        return Err(unknown(name));
    };
    match g.state(model, v) {
        Some(ModelState::Ready(m)) => Ok((Target::Model(model.to_owned()), m)),
        Some(ModelState::Loading) => Err(ApiError::unavailable(format!(
            "model '{model}' version {v} is loading"
        ))),
        Some(ModelState::Unavailable(reason)) => Err(ApiError::unavailable(format!(
            "model '{model}' version {v} is unavailable: {reason}"
        ))),
        None => Err(ApiError::not_found(format!(
            "model '{model}' has no version {v} (versions: {:?})",
            g.repository().versions(model)
        ))),
    }
}

fn unknown(name: &str) -> ApiError {
    ApiError::not_found(format!("unknown model or deployment '{name}'"))
}

fn tensor_json(specs: &[TensorSpec]) -> Value {
    serde_json::to_value(specs).expect("tensor specs serialise")
}

fn metadata(g: &Gateway, name: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    let (target, m) = resolve(g, name, version)?;
    let (name, versions) = match (&target, version) {
        (Target::Deployment(d), _) => (d.clone(), vec![m.version_label.clone()]),
        (Target::Model(model), Some(_)) => (model.clone(), vec![m.version_label.clone()]),
        (Target::Model(model), None) => (
            model.clone(),
            g.repository()
                .versions(model)
                .iter()
                .map(u64::to_string)
                .collect(),
        ),
    };
    let engine = m.model();
    Ok(Json(json!({
        "name": name,
        "versions": versions,
        "platform": engine.platform(),
        "inputs": tensor_json(engine.inputs()),
        "outputs": tensor_json(engine.outputs()),
    })))
}

pub async fn model_metadata(
    State(s): Shared,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    metadata(&s.gateway, &name, None)
}

pub async fn model_metadata_v(
    State(s): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    metadata(&s.gateway, &name, Some(&version))
}

fn model_ready_impl(g: &Gateway, name: &str, version: Option<&str>) -> Response {
    match resolve(g, name, version) {
        Ok(_) => (StatusCode::OK, Json(json!({ "name": name, "ready": true }))).into_response(),
        Err(e) if e.kind() == ErrorKind::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "name": name, "ready": false, "reason": e.message() })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn model_ready(State(s): Shared, Path(name): Path<String>) -> Response {
    model_ready_impl(&s.gateway, &name, None)
}

pub async fn model_ready_v(
    State(s): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    model_ready_impl(&s.gateway, &name, Some(&version))
}

/// A minimal Triton model configuration (what `perf_analyzer` and Triton
/// clients read). int64 fields are strings, as in Triton's protobuf JSON.
fn config_impl(g: &Gateway, name: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    let (target, m) = resolve(g, name, version)?;
    let engine = m.model();
    let batched = engine
        .inputs()
        .iter()
        .chain(engine.outputs())
        .all(TensorSpec::has_batch_dim);
    let io = |specs: &[TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| {
                let dims = if batched { &s.shape[1..] } else { &s.shape[..] };
                json!({
                    "name": s.name,
                    "data_type": s.datatype.triton_config_name(),
                    "dims": dims.iter().map(i64::to_string).collect::<Vec<_>>(),
                })
            })
            .collect()
    };
    let display_name = match &target {
        Target::Deployment(d) => d.clone(),
        Target::Model(_) => m.name().to_owned(),
    };
    let meta = &m.entry.metadata;
    let plan = m.runner.plan();
    Ok(Json(json!({
        "name": display_name,
        "platform": match engine.platform() { "onnx_onnxv1" => "onnxruntime_onnx", _ => "pytorch_libtorch" },
        "backend": engine.backend(),
        "version_policy": { "specific": { "versions": [m.version_label] } },
        "max_batch_size": if batched { m.settings.max_batch_size } else { 0 },
        "input": io(engine.inputs()),
        "output": io(engine.outputs()),
        "instance_group": [{ "name": m.name(), "kind": "KIND_CPU", "count": engine.instances() }],
        "parameters": {
            "task": { "string_value": meta.task.map(|t| t.as_str()).unwrap_or("") },
            "execution": { "string_value": format!("inline up to {} rows, worker threads beyond", plan.inline_max_rows) },
            "intra_op_threads": { "string_value": m.settings.intra_op_threads.to_string() },
        },
    })))
}

pub async fn model_config(
    State(s): Shared,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    config_impl(&s.gateway, &name, None)
}

pub async fn model_config_v(
    State(s): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    config_impl(&s.gateway, &name, Some(&version))
}

fn stats_json(models: impl IntoIterator<Item = Arc<LoadedModel>>) -> Json<Value> {
    let stats: Vec<_> = models
        .into_iter()
        .map(|m| m.stats.snapshot(m.name(), m.version()))
        .collect();
    Json(json!({ "model_stats": stats }))
}

fn ready_models(g: &Gateway, only: Option<&str>) -> Vec<Arc<LoadedModel>> {
    g.model_states()
        .into_iter()
        .filter(|(name, _, _)| only.is_none_or(|o| o == name))
        .filter_map(|(_, _, s)| match s {
            ModelState::Ready(m) => Some(m),
            _ => None,
        })
        .collect()
}

pub async fn all_stats(State(s): Shared) -> Json<Value> {
    stats_json(ready_models(&s.gateway, None))
}

pub async fn model_stats(
    State(s): Shared,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let g = &s.gateway;
    if g.repository().contains_model(&name) {
        return Ok(stats_json(ready_models(g, Some(&name))));
    }
    let (_, m) = resolve(g, &name, None)?;
    Ok(stats_json([m]))
}

pub async fn model_stats_v(
    State(s): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (_, m) = resolve(&s.gateway, &name, Some(&version))?;
    Ok(stats_json([m]))
}

pub async fn repository_index(State(s): Shared, body: Bytes) -> Result<Json<Value>, ApiError> {
    let ready_only = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("malformed request body: {e}")))?;
        match v.get("ready") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::invalid("'ready' must be a boolean")),
        }
    };
    let g = &s.gateway;
    let mut out = Vec::new();
    for (name, version, state) in g.model_states() {
        if ready_only && !matches!(state, ModelState::Ready(_)) {
            continue;
        }
        let mut item =
            json!({ "name": name, "version": version.to_string(), "state": state.as_str() });
        if let ModelState::Unavailable(reason) = &state {
            item["reason"] = json!(reason);
        }
        out.push(item);
    }
    if !ready_only {
        for p in g.repository().problems() {
            out.push(json!({
                "name": p.name.clone().unwrap_or_else(|| p.path.display().to_string()),
                "version": p.version.map(|v| v.to_string()).unwrap_or_default(),
                "state": "UNAVAILABLE",
                "reason": format!("{}: {}", p.path.display(), p.reason),
            }));
        }
    }
    Ok(Json(Value::Array(out)))
}

pub async fn metrics(State(s): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        s.prometheus.render(),
    )
        .into_response()
}

pub async fn infer(
    State(s): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_impl(&s, &name, None, &headers, body).await
}

pub async fn infer_v(
    State(s): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_impl(&s, &name, Some(&version), &headers, body).await
}

async fn infer_impl(
    s: &AppState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let model = match resolve(&s.gateway, name, version) {
        Ok((_, m)) => m,
        Err(e) => return e.into_response(),
    };
    match run_inference(s, &model, headers, body, started).await {
        Ok(resp) => resp,
        Err(e) => {
            model.stats.failure(started.elapsed());
            model.metrics.failure(e.kind());
            e.into_response()
        }
    }
}

async fn run_inference(
    s: &AppState,
    model: &LoadedModel,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<Response, ApiError> {
    let limit = s.gateway.config().server.max_body_bytes;
    let bytes = body::read(headers, body, limit).await?;
    let json_len = body::json_header_length(headers)?;
    let decode_started = Instant::now();
    let request = rest::decode_request(&bytes, json_len)?;
    drop(bytes);
    let engine = model.model();
    let rest::InferRequest {
        id,
        inputs,
        outputs: requested,
        binary_data_output,
        ..
    } = request;
    let (inputs, rows) = bind_inputs(
        model.name(),
        inputs,
        engine.inputs(),
        model.settings.max_batch_size,
    )?;
    check_outputs(model.name(), &requested, engine.outputs())?;
    let decode = decode_started.elapsed();

    let (outputs, mut timings) = model
        .runner
        .run(inputs, rows)
        .await
        .map_err(|e| runner_error(model, e))?;
    timings.decode = decode;

    let encode_started = Instant::now();
    let outputs = select_outputs(outputs, &requested);
    let id = id
        .or_else(|| {
            headers
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let response = InferResponse {
        model_name: model.name().to_owned(),
        model_version: model.version_label.clone(),
        id,
        parameters: serde_json::Map::new(),
        outputs,
    };
    let wants_binary = |name: &str| {
        requested
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.binary_data)
            .unwrap_or(binary_data_output)
    };
    let encoded = rest::encode_response(&response, wants_binary);
    timings.encode = encode_started.elapsed();

    let total = started.elapsed();
    model.stats.success(rows, total, &timings);
    model
        .metrics
        .success(rows, total, timings.queue, timings.infer);

    let mut resp = Response::new(Body::from(encoded.body));
    let h = resp.headers_mut();
    match encoded.json_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(HEADER_CONTENT_LENGTH, HeaderValue::from(n));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    if let Ok(v) = HeaderValue::from_str(&response.id) {
        h.insert(REQUEST_ID_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&server_timing(&timings)) {
        h.insert("server-timing", v);
    }
    Ok(resp)
}

/// Keeps the requested outputs, in the order requested (all when none were named).
fn select_outputs(outputs: Vec<Tensor>, requested: &[rest::RequestedOutput]) -> Vec<Tensor> {
    if requested.is_empty() {
        return outputs;
    }
    let mut outputs: Vec<Option<Tensor>> = outputs.into_iter().map(Some).collect();
    requested
        .iter()
        .filter_map(|r| {
            outputs
                .iter_mut()
                .find(|o| o.as_ref().is_some_and(|t| t.name == r.name))?
                .take()
        })
        .collect()
}

fn runner_error(model: &LoadedModel, e: RunnerError) -> ApiError {
    match e {
        RunnerError::QueueFull { .. } => {
            model.metrics.rejected();
            ApiError::unavailable(e.to_string())
        }
        RunnerError::Stopped(_) => ApiError::unavailable(e.to_string()),
        RunnerError::Runtime(RuntimeError::InvalidInput(msg)) => ApiError::invalid(format!(
            "model '{}' rejected the input: {msg}",
            model.name()
        )),
        RunnerError::Runtime(other) => ApiError::internal(&other),
    }
}

/// `Server-Timing` value, durations in milliseconds.
fn server_timing(t: &Timings) -> String {
    let mut s = String::with_capacity(80);
    for (name, d) in [
        ("decode", t.decode),
        ("queue", t.queue),
        ("infer", t.infer),
        ("encode", t.encode),
    ] {
        if !s.is_empty() {
            s.push_str(", ");
        }
        let _ = write!(s, "{name};dur={:.3}", d.as_secs_f64() * 1e3);
    }
    s
}
