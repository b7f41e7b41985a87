//! Hot path of every request: decoding the V2 body into tensors and encoding
//! the answer. Bodies are built from the breast_cancer held-out rows (30 FP32
//! features per row), as the load test sends them.
//!
//!   cargo bench --bench decode

use std::hint::black_box;
use std::time::Duration;

use contender::protocol::rest::{InferResponse, decode_request, encode_response};
use contender::protocol::{Tensor, TensorData};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

fn holdout_rows(n: usize) -> Vec<Vec<f64>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/_data/breast_cancer_holdout.json"
    );
    let text = std::fs::read(path).expect("reading the breast_cancer held-out rows");
    let v: serde_json::Value = serde_json::from_slice(&text).expect("held-out rows are JSON");
    let rows: Vec<Vec<f64>> =
        serde_json::from_value(v["features"].clone()).expect("`features` is rows of numbers");
    rows.into_iter().cycle().take(n).collect()
}

/// A JSON body with flat row-major data, as V2 clients send it.
fn json_body(rows: &[Vec<f64>]) -> Vec<u8> {
    let data: Vec<f64> = rows.iter().flatten().copied().collect();
    serde_json::to_vec(&json!({
        "inputs": [{
            "name": "input", "shape": [rows.len(), rows[0].len()],
            "datatype": "FP32", "data": data,
        }],
    }))
    .expect("serialising a body")
}

/// A binary-tensor body: JSON header then little-endian FP32; with the header length.
fn binary_body(rows: &[Vec<f64>]) -> (Vec<u8>, usize) {
    let count = rows.len() * rows[0].len();
    let mut body = serde_json::to_vec(&json!({
        "inputs": [{
            "name": "input", "shape": [rows.len(), rows[0].len()], "datatype": "FP32",
            "parameters": { "binary_data_size": count * 4 },
        }],
    }))
    .expect("serialising a header");
    let json_len = body.len();
    for v in rows.iter().flatten() {
        body.extend_from_slice(&(*v as f32).to_le_bytes());
    }
    (body, json_len)
}

/// The breast_cancer classifier's answer for `rows` rows.
fn response(rows: usize) -> InferResponse {
    let n = rows as i64;
    InferResponse {
        model_name: "breast_cancer".into(),
        model_version: "1".into(),
        id: "01a22112-a059-77e4-9198-e44a2e8ce303".into(),
        parameters: serde_json::Map::new(),
        outputs: vec![
            Tensor::new(
                "label",
                vec![n],
                TensorData::Int64((0..n).map(|i| i % 2).collect()),
            ),
            Tensor::new(
                "probabilities",
                vec![n, 2],
                TensorData::Fp32(
                    (0..rows)
                        .flat_map(|i| {
                            let p = 0.031_017_96 + i as f32 * 0.01;
                            [p, 1.0 - p]
                        })
                        .collect(),
                ),
            ),
        ],
    }
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_request");
    for rows in [1usize, 32] {
        let data = holdout_rows(rows);
        let body = json_body(&data);
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_function(format!("json_{rows}_rows"), |b| {
            b.iter(|| decode_request(black_box(&body), None).expect("valid body"));
        });
        let (body, json_len) = binary_body(&data);
        g.bench_function(format!("binary_{rows}_rows"), |b| {
            b.iter(|| decode_request(black_box(&body), Some(json_len)).expect("valid body"));
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_response");
    for rows in [1usize, 32] {
        let resp = response(rows);
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_function(format!("json_{rows}_rows"), |b| {
            b.iter(|| encode_response(black_box(&resp), |_| false));
        });
        g.bench_function(format!("binary_{rows}_rows"), |b| {
            b.iter(|| encode_response(black_box(&resp), |_| true));
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode, encode
}
criterion_main!(benches);
