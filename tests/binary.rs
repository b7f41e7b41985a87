//! Triton's binary tensor data extension, spoken by hand: a JSON header of
//! `Inference-Header-Content-Length` bytes, then raw little-endian tensors.

mod support;

use serde_json::{Value, json};
use support::{TestServer, assert_error, breast_cancer_features, expected, i64_data, json_of};

const HEADER: &str = "Inference-Header-Content-Length";

/// A binary request body: the JSON header, then `payload`.
fn binary_body(header: &Value, payload: &[u8]) -> (Vec<u8>, usize) {
    let mut body = serde_json::to_vec(header).expect("header serialises");
    let json_len = body.len();
    body.extend_from_slice(payload);
    (body, json_len)
}

fn f32_bytes(rows: &[Vec<f64>]) -> Vec<u8> {
    rows.iter()
        .flatten()
        .flat_map(|&x| (x as f32).to_le_bytes())
        .collect()
}

/// A decoded binary (or JSON) response.
struct Decoded {
    header: Value,
    /// Binary sections by output name, in the header's output order.
    sections: Vec<(String, Vec<u8>)>,
}

impl Decoded {
    fn section(&self, name: &str) -> &[u8] {
        &self
            .sections
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no binary section for {name}: {}", self.header))
            .1
    }
}

async fn send(
    s: &TestServer,
    path: &str,
    body: Vec<u8>,
    json_len: Option<usize>,
) -> reqwest::Response {
    let mut req = s
        .client
        .post(s.url(path))
        .header("content-type", "application/octet-stream")
        .body(body);
    if let Some(n) = json_len {
        req = req.header(HEADER, n.to_string());
    }
    req.send().await.expect("request sent")
}

/// Splits a 200 response into its JSON header and binary sections, checking
/// the content type and header agree with the body.
async fn decode(r: reqwest::Response) -> Decoded {
    assert_eq!(r.status(), 200);
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let json_len = r.headers().get(HEADER).map(|v| {
        v.to_str()
            .expect("ascii")
            .parse::<usize>()
            .expect("a byte count")
    });
    let body = r.bytes().await.expect("body");
    let Some(json_len) = json_len else {
        assert_eq!(content_type, "application/json");
        return Decoded {
            header: serde_json::from_slice(&body).expect("JSON body"),
            sections: Vec::new(),
        };
    };
    assert_eq!(content_type, "application/octet-stream");
    assert!(
        json_len <= body.len(),
        "header length {json_len} > body {}",
        body.len()
    );
    let header: Value = serde_json::from_slice(&body[..json_len]).expect("JSON header");
    let mut rest = &body[json_len..];
    let mut sections = Vec::new();
    for o in header["outputs"].as_array().expect("outputs") {
        if let Some(size) = o["parameters"]["binary_data_size"].as_u64() {
            assert!(o.get("data").is_none(), "binary output also has data: {o}");
            let size = size as usize;
            assert!(size <= rest.len(), "section {size} overruns the body");
            let (chunk, tail) = rest.split_at(size);
            sections.push((o["name"].as_str().expect("name").to_owned(), chunk.to_vec()));
            rest = tail;
        }
    }
    assert!(
        rest.is_empty(),
        "{} unclaimed bytes after the sections",
        rest.len()
    );
    Decoded { header, sections }
}

fn le_f32(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4 bytes"))))
        .collect()
}

