#!/usr/bin/env bash
# Assembles a CPU-only libtorch 2.13.0 directory (what the `tch` crate links
# against) from PyPI wheels, with hash checks, and caches it at
#   ${CONTENDER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/contender}/libtorch-2.13.0-cpu/
# The torch wheel on PyPI is a CUDA build; we take only its headers and CPU
# libraries (libtorch_cpu, libc10, libtorch, libgomp) and leave
# libtorch_cuda.so out, so nothing links CUDA. libtorch_cpu.so still needs
# libcudart/libcupti to load (CUDA is never initialised), taken from their
# own wheels. Safe to run again: a complete directory is left as it is.
# Prints the directory on its last line.
set -euo pipefail

VERSION=2.13.0
cache="${CONTENDER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/contender}"
dest="$cache/libtorch-${VERSION}-cpu"
stamp="$dest/.complete"

declare -A WHEELS=(
  [torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl]=60fcdcb2f3876e21146cb4524ef06397d727ca9ad5f020818547e25075fe3cb7
  [nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl]=7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
  [nvidia_cuda_cupti-13.0.85-py3-none-manylinux_2_25_x86_64.whl]=4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8
)

# The project links `.cache/libtorch` to the cache; `.cargo/config.toml` sets LIBTORCH to it.
project="$(cd "$(dirname "$0")/.." && pwd)"
link() { mkdir -p "$project/.cache" && ln -sfn "$dest" "$project/.cache/libtorch"; }

if [[ -f "$stamp" && "$(cat "$stamp")" == "$VERSION" ]]; then
  link
  echo "libtorch ${VERSION} (CPU): $dest (complete)" >&2
  echo "$dest"
  exit 0
fi

mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.libtorch-download.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "libtorch ${VERSION}: downloading wheels from PyPI (~540 MB)" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --implementation cp --abi cp311 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_25_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  "torch==${VERSION}" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 -d "$tmp/wheels" >&2
for wheel in "${!WHEELS[@]}"; do
  got="$(sha256sum "$tmp/wheels/$wheel" | cut -d' ' -f1)"
  if [[ "$got" != "${WHEELS[$wheel]}" ]]; then
    echo "hash mismatch for $wheel: $got != ${WHEELS[$wheel]}" >&2
    exit 1
  fi
done

python3 - "$tmp/wheels" "$tmp/libtorch" <<'PY'
import os, shutil, sys, zipfile
wheels, out = sys.argv[1:]
os.makedirs(f"{out}/lib"); os.makedirs(f"{out}/include")
def extract(z, member, target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with z.open(member) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
torch = next(w for w in os.listdir(wheels) if w.startswith("torch-"))
with zipfile.ZipFile(f"{wheels}/{torch}") as z:
    for m in z.namelist():
        if m.startswith("torch/include/") and not m.endswith("/"):
            extract(z, m, f"{out}/include/{m[len('torch/include/'):]}")
    for lib in ("libtorch_cpu.so", "libc10.so", "libtorch.so", "libgomp.so.1"):
        extract(z, f"torch/lib/{lib}", f"{out}/lib/{lib}")
for prefix, lib in (("nvidia_cuda_runtime-", "libcudart.so.13"), ("nvidia_cuda_cupti-", "libcupti.so.13")):
    wheel = next(w for w in os.listdir(wheels) if w.startswith(prefix))
    with zipfile.ZipFile(f"{wheels}/{wheel}") as z:
        extract(z, f"nvidia/cu13/lib/{lib}", f"{out}/lib/{lib}")
PY
echo "$VERSION" > "$tmp/libtorch/build-version"
rm -rf "$dest"
mv "$tmp/libtorch" "$dest"
echo "$VERSION" > "$stamp"
link
echo "libtorch ${VERSION} (CPU): $dest" >&2
echo "$dest"
