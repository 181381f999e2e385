#!/usr/bin/env bash
# Collects, on a machine with the package registry, the wheels that a GPU machine without one lacks (Python 3.12
# with torch and torchvision; no torch here) into DIR, with DIR/wheelhouse.txt for `install.sh --wheelhouse DIR`.
# DIR must be git-ignored and fit, with the working tree, in the 64 MiB that such a machine takes beside the tree.
#   bash scripts/wheelhouse.sh [DIR]          collect (default .whl; wheels already there are kept), then check
#   bash scripts/wheelhouse.sh --check DIR    only check: git-ignored, size
# What it collects: scripts/wheelhouse.txt. $PYTHON (default python3): any interpreter with pip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LIMIT_MIB=${WHEELHOUSE_LIMIT_MIB:-64}
# The GPU machine's tags; pip matches each manylinux_2_N exactly, so name the ones the wheels use.
CP312=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
pip() { "$PY" -m pip --disable-pip-version-check -q "$@"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

check() {  # check DIR: one line of figures, or one error line and exit 1
  local dir=${1%/} rc=0 house tree
  git check-ignore -q "$dir/" || rc=$?
  if [ "$rc" = 1 ]; then
    echo "error: $dir is not git-ignored: its wheels would travel as part of the tree and be committed" >&2; exit 1
  elif [ "$rc" != 0 ]; then
    echo "error: $dir is not inside this checkout: only the checkout's paths travel" >&2; exit 1
  fi
  house=$(du -sb "$dir" | cut -f1)
  # what travels anyway: tracked files and untracked ones that are not ignored
  tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -n1 | cut -f1 || true)
  if (( house + tree > LIMIT_MIB * 1048576 )); then
    echo "error: $dir ($(mib "$house") MiB) and the working tree ($(mib "$tree") MiB) are" \
         "$(mib $((house + tree))) MiB, over the $LIMIT_MIB MiB a GPU machine takes beside the tree" >&2; exit 1
  fi
  echo "[wheelhouse] $dir: $(mib "$house") MiB in $(ls "$dir"/*.whl 2>/dev/null | wc -l) wheel(s); with the working" \
       "tree ($(mib "$tree") MiB) $(mib $((house + tree))) MiB of $LIMIT_MIB MiB"
}

case "${1:-}" in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  --check) [ $# -eq 2 ] || { echo "error: --check takes one folder" >&2; exit 2; }; check "$2"; exit 0 ;;
  -*) echo "error: unknown argument '$1' (bash scripts/wheelhouse.sh --help)" >&2; exit 2 ;;
esac
DIR=${1:-.whl}
mkdir -p "$DIR"
listed=()
manifest=""
while read -r spec module _; do
  [[ -z "$spec" || "$spec" == \#* ]] && continue
  name=${spec%%==*} version=${spec#*==}
  stem="$(echo "$name" | tr 'A-Z-' 'a-z_')-$version-"  # a wheel's file name: the name with '_' for '-'
  whl=$(ls "$DIR/$stem"*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$whl" ]; then
    if [ "$name" = sal-detectron2 ]; then
      cp "$(bash scripts/detectron2_wheel.sh "$PY")" "$DIR/"
    elif ! pip download --no-deps "${CP312[@]}" -d "$DIR" "$spec" 2>/dev/null; then
      echo "[wheelhouse] $spec: no wheel on the registry, building it here"
      pip wheel --no-deps -w "$DIR" "$spec"
    fi
    whl=$(ls "$DIR/$stem"*.whl | head -n1)
  fi
  case "$whl" in
    *-none-any.whl | *-cp312-*manylinux*x86_64*.whl) ;;
    *) echo "error: $whl is neither pure Python nor for CPython 3.12 on manylinux x86-64: remove it" >&2; exit 1 ;;
  esac
  listed+=("$(basename "$whl")")
  manifest+="$(basename "$whl") $module"$'\n'
done < scripts/wheelhouse.txt
for f in "$DIR"/*.whl; do  # wheels of earlier lists would count against the size and never be installed
  [[ " ${listed[*]} " == *" $(basename "$f") "* ]] || { echo "[wheelhouse] removed $(basename "$f") (not listed)"; rm -f "$f"; }
done
printf '# written by scripts/wheelhouse.sh from scripts/wheelhouse.txt: WHEEL MODULE\n%s' "$manifest" > "$DIR/wheelhouse.txt"
check "$DIR"
