//! Open Inference Protocol REST handlers, plus Triton's binary tensor data,
//! model configuration, statistics and repository-index extensions.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::AppState;
use super::extract::V2Path;
use crate::deployment::{Gateway, LoadedModel, ModelState};
use crate::protocol::{ApiError, ErrorKind, TensorSpec};

/// Response header echoing the request id, for posting feedback later.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

type Shared = State<Arc<AppState>>;

pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "contender",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics"],
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
pub(super) enum Target {
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
pub(super) fn resolve(
    g: &Gateway,
    name: &str,
    version: Option<&str>,
) -> Result<(Target, Arc<LoadedModel>), ApiError> {
    let Some(version) = version else {
        if let Some(d) = g.deployment(name) {
            let live = d.live().ok_or_else(|| {
                ApiError::unavailable(format!(
                    "deployment '{name}' is not ready: its champion {} is loading or failed to load",
                    d.state().champion
                ))
            })?;
            return Ok((
                Target::Deployment(name.to_owned()),
                Arc::clone(&live.champion.model),
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
    let model = versioned_model(g, name).ok_or_else(|| unknown(name))?;
    let model = model.as_str();
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

/// The repository model `/v2/models/{name}/versions/{v}` addresses: `name`
/// itself when the repository has it, else the champion's model of
/// deployment `name`.
fn versioned_model(g: &Gateway, name: &str) -> Option<String> {
    if g.repository().contains_model(name) {
        Some(name.to_owned())
    } else {
        g.deployment(name).map(|d| d.state().champion.model)
    }
}

fn unknown(name: &str) -> ApiError {
    ApiError::not_found(format!("unknown model or deployment '{}'", shown(name)))
}

/// A name from the request as an error message repeats it: at most 200
/// characters (a 60,000-character name is not echoed back whole).
pub(super) fn shown(name: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 200;
    match name.char_indices().nth(MAX) {
        None => name.into(),
        Some((cut, _)) => format!("{}… ({} bytes)", &name[..cut], name.len()).into(),
    }
}

fn tensor_json(specs: &[TensorSpec]) -> Value {
    serde_json::to_value(specs).expect("tensor specs serialise")
}

fn metadata(g: &Gateway, name: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    let (target, m) = resolve(g, name, version)?;
    let (name, versions) = match (&target, version) {
        // The versions `/v2/models/{name}/versions/{v}` serves: the
        // repository model of that name, else the champion's model.
        (Target::Deployment(d), _) => {
            let model = versioned_model(g, d).unwrap_or_else(|| m.name().to_owned());
            let mut versions: Vec<String> = g
                .repository()
                .versions(&model)
                .iter()
                .map(u64::to_string)
                .collect();
            if versions.is_empty() {
                versions.push(m.version_label.clone());
            }
            (d.clone(), versions)
        }
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
    V2Path(name): V2Path<String>,
) -> Result<Json<Value>, ApiError> {
    metadata(&s.gateway, &name, None)
}

pub async fn model_metadata_v(
    State(s): Shared,
    V2Path((name, version)): V2Path<(String, String)>,
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

pub async fn model_ready(State(s): Shared, V2Path(name): V2Path<String>) -> Response {
    model_ready_impl(&s.gateway, &name, None)
}

pub async fn model_ready_v(
    State(s): Shared,
    V2Path((name, version)): V2Path<(String, String)>,
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
                let mut t = json!({
                    "name": s.name,
                    "data_type": s.datatype.triton_config_name(),
                    "dims": dims.iter().map(i64::to_string).collect::<Vec<_>>(),
                });
                if dims.is_empty() {
                    // One value per row: Triton's own configuration for such
                    // a tensor is dims [1] reshaped to a scalar (tools such as
                    // model_analyzer refuse empty dims).
                    t["dims"] = json!(["1"]);
                    t["reshape"] = json!({ "shape": [] });
                }
                t
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
    V2Path(name): V2Path<String>,
) -> Result<Json<Value>, ApiError> {
    config_impl(&s.gateway, &name, None)
}

pub async fn model_config_v(
    State(s): Shared,
    V2Path((name, version)): V2Path<(String, String)>,
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
    V2Path(name): V2Path<String>,
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
    V2Path((name, version)): V2Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (_, m) = resolve(&s.gateway, &name, Some(&version))?;
    Ok(stats_json([m]))
}

/// The body of a repository load or unload: empty, or an object whose
/// `parameters` contender takes: `unload_dependents` (which `tritonclient`
/// always sends; contender has no ensembles, so nothing depends on a model).
/// Triton's `config` and `file:` overrides are refused, not ignored.
fn load_request(body: &Bytes) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("malformed request body: {e}")))?;
    match v.get("parameters") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(p)) => {
            let unsupported: Vec<&str> = p
                .iter()
                .filter(|(k, v)| !(k.as_str() == "unload_dependents" && v.is_boolean()))
                .map(|(k, _)| k.as_str())
                .collect();
            if unsupported.is_empty() {
                Ok(())
            } else {
                Err(ApiError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "load/unload parameters are not supported ({}): contender loads the model as the repository has it",
                        unsupported.join(", ")
                    ),
                ))
            }
        }
        Some(_) => Err(ApiError::invalid("'parameters' must be an object")),
    }
}

/// `POST /v2/repository/models/{name}/load` (Triton's repository
/// extension): reads the repository again and loads and warms every version
/// of `name` not loaded yet. Admin access, like every change.
pub async fn repository_load(
    State(s): Shared,
    V2Path(name): V2Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    repository_change(&s.gateway, &name, &body, true).await
}

/// `POST /v2/repository/models/{name}/unload`: frees the loaded versions of
/// `name`; refused while a deployment uses any of them.
pub async fn repository_unload(
    State(s): Shared,
    V2Path(name): V2Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    repository_change(&s.gateway, &name, &body, false).await
}

/// Loads (`load`) or unloads model `name`; the versions changed and their state.
async fn repository_change(
    g: &Gateway,
    name: &str,
    body: &Bytes,
    load: bool,
) -> Result<Json<Value>, ApiError> {
    load_request(body)?;
    let (changed, state) = if load {
        (g.load_repository_model(name).await, "READY")
    } else {
        (g.unload_repository_model(name).await, "UNAVAILABLE")
    };
    let versions: Vec<String> = changed
        .map_err(super::admin::change_error)?
        .iter()
        .map(u64::to_string)
        .collect();
    Ok(Json(
        json!({ "name": name, "versions": versions, "state": state }),
    ))
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
    g.refresh_repository().await;
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
