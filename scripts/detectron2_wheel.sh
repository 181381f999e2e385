#!/usr/bin/env bash
# Prints the path of detectron2's wheel: sal-detectron2==0.7.2 (the pure-Python part of upstream a59f056), published
# as cp310 but pure Python, so saved as py3-none-any; sha256-checked. Downloaded into CACHE the first time.
#   bash scripts/detectron2_wheel.sh PYTHON [CACHE]      (PYTHON: any interpreter with pip; CACHE: .cache/wheels)
# install.sh installs it; wheelhouse.sh copies it into the wheelhouse.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: detectron2_wheel.sh PYTHON [CACHE]}
CACHE=${2:-.cache/wheels}
D2_WHEEL_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
mkdir -p "$CACHE"
whl="$CACHE/sal_detectron2-0.7.2-py3-none-any.whl"
if [ ! -f "$whl" ]; then
  "$PY" -m pip download --disable-pip-version-check --isolated -q --no-deps --only-binary=:all: --python-version 3.10 \
    --implementation cp -d "$CACHE" sal-detectron2==0.7.2 >&2
  mv "$(ls "$CACHE"/sal_detectron2-0.7.2-cp310-*.whl | head -n1)" "$whl"
fi
if ! echo "$D2_WHEEL_SHA256  $whl" | sha256sum -c --quiet - >&2; then
  echo "error: sha256 mismatch for $whl (expected $D2_WHEEL_SHA256): removed it" >&2
  rm -f "$whl"; exit 1
fi
echo "$whl"
