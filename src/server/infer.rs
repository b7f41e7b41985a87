//! Inference: a repository model answers directly; a deployment routes each
//! request to its champion (or a canary), mirrors it to its challengers on
//! their own capped workers, and logs every model's prediction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, header};
use serde_json::{Map, Value};

use super::extract::V2Path;
use super::v2::{REQUEST_ID_HEADER, resolve};
use super::{AppState, body};
use crate::deployment::{Deployment, LiveSet, LoadedModel, Member};
use crate::drift::monitor::Sample;
use crate::evaluation::prediction::Prediction;
use crate::protocol::rest::{self, HEADER_CONTENT_LENGTH, InferResponse, RequestedOutput};
use crate::protocol::validate::{bind_inputs, check_outputs};
use crate::protocol::{ApiError, Tensor, TensorData, classification};
use crate::runtime::{Runner, RunnerError, RuntimeError, Timings};
use crate::store::{PredictionRecord, Role};
use crate::traffic;

type Shared = State<Arc<AppState>>;

pub async fn infer(
    State(s): Shared,
    V2Path(name): V2Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    if let Some(d) = s.gateway.deployment(&name) {
        let Some(live) = d.live() else {
            return ApiError::unavailable(format!(
                "deployment '{name}' is not ready: its champion {} is loading or failed to load",
                d.state().champion
            ))
            .into_response();
        };
        return infer_deployment(&s, d, live, &headers, body, started).await;
    }
    infer_model(&s, &name, None, &headers, body, started).await
}

pub async fn infer_v(
    State(s): Shared,
    V2Path((name, version)): V2Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_model(&s, &name, Some(&version), &headers, body, Instant::now()).await
}

/// A decoded, validated request.
struct Prepared {
    id: Option<String>,
    parameters: Map<String, Value>,
    inputs: Vec<Tensor>,
    rows: usize,
    requested: Vec<RequestedOutput>,
    binary_data_output: bool,
    decode: Duration,
}

/// Reads, decodes and validates the body against `model`'s inputs.
async fn prepare(
    s: &AppState,
    model: &LoadedModel,
    headers: &HeaderMap,
    body: Body,
) -> Result<Prepared, ApiError> {
    let bytes = body::read(headers, body, &s.gateway.config().server).await?;
    let json_len = body::json_header_length(headers)?;
    let decode_started = Instant::now();
    let request = rest::decode_request(&bytes, json_len)?;
    drop(bytes);
    let rest::InferRequest {
        id,
        parameters,
        inputs,
        outputs: requested,
        binary_data_output,
    } = request;
    let (inputs, rows) = bind_inputs(
        model.name(),
        inputs,
        model.model().inputs(),
        model.settings.max_batch_size,
    )?;
    Ok(Prepared {
        id,
        parameters,
        inputs,
        rows,
        requested,
        binary_data_output,
        decode: decode_started.elapsed(),
    })
}

/// The request's id: the body's `id`, else an `x-request-id` header, else a
/// new UUIDv7 (which also dates the request for feedback's retention check).
/// An id with a control character is refused: it could not be echoed in the
/// `x-request-id` header, and no application means one.
fn request_id(p: &mut Prepared, headers: &HeaderMap) -> Result<String, ApiError> {
    let id = p.id.take().or_else(|| {
        headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .map(str::to_owned)
    });
    match id {
        Some(id) if id.chars().any(char::is_control) => Err(ApiError::invalid(format!(
            "request id {id:?} contains a control character; ids are echoed in the x-request-id header"
        ))),
        Some(id) => Ok(id),
        None => Ok(uuid::Uuid::now_v7().to_string()),
    }
}

