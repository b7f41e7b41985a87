#!/usr/bin/env bash
# Fetches ONNX Runtime 1.31.1 (CPU) from the PyPI `onnxruntime` wheel, checks
# the wheel's and the library's SHA-256, and caches the library at
#   ${CONTENDER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/contender}/onnxruntime-1.31.1/
# where contender looks for it by default. Safe to run again: a verified
# library is left as it is. Needs python3 with pip; talks only to PyPI.
set -euo pipefail

VERSION=1.31.1
WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
LIB_SHA256=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3
LIB_MEMBER="onnxruntime/capi/libonnxruntime.so.${VERSION}"

cache="${CONTENDER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/contender}"
dest="$cache/onnxruntime-${VERSION}"
lib="$dest/libonnxruntime.so.${VERSION}"

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$lib" && "$(sha "$lib")" == "$LIB_SHA256" ]]; then
  echo "onnxruntime ${VERSION}: $lib (verified)"
  exit 0
fi

mkdir -p "$dest"
tmp="$(mktemp -d "$cache/.onnxruntime-download.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "onnxruntime ${VERSION}: downloading the wheel from PyPI"
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --implementation cp --abi cp311 \
  --platform manylinux_2_28_x86_64 "onnxruntime==${VERSION}" -d "$tmp"
wheel="$(ls "$tmp"/onnxruntime-"${VERSION}"-*.whl)"
if [[ "$(sha "$wheel")" != "$WHEEL_SHA256" ]]; then
  echo "onnxruntime wheel hash mismatch: $(sha "$wheel") != $WHEEL_SHA256" >&2
  exit 1
fi
python3 - "$wheel" "$LIB_MEMBER" "$tmp/lib" <<'PY'
import sys, zipfile, shutil
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
if [[ "$(sha "$tmp/lib")" != "$LIB_SHA256" ]]; then
  echo "libonnxruntime hash mismatch: $(sha "$tmp/lib") != $LIB_SHA256" >&2
  exit 1
fi
mv -f "$tmp/lib" "$lib"   # atomic within one filesystem: never a half-written library
echo "onnxruntime ${VERSION}: $lib"
