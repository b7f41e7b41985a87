#!/usr/bin/env python3
"""Generate the example model repository used by contender's tests and demos.

What it makes (all paths relative to the repository root):

    models/breast_cancer/1/  logistic regression on standardised features
    models/breast_cancer/2/  gradient-boosted trees (100 estimators)
    models/breast_cancer/3/  deliberately weak model: logistic regression on
                             `mean radius` only (the ONNX input is still the full
                             30-column matrix); a clearly worse model, there so
                             promotion of a better challenger can be tested
    models/breast_cancer/4/  multilayer perceptron (16 hidden ReLU units) for the
                             TorchScript example: this script trains it and writes
                             model.toml (with the [[inputs]]/[[outputs]] signature
                             a TorchScript file cannot declare) and expected.json,
                             plus the weights in
                             models/_data/breast_cancer_mlp_weights.json; model.pt
                             itself is scripted from those weights by the
                             exporter (`/usr/bin/python3 models/export_torchscript.py`,
                             Debian's python3-torch), never by this script
    models/diabetes/1/       ridge regression on standardised features
    models/dtypes/1/         hand-built ONNX graph with one input/output pair per
                             tensor datatype (FP32, FP64, INT32, INT64, BOOL, UINT8)

Every ONNX model directory holds `model.onnx` and `model.toml` (description,
task, labels, tags, created, feature_names, [lineage], [metrics]); the trained
models also hold `expected.json`, the outputs of the ONNX file under Python
onnxruntime (single-threaded) on the held-out rows in `models/_data/*.json`,
and `reference.json`, the drift-monitoring reference statistics of the
training split: per-feature quantile bins, moments and a sorted subsample, and
the distribution of that model version's own predictions on the training rows
(read by `src/drift/reference.rs`; bins as `histogram` in `src/drift/stats.rs`).
breast_cancer/4 has no ONNX file: its expected.json and metrics come from a
numpy float32 forward pass over the exact (float32) weights in the JSON file,
checked against scikit-learn's predict_proba.
`models/README.md` describes the layout; the script refreshes the metrics table
between its `<!-- metrics:begin -->` / `<!-- metrics:end -->` markers.

The data sets ship inside scikit-learn, so nothing is downloaded except the
Python packages. Split: train_test_split(test_size=0.25, random_state=42,
stratify=y for classification); models are fitted on the training part only and
every metric is computed on the held-out part from the ONNX model's outputs (for
breast_cancer/4, from the float32 forward pass).

How to run (from anywhere):

    python3 models/generate.py

If the pinned packages (PINS below) are not importable at exactly those versions,
the script creates a virtual environment at `<repo>/.cache/models-venv`
(gitignored), pip-installs PINS into it and re-executes itself with that
environment's interpreter. Set CONTENDER_MODELS_NO_BOOTSTRAP=1 to skip that and
use the current interpreter as it is.

Output is reproducible: `created` is taken from SOURCE_DATE_EPOCH when set, else
the constant DEFAULT_CREATED; all training is seeded, and files whose content
did not change are not rewritten. Running the script twice leaves the tree
unchanged. Note that `training_code_revision` is the sha256 of this file, so
editing the script changes every model.toml.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

# ----------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------

# Direct dependencies first, then everything pip resolved for them, so the
# environment is fully pinned.
PINS = {
    "numpy": "2.4.6",
    "scipy": "1.17.1",
    "scikit-learn": "1.9.1",
    "skl2onnx": "1.20.0",
    "onnx": "1.23.2",
    "onnxruntime": "1.31.1",
    # transitive
    "joblib": "1.6.0",
    "threadpoolctl": "3.8.0",
    "narwhals": "2.29.0",
    "cloudpickle": "3.1.3",
    "protobuf": "7.36.2",
    "ml_dtypes": "0.6.0",
    "typing_extensions": "4.16.0",
    "flatbuffers": "25.12.19",
    "packaging": "26.4",
}
IMPORTS = ("numpy", "scipy", "sklearn", "skl2onnx", "onnx", "onnxruntime")

MODELS_DIR = Path(__file__).resolve().parent
REPO_ROOT = MODELS_DIR.parent
VENV_DIR = REPO_ROOT / ".cache" / "models-venv"
_BOOT_ENV = "CONTENDER_MODELS_BOOTSTRAPPED"


def _missing_pins() -> list[str]:
    """Pinned distributions that are absent or at another version."""
    from importlib import metadata

    bad = []
    for dist, want in PINS.items():
        try:
            have = metadata.version(dist)
        except metadata.PackageNotFoundError:
            have = None
        if have != want:
            bad.append(f"{dist}=={want} (have {have or 'nothing'})")
    for mod in IMPORTS:
        try:
            __import__(mod)
        except Exception as e:  # noqa: BLE001 - any import failure counts
            bad.append(f"import {mod} failed: {e}")
    return bad


def _venv_python() -> Path:
    if os.name == "nt":
        return VENV_DIR / "Scripts" / "python.exe"
    return VENV_DIR / "bin" / "python"


def bootstrap() -> None:
    if os.environ.get("CONTENDER_MODELS_NO_BOOTSTRAP"):
        return
    missing = _missing_pins()
    if not missing:
        return
    if os.environ.get(_BOOT_ENV):
        sys.exit("generate.py: still missing after bootstrap:\n  " + "\n  ".join(missing))
    py = _venv_python()
    if not py.exists():
        print(f"bootstrap: creating virtual environment {VENV_DIR}", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV_DIR)])
    check = subprocess.run([str(py), __file__, "--check-deps"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if check.returncode != 0:
        print("bootstrap: installing pinned packages into the venv", file=sys.stderr)
        subprocess.check_call([str(py), "-m", "pip", "install", "--quiet",
                               "--disable-pip-version-check",
                               *[f"{d}=={v}" for d, v in PINS.items()]])
    env = dict(os.environ)
    env[_BOOT_ENV] = "1"
    args = [str(py), str(Path(__file__).resolve()), *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":  # no real exec on Windows
        sys.exit(subprocess.call(args, env=env))
    os.execve(str(py), args, env)


# ----------------------------------------------------------------------------
# Constants for the generated artefacts
# ----------------------------------------------------------------------------

DEFAULT_CREATED = "2026-11-28T00:00:00Z"
TEST_SIZE = 0.25
RANDOM_STATE = 42
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}  # ONNX IR 8; onnxruntime 1.31 accepts it
DTYPES_OPSET = 17
DTYPES_IR_VERSION = 8
TRAINING_CODE = "models/generate.py"
# Version 3 must trail versions 1 and 2 by at least this much held-out accuracy.
WEAK_MARGIN = 0.05
# breast_cancer/4: MLPClassifier(hidden_layer_sizes=(MLP_HIDDEN,), relu, lbfgs).
# MLP_ALPHA (L2 penalty) was chosen by 5-fold stratified CV on the training split
# only (alpha in 1e-4 .. 10, lbfgs and adam): lbfgs with alpha=3 had the best CV
# accuracy (0.9835, log loss 0.073); the default alpha=1e-4 interpolates the
# training set and gives over-confident probabilities (CV log loss 0.38).
# lbfgs is full-batch, so training involves no data shuffling.
MLP_HIDDEN = 16
MLP_ALPHA = 3.0
MLP_MAX_ITER = 5000  # converges in well under this; training fails if it does not
# The float32 forward pass must match sklearn's predict_proba this closely ...
MLP_PROBA_ATOL = 1e-5
# ... and every held-out row's two logits must differ by at least this much, so
# that argmax (the label) cannot flip between float32 implementations.
MLP_MIN_LOGIT_MARGIN = 1e-3
MLP_FORWARD = ("x -> (x-mean)/scale -> linear0 -> relu -> linear1 -> softmax; "
               "label = argmax")
MLP_WEIGHTS = "_data/breast_cancer_mlp_weights.json"
# What traces model.pt from MLP_WEIGHTS (see models/README.md).
TORCHSCRIPT_EXPORTER = "torch 1.13 TorchScript (served by libtorch 2.13.0)"

# reference.json (drift reference statistics, see write_reference):
REFERENCE_FORMAT_VERSION = 1
# Interior bin edges: the distinct 10 %, 20 %, ..., 90 % quantiles of the training
# values (numpy method="inverted_cdf", so every edge is a training value), minus
# any edge at the maximum (it would bound an empty top bin).
REFERENCE_QUANTILES = [i / 10 for i in range(1, 10)]
# Sorted subsample per numeric series (features and a regressor's output) for KS
# and Wasserstein: one seeded draw of training rows shared by all series of a
# file, at most REFERENCE_SAMPLE_MAX rows and REFERENCE_SAMPLE_BUDGET values per
# file split evenly over its numeric series (keeps the file under ~60 KB).
REFERENCE_SAMPLE_MAX = 1000
REFERENCE_SAMPLE_BUDGET = 2000
REFERENCE_SEED = RANDOM_STATE
REFERENCE_MAX_BYTES = 60 * 1024

_changed: list[str] = []
_unchanged: list[str] = []


def created_timestamp() -> str:
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde:
        t = _dt.datetime.fromtimestamp(int(sde), tz=_dt.timezone.utc)
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")
    return DEFAULT_CREATED


def write_if_changed(path: Path, data: bytes) -> None:
    rel = path.relative_to(REPO_ROOT).as_posix()
    if path.exists() and path.read_bytes() == data:
        _unchanged.append(rel)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    _changed.append(rel)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------
# Formatting helpers (JSON with one row per line, hand-written TOML)
# ----------------------------------------------------------------------------

def f32_repr(v) -> str:
    """repr of the float32-rounded value as a Python float (exact in f64)."""
    import numpy as np

    x = float(np.float32(v))
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"non-finite value {v!r} cannot be written to JSON")
    return repr(x)


def json_row(values, fmt) -> str:
    return "[" + ", ".join(fmt(v) for v in values) + "]"


def json_document(fields: list[tuple[str, str]]) -> bytes:
    """fields: (key, already-serialised JSON value); keeps the given order."""
    parts = [f"  {json.dumps(k)}: {v}" for k, v in fields]
    return ("{\n" + ",\n".join(parts) + "\n}\n").encode()


def json_matrix(rows: list[str]) -> str:
    if not rows:
        return "[]"
    return "[\n    " + ",\n    ".join(rows) + "\n  ]"


def toml_str(s: str) -> str:
    # A JSON string with ASCII escapes is a valid TOML basic string.
    return json.dumps(s, ensure_ascii=True)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.6f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"unsupported TOML value {v!r}")


def toml_document(top: dict, tables: dict[str, dict],
                  arrays: dict[str, list[dict]] | None = None) -> bytes:
    """arrays: arrays of tables (`[[name]]`), written after all other tables."""
    arrays = arrays or {}
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for name, table in tables.items():
        lines.append("")
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
    for name, items in arrays.items():
        for item in items:
            lines.append("")
            lines.append(f"[[{name}]]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in item.items())
    text = "\n".join(lines) + "\n"
    import tomllib  # stdlib since 3.11: check that what we wrote parses back

    parsed = tomllib.loads(text)
    assert set(parsed) == set(top) | set(tables) | set(arrays), parsed.keys()
    for name, items in arrays.items():
        assert parsed[name] == items, (name, parsed[name])
    return text.encode()


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

class Split:
    def __init__(self, loader: str, stratify: bool, classification: bool):
        import numpy as np
        import sklearn.datasets
        from sklearn.model_selection import train_test_split

        ds = getattr(sklearn.datasets, loader)()
        X, y = ds.data, ds.target
        X_tr, X_te, y_tr, y_te = train_test_split(
            X, y, test_size=TEST_SIZE, random_state=RANDOM_STATE,
            stratify=y if stratify else None)
        self.loader = loader
        self.feature_names = [str(n) for n in ds.feature_names]
        self.target_names = [str(n) for n in getattr(ds, "target_names", [])]
        self.X_train, self.y_train = X_tr, y_tr
        self.X_test, self.y_test = X_te, y_te
        # The gateway receives float32 features; evaluate on exactly those.
        self.X_test32 = np.ascontiguousarray(X_te.astype(np.float32))
        self.X_train32 = np.ascontiguousarray(X_tr.astype(np.float32))
        y_dtype = "<i8" if classification else "<f8"
        self.y_bytes_dtype = y_dtype
        self.train_sha256 = sha256_hex(
            np.ascontiguousarray(X_tr.astype("<f4")).tobytes(order="C")
            + np.ascontiguousarray(y_tr.astype(y_dtype)).tobytes(order="C"))
        split = f"test_size={TEST_SIZE},random_state={RANDOM_STATE}"
        if stratify:
            split += ",stratify"
        self.uri = f"sklearn.datasets.{loader}#train({split})"


def write_holdout(split: Split, name: str, classification: bool) -> str:
    import numpy as np

    rows = [json_row(r, f32_repr) for r in split.X_test32]
    if classification:
        labels = "[" + ", ".join(str(int(v)) for v in split.y_test) + "]"
    else:
        labels = "[" + ", ".join(repr(float(v)) for v in split.y_test) + "]"
    doc = json_document([
        ("feature_names", json.dumps(split.feature_names)),
        ("features", json_matrix(rows)),
        ("labels", labels),
    ])
    # Verify: parse as f64 (what serde_json does), cast to f32, compare bits.
    back = json.loads(doc)
    feats = np.asarray(back["features"], dtype=np.float64).astype(np.float32)
    assert feats.shape == split.X_test32.shape
    assert np.array_equal(feats.view(np.uint32), split.X_test32.view(np.uint32)), \
        "holdout features do not round-trip to the same float32 bits"
    assert back["feature_names"] == split.feature_names
    if classification:
        assert back["labels"] == [int(v) for v in split.y_test]
    else:
        assert np.array_equal(np.asarray(back["labels"]), split.y_test)
    rel = f"_data/{name}_holdout.json"
    write_if_changed(MODELS_DIR / rel, doc)
    return rel


# ----------------------------------------------------------------------------
# Drift reference statistics (reference.json)
# ----------------------------------------------------------------------------

def reference_bins(edges, values):
    """Bin index of each value for the interior edges: right-closed bins
    (-inf, e1], (e1, e2], ..., (ek, +inf), i.e. the number of edges strictly
    below the value. The same definition as `histogram` in src/drift/stats.rs."""
    import numpy as np

    idx = np.searchsorted(edges, values, side="left")
    # Check searchsorted against the definition (it is the crux of the format).
    brute = (np.asarray(edges)[None, :] < np.asarray(values)[:, None]).sum(axis=1)
    assert np.array_equal(idx, brute), "searchsorted(side='left') != #edges < value"
    return idx


def reference_sample_rows(n_rows: int, n_series: int):
    """Sorted row indices of the shared, seeded subsample."""
    import numpy as np

    k = min(n_rows, REFERENCE_SAMPLE_MAX, REFERENCE_SAMPLE_BUDGET // max(n_series, 1))
    if k >= n_rows:
        return np.arange(n_rows)
    rng = np.random.default_rng(REFERENCE_SEED)
    return np.sort(rng.choice(n_rows, size=k, replace=False))


def numeric_reference(values, sample_rows) -> dict:
    """Quantile bins, moments and sorted subsample of one numeric series."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    assert x.ndim == 1 and len(x) > 0 and np.all(np.isfinite(x))
    q = np.quantile(x, REFERENCE_QUANTILES, method="inverted_cdf")
    edges = np.unique(q)  # sorted, repeated quantiles merged
    edges = edges[edges < x.max()]
    counts = np.bincount(reference_bins(edges, x), minlength=len(edges) + 1)
    assert len(counts) == len(edges) + 1 and counts.sum() == len(x)
    assert np.all(counts > 0), counts  # every bin holds its upper edge (a training value)
    return {
        "edges": [float(e) for e in edges],
        "fractions": [float(c) for c in counts / len(x)],
        "mean": float(np.mean(x)),
        "std": float(np.std(x)),  # population (ddof=0)
        "min": float(x.min()),
        "max": float(x.max()),
        "sample": [float(v) for v in np.sort(x[sample_rows])],
    }


