//! Reading a model's outputs as predictions (class + probabilities, or a
//! value), and labels as the truth they are compared with.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::metrics::{MAX_ABS_LABEL, Outcome};
use crate::protocol::{DataType, Tensor, TensorData, TensorSpec};
use crate::repository::Task;

/// One row's prediction, as the prediction log keeps it. Its JSON keeps NaN
/// and infinite values exactly (see [`float_json`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prediction {
    Class {
        label: i64,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "float_json::opt_vec"
        )]
        probabilities: Option<Vec<f64>>,
    },
    Value {
        #[serde(with = "float_json")]
        value: f64,
    },
}

/// JSON for floats a model may answer with NaN or ±inf, which JSON numbers
/// cannot hold (serde_json writes them as `null`): finite values are
/// numbers, the others the strings `"NaN"`, `"inf"` and `"-inf"`. Reading
/// also takes `null` as NaN, which is what a log written before this
/// encoding holds for any non-finite value, so no logged row is unreadable.
pub(crate) mod float_json {
    use std::fmt;

    use serde::de::{self, Deserializer, Visitor};
    use serde::ser::{SerializeSeq, Serializer};

    const NAN: &str = "NaN";
    const INF: &str = "inf";
    const NEG_INF: &str = "-inf";

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else if x.is_nan() {
            s.serialize_str(NAN)
        } else if *x > 0.0 {
            s.serialize_str(INF)
        } else {
            s.serialize_str(NEG_INF)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(FloatVisitor)
    }

    struct FloatVisitor;

    impl Visitor<'_> for FloatVisitor {
        type Value = f64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number, \"NaN\", \"inf\", \"-inf\" or null")
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                NAN => Ok(f64::NAN),
                INF => Ok(f64::INFINITY),
                NEG_INF => Ok(f64::NEG_INFINITY),
                other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
            }
        }

        fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
            Ok(f64::NAN)
        }

        fn visit_none<E: de::Error>(self) -> Result<f64, E> {
            Ok(f64::NAN)
        }
    }

    /// One float of a sequence, read as [`deserialize`] reads it.
    struct Float(f64);

    impl<'de> serde::Deserialize<'de> for Float {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Float, D::Error> {
            deserialize(d).map(Float)
        }
    }

    /// The same for `Option<Vec<f64>>` (with `#[serde(default)]`).
    pub mod opt_vec {
        use super::*;

        pub fn serialize<S: Serializer>(v: &Option<Vec<f64>>, s: S) -> Result<S::Ok, S::Error> {
            let Some(v) = v else {
                return s.serialize_none();
            };
            struct Each<'a>(&'a f64);
            impl serde::Serialize for Each<'_> {
                fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    super::serialize(self.0, s)
                }
            }
            let mut seq = s.serialize_seq(Some(v.len()))?;
            for x in v {
                seq.serialize_element(&Each(x))?;
            }
            seq.end()
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f64>>, D::Error> {
            let v: Option<Vec<Float>> = serde::Deserialize::deserialize(d)?;
            Ok(v.map(|v| v.into_iter().map(|Float(x)| x).collect()))
        }
    }
}

/// The truth for one row, posted as feedback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Label {
    Class(usize),
    Value(f64),
}

