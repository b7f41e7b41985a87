#!/usr/bin/env python3
"""Checks a running contender with a client nobody here wrote: Triton's
`tritonclient[http]` from PyPI.

Usage: tritonclient_check.py --url 127.0.0.1:PORT

Exits 0 when every check passes; otherwise prints the failure and exits 1.
Run by tests/tritonclient.rs against a server it starts; install the client
with `make test-deps` (tests/python/requirements.txt into .venv).
"""

import argparse
import json
import sys
import traceback
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
TOL = 1e-6


def load_json(relative):
    with open(MODELS / relative, encoding="utf-8") as f:
        return json.load(f)


def holdout():
    data = load_json("_data/breast_cancer_holdout.json")
    return np.asarray(data["features"], dtype=np.float64).astype(np.float32)


def expected(version):
    e = load_json(f"breast_cancer/{version}/expected.json")
    return (
        np.asarray(e["label"], dtype=np.int64),
        np.asarray(e["probabilities"], dtype=np.float64),
    )


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def check_outputs(result, version, what):
    labels, probs = expected(version)
    label = result.as_numpy("label")
    prob = result.as_numpy("probabilities")
    check(label is not None, f"{what}: no 'label' output")
    check(prob is not None, f"{what}: no 'probabilities' output")
    check(label.dtype == np.int64, f"{what}: label dtype {label.dtype}")
    check(prob.dtype == np.float32, f"{what}: probabilities dtype {prob.dtype}")
    check(label.shape == labels.shape, f"{what}: label shape {label.shape}")
    check(prob.shape == probs.shape, f"{what}: probabilities shape {prob.shape}")
    check(np.array_equal(label, labels), f"{what}: labels differ")
    diff = float(np.max(np.abs(prob.astype(np.float64) - probs)))
    check(diff <= TOL, f"{what}: probabilities differ by up to {diff}")
    response = result.get_response()
    check(response["model_name"] == "breast_cancer", f"{what}: {response['model_name']}")
    check(response["model_version"] == str(version), f"{what}: {response['model_version']}")
    return response