def _jnum(v) -> str:
    x = float(v)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"non-finite value {v!r} cannot be written to JSON")
    return repr(x)  # shortest repr that parses back to the same double


def _jobject(items: list[tuple[str, object]]) -> str:
    """One-line JSON object; float lists as shortest reprs."""
    parts = []
    for k, v in items:
        if isinstance(v, float):
            text = _jnum(v)
        elif isinstance(v, list) and v and isinstance(v[0], float):
            text = "[" + ", ".join(_jnum(x) for x in v) + "]"
        else:
            text = json.dumps(v)
        parts.append(f"{json.dumps(k)}: {text}")
    return "{" + ", ".join(parts) + "}"


def write_reference(vdir: Path, split: Split, predictions: dict) -> None:
    """reference.json for a model version trained on `split`, from the float32
    training features (what the gateway receives) and that version's own
    predictions on them. predictions: {"labels", "label", "proba"} for a
    classifier, {"prediction"} (float32 [N]) for a regressor."""
    import numpy as np

    X = split.X_train32.astype(np.float64)
    n_rows, n_features = X.shape
    regression = "prediction" in predictions
    rows = reference_sample_rows(n_rows, n_features + (1 if regression else 0))

    features = []
    for j, name in enumerate(split.feature_names):
        ref = numeric_reference(X[:, j], rows)
        features.append([("kind", "numeric"), ("name", name), ("column", j), *ref.items()])

    if regression:
        pred = np.asarray(predictions["prediction"], dtype=np.float32).astype(np.float64)
        assert pred.shape == (n_rows,)
        ref = numeric_reference(pred, rows)
        del ref["min"], ref["max"]
        pred_items = [("kind", "numeric"), *ref.items()]
    else:
        labels = list(predictions["labels"])
        label = np.asarray(predictions["label"])
        proba = np.asarray(predictions["proba"]).astype(np.float64)
        assert label.shape == (n_rows,) and proba.shape == (n_rows, len(labels))
        assert np.array_equal(label, np.argmax(proba, axis=1))
        counts = np.bincount(label, minlength=len(labels))
        assert len(counts) == len(labels)
        pred_items = [
            ("kind", "classes"),
            ("labels", labels),
            ("fractions", [float(c) for c in counts / n_rows]),
            ("mean_confidence", float(np.mean(proba.max(axis=1)))),
        ]

    lines = ",\n    ".join(_jobject(f) for f in features)
    doc = ("{\n"
           f'  "version": {REFERENCE_FORMAT_VERSION},\n'
           f'  "rows": {n_rows},\n'
           f'  "features": [\n    {lines}\n  ],\n'
           f'  "predictions": {_jobject(pred_items)}\n'
           "}\n").encode()

    # Verify: parses back to exactly these values and is consistent.
    back = json.loads(doc)
    assert list(back) == ["version", "rows", "features", "predictions"]
    assert back["features"] == [dict(f) for f in features]
    assert back["predictions"] == dict(pred_items)
    for series in [*back["features"], back["predictions"]]:
        if "edges" in series:
            e, fr, smp = series["edges"], series["fractions"], series["sample"]
            assert all(a < b for a, b in zip(e, e[1:])) and len(fr) == len(e) + 1
            assert abs(sum(fr) - 1.0) <= 1e-12 and smp == sorted(smp) and smp
        else:
            assert abs(sum(series["fractions"]) - 1.0) <= 1e-12
    if len(doc) > REFERENCE_MAX_BYTES:
        raise AssertionError(f"{vdir}/reference.json is {len(doc)} bytes "
                             f"(> {REFERENCE_MAX_BYTES}); lower REFERENCE_SAMPLE_BUDGET")
    write_if_changed(vdir / "reference.json", doc)


