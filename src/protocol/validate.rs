//! Checks a decoded request against a model's signature before it reaches an
//! engine, so every mismatch gets a clear 400 naming the input.

use super::error::ApiError;
use super::rest::RequestedOutput;
use super::tensor::{DataType, Tensor, TensorSpec, shape_string};

fn describe(spec: &TensorSpec) -> String {
    format!(
        "{} ({} {})",
        spec.name,
        spec.datatype,
        shape_string(&spec.shape)
    )
}

fn expected_list(specs: &[TensorSpec]) -> String {
    specs.iter().map(describe).collect::<Vec<_>>().join(", ")
}

/// Orders `inputs` as `specs` declares them, checking names, datatypes,
/// shapes and the batch size. Returns the inputs and the batch's row count.
pub fn bind_inputs(
    model: &str,
    mut inputs: Vec<Tensor>,
    specs: &[TensorSpec],
    max_batch_size: usize,
) -> Result<(Vec<Tensor>, usize), ApiError> {
    for (i, t) in inputs.iter().enumerate() {
        if inputs[..i].iter().any(|o| o.name == t.name) {
            return Err(ApiError::invalid(format!(
                "input '{}' is given more than once",
                t.name
            )));
        }
        if !specs.iter().any(|s| s.name == t.name) {
            return Err(ApiError::invalid(format!(
                "unexpected input '{}' for model '{model}', which takes: {}",
                t.name,
                expected_list(specs)
            )));
        }
    }
    let mut ordered = Vec::with_capacity(specs.len());
    let mut rows: Option<usize> = None;
    for spec in specs {
        let pos = inputs
            .iter()
            .position(|t| t.name == spec.name)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "missing input {} for model '{model}'",
                    describe(spec)
                ))
            })?;
        let t = inputs.swap_remove(pos);
        if t.datatype() != spec.datatype {
            return Err(ApiError::invalid(format!(
                "input '{}': datatype {} does not match the model's {}",
                t.name,
                t.datatype(),
                spec.datatype
            )));
        }
        if !spec.accepts_shape(&t.shape) {
            return Err(ApiError::invalid(format!(
                "input '{}': shape {} does not fit the model's {}",
                t.name,
                shape_string(&t.shape),
                shape_string(&spec.shape)
            )));
        }
        if spec.has_batch_dim() {
            let n = usize::try_from(t.shape[0]).unwrap_or(0);
            match rows {
                Some(r) if r != n => {
                    return Err(ApiError::invalid(format!(
                        "input '{}' has {n} rows but the other inputs have {r}",
                        t.name
                    )));
                }
                _ => rows = Some(n),
            }
        }
        ordered.push(t);
    }
    let rows = rows.unwrap_or(1);
    if rows == 0 {
        return Err(ApiError::invalid("the batch has no rows"));
    }
    if rows > max_batch_size {
        return Err(ApiError::invalid(format!(
            "batch of {rows} rows exceeds the model's max_batch_size of {max_batch_size}"
        )));
    }
    Ok((ordered, rows))
}

/// Checks that every requested output exists and is asked for once.
pub fn check_outputs(
    model: &str,
    requested: &[RequestedOutput],
    specs: &[TensorSpec],
) -> Result<(), ApiError> {
    for (i, o) in requested.iter().enumerate() {
        if requested[..i].iter().any(|p| p.name == o.name) {
            return Err(ApiError::invalid(format!(
                "output '{}' is requested more than once",
                o.name
            )));
        }
        let Some(spec) = specs.iter().find(|s| s.name == o.name) else {
            return Err(ApiError::invalid(format!(
                "unknown output '{}' for model '{model}', which has: {}",
                o.name,
                expected_list(specs)
            )));
        };
        if o.classification.is_some() && matches!(spec.datatype, DataType::Bytes | DataType::Bool) {
            return Err(ApiError::invalid(format!(
                "output '{}' of model '{model}' is {}: classification needs numeric scores",
                o.name, spec.datatype
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DataType, TensorData};

    fn specs() -> Vec<TensorSpec> {
        vec![
            TensorSpec {
                name: "a".into(),
                datatype: DataType::Fp32,
                shape: vec![-1, 2],
            },
            TensorSpec {
                name: "b".into(),
                datatype: DataType::Int64,
                shape: vec![-1],
            },
        ]
    }

    fn a(rows: usize) -> Tensor {
        Tensor::new(
            "a",
            vec![rows as i64, 2],
            TensorData::Fp32(vec![0.0; rows * 2]),
        )
    }

    fn b(rows: usize) -> Tensor {
        Tensor::new("b", vec![rows as i64], TensorData::Int64(vec![0; rows]))
    }

    #[test]
    fn inputs_are_reordered_and_counted() {
        let (bound, rows) = bind_inputs("m", vec![b(3), a(3)], &specs(), 10).unwrap();
        assert_eq!(rows, 3);
        assert_eq!(bound[0].name, "a");
        assert_eq!(bound[1].name, "b");
    }

    #[test]
    fn every_mismatch_is_named() {
        let cases: Vec<(Vec<Tensor>, &str)> = vec![
            (vec![a(1)], "missing input b"),
            (
                vec![
                    a(1),
                    b(1),
                    Tensor::new("c", vec![1], TensorData::Int64(vec![0])),
                ],
                "unexpected input 'c'",
            ),
            (vec![a(1), a(1), b(1)], "more than once"),
            (
                vec![a(1), Tensor::new("b", vec![1], TensorData::Int32(vec![0]))],
                "datatype INT32",
            ),
            (
                vec![
                    Tensor::new("a", vec![1, 3], TensorData::Fp32(vec![0.0; 3])),
                    b(1),
                ],
                "shape [1, 3]",
            ),
            (vec![a(2), b(3)], "has 3 rows"),
            (vec![a(11), b(11)], "max_batch_size"),
            (vec![a(0), b(0)], "no rows"),
        ];
        for (inputs, want) in cases {
            let err = bind_inputs("m", inputs, &specs(), 10).unwrap_err();
            assert!(
                err.message().contains(want),
                "{} should contain {want}",
                err.message()
            );
        }
    }

    #[test]
    fn unknown_outputs_are_rejected() {
        let out = |n: &str| RequestedOutput {
            classification: None,
            name: n.into(),
            binary_data: None,
        };
        assert!(check_outputs("m", &[out("a")], &specs()).is_ok());
        assert!(
            check_outputs("m", &[out("z")], &specs())
                .unwrap_err()
                .message()
                .contains("unknown output 'z'")
        );
        assert!(check_outputs("m", &[out("a"), out("a")], &specs()).is_err());
    }
}
