//! V2 request bodies built from the held-out rows, so every load source
//! sends the same realistic numbers.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, ensure};
use serde::Deserialize;
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// Held-out samples (`features`: rows of numbers).
    #[arg(long, default_value = "models/_data/breast_cancer_holdout.json")]
    holdout: PathBuf,
    /// Rows in the request (the held-out rows are reused in turn when more are asked).
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Name of the model input.
    #[arg(long, default_value = "input")]
    input: String,
    /// Nest the data per row (`[[...], [...]]`) instead of flat row-major.
    #[arg(long)]
    nested: bool,
    /// Binary tensor data extension: a JSON header followed by little-endian
    /// FP32; prints the Inference-Header-Content-Length to send with it.
    #[arg(long, conflicts_with = "nested")]
    binary: bool,
    /// Where to write the body.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Deserialize)]
struct Holdout {
    features: Vec<Vec<f64>>,
}

/// The first `rows` held-out rows (cycling), checked to be rectangular.
fn take_rows(holdout: &Holdout, rows: usize) -> anyhow::Result<Vec<&[f64]>> {
    ensure!(
        !holdout.features.is_empty(),
        "the held-out file has no rows"
    );
    let width = holdout.features[0].len();
    ensure!(
        holdout.features.iter().all(|r| r.len() == width),
        "held-out rows differ in length"
    );
    Ok(holdout
        .features
        .iter()
        .cycle()
        .take(rows)
        .map(Vec::as_slice)
        .collect())
}

/// The body bytes and, for a binary body, the length of its JSON header.
fn build(args: &Args, holdout: &Holdout) -> anyhow::Result<(Vec<u8>, Option<usize>)> {
    let rows = take_rows(holdout, args.rows)?;
    let shape = [rows.len(), rows[0].len()];
    if args.binary {
        let size = shape[0] * shape[1] * 4;
        let header = json!({
            "inputs": [{
                "name": args.input, "shape": shape, "datatype": "FP32",
                "parameters": { "binary_data_size": size },
            }],
        });
        let mut body = serde_json::to_vec(&header)?;
        let json_len = body.len();
        for v in rows.iter().flat_map(|r| r.iter()) {
            body.extend_from_slice(&(*v as f32).to_le_bytes());
        }
        return Ok((body, Some(json_len)));
    }
    let data = if args.nested {
        json!(rows)
    } else {
        json!(rows.iter().flat_map(|r| r.iter()).collect::<Vec<_>>())
    };
    let body = json!({
        "inputs": [{ "name": args.input, "shape": shape, "datatype": "FP32", "data": data }],
    });
    Ok((serde_json::to_vec(&body)?, None))
}

/// One 1-row V2 JSON body per held-out row (of `input`), for loads that
/// rotate through realistic rows instead of repeating one.
pub(crate) fn holdout_bodies(path: &Path, input: &str) -> anyhow::Result<Vec<bytes::Bytes>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let holdout: Holdout = serde_json::from_slice(&text)
        .with_context(|| format!("{} has no `features` rows", path.display()))?;
    take_rows(&holdout, holdout.features.len())?
        .into_iter()
        .map(|row| {
            let body = json!({
                "inputs": [{ "name": input, "shape": [1, row.len()], "datatype": "FP32", "data": row }],
            });
            Ok(bytes::Bytes::from(serde_json::to_vec(&body)?))
        })
        .collect()
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    ensure!(
        (1..=1_000_000).contains(&args.rows),
        "--rows must be 1..=1000000"
    );
    let text = std::fs::read(&args.holdout)
        .with_context(|| format!("reading {}", args.holdout.display()))?;
    let holdout: Holdout = serde_json::from_slice(&text)
        .with_context(|| format!("{} has no `features` rows", args.holdout.display()))?;
    let (body, json_len) = build(args, &holdout)?;
    std::fs::write(&args.out, &body).with_context(|| format!("writing {}", args.out.display()))?;
    match json_len {
        Some(n) => println!(
            "{}: {} bytes; send with -H 'Inference-Header-Content-Length: {n}' --content-type application/octet-stream",
            args.out.display(),
            body.len()
        ),
        None => println!("{}: {} bytes", args.out.display(), body.len()),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use contender::protocol::TensorData;
    use contender::protocol::rest::decode_request;

    fn args(rows: usize, nested: bool, binary: bool) -> Args {
        Args {
            holdout: PathBuf::new(),
            rows,
            input: "input".into(),
            nested,
            binary,
            out: PathBuf::new(),
        }
    }

    #[test]
    fn held_out_rows_become_one_row_bodies() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/_data/breast_cancer_holdout.json");
        let bodies = holdout_bodies(&path, "input").unwrap();
        assert!(bodies.len() > 100);
        let req = decode_request(&bodies[1], None).unwrap();
        assert_eq!(req.inputs[0].shape, vec![1, 30]);
        assert_ne!(bodies[0], bodies[1]);
    }

    #[test]
    fn every_form_decodes_to_the_same_tensor() {
        let holdout = Holdout {
            features: vec![vec![1.5, 2.0, 3.25], vec![-4.0, 5.0, 6.5]],
        };
        let want = TensorData::Fp32(vec![1.5, 2.0, 3.25, -4.0, 5.0, 6.5, 1.5, 2.0, 3.25]);
        for (nested, binary) in [(false, false), (true, false), (false, true)] {
            let (body, json_len) = build(&args(3, nested, binary), &holdout).unwrap();
            let req = decode_request(&body, json_len).unwrap();
            assert_eq!(req.inputs[0].shape, vec![3, 3]);
            assert_eq!(req.inputs[0].data, want, "nested={nested} binary={binary}");
        }
    }
}