# ----------------------------------------------------------------------------
# ONNX helpers
# ----------------------------------------------------------------------------

def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so,
                                providers=["CPUExecutionProvider"])


def check_io(model, inputs: dict, outputs: dict) -> None:
    """inputs/outputs: name -> (elem_type, [dims]) with None for a free dim."""
    import onnx

    def describe(vi):
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        return tt.elem_type, dims

    got_in = {vi.name: describe(vi) for vi in model.graph.input}
    got_out = {vi.name: describe(vi) for vi in model.graph.output}
    for want, got, what in ((inputs, got_in, "inputs"), (outputs, got_out, "outputs")):
        if list(want) != list(got):
            raise AssertionError(f"{what}: want {list(want)}, got {list(got)}")
        for k, v in want.items():
            if got[k] != v:
                raise AssertionError(
                    f"{what} {k}: want {onnx.TensorProto.DataType.Name(v[0])} {v[1]}, "
                    f"got {onnx.TensorProto.DataType.Name(got[k][0])} {got[k][1]}")


def to_onnx(estimator, n_features: int, final_types, graph_name: str) -> bytes:
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    options = {id(final): {"zipmap": False}} if hasattr(final, "predict_proba") else None
    model = convert_sklearn(
        estimator,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        final_types=final_types,
        options=options,
        target_opset=TARGET_OPSET,
    )
    # skl2onnx names the graph with a random UUID: fix it so output is reproducible ...
    model.graph.name = graph_name
    # ... and emits opset_import in set (hash-randomised) order: sort it by domain.
    opsets = sorted(((o.domain, o.version) for o in model.opset_import))
    del model.opset_import[:]
    for domain, version in opsets:
        model.opset_import.add(domain=domain, version=version)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------

