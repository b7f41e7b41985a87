//! Triton's classification extension: an output requested with
//! `"parameters": {"classification": N}` comes back as a BYTES tensor of
//! shape `[rows, min(N, classes)]` holding each row's N highest scores,
//! highest first, as `"<score>:<index>"` or, when the model declares its
//! class labels (`labels` in `model.toml`), `"<score>:<index>:<label>"`.
//!
//! The first dimension is the batch; the rest of a row, flattened, are its
//! classes. Ties keep the lower index first; NaN scores sort last. Scores
//! are written as the output's own type prints them (the shortest text that
//! reads back as the same value).

use super::tensor::{Tensor, TensorData};

/// The top `k` classes of every row of `t` (a numeric tensor; BYTES and BOOL
/// outputs are refused before inference by [`super::validate::check_outputs`]).
pub fn top_classes(t: &Tensor, k: usize, labels: &[String]) -> Tensor {
    let rows = t
        .shape
        .first()
        .map_or(1, |&d| usize::try_from(d).unwrap_or(0));
    // Scores per row: the product of the dimensions after the batch.
    let n: usize = t
        .shape
        .iter()
        .skip(1)
        .map(|&d| usize::try_from(d).unwrap_or(0))
        .product();
    let kk = k.min(n);
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(rows * kk);
    macro_rules! classify {
        ($v:expr, $score:expr) => {{
            let mut order: Vec<usize> = Vec::with_capacity(n);
            for row in $v.chunks_exact(n.max(1)).take(rows) {
                order.clear();
                order.extend(0..row.len());
                order.sort_by(|&a, &b| {
                    let (x, y): (f64, f64) = ($score(row[a]), $score(row[b]));
                    // Descending, NaN last; stable, so ties keep index order.
                    y.partial_cmp(&x)
                        .unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
                });
                for &i in &order[..kk] {
                    let mut text = row[i].to_string();
                    text.push(':');
                    text.push_str(itoa::Buffer::new().format(i));
                    if let Some(label) = labels.get(i) {
                        text.push(':');
                        text.push_str(label);
                    }
                    out.push(text.into_bytes());
                }
            }
        }};
    }
    match &t.data {
        TensorData::Uint8(v) => classify!(v, f64::from),
        TensorData::Uint16(v) => classify!(v, f64::from),
        TensorData::Uint32(v) => classify!(v, f64::from),
        TensorData::Uint64(v) => classify!(v, |x: u64| x as f64),
        TensorData::Int8(v) => classify!(v, f64::from),
        TensorData::Int16(v) => classify!(v, f64::from),
        TensorData::Int32(v) => classify!(v, f64::from),
        TensorData::Int64(v) => classify!(v, |x: i64| x as f64),
        TensorData::Fp32(v) => classify!(v, f64::from),
        TensorData::Fp64(v) => classify!(v, |x: f64| x),
        TensorData::Bool(v) => classify!(v, |x: bool| f64::from(u8::from(x))),
        TensorData::Bytes(_) => {}
    }
    Tensor {
        name: t.name.clone(),
        shape: vec![rows as i64, kk as i64],
        data: TensorData::Bytes(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(t: &Tensor) -> Vec<String> {
        match &t.data {
            TensorData::Bytes(v) => v
                .iter()
                .map(|b| String::from_utf8(b.clone()).expect("UTF-8"))
                .collect(),
            other => panic!("not BYTES: {other:?}"),
        }
    }

    #[test]
    fn rows_get_their_top_classes_highest_first() {
        let t = Tensor {
            name: "probabilities".into(),
            shape: vec![2, 3],
            data: TensorData::Fp32(vec![0.2, 0.7, 0.1, 0.5, 0.25, 0.25]),
        };
        let labels = ["setosa".to_owned(), "versicolor".into(), "virginica".into()];
        let top = top_classes(&t, 2, &labels);
        assert_eq!(top.name, "probabilities");
        assert_eq!(top.shape, vec![2, 2]);
        assert_eq!(
            strings(&top),
            [
                "0.7:1:versicolor",
                "0.2:0:setosa",
                "0.5:0:setosa",
                "0.25:1:versicolor"
            ]
        );
        // Without labels; more classes asked for than there are.
        let top = top_classes(&t, 5, &[]);
        assert_eq!(top.shape, vec![2, 3]);
        assert_eq!(
            strings(&top),
            ["0.7:1", "0.2:0", "0.1:2", "0.5:0", "0.25:1", "0.25:2"]
        );
    }

    #[test]
    fn integer_scores_nan_and_one_score_rows() {
        let t = Tensor {
            name: "label".into(),
            shape: vec![3],
            data: TensorData::Int64(vec![1, 0, 1]),
        };
        assert_eq!(strings(&top_classes(&t, 1, &[])), ["1:0", "0:0", "1:0"]);
        let t = Tensor {
            name: "scores".into(),
            shape: vec![1, 3],
            data: TensorData::Fp64(vec![f64::NAN, -1.5, 2.0]),
        };
        assert_eq!(
            strings(&top_classes(&t, 3, &[])),
            ["2:2", "-1.5:1", "NaN:0"]
        );
        let empty = Tensor {
            name: "scores".into(),
            shape: vec![0, 3],
            data: TensorData::Fp32(vec![]),
        };
        assert_eq!(top_classes(&empty, 2, &[]).shape, vec![0, 2]);
    }
}