async fn infer_model(
    s: &AppState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Response {
    let model = match resolve(&s.gateway, name, version) {
        Ok((_, m)) => m,
        Err(e) => return e.into_response(),
    };
    let result = async {
        let mut p = prepare(s, &model, headers, body).await?;
        check_outputs(model.name(), &p.requested, model.model().outputs())?;
        let id = request_id(&mut p, headers)?;
        let (outputs, mut timings) = model
            .runner
            .run(p.inputs, p.rows)
            .await
            .map_err(|e| runner_error(&model, e))?;
        timings.decode = p.decode;
        Ok::<_, ApiError>(respond(
            &model,
            id,
            outputs,
            &p.requested,
            p.binary_data_output,
            p.rows,
            timings,
            started,
            headers,
        ))
    }
    .await;
    result.unwrap_or_else(|e| failed(&model, e, started))
}

fn failed(model: &LoadedModel, e: ApiError, started: Instant) -> Response {
    model.stats.failure(started.elapsed());
    model.metrics.failure(e.kind());
    e.into_response()
}

async fn infer_deployment(
    s: &AppState,
    d: &Deployment,
    live: Arc<LiveSet>,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Response {
    let champion = &live.champion;
    let mut p = match prepare(s, &champion.model, headers, body).await {
        Ok(p) => p,
        Err(e) => return failed(&champion.model, e, started),
    };
    let id = match request_id(&mut p, headers) {
        Ok(id) => id,
        Err(e) => return failed(&champion.model, e, started),
    };
    let routing = &live.routing;
    let routing_key = headers
        .get(routing.header.as_str())
        .and_then(|v| v.to_str().ok())
        .or_else(|| p.parameters.get(&routing.parameter).and_then(Value::as_str));
    let route = traffic::route(&live.routes, routing.seed, routing_key, &id);
    let answering: &Arc<Member> = route.answering.map_or(champion, |i| &live.challengers[i]);
    if let Err(e) = check_outputs(
        answering.model.name(),
        &p.requested,
        answering.model.model().outputs(),
    ) {
        return failed(&answering.model, e, started);
    }
    let request_id: Arc<str> = Arc::from(id.as_str());
    let segment: Option<Arc<str>> =
        p.parameters
            .get(&routing.segment_parameter)
            .and_then(|v| match v {
                Value::String(s) => Some(Arc::from(s.as_str())),
                Value::Number(n) => Some(Arc::from(n.to_string().as_str())),
                Value::Bool(b) => Some(Arc::from(if *b { "true" } else { "false" })),
                _ => None,
            });
    let mirrors = route
        .mirrored
        .iter()
        .map(|&i| &live.challengers[i])
        .chain(route.champion_mirrored.then_some(champion));
    let sampled = live
        .drift
        .as_ref()
        .is_some_and(|d| d.sample(&id, p.rows, started));
    // One copy of the inputs and of the request's context, made for the
    // first member with room in its queue, serves every mirrored member.
    let mut copy: Option<MirrorCopy> = None;
    for member in mirrors {
        let Some(runner) = &member.mirror else {
            continue;
        };
        // A copy the member would refuse as a direct request (more rows
        // than its own max_batch_size) is not run, only counted.
        if p.rows > member.model.settings.max_batch_size {
            mirror_rejected(d, member);
            continue;
        }
        if runner.is_full() {
            mirror_dropped(d, member);
            continue;
        }
        let copy = copy.get_or_insert_with(|| MirrorCopy {
            inputs: Arc::new(p.inputs.clone()),
            request: Arc::new(MirroredRequest {
                gateway: Arc::clone(&s.gateway),
                deployment: Arc::clone(&d.name_arc),
                request_id: Arc::clone(&request_id),
                segment: segment.clone(),
                rows: p.rows,
                sampled,
                started: Instant::now(),
            }),
        });
        mirror(d, member, runner, copy);
    }
    let drift_rows = if sampled { input_rows(&p.inputs) } else { None };
    let (outputs, mut timings) = match answering.model.runner.run(p.inputs, p.rows).await {
        Ok(r) => r,
        Err(e) => {
            let e = runner_error(&answering.model, e);
            return failed(&answering.model, e, started);
        }
    };
    timings.decode = p.decode;
    answering
        .stats
        .served
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    answering.stats.record_latency(timings.infer);
    let predictions = answering.model.reader.read(&outputs, p.rows);
    let drift_predictions = sampled.then(|| predictions.clone());
    let records = prediction_records(
        &d.name_arc,
        &request_id,
        &answering.model,
        answering.role,
        true,
        &segment,
        predictions,
        started.elapsed(),
        !live.challengers.is_empty(),
    );
    s.gateway.store().log_predictions(records);
    if let Some(predictions) = drift_predictions {
        s.gateway.drift().push(drift_sample(
            &d.name_arc,
            answering,
            drift_rows,
            predictions,
        ));
    }
    respond(
        &answering.model,
        id,
        outputs,
        &p.requested,
        p.binary_data_output,
        p.rows,
        timings,
        started,
        headers,
    )
}

/// A request's copy for its mirrored members: the inputs and the context
/// their answers are recorded with, shared by all of them.
struct MirrorCopy {
    inputs: Arc<Vec<Tensor>>,
    request: Arc<MirroredRequest>,
}

/// Counts a mirrored copy dropped because the member's queue was full.
fn mirror_dropped(d: &Deployment, member: &Member) {
    member
        .stats
        .dropped
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    member
        .mirror_dropped
        .get_or_init(|| {
            crate::telemetry::mirror_dropped(&d.name, member.model.name(), member.model.version())
        })
        .increment(1);
}

/// Counts a mirrored copy not run because the member could not take it (more
/// rows than its `max_batch_size`).
fn mirror_rejected(d: &Deployment, member: &Member) {
    member
        .stats
        .rejected
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    crate::telemetry::mirror_failed(
        &d.name,
        member.model.name(),
        member.model.version(),
        "rejected",
    );
}

/// Hands the request's copy to a member's own workers; never waits for a
/// place in its queue, and the caller never waits for its answer: it is
/// recorded off the request path (by the worker thread, or for
/// idle-priority workers by the runner's recorder thread), so a mirrored
/// request costs the request path one queue push.
fn mirror(d: &Deployment, member: &Arc<Member>, runner: &Runner, copy: &MirrorCopy) {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = &member.stats;
    let done = {
        let member = Arc::clone(member);
        let request = Arc::clone(&copy.request);
        move |result: crate::runtime::Answer| request.record(&member, result)
    };
    // Counted before it is queued, so that completed + errors + timeouts
    // never exceeds mirrored.
    stats.mirrored.fetch_add(1, Relaxed);
    match runner.try_submit_then(Arc::clone(&copy.inputs), done) {
        Ok(()) => {}
        Err(RunnerError::QueueFull { .. }) => {
            stats.mirrored.fetch_sub(1, Relaxed);
            mirror_dropped(d, member);
        }
        Err(_) => {
            stats.mirrored.fetch_sub(1, Relaxed);
            stats.errors.fetch_add(1, Relaxed);
        }
    }
}

/// What a mirrored request's answers are recorded with, off the request
/// path (see [`mirror`]).
struct MirroredRequest {
    gateway: Arc<crate::deployment::Gateway>,
    deployment: Arc<str>,
    request_id: Arc<str>,
    segment: Option<Arc<str>>,
    rows: usize,
    sampled: bool,
    started: Instant,
}

impl MirroredRequest {
    fn record(&self, member: &Member, result: crate::runtime::Answer) {
        use std::sync::atomic::Ordering::Relaxed;
        let failed = |stats: &std::sync::atomic::AtomicU64, kind: &'static str| {
            stats.fetch_add(1, Relaxed);
            crate::telemetry::mirror_failed(
                &self.deployment,
                member.model.name(),
                member.model.version(),
                kind,
            );
        };
        // An answer later than the member's timeout is not used.
        if self.started.elapsed() > member.timeout {
            failed(&member.stats.timeouts, "timeout");
            return;
        }
        let (outputs, timings) = match result {
            Ok(r) => r,
            Err(e) => {
                failed(&member.stats.errors, "error");
                tracing::debug!(model = %member.model.name(), error = %e, "mirrored request failed");
                return;
            }
        };
        member.stats.record_latency(timings.infer);
        let predictions = member.model.reader.read(&outputs, self.rows);
        let drift_predictions = self.sampled.then(|| predictions.clone());
        let records = prediction_records(
            &self.deployment,
            &self.request_id,
            &member.model,
            member.role,
            false,
            &self.segment,
            predictions,
            self.started.elapsed(),
            true,
        );
        self.gateway.store().log_predictions(records);
        // Counted once its predictions are queued for the log.
        member.stats.completed.fetch_add(1, Relaxed);
        member
            .mirror_completed
            .get_or_init(|| {
                crate::telemetry::mirror_completed(
                    &self.deployment,
                    member.model.name(),
                    member.model.version(),
                )
            })
            .increment(1);
        if let Some(predictions) = drift_predictions {
            self.gateway
                .drift()
                .push(drift_sample(&self.deployment, member, None, predictions));
        }
    }
}

/// A drift sample: this member's predictions, and the request's input rows
/// when given.
fn drift_sample(
    deployment: &Arc<str>,
    member: &Member,
    rows: Option<(usize, Vec<f64>)>,
    predictions: Vec<Prediction>,
) -> Sample {
    Sample {
        deployment: Arc::clone(deployment),
        model: format!("{}@{}", member.model.name(), member.model.version()),
        champion: member.role == Role::Champion,
        reference: member.model.reference.clone(),
        rows,
        predictions,
        training: (member.role == Role::Champion)
            .then(|| Arc::clone(&member.model.training_metrics)),
    }
}

/// The first input as rows of numbers (columns, row-major values).
fn input_rows(inputs: &[Tensor]) -> Option<(usize, Vec<f64>)> {
    let t = inputs.first()?;
    let cols = match t.shape.as_slice() {
        [_, c] => usize::try_from(*c).ok()?,
        [_] => 1,
        _ => return None,
    };
    let values: Vec<f64> = match &t.data {
        TensorData::Fp32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        TensorData::Fp64(v) => v.clone(),
        TensorData::Int64(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::Int32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        _ => return None,
    };
    Some((cols, values))
}

#[allow(clippy::too_many_arguments)]
fn prediction_records(
    deployment: &Arc<str>,
    request_id: &Arc<str>,
    model: &LoadedModel,
    role: Role,
    served: bool,
    segment: &Option<Arc<str>>,
    predictions: Vec<Prediction>,
    latency: Duration,
    compare: bool,
) -> Vec<PredictionRecord> {
    if predictions.is_empty() {
        return Vec::new();
    }
    let created_ms = crate::clock::now_ms();
    let latency_us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
    predictions
        .into_iter()
        .enumerate()
        .map(|(row, prediction)| PredictionRecord {
            deployment: Arc::clone(deployment),
            request_id: Arc::clone(request_id),
            row: row as u32,
            model: Arc::clone(&model.name_arc),
            version: model.version(),
            role,
            served,
            segment: segment.clone(),
            created_ms,
            latency_us,
            prediction,
            compare,
        })
        .collect()
}

/// Encodes the response and records the request's statistics.
#[allow(clippy::too_many_arguments)]
fn respond(
    model: &LoadedModel,
    id: String,
    outputs: Vec<Tensor>,
    requested: &[RequestedOutput],
    binary_data_output: bool,
    rows: usize,
    mut timings: Timings,
    started: Instant,
    request_headers: &HeaderMap,
) -> Response {
    let encode_started = Instant::now();
    let outputs = select_outputs(outputs, requested, &model.entry.metadata.labels);
    let response = InferResponse {
        model_name: model.name().to_owned(),
        model_version: model.version_label.clone(),
        id,
        parameters: Map::new(),
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
    let compressed = body::compress_response(request_headers, &encoded.body);
    timings.encode = encode_started.elapsed();
    let total = started.elapsed();
    model.stats.success(rows, total, &timings);
    model
        .metrics
        .success(rows, total, timings.queue, timings.infer);

    let (bytes, content_encoding) = match compressed {
        Some((bytes, encoding)) => (bytes, Some(encoding)),
        None => (encoded.body, None),
    };
    let mut resp = Response::new(Body::from(bytes));
    let h = resp.headers_mut();
    if let Some(encoding) = content_encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
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
    if let Some(v) = request_id_header(response.id) {
        h.insert(REQUEST_ID, v);
    }
    if let Ok(v) = HeaderValue::from_bytes(&server_timing(&timings)) {
        h.insert(SERVER_TIMING, v);
    }
    resp
}

/// The id as the `x-request-id` value, taking the id's own buffer (no
/// copy). Ids are text without control characters ([`request_id`]); a
/// non-ASCII id goes out as its UTF-8 bytes (header `obs-text`), which
/// clients read back as UTF-8 (or, as Python's `http.client` does, as
/// Latin-1, from which `.encode("latin-1").decode()` restores it).
fn request_id_header(id: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(id.into_bytes())).ok()
}

const REQUEST_ID: header::HeaderName = header::HeaderName::from_static(REQUEST_ID_HEADER);
const SERVER_TIMING: header::HeaderName = header::HeaderName::from_static("server-timing");

/// Keeps the requested outputs, in the order requested (all when none were
/// named), each as its top classes when asked for them (`classification`;
/// `labels` are the model's class names).
fn select_outputs(
    outputs: Vec<Tensor>,
    requested: &[RequestedOutput],
    labels: &[String],
) -> Vec<Tensor> {
    if requested.is_empty() {
        return outputs;
    }
    let mut outputs: Vec<Option<Tensor>> = outputs.into_iter().map(Some).collect();
    requested
        .iter()
        .filter_map(|r| {
            let t = outputs
                .iter_mut()
                .find(|o| o.as_ref().is_some_and(|t| t.name == r.name))?
                .take()?;
            Some(match r.classification {
                Some(k) => classification::top_classes(&t, k, labels),
                None => t,
            })
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

/// `Server-Timing` value, durations in milliseconds with microsecond digits
/// (`decode;dur=0.012, queue;dur=0.000, ...`), written without the
/// formatting machinery: this runs on every response.
fn server_timing(t: &Timings) -> Vec<u8> {
    let mut s = Vec::with_capacity(96);
    for (name, d) in [
        ("decode", t.decode),
        ("queue", t.queue),
        ("infer", t.infer),
        ("encode", t.encode),
    ] {
        if !s.is_empty() {
            s.extend_from_slice(b", ");
        }
        s.extend_from_slice(name.as_bytes());
        s.extend_from_slice(b";dur=");
        let us = d.as_micros();
        s.extend_from_slice(itoa::Buffer::new().format(us / 1000).as_bytes());
        let frac = us % 1000;
        s.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_into_the_header_as_utf8() {
        let v = request_id_header("order-42 A~".to_owned()).expect("a header value");
        assert_eq!(v.as_bytes(), b"order-42 A~");
        let v = request_id_header("commande-é-€".to_owned()).expect("a header value");
        assert_eq!(v.as_bytes(), "commande-é-€".as_bytes());
    }

    #[test]
    fn server_timing_writes_milliseconds_with_microsecond_digits() {
        let t = Timings {
            decode: Duration::from_micros(12),
            queue: Duration::ZERO,
            infer: Duration::from_micros(1_234_567),
            encode: Duration::from_nanos(999),
            shared_execution: false,
            batch_rows: 0,
        };
        assert_eq!(
            String::from_utf8(server_timing(&t)).expect("ASCII"),
            "decode;dur=0.012, queue;dur=0.000, infer;dur=1234.567, encode;dur=0.000"
        );
    }
}