def versions() -> str:
    import sklearn
    import skl2onnx

    return f"scikit-learn {sklearn.__version__} / skl2onnx {skl2onnx.__version__}"


def classification_metrics(y, label, proba) -> dict:
    """Held-out metrics from a model's `label` and float32 `probabilities`."""
    import numpy as np
    from sklearn.metrics import (accuracy_score, brier_score_loss, f1_score,
                                 log_loss, roc_auc_score)

    p64 = proba.astype(np.float64)
    # float32 rows need not sum to exactly 1 in float64; renormalise for log_loss.
    p_norm = np.clip(p64, 1e-15, 1.0)
    p_norm = p_norm / p_norm.sum(axis=1, keepdims=True)
    return {
        "accuracy": float(accuracy_score(y, label)),
        "f1": float(f1_score(y, label, average="macro")),
        "log_loss": float(log_loss(y, p_norm, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p64[:, 1], pos_label=1)),
        "roc_auc": float(roc_auc_score(y, p64[:, 1])),
    }


def write_classifier_expected(path: Path, holdout_rel: str, label, proba) -> None:
    import numpy as np

    expected = json_document([
        ("holdout", json.dumps(holdout_rel)),
        ("label", "[" + ", ".join(str(int(v)) for v in label) + "]"),
        ("probabilities", json_matrix([json_row(r, f32_repr) for r in proba])),
    ])
    back = json.loads(expected)
    assert back["label"] == [int(v) for v in label]
    assert np.array_equal(np.asarray(back["probabilities"], dtype=np.float64)
                          .astype(np.float32).view(np.uint32), proba.view(np.uint32))
    write_if_changed(path, expected)


