"""Shared code of the MoCo v2 transfer-evaluation toolkit.

Subpackages follow the pipeline a user runs: `pretrain` -> `convert` -> `transfer` (detection, linear) ->
`results`; `data` makes and checks datasets; `runtime` is the plumbing all of them share.
"""

from pathlib import Path

# The checkout the package is installed from (editable): it holds configs/ and the results store's default.
REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