fn le_i64(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

fn expected_labels(version: u32) -> Vec<i64> {
    expected("breast_cancer", version)["label"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|v| v.as_i64().expect("label"))
        .collect()
}

fn expected_probabilities(version: u32) -> Vec<f64> {
    expected("breast_cancer", version)["probabilities"]
        .as_array()
        .expect("probabilities")
        .iter()
        .flat_map(|p| {
            p.as_array()
                .expect("pair")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_probabilities(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6,
            "probability {i}: got {g}, expected {w}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_in_binary_out() {
    let s = TestServer::start().await;
    let rows = breast_cancer_features();
    let n = rows.len();
    let payload = f32_bytes(&rows);
    let header = json!({
        "id": "bin-1",
        "inputs": [{
            "name": "input", "shape": [n, 30], "datatype": "FP32",
            "parameters": {"binary_data_size": payload.len()},
        }],
        "parameters": {"binary_data_output": true},
    });
    let (body, json_len) = binary_body(&header, &payload);
    let r = send(&s, "/v2/models/breast_cancer/infer", body, Some(json_len)).await;
    let d = decode(r).await;
    assert_eq!(d.header["id"], "bin-1");
    assert_eq!(d.header["model_name"], "breast_cancer");
    assert_eq!(d.header["model_version"], "1");
    assert_eq!(d.sections.len(), 2, "{}", d.header);
    let label = d.section("label");
    assert_eq!(label.len(), n * 8);
    assert_eq!(le_i64(label), expected_labels(1));
    let probs = d.section("probabilities");
    assert_eq!(probs.len(), n * 2 * 4);
    assert_probabilities(&le_f32(probs), &expected_probabilities(1));

    // The same on another version, through the version path.
    let (body, json_len) = binary_body(&header, &payload);
    let r = send(
        &s,
        "/v2/models/breast_cancer/versions/2/infer",
        body,
        Some(json_len),
    )
    .await;
    let d = decode(r).await;
    assert_eq!(d.header["model_version"], "2");
    assert_eq!(le_i64(d.section("label")), expected_labels(2));
    assert_probabilities(
        &le_f32(d.section("probabilities")),
        &expected_probabilities(2),
    );

    // Binary in, JSON out (no binary_data_output).
    let header = json!({
        "inputs": [{
            "name": "input", "shape": [n, 30], "datatype": "FP32",
            "parameters": {"binary_data_size": payload.len()},
        }],
    });
    let (body, json_len) = binary_body(&header, &payload);
    let r = send(&s, "/v2/models/breast_cancer/infer", body, Some(json_len)).await;
    let d = decode(r).await;
    assert!(d.sections.is_empty());
    assert_eq!(
        i64_data(support::output(&d.header, "label")),
        expected_labels(1)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_binary_and_json_outputs() {
    let s = TestServer::start().await;
    let rows = breast_cancer_features();
    let n = rows.len();

    // JSON request; label in JSON, probabilities binary.
    let mut req = support::classifier_request(&rows);
    req["outputs"] = json!([
        {"name": "label", "parameters": {"binary_data": false}},
        {"name": "probabilities", "parameters": {"binary_data": true}},
    ]);
    let r = s
        .client
        .post(s.url("/v2/models/breast_cancer/infer"))
        .json(&req)
        .send()
        .await
        .expect("infer");
    let d = decode(r).await;
    assert_eq!(d.sections.len(), 1, "{}", d.header);
    let label = support::output(&d.header, "label");
    assert_eq!(i64_data(label), expected_labels(1));
    assert!(
        label
            .get("parameters")
            .is_none_or(|p| p.get("binary_data_size").is_none())
    );
    let probs = support::output(&d.header, "probabilities");
    assert_eq!(probs["shape"], json!([n, 2]));
    assert_eq!(probs["parameters"]["binary_data_size"], n * 8);
    assert_probabilities(
        &le_f32(d.section("probabilities")),
        &expected_probabilities(1),
    );

    // Request-level binary_data_output, overridden per output.
    req["parameters"] = json!({"binary_data_output": true});
    req["outputs"] = json!([
        {"name": "label"},
        {"name": "probabilities", "parameters": {"binary_data": false}},
    ]);
    let r = s
        .client
        .post(s.url("/v2/models/breast_cancer/infer"))
        .json(&req)
        .send()
        .await
        .expect("infer");
    let d = decode(r).await;
    assert_eq!(d.sections.len(), 1, "{}", d.header);
    assert_eq!(le_i64(d.section("label")), expected_labels(1));
    let got: Vec<f64> = support::f64_data(support::output(&d.header, "probabilities"));
    assert_probabilities(&got, &expected_probabilities(1));
    s.stop().await;
}

/// Every dtypes-model datatype through binary inputs and outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_datatypes_round_trip() {
    let s = TestServer::start().await;
    let fp32: Vec<u8> = [1.5f32, -2.0, 0.0, 0.25, 1e6, -3.75]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let fp64: Vec<u8> = [0.1f64, -1.0, 1e300, 2.5, -0.5, 8.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let i32s: Vec<u8> = [1i32, -2, 0, 700_000_000, -700_000_000, 7]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let i64s: Vec<u8> = [0i64, 9_007_199_254_740_993, i64::MIN + 1, 1, i64::MAX, -5]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let bools: Vec<u8> = vec![1, 0, 1, 0, 0, 1];
    let u8s: Vec<u8> = vec![0, 1, 255, 128, 7, 42];
    let inputs = [
        ("x_fp32", "FP32", &fp32),
        ("x_fp64", "FP64", &fp64),
        ("x_i32", "INT32", &i32s),
        ("x_i64", "INT64", &i64s),
        ("x_bool", "BOOL", &bools),
        ("x_u8", "UINT8", &u8s),
    ];
    let header = json!({
        "inputs": inputs.iter().map(|(name, dt, data)| json!({
            "name": name, "shape": [2, 3], "datatype": dt,
            "parameters": {"binary_data_size": data.len()},
        })).collect::<Vec<_>>(),
        "parameters": {"binary_data_output": true},
    });
    let payload: Vec<u8> = inputs
        .iter()
        .flat_map(|(_, _, d)| d.iter().copied())
        .collect();
    let (body, json_len) = binary_body(&header, &payload);
    let d = decode(send(&s, "/v2/models/dtypes/infer", body, Some(json_len)).await).await;
    assert_eq!(d.sections.len(), 6, "{}", d.header);

    let f32s: Vec<f32> = d
        .section("y_fp32")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
        .collect();
    assert_eq!(f32s, [3.0, -4.0, 0.0, 0.5, 2e6, -7.5]);
    let f64s: Vec<f64> = d
        .section("y_fp64")
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
        .collect();
    assert_eq!(f64s, [0.1 + 1.0, 0.0, 1e300, 3.5, 0.5, 9.0]);
    let i32_out: Vec<i32> = d
        .section("y_i32")
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().expect("4")))
        .collect();
    assert_eq!(i32_out, [3, -6, 0, 2_100_000_000, -2_100_000_000, 21]);
    assert_eq!(
        le_i64(d.section("y_i64")),
        [-1, 9_007_199_254_740_992, i64::MIN, 0, i64::MAX - 1, -6]
    );
    assert_eq!(d.section("y_bool"), [0, 1, 0, 1, 1, 0]);
    assert_eq!(d.section("y_u8"), [0, 1, 255, 128, 7, 42]);
    for name in ["y_fp32", "y_fp64", "y_i32", "y_i64", "y_bool", "y_u8"] {
        assert_eq!(support::output(&d.header, name)["shape"], json!([2, 3]));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_binary_requests_are_rejected() {
    let s = TestServer::start().await;
    let rows = breast_cancer_features();
    let payload = f32_bytes(&rows[..2]);
    let infer = "/v2/models/breast_cancer/infer";
    let header = |size: Value, shape: Value| {
        json!({"inputs": [{
            "name": "input", "shape": shape, "datatype": "FP32",
            "parameters": {"binary_data_size": size},
        }]})
    };

    // binary_data_size larger than what follows the header.
    let (body, json_len) = binary_body(&header(json!(payload.len() + 4), json!([2, 30])), &payload);
    let (status, err) = json_of(send(&s, infer, body, Some(json_len)).await).await;
    assert_error(status, &err, 400, &["input", "binary_data_size"]);

    // binary_data_size that does not fit the shape.
    let (body, json_len) = binary_body(&header(json!(payload.len()), json!([1, 30])), &payload);
    let (status, err) = json_of(send(&s, infer, body, Some(json_len)).await).await;
    assert_error(status, &err, 400, &["input", "[1, 30]"]);

    // Bytes left over that no input claims.
    let (body, json_len) = binary_body(&header(json!(120), json!([1, 30])), &payload);
    let (status, err) = json_of(send(&s, infer, body, Some(json_len)).await).await;
    assert_error(status, &err, 400, &["120"]);

    // binary_data_size that is not a byte count.
    for bad in [json!(-8), json!("240"), json!(1.5)] {
        let (body, json_len) = binary_body(&header(bad.clone(), json!([2, 30])), &payload);
        let (status, err) = json_of(send(&s, infer, body, Some(json_len)).await).await;
        assert_error(status, &err, 400, &["binary_data_size"]);
    }

    // Header length longer than the body.
    let (body, _) = binary_body(&header(json!(payload.len()), json!([2, 30])), &payload);
    let too_long = body.len() + 1;
    let (status, err) = json_of(send(&s, infer, body, Some(too_long)).await).await;
    assert_error(status, &err, 400, &["inference-header-content-length"]);

    // Header length cutting the JSON short.
    let (body, json_len) = binary_body(&header(json!(payload.len()), json!([2, 30])), &payload);
    let (status, err) = json_of(send(&s, infer, body, Some(json_len - 3)).await).await;
    assert_error(status, &err, 400, &["malformed"]);

    // Header length that is not a number.
    let (body, _) = binary_body(&header(json!(payload.len()), json!([2, 30])), &payload);
    let r = s
        .client
        .post(s.url(infer))
        .header(HEADER, "lots")
        .body(body)
        .send()
        .await
        .expect("sent");
    let (status, err) = json_of(r).await;
    assert_error(status, &err, 400, &["byte count"]);

    // Binary data without the header: the body is not JSON.
    let (body, _) = binary_body(&header(json!(payload.len()), json!([2, 30])), &payload);
    let (status, err) = json_of(send(&s, infer, body, None).await).await;
    assert_error(status, &err, 400, &["malformed"]);

    // binary_data must be a boolean.
    let mut req = support::classifier_request(&rows[..1]);
    req["outputs"] = json!([{"name": "label", "parameters": {"binary_data": "yes"}}]);
    let (status, err) = s.post_json(infer, &req).await;
    assert_error(status, &err, 400, &["binary_data"]);

    // Still serving.
    let (body, json_len) = binary_body(&header(json!(payload.len()), json!([2, 30])), &payload);
    let d = decode(send(&s, infer, body, Some(json_len)).await).await;
    assert_eq!(
        i64_data(support::output(&d.header, "label")),
        expected_labels(1)[..2].to_vec()
    );
    s.stop().await;
}