def train_classifiers(split: Split, holdout_rel: str, code_rev: str, created: str) -> dict:
    import numpy as np
    import onnx
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType

    n = len(split.feature_names)
    radius = split.feature_names.index("mean radius")
    candidates = {
        1: (Pipeline([("scale", StandardScaler()),
                      ("logreg", LogisticRegression(max_iter=1000))]),
            "Logistic regression (standardised features) on the Wisconsin breast "
            "cancer data set"),
        2: (GradientBoostingClassifier(n_estimators=100, random_state=0),
            "Gradient-boosted decision trees (100 estimators) on the Wisconsin "
            "breast cancer data set"),
        3: (Pipeline([("select", ColumnTransformer([("mean_radius", StandardScaler(),
                                                     [radius])], remainder="drop")),
                      ("logreg", LogisticRegression(max_iter=1000))]),
            "Deliberately weak baseline: logistic regression on `mean radius` only "
            "(input is still all 30 features) on the Wisconsin breast cancer data set"),
    }
    final_types = [("label", Int64TensorType([None])),
                   ("probabilities", FloatTensorType([None, 2]))]
    metrics = {}
    for version, (est, description) in candidates.items():
        est.fit(split.X_train, split.y_train)
        data = to_onnx(est, n, final_types, f"breast_cancer_{version}")
        check_io(onnx.load_from_string(data),
                 {"input": (onnx.TensorProto.FLOAT, [None, n])},
                 {"label": (onnx.TensorProto.INT64, [None]),
                  "probabilities": (onnx.TensorProto.FLOAT, [None, 2])})
        vdir = MODELS_DIR / "breast_cancer" / str(version)
        write_if_changed(vdir / "model.onnx", data)

        label, proba = ort_session(vdir / "model.onnx").run(
            ["label", "probabilities"], {"input": split.X_test32})
        assert label.dtype == np.int64 and label.shape == (len(split.y_test),)
        assert proba.dtype == np.float32 and proba.shape == (len(split.y_test), 2)
        agree = float(np.mean(label == est.predict(split.X_test32)))
        if agree < 0.99:
            raise AssertionError(f"breast_cancer/{version}: ONNX and sklearn labels "
                                 f"agree on only {agree:.3f} of the held-out rows")
        m = classification_metrics(split.y_test, label, proba)
        metrics[f"breast_cancer/{version}"] = m
        write_classifier_expected(vdir / "expected.json", holdout_rel, label, proba)
        label_tr, proba_tr = ort_session(vdir / "model.onnx").run(
            ["label", "probabilities"], {"input": split.X_train32})
        write_reference(vdir, split, {"labels": split.target_names, "label": label_tr,
                                      "proba": proba_tr})

        write_if_changed(vdir / "model.toml", toml_document(
            {
                "description": description,
                "task": "classification",
                "labels": split.target_names,
                "tags": ["tabular", "scikit-learn"],
                "created": created,
                "feature_names": split.feature_names,
            },
            {
                "lineage": {
                    "training_data_uri": split.uri,
                    "training_data_sha256": split.train_sha256,
                    "training_code": TRAINING_CODE,
                    "training_code_revision": code_rev,
                    "framework": versions(),
                },
                "metrics": m,
            }))

    weak = metrics["breast_cancer/3"]["accuracy"]
    best_other = min(metrics["breast_cancer/1"]["accuracy"],
                     metrics["breast_cancer/2"]["accuracy"])
    if weak > best_other - WEAK_MARGIN:
        raise AssertionError(f"breast_cancer/3 accuracy {weak:.4f} is not clearly below "
                             f"versions 1 and 2 ({best_other:.4f})")
    return metrics


def mlp_weights_document(mean, scale, layers) -> bytes:
    """The weights file for the TorchScript exporter; float32 values, one weight
    row per line. layers: [(weight [out, in], bias [out]), ...] as float32."""
    def vec(v) -> str:
        return json_row(v, f32_repr)

    def layer(weight, bias) -> str:
        rows = ",\n        ".join(vec(r) for r in weight)
        return ("{\n      \"weight\": [\n        " + rows + "\n      ],\n"
                f"      \"bias\": {vec(bias)}\n    }}")

    return json_document([
        ("forward", json.dumps(MLP_FORWARD)),
        ("mean", vec(mean)),
        ("scale", vec(scale)),
        ("layers", "[\n    " + ",\n    ".join(layer(w, b) for w, b in layers) + "\n  ]"),
    ])


