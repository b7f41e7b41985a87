#!/usr/bin/python3
"""Writes the TorchScript example model, models/breast_cancer/4/model.pt.

It scripts (torch.jit.script) an MLP built from the weights that
models/generate.py trained and saved in
models/_data/breast_cancer_mlp_weights.json:

    x -> (x - mean) / scale -> linear0 -> relu -> linear1 -> softmax = probabilities
                                                             argmax  = label

`forward` returns the tuple (label, probabilities): the same V2 interface
(input `input` FP32 [-1, 30]; outputs `label` INT64 [-1], `probabilities`
FP32 [-1, 2]) as the ONNX versions 1-3, declared in the version's
model.toml, so it can challenge them directly.

Run with Debian's CPU-only PyTorch (no CUDA stack needed):

    apt-get install python3-torch      # torch 1.13, ~150 MB
    /usr/bin/python3 models/export_torchscript.py

The file it writes loads in libtorch 2.13 (tch 0.26); the gateway checks it
against expected.json in tests/torchscript.rs.
"""

import json
import os
import sys
from typing import Tuple

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(ROOT, "_data", "breast_cancer_mlp_weights.json")
OUT = os.path.join(ROOT, "breast_cancer", "4", "model.pt")
EXPECTED = os.path.join(ROOT, "breast_cancer", "4", "expected.json")
HOLDOUT = os.path.join(ROOT, "_data", "breast_cancer_holdout.json")


class BreastCancerMLP(torch.nn.Module):
    def __init__(self, weights: dict):
        super().__init__()
        f32 = torch.float32
        self.register_buffer("mean", torch.tensor(weights["mean"], dtype=f32))
        self.register_buffer("scale", torch.tensor(weights["scale"], dtype=f32))
        hidden, output = weights["layers"]
        self.hidden = torch.nn.Linear(len(hidden["weight"][0]), len(hidden["weight"]))
        self.output = torch.nn.Linear(len(output["weight"][0]), len(output["weight"]))
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor(hidden["weight"], dtype=f32))
            self.hidden.bias.copy_(torch.tensor(hidden["bias"], dtype=f32))
            self.output.weight.copy_(torch.tensor(output["weight"], dtype=f32))
            self.output.bias.copy_(torch.tensor(output["bias"], dtype=f32))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        z = (x - self.mean) / self.scale
        probabilities = torch.softmax(self.output(torch.relu(self.hidden(z))), dim=-1)
        label = torch.argmax(probabilities, dim=-1)
        return label, probabilities


def main() -> int:
    torch.manual_seed(0)
    with open(WEIGHTS) as f:
        weights = json.load(f)
    model = BreastCancerMLP(weights).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    scripted = torch.jit.script(model)
    scripted.save(OUT)

    # Check the saved file against the generator's expected outputs.
    with open(HOLDOUT) as f:
        holdout = json.load(f)
    with open(EXPECTED) as f:
        expected = json.load(f)
    loaded = torch.jit.load(OUT)
    x = torch.tensor(holdout["features"], dtype=torch.float32)
    with torch.no_grad():
        label, probabilities = loaded(x)
    diff = (probabilities - torch.tensor(expected["probabilities"], dtype=torch.float32)).abs().max().item()
    same = (label == torch.tensor(expected["label"])).all().item()
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes); max |p - expected| = {diff:.3g}; labels equal: {same}")
    return 0 if same and diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