def run(url):
    client = httpclient.InferenceServerClient(url=url)

    check(client.is_server_live() is True, "is_server_live")
    check(client.is_server_ready() is True, "is_server_ready")
    check(client.is_model_ready("breast_cancer") is True, "is_model_ready(breast_cancer)")
    check(client.is_model_ready("breast_cancer", "2") is True, "is_model_ready(breast_cancer, 2)")
    check(client.is_model_ready("no_such_model") is False, "is_model_ready(no_such_model)")

    meta = client.get_server_metadata()
    check(meta["name"] == "contender", f"server metadata: {meta}")
    check("binary_tensor_data" in meta["extensions"], f"server metadata: {meta}")

    meta = client.get_model_metadata("breast_cancer")
    check(meta["name"] == "breast_cancer", f"model metadata: {meta}")
    check(
        meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
        f"model metadata inputs: {meta}",
    )
    outputs = {o["name"]: o for o in meta["outputs"]}
    check(set(outputs) == {"label", "probabilities"}, f"model metadata outputs: {meta}")
    meta = client.get_model_metadata("breast_cancer", model_version="3")
    check(meta["versions"] == ["3"], f"model metadata v3: {meta}")

    config = client.get_model_config("breast_cancer")
    check(config["name"] == "breast_cancer", f"model config: {config}")
    check(int(config["max_batch_size"]) > 0, f"model config: {config}")
    check(config["input"][0]["name"] == "input", f"model config: {config}")

    x = holdout()
    check(x.shape == (143, 30), f"holdout shape {x.shape}")

    # JSON tensors both ways.
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    outs = [
        httpclient.InferRequestedOutput("label", binary_data=False),
        httpclient.InferRequestedOutput("probabilities", binary_data=False),
    ]
    result = client.infer("breast_cancer", [inp], outputs=outs, request_id="tc-json")
    response = check_outputs(result, 1, "JSON tensors")
    check(response["id"] == "tc-json", f"request id not echoed: {response['id']}")
    for o in response["outputs"]:
        check("data" in o, f"JSON tensors: output {o['name']} has no JSON data")

    # Binary tensors both ways (the client's default).
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    outs = [
        httpclient.InferRequestedOutput("label", binary_data=True),
        httpclient.InferRequestedOutput("probabilities", binary_data=True),
    ]
    result = client.infer("breast_cancer", [inp], outputs=outs, request_id="tc-binary")
    response = check_outputs(result, 1, "binary tensors")
    check(response["id"] == "tc-binary", f"request id not echoed: {response['id']}")
    for o in response["outputs"]:
        check(
            "binary_data_size" in o.get("parameters", {}),
            f"binary tensors: output {o['name']} is not binary",
        )

    # outputs=None: every output, binary (the client sets binary_data_output).
    result = client.infer("breast_cancer", [inp])
    check_outputs(result, 1, "outputs=None")

    # Mixed: JSON input, one output binary and one JSON.
    inp_json = httpclient.InferInput("input", list(x.shape), "FP32")
    inp_json.set_data_from_numpy(x, binary_data=False)
    outs = [
        httpclient.InferRequestedOutput("label", binary_data=False),
        httpclient.InferRequestedOutput("probabilities", binary_data=True),
    ]
    result = client.infer("breast_cancer", [inp_json], outputs=outs)
    check_outputs(result, 1, "mixed")

    # Compressed requests and responses (the client's gzip and deflate).
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "breast_cancer",
            [inp],
            request_id=f"tc-{algorithm}",
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        response = check_outputs(result, 1, f"{algorithm} request body")
        check(response["id"] == f"tc-{algorithm}", f"{algorithm}: id {response['id']}")

    # The classification extension (class_count): top classes as BYTES.
    for binary in (False, True):
        outs = [
            httpclient.InferRequestedOutput(
                "probabilities", binary_data=binary, class_count=2
            )
        ]
        result = client.infer("breast_cancer", [inp], outputs=outs)
        top = result.as_numpy("probabilities")
        check(top.shape == (143, 2), f"classification shape {top.shape}")
        probs = expected(1)[1]
        for r in range(top.shape[0]):
            first = top[r][0]
            first = first.decode() if isinstance(first, bytes) else str(first)
            score, index, label = first.split(":")
            best = max(range(2), key=lambda i: probs[r][i])
            check(int(index) == best, f"classification row {r}: {first}")
            check(abs(float(score) - probs[r][best]) < 1e-6, f"classification {first}")
            check(label == ("malignant", "benign")[best], f"classification label {first}")

    # A specific version.
    for version in (2, 3):
        result = client.infer("breast_cancer", [inp], model_version=str(version))
        check_outputs(result, version, f"version {version}")

    # Only one output.
    result = client.infer(
        "breast_cancer", [inp], outputs=[httpclient.InferRequestedOutput("probabilities")]
    )
    check(result.as_numpy("label") is None, "only probabilities was requested")
    check(result.as_numpy("probabilities").shape == (143, 2), "probabilities shape")

    # Statistics and the repository index.
    stats = client.get_inference_statistics("breast_cancer")
    by_version = {s["version"]: s for s in stats["model_stats"]}
    check(int(by_version["1"]["inference_count"]) >= 5 * 143, f"statistics: {stats}")
    index = client.get_model_repository_index()
    check(
        {(m["name"], m["version"]) for m in index}
        >= {("breast_cancer", "1"), ("breast_cancer", "2"), ("diabetes", "1")},
        f"repository index: {index}",
    )

    # Repository load/unload of a model no deployment uses (`dtypes`).
    client.unload_model("dtypes")
    check(client.is_model_ready("dtypes") is False, "dtypes ready after unload_model")
    client.load_model("dtypes")
    check(client.is_model_ready("dtypes") is True, "dtypes not ready after load_model")
    try:
        client.unload_model("breast_cancer")
    except InferenceServerException as e:
        check(e.status() == "400", f"unloading a deployed model: status {e.status()} ({e})")
        check("deployment" in e.message(), f"unloading a deployed model: {e.message()!r}")
    else:
        raise AssertionError("unloading a deployed model: no exception")

    # Errors come back as InferenceServerException with the HTTP status.
    bad = httpclient.InferInput("input", [1, 29], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 29), dtype=np.float32))
    try:
        client.infer("breast_cancer", [bad])
    except InferenceServerException as e:
        check(e.status() == "400", f"wrong shape: status {e.status()} ({e})")
        check("[1, 29]" in e.message(), f"wrong shape: message {e.message()!r}")
    else:
        raise AssertionError("wrong shape: no exception")

    try:
        client.infer("no_such_model", [inp])
    except InferenceServerException as e:
        check(e.status() == "404", f"unknown model: status {e.status()} ({e})")
    else:
        raise AssertionError("unknown model: no exception")

    client.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="HOST:PORT of the server")
    args = parser.parse_args()
    try:
        run(args.url)
    except Exception:  # noqa: BLE001 - report any failure and exit non-zero
        traceback.print_exc()
        return 1
    print("tritonclient checks: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