def mlp_forward(weights: dict, X32):
    """What model.pt computes, in float32 with numpy, from the parsed weights
    file: x -> (x-mean)/scale -> [x @ W.T + b -> relu]* -> x @ W.T + b -> softmax.
    Returns (label int64 [N], probabilities float32 [N,2], logits float32 [N,2])."""
    import numpy as np

    def f32(v):  # JSON number -> f64 -> f32, as serde_json + `as f32` would do
        return np.asarray(v, dtype=np.float64).astype(np.float32)

    assert X32.dtype == np.float32
    h = (X32 - f32(weights["mean"])) / f32(weights["scale"])
    layers = weights["layers"]
    for i, layer in enumerate(layers):
        h = h @ f32(layer["weight"]).T + f32(layer["bias"])
        if i < len(layers) - 1:
            h = np.maximum(h, np.float32(0))
    logits = h
    e = np.exp(logits - logits.max(axis=1, keepdims=True))  # stable softmax
    proba = e / e.sum(axis=1, keepdims=True)
    assert logits.dtype == np.float32 and proba.dtype == np.float32
    label = np.argmax(proba, axis=1).astype(np.int64)
    assert np.array_equal(label, np.argmax(logits, axis=1))
    return label, proba, logits


def train_mlp(split: Split, holdout_rel: str, code_rev: str, created: str,
              reference: dict) -> dict:
    """breast_cancer/4, the TorchScript example: weights file, model.toml and
    expected.json (model.pt is scripted from the weights file by export_torchscript.py).
    reference: the held-out metrics of breast_cancer/1."""
    import warnings

    import numpy as np
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(split.feature_names)
    est = Pipeline([("scale", StandardScaler()),
                    ("mlp", MLPClassifier(hidden_layer_sizes=(MLP_HIDDEN,),
                                          activation="relu", solver="lbfgs",
                                          alpha=MLP_ALPHA, max_iter=MLP_MAX_ITER,
                                          random_state=0))])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # must converge
        est.fit(split.X_train, split.y_train)
    scaler, mlp = est.named_steps["scale"], est.named_steps["mlp"]
    if mlp.n_iter_ >= MLP_MAX_ITER:
        raise AssertionError(f"breast_cancer/4: MLP did not converge in {MLP_MAX_ITER} "
                             "iterations")
    assert [int(c) for c in mlp.classes_] == [0, 1], mlp.classes_
    assert mlp.out_activation_ == "logistic", mlp.out_activation_
    assert [c.shape for c in mlp.coefs_] == [(n, MLP_HIDDEN), (MLP_HIDDEN, 1)]

    # nn.Linear layout: weight [out_features, in_features] = sklearn's coefs_[i].T.
    # sklearn's binary MLP has ONE logistic output unit, P(class 1) = sigmoid(z)
    # with z = h @ w + b. softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)] exactly,
    # so the 2-unit softmax layer has weight rows [0, w] and biases [0, b].
    f32 = np.float32
    w_out = mlp.coefs_[1][:, 0]
    mean, scale = scaler.mean_.astype(f32), scaler.scale_.astype(f32)
    layers = [
        (np.ascontiguousarray(mlp.coefs_[0].T).astype(f32), mlp.intercepts_[0].astype(f32)),
        (np.stack([np.zeros_like(w_out), w_out]).astype(f32),
         np.array([0.0, mlp.intercepts_[1][0]]).astype(f32)),
    ]
    doc = mlp_weights_document(mean, scale, layers)
    # Verify: every number parses (as f64, cast to f32) back to the same bits.
    weights = json.loads(doc)
    assert list(weights) == ["forward", "mean", "scale", "layers"]

    def same_bits(got, want) -> bool:
        got = np.asarray(got, dtype=np.float64).astype(f32)
        return got.shape == want.shape and np.array_equal(got.view(np.uint32),
                                                          want.view(np.uint32))

    assert same_bits(weights["mean"], mean) and same_bits(weights["scale"], scale)
    assert len(weights["layers"]) == len(layers)
    for got, (w, b) in zip(weights["layers"], layers):
        assert list(got) == ["weight", "bias"]
        assert same_bits(got["weight"], w) and same_bits(got["bias"], b)
    write_if_changed(MODELS_DIR / MLP_WEIGHTS, doc)
    pt = MODELS_DIR / "breast_cancer" / "4" / "model.pt"
    if (MODELS_DIR / MLP_WEIGHTS).relative_to(REPO_ROOT).as_posix() in _changed \
            and pt.exists():
        print(f"note: {MLP_WEIGHTS} changed; re-run the TorchScript exporter to "
              "refresh breast_cancer/4/model.pt", file=sys.stderr)

    label, proba, logits = mlp_forward(weights, split.X_test32)
    assert label.shape == (len(split.y_test),) and proba.shape == (len(split.y_test), 2)
    sk_proba = est.predict_proba(split.X_test32)
    diff = float(np.max(np.abs(sk_proba - proba.astype(np.float64))))
    if diff > MLP_PROBA_ATOL:
        raise AssertionError(f"breast_cancer/4: float32 forward pass differs from "
                             f"sklearn predict_proba by {diff:.3g} > {MLP_PROBA_ATOL}")
    agree = float(np.mean(label == est.predict(split.X_test32)))
    if agree < 0.99:
        raise AssertionError(f"breast_cancer/4: float32 and sklearn labels agree on "
                             f"only {agree:.3f} of the held-out rows")
    margin = float(np.min(np.abs(logits[:, 1] - logits[:, 0])))
    if margin < MLP_MIN_LOGIT_MARGIN:
        raise AssertionError(f"breast_cancer/4: a held-out row has logits only "
                             f"{margin:.3g} apart; its label is fragile")
    print(f"breast_cancer/4: lbfgs converged in {mlp.n_iter_} iterations; float32 "
          f"forward vs sklearn: max |dp| = {diff:.3g}, labels agree on {agree:.3f}, "
          f"min |logit1 - logit0| = {margin:.3g}")

    m = classification_metrics(split.y_test, label, proba)
    if m["accuracy"] < reference["accuracy"] - WEAK_MARGIN:
        raise AssertionError(f"breast_cancer/4 accuracy {m['accuracy']:.4f} is far below "
                             f"version 1 ({reference['accuracy']:.4f})")
    vdir = MODELS_DIR / "breast_cancer" / "4"
    write_classifier_expected(vdir / "expected.json", holdout_rel, label, proba)
    label_tr, proba_tr, _ = mlp_forward(weights, split.X_train32)
    write_reference(vdir, split, {"labels": split.target_names, "label": label_tr,
                                  "proba": proba_tr})
    write_if_changed(vdir / "model.toml", toml_document(
        {
            "description": f"Multilayer perceptron ({MLP_HIDDEN} hidden ReLU units, "
                           "standardised features) trained with scikit-learn on the "
                           "Wisconsin breast cancer data set, exported to TorchScript",
            "task": "classification",
            "labels": split.target_names,
            "tags": ["tabular", "scikit-learn", "pytorch", "torchscript"],
            "created": created,
            "feature_names": split.feature_names,
        },
        {
            "lineage": {
                "training_data_uri": split.uri,
                "training_data_sha256": split.train_sha256,
                "training_code": TRAINING_CODE,
                "training_code_revision": code_rev,
                "framework": f"scikit-learn {sklearn.__version__} / {TORCHSCRIPT_EXPORTER}",
            },
            "metrics": m,
        },
        {
            # A TorchScript file does not declare its signature: model.toml does.
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, n]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
        }))
    return {"breast_cancer/4": m}