impl Label {
    /// Parses a posted label for a model of `kind`: a class index or class
    /// name (from `labels`) for classification, a number for regression.
    pub fn parse(v: &Value, kind: PredictionKind, labels: &[String]) -> Result<Label, String> {
        match kind {
            PredictionKind::Class => match v {
                Value::Number(n) => match n.as_u64().and_then(|n| usize::try_from(n).ok()) {
                    // With declared classes, an index must name one of them.
                    Some(i) if !labels.is_empty() && i >= labels.len() => Err(format!(
                        "label {n} is not a class index: the classes are 0 to {} ({labels:?})",
                        labels.len() - 1
                    )),
                    Some(i) => Ok(Label::Class(i)),
                    None => Err(format!(
                        "label {n} is not a class index (a non-negative integer)"
                    )),
                },
                Value::String(s) => labels
                    .iter()
                    .position(|l| l == s)
                    .map(Label::Class)
                    .ok_or_else(|| format!("label {s:?} is not one of the classes {labels:?}")),
                Value::Bool(b) => Ok(Label::Class(usize::from(*b))),
                other => Err(format!("label {other} is not a class index or name")),
            },
            PredictionKind::Value => match v.as_f64().filter(|x| x.is_finite()) {
                None => Err(format!("label {v} is not a finite number")),
                Some(x) if x.abs() > MAX_ABS_LABEL => Err(format!(
                    "label {v} is out of range: regression labels must be within \
                     ±{MAX_ABS_LABEL:e}, so that their errors can be summed"
                )),
                Some(x) => Ok(Label::Value(x)),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictionKind {
    Class,
    Value,
}

impl Prediction {
    pub fn kind(&self) -> PredictionKind {
        match self {
            Prediction::Class { .. } => PredictionKind::Class,
            Prediction::Value { .. } => PredictionKind::Value,
        }
    }

    /// Joins with the truth; `None` when they are of different kinds.
    pub fn outcome(&self, truth: &Label) -> Option<Outcome> {
        match (self, truth) {
            (
                Prediction::Class {
                    label,
                    probabilities,
                },
                Label::Class(t),
            ) => Some(Outcome::Class {
                predicted: usize::try_from(*label).ok()?,
                probabilities: probabilities.clone(),
                truth: *t,
            }),
            (Prediction::Value { value }, Label::Value(t)) => Some(Outcome::Value {
                predicted: *value,
                truth: *t,
            }),
            _ => None,
        }
    }

    /// Whether two predictions agree (same class; values within 1e-6
    /// relative). A NaN value agrees with nothing, itself included; an
    /// infinite one only with the same infinity.
    pub fn agrees(&self, other: &Prediction) -> bool {
        match (self, other) {
            (Prediction::Class { label: a, .. }, Prediction::Class { label: b, .. }) => a == b,
            (Prediction::Value { value: a }, Prediction::Value { value: b }) => {
                a == b
                    || (a.is_finite()
                        && b.is_finite()
                        && (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0))
            }
            _ => false,
        }
    }
}

/// How to read one model's outputs, decided once at load time from its task
/// and signature.
#[derive(Clone, Debug, PartialEq)]
pub enum PredictionReader {
    /// `label`: an integer output of shape [-1] (else argmax of the
    /// probabilities); `probabilities`: a float output of shape [-1, k].
    Classification {
        label: Option<usize>,
        probabilities: Option<usize>,
    },
    /// The first float output of shape [-1] or [-1, 1].
    Regression { value: usize },
    /// No task declared (or no usable output): nothing is logged.
    None,
}

fn is_int(d: DataType) -> bool {
    matches!(
        d,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Uint8
            | DataType::Uint16
            | DataType::Uint32
            | DataType::Uint64
    )
}

fn is_float(d: DataType) -> bool {
    matches!(d, DataType::Fp32 | DataType::Fp64)
}

impl PredictionReader {
    pub fn for_model(task: Option<Task>, outputs: &[TensorSpec]) -> PredictionReader {
        match task {
            Some(Task::Classification) => {
                let label = outputs
                    .iter()
                    .position(|o| o.name == "label" && is_int(o.datatype) && o.shape.len() == 1)
                    .or_else(|| {
                        outputs
                            .iter()
                            .position(|o| is_int(o.datatype) && o.shape.len() == 1)
                    });
                let probabilities = outputs
                    .iter()
                    .position(|o| is_float(o.datatype) && o.shape.len() == 2);
                if label.is_none() && probabilities.is_none() {
                    PredictionReader::None
                } else {
                    PredictionReader::Classification {
                        label,
                        probabilities,
                    }
                }
            }
            Some(Task::Regression) => outputs
                .iter()
                .position(|o| {
                    is_float(o.datatype)
                        && (o.shape.len() == 1 || (o.shape.len() == 2 && o.shape[1] == 1))
                })
                .map_or(PredictionReader::None, |value| {
                    PredictionReader::Regression { value }
                }),
            None => PredictionReader::None,
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, PredictionReader::None)
    }

    /// One prediction per row of `outputs` (all of the model's outputs, in
    /// signature order); empty when the outputs cannot be read.
    pub fn read(&self, outputs: &[Tensor], rows: usize) -> Vec<Prediction> {
        match *self {
            PredictionReader::Classification {
                label,
                probabilities,
            } => {
                let probs = probabilities
                    .and_then(|i| outputs.get(i))
                    .and_then(|t| matrix(t, rows));
                let labels = label
                    .and_then(|i| outputs.get(i))
                    .and_then(|t| ints(&t.data));
                (0..rows)
                    .map(|r| {
                        let p = probs
                            .as_ref()
                            .map(|(cols, v)| v[r * cols..(r + 1) * cols].to_vec());
                        let l = match (&labels, &p) {
                            (Some(l), _) if l.len() == rows => l[r],
                            (_, Some(p)) => argmax(p) as i64,
                            _ => return None,
                        };
                        Some(Prediction::Class {
                            label: l,
                            probabilities: p,
                        })
                    })
                    .collect::<Option<Vec<_>>>()
                    .unwrap_or_default()
            }
            PredictionReader::Regression { value } => {
                match outputs.get(value).and_then(|t| floats(&t.data)) {
                    Some(v) if v.len() == rows => v
                        .into_iter()
                        .map(|value| Prediction::Value { value })
                        .collect(),
                    _ => Vec::new(),
                }
            }
            PredictionReader::None => Vec::new(),
        }
    }
}

fn argmax(p: &[f64]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 { (i, x) } else { best }
        })
        .0
}

fn floats(d: &TensorData) -> Option<Vec<f64>> {
    match d {
        TensorData::Fp32(v) => Some(v.iter().map(|&x| f64::from(x)).collect()),
        TensorData::Fp64(v) => Some(v.clone()),
        _ => None,
    }
}

fn ints(d: &TensorData) -> Option<Vec<i64>> {
    Some(match d {
        TensorData::Int64(v) => v.clone(),
        TensorData::Int32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        TensorData::Int16(v) => v.iter().map(|&x| i64::from(x)).collect(),
        TensorData::Int8(v) => v.iter().map(|&x| i64::from(x)).collect(),
        TensorData::Uint8(v) => v.iter().map(|&x| i64::from(x)).collect(),
        TensorData::Uint16(v) => v.iter().map(|&x| i64::from(x)).collect(),
        TensorData::Uint32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        TensorData::Uint64(v) => v.iter().map(|&x| x as i64).collect(),
        _ => return None,
    })
}

fn matrix(t: &Tensor, rows: usize) -> Option<(usize, Vec<f64>)> {
    let v = floats(&t.data)?;
    let cols = usize::try_from(*t.shape.get(1)?).ok()?;
    (cols > 0 && v.len() == rows * cols).then_some((cols, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: DataType, shape: Vec<i64>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape,
        }
    }

    #[test]
    fn classifier_outputs_become_predictions() {
        let outputs = [
            spec("label", DataType::Int64, vec![-1]),
            spec("probabilities", DataType::Fp32, vec![-1, 2]),
        ];
        let reader = PredictionReader::for_model(Some(Task::Classification), &outputs);
        let tensors = [
            Tensor::new("label", vec![2], TensorData::Int64(vec![1, 0])),
            Tensor::new(
                "probabilities",
                vec![2, 2],
                TensorData::Fp32(vec![0.25, 0.75, 0.5, 0.5]),
            ),
        ];
        let preds = reader.read(&tensors, 2);
        assert_eq!(
            preds[0],
            Prediction::Class {
                label: 1,
                probabilities: Some(vec![0.25, 0.75])
            }
        );
        assert_eq!(preds[1].kind(), PredictionKind::Class);
        let o = preds[0].outcome(&Label::Class(0)).unwrap();
        assert_eq!(
            o,
            Outcome::Class {
                predicted: 1,
                probabilities: Some(vec![0.25, 0.75]),
                truth: 0
            }
        );
    }

    #[test]
    fn regression_and_untyped_models() {
        let outputs = [spec("prediction", DataType::Fp32, vec![-1, 1])];
        let reader = PredictionReader::for_model(Some(Task::Regression), &outputs);
        let preds = reader.read(
            &[Tensor::new(
                "prediction",
                vec![2, 1],
                TensorData::Fp32(vec![1.5, 2.0]),
            )],
            2,
        );
        assert_eq!(
            preds,
            vec![
                Prediction::Value { value: 1.5 },
                Prediction::Value { value: 2.0 }
            ]
        );
        assert!(PredictionReader::for_model(None, &outputs).is_none());
    }

    /// The log keeps NaN and ±inf exactly: a model answering them is
    /// logged, joined and counted like any other (JSON numbers cannot hold
    /// them, and `null` would not read back).
    #[test]
    fn non_finite_predictions_round_trip_through_json() {
        let same = |a: &Prediction, b: &Prediction| match (a, b) {
            (
                Prediction::Class {
                    label: la,
                    probabilities: pa,
                },
                Prediction::Class {
                    label: lb,
                    probabilities: pb,
                },
            ) => {
                la == lb
                    && pa
                        .as_ref()
                        .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
                        == pb.as_ref().map(|v| v.iter().map(|x| x.to_bits()).collect())
            }
            (Prediction::Value { value: a }, Prediction::Value { value: b }) => {
                a.to_bits() == b.to_bits()
            }
            _ => false,
        };
        let cases = [
            Prediction::Class {
                label: 1,
                probabilities: Some(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.25]),
            },
            Prediction::Class {
                label: 0,
                probabilities: None,
            },
            Prediction::Value { value: f64::NAN },
            Prediction::Value {
                value: f64::INFINITY,
            },
            Prediction::Value {
                value: f64::NEG_INFINITY,
            },
            Prediction::Value { value: -1.5e-300 },
        ];
        for p in &cases {
            let json = serde_json::to_string(p).expect("serialises");
            let back: Prediction = serde_json::from_str(&json).expect("deserialises");
            assert!(same(p, &back), "{p:?} -> {json} -> {back:?}");
        }
        assert_eq!(
            serde_json::to_string(&cases[0]).expect("serialises"),
            r#"{"label":1,"probabilities":["NaN","inf","-inf",0.25]}"#
        );
        // Rows logged before this encoding hold `null`: read as NaN.
        let old: Prediction = serde_json::from_str(r#"{"value":null}"#).expect("reads");
        assert!(matches!(old, Prediction::Value { value } if value.is_nan()));
        let old: Prediction =
            serde_json::from_str(r#"{"label":0,"probabilities":[null,0.5]}"#).expect("reads");
        assert!(
            matches!(&old, Prediction::Class { probabilities: Some(p), .. } if p[0].is_nan() && p[1] == 0.5)
        );
        assert!(serde_json::from_str::<Prediction>(r#"{"value":"lots"}"#).is_err());
    }

    #[test]
    fn non_finite_values_agree_only_with_the_same_infinity() {
        let v = |value| Prediction::Value { value };
        assert!(!v(f64::NAN).agrees(&v(f64::NAN)));
        assert!(!v(f64::NAN).agrees(&v(1.0)));
        assert!(!v(1.0).agrees(&v(f64::NAN)));
        assert!(!v(f64::INFINITY).agrees(&v(5.0)));
        assert!(!v(5.0).agrees(&v(f64::INFINITY)));
        assert!(!v(f64::INFINITY).agrees(&v(f64::NEG_INFINITY)));
        assert!(v(f64::INFINITY).agrees(&v(f64::INFINITY)));
        assert!(v(1.0).agrees(&v(1.0 + 1e-9)));
    }

    #[test]
    fn labels_parse_by_index_or_name() {
        let names = vec!["malignant".to_owned(), "benign".to_owned()];
        assert_eq!(
            Label::parse(&serde_json::json!(1), PredictionKind::Class, &names),
            Ok(Label::Class(1))
        );
        assert_eq!(
            Label::parse(
                &serde_json::json!("malignant"),
                PredictionKind::Class,
                &names
            ),
            Ok(Label::Class(0))
        );
        assert!(Label::parse(&serde_json::json!("cat"), PredictionKind::Class, &names).is_err());
        assert!(Label::parse(&serde_json::json!(-1), PredictionKind::Class, &names).is_err());
        assert!(Label::parse(&serde_json::json!(1.5), PredictionKind::Class, &names).is_err());
        // Beyond the declared classes; any index when none are declared.
        assert!(Label::parse(&serde_json::json!(2), PredictionKind::Class, &names).is_err());
        assert_eq!(
            Label::parse(&serde_json::json!(5), PredictionKind::Class, &[]),
            Ok(Label::Class(5))
        );
        assert_eq!(
            Label::parse(&serde_json::json!(151.0), PredictionKind::Value, &names),
            Ok(Label::Value(151.0))
        );
        assert!(Label::parse(&serde_json::json!("x"), PredictionKind::Value, &names).is_err());
        // A regression label whose errors could not be summed is refused,
        // never accepted and left uncounted.
        for huge in [1e308, -1e150, 1.0001e99] {
            let e = Label::parse(&serde_json::json!(huge), PredictionKind::Value, &names)
                .expect_err("out of range");
            assert!(e.contains("out of range"), "{e}");
        }
        assert_eq!(
            Label::parse(&serde_json::json!(-1e99), PredictionKind::Value, &names),
            Ok(Label::Value(-1e99))
        );
    }
}