def train_regressor(split: Split, holdout_rel: str, code_rev: str, created: str) -> dict:
    import numpy as np
    import onnx
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from skl2onnx.common.data_types import FloatTensorType

    n = len(split.feature_names)
    est = Pipeline([("scale", StandardScaler()), ("ridge", Ridge(alpha=1.0))])
    est.fit(split.X_train, split.y_train)
    data = to_onnx(est, n, [("prediction", FloatTensorType([None, 1]))], "diabetes_1")
    check_io(onnx.load_from_string(data),
             {"input": (onnx.TensorProto.FLOAT, [None, n])},
             {"prediction": (onnx.TensorProto.FLOAT, [None, 1])})
    vdir = MODELS_DIR / "diabetes" / "1"
    write_if_changed(vdir / "model.onnx", data)

    (pred,) = ort_session(vdir / "model.onnx").run(["prediction"], {"input": split.X_test32})
    assert pred.dtype == np.float32 and pred.shape == (len(split.y_test), 1)
    sk = est.predict(split.X_test32)
    assert np.allclose(pred[:, 0], sk, rtol=1e-4, atol=1e-3), "ONNX differs from sklearn"
    y, p = split.y_test, pred[:, 0].astype(np.float64)
    m = {
        "mae": float(mean_absolute_error(y, p)),
        "rmse": float(np.sqrt(mean_squared_error(y, p))),
        "r2": float(r2_score(y, p)),
    }
    expected = json_document([
        ("holdout", json.dumps(holdout_rel)),
        ("prediction", json_matrix([json_row(r, f32_repr) for r in pred])),
    ])
    back = json.loads(expected)
    assert np.array_equal(np.asarray(back["prediction"], dtype=np.float64)
                          .astype(np.float32).view(np.uint32), pred.view(np.uint32))
    write_if_changed(vdir / "expected.json", expected)
    (pred_tr,) = ort_session(vdir / "model.onnx").run(["prediction"],
                                                      {"input": split.X_train32})
    assert pred_tr.dtype == np.float32 and pred_tr.shape == (len(split.y_train), 1)
    write_reference(vdir, split, {"prediction": pred_tr[:, 0]})
    write_if_changed(vdir / "model.toml", toml_document(
        {
            "description": "Ridge regression (standardised features, alpha=1.0) on the "
                           "diabetes progression data set",
            "task": "regression",
            "tags": ["tabular", "scikit-learn"],
            "created": created,
            "feature_names": split.feature_names,
        },
        {
            "lineage": {
                "training_data_uri": split.uri,
                "training_data_sha256": split.train_sha256,
                "training_code": TRAINING_CODE,
                "training_code_revision": code_rev,
                "framework": versions(),
            },
            "metrics": m,
        }))
    return {"diabetes/1": m}


def build_dtypes(created: str) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    T = TensorProto
    shape = ["batch", 3]
    specs = [  # (suffix, elem type, op, constant or None)
        ("fp32", T.FLOAT, "Mul", np.array(2.0, dtype=np.float32)),
        ("fp64", T.DOUBLE, "Add", np.array(1.0, dtype=np.float64)),
        ("i32", T.INT32, "Mul", np.array(3, dtype=np.int32)),
        ("i64", T.INT64, "Sub", np.array(1, dtype=np.int64)),
        ("bool", T.BOOL, "Not", None),
        ("u8", T.UINT8, "Identity", None),
    ]
    inputs, outputs, nodes, inits = [], [], [], []
    for suffix, et, op, const in specs:
        x, y = f"x_{suffix}", f"y_{suffix}"
        inputs.append(helper.make_tensor_value_info(x, et, shape))
        outputs.append(helper.make_tensor_value_info(y, et, shape))
        if const is None:
            nodes.append(helper.make_node(op, [x], [y], name=f"{op.lower()}_{suffix}"))
        else:
            c = f"c_{suffix}"
            inits.append(numpy_helper.from_array(const, name=c))
            nodes.append(helper.make_node(op, [x, c], [y], name=f"{op.lower()}_{suffix}"))
    graph = helper.make_graph(nodes, "dtypes", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, producer_name="contender-models-generate",
                              opset_imports=[helper.make_opsetid("", DTYPES_OPSET)])
    model.ir_version = DTYPES_IR_VERSION
    model.doc_string = ("y_fp32 = x_fp32 * 2; y_fp64 = x_fp64 + 1; y_i32 = x_i32 * 3; "
                        "y_i64 = x_i64 - 1; y_bool = not x_bool; y_u8 = x_u8")
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    vdir = MODELS_DIR / "dtypes" / "1"
    write_if_changed(vdir / "model.onnx", data)

    feeds = {
        "x_fp32": np.array([[1.5, -2.0, 0.25], [0.0, 3.0, -0.5]], dtype=np.float32),
        "x_fp64": np.array([[1.5, -2.0, 0.25], [0.0, 3.0, -0.5]], dtype=np.float64),
        "x_i32": np.array([[1, -2, 3], [0, 7, -9]], dtype=np.int32),
        "x_i64": np.array([[1, -2, 3], [0, 2**40, -9]], dtype=np.int64),
        "x_bool": np.array([[True, False, True], [False, False, True]]),
        "x_u8": np.array([[0, 127, 255], [1, 2, 3]], dtype=np.uint8),
    }
    want = {
        "y_fp32": feeds["x_fp32"] * np.float32(2),
        "y_fp64": feeds["x_fp64"] + 1.0,
        "y_i32": feeds["x_i32"] * np.int32(3),
        "y_i64": feeds["x_i64"] - 1,
        "y_bool": ~feeds["x_bool"],
        "y_u8": feeds["x_u8"],
    }
    sess = ort_session(vdir / "model.onnx")
    got = dict(zip(want, sess.run(list(want), feeds)))
    for k, v in want.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), (k, got[k], v)
    # a different batch size works too
    one = {k: v[:1] for k, v in feeds.items()}
    assert sess.run(["y_fp32"], one)[0].shape == (1, 3)

    write_if_changed(vdir / "model.toml", toml_document(
        {
            "description": "Hand-built ONNX graph exercising tensor datatypes: "
                           + model.doc_string,
            "tags": ["synthetic", "dtypes"],
            "created": created,
        }, {}))


# ----------------------------------------------------------------------------
# README metrics table
# ----------------------------------------------------------------------------

def update_readme(metrics: dict) -> None:
    path = MODELS_DIR / "README.md"
    begin, end = "<!-- metrics:begin -->", "<!-- metrics:end -->"
    if not path.exists():
        return
    text = path.read_text()
    if begin not in text or end not in text:
        return
    cls = ["accuracy", "f1", "log_loss", "brier", "roc_auc"]
    reg = ["mae", "rmse", "r2"]
    lines = ["| model | " + " | ".join(cls) + " |",
             "|---|" + "---:|" * len(cls)]
    for name, m in metrics.items():
        if "accuracy" in m:
            lines.append(f"| `{name}` | " + " | ".join(f"{m[k]:.4f}" for k in cls) + " |")
    lines += ["", "| model | " + " | ".join(reg) + " |", "|---|" + "---:|" * len(reg)]
    for name, m in metrics.items():
        if "mae" in m:
            lines.append(f"| `{name}` | " + " | ".join(f"{m[k]:.4f}" for k in reg) + " |")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = head + begin + "\n" + "\n".join(lines) + "\n" + end + tail
    write_if_changed(path, new.encode())


# ----------------------------------------------------------------------------

def main() -> None:
    if sys.argv[1:] == ["--check-deps"]:
        sys.exit(1 if _missing_pins() else 0)
    if sys.argv[1:]:
        sys.exit(f"usage: python3 {TRAINING_CODE}  (no arguments)")
    bootstrap()

    code_rev = "sha256:" + sha256_hex(Path(__file__).resolve().read_bytes())
    created = created_timestamp()

    bc = Split("load_breast_cancer", stratify=True, classification=True)
    bc_rel = write_holdout(bc, "breast_cancer", classification=True)
    metrics = train_classifiers(bc, bc_rel, code_rev, created)
    metrics.update(train_mlp(bc, bc_rel, code_rev, created, metrics["breast_cancer/1"]))

    db = Split("load_diabetes", stratify=False, classification=False)
    db_rel = write_holdout(db, "diabetes", classification=False)
    metrics.update(train_regressor(db, db_rel, code_rev, created))

    build_dtypes(created)
    update_readme(metrics)

    for name, m in metrics.items():
        print(f"{name:16s} " + "  ".join(f"{k}={v:.4f}" for k, v in m.items()))
    print(f"{len(_changed)} file(s) written, {len(_unchanged)} unchanged")
    for rel in _changed:
        print(f"  wrote {rel}")


if __name__ == "__main__":
    main()
