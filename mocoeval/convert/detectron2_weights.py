"""torchvision ResNet-50 weights -> Detectron2 R50-C4 weights (.pkl), and the checks that the result is right.

Mapping (the official MoCo detection converter's rules): stem ``conv1``/``bn1`` -> ``stem.conv1``/
``stem.conv1.norm``; ``layerN`` -> ``res{N+1}``; in blocks ``bnK`` -> ``convK.norm``, ``downsample.0`` ->
``shortcut``, ``downsample.1`` -> ``shortcut.norm``. Detectron2 reads a .pkl holding "model" and
"__author__" as its own format, and with "matching_heuristics" it maps ``res5.*`` to ``roi_heads.res5.*``
and the rest to ``backbone.*`` by key suffix.

The other layout `run_voc.py` accepts is Detectron's Caffe2 one (the MSRA ``R-50.pkl`` of the supervised
baseline): ``{'blobs': {conv1_w, res_conv1_bn_s, res2_0_branch2a_w, ...}}``, frozen BN as scale/bias only,
BGR input with std 1 and the stride in the 1x1 conv; Detectron2 reads it as "Caffe2" and renames it.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mocoeval.convert.resnet50 import (
    IMAGENET_PIXEL_MEAN,
    IMAGENET_PIXEL_STD,
    INPUT_NORMS,
    NUM_BN,
    NUM_CONV,
    RESNET50_SHAPES,
    first_few,
)
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.fileio import atomic_write

AUTHOR = "mocoeval"
# What may be missing after loading a converted backbone into the R50-C4 detector: heads trained from scratch.
NEW_IN_DETECTOR = ("proposal_generator.", "roi_heads.box_predictor.", "roi_heads.res5.norm.")

_RULES = [
    (re.compile(r"^conv1\.weight$"), lambda m: "stem.conv1.weight"),
    (re.compile(r"^bn1\.(\w+)$"), lambda m: f"stem.conv1.norm.{m[1]}"),
    (re.compile(r"^layer(\d)\.(\d+)\.conv(\d)\.weight$"), lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
    (re.compile(r"^layer(\d)\.(\d+)\.bn(\d)\.(\w+)$"), lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.0\.weight$"), lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.weight"),
    (
        re.compile(r"^layer(\d)\.(\d+)\.downsample\.1\.(\w+)$"),
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}",
    ),
]


def d2_key(torchvision_key: str) -> str:
    """Detectron2 name of one torchvision ResNet tensor name (ValueError for names outside the backbone)."""
    for pattern, rename in _RULES:
        m = pattern.match(torchvision_key)
        if m:
            return rename(m)
    raise ValueError(f"not a ResNet backbone tensor: {torchvision_key}")


D2_RESNET50_SHAPES = {d2_key(k): s for k, s in RESNET50_SHAPES.items()}

# Detectron's Caffe2 names: blocks resN_B_branch2{a,b,c} / branch1 (shortcut), BN as _bn_s (scale) and _bn_b
# (bias); the MSRA files hold no running statistics (frozen BN folded into scale/bias).
_C2_CONV = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "downsample.0": "branch1"}
_C2_BN = {"bn1": "branch2a", "bn2": "branch2b", "bn3": "branch2c", "downsample.1": "branch1"}
_C2_BN_TENSOR = {"weight": "s", "bias": "b"}


def c2_key(torchvision_key: str) -> str | None:
    """Caffe2 (MSRA R-50.pkl) name of one torchvision ResNet tensor name; None for the BN running statistics,
    which Caffe2 files do not have."""
    parts = torchvision_key.rsplit(".", 1)
    module, tensor = parts[0], parts[1]
    if tensor in ("running_mean", "running_var"):
        return None
    if module == "conv1":
        return "conv1_w"
    if module == "bn1":
        return f"res_conv1_bn_{_C2_BN_TENSOR[tensor]}"
    m = re.match(r"^layer(\d)\.(\d+)\.(.+)$", module)
    if not m:
        raise ValueError(f"not a ResNet backbone tensor: {torchvision_key}")
    block = f"res{int(m[1]) + 1}_{m[2]}"
    if m[3] in _C2_CONV:
        return f"{block}_{_C2_CONV[m[3]]}_w"
    return f"{block}_{_C2_BN[m[3]]}_bn_{_C2_BN_TENSOR[tensor]}"


C2_RESNET50_SHAPES = {c2_key(k): s for k, s in RESNET50_SHAPES.items() if c2_key(k)}
C2_CLASSIFIER = ("fc1000_w", "fc1000_b")  # the ImageNet classifier, in R-50.pkl, unused by the detector

# The input settings each weights layout was trained with; a config that feeds anything else is refused.
INPUT_SETTINGS = {
    "torchvision": {
        "INPUT.FORMAT": "RGB",
        "MODEL.PIXEL_MEAN": IMAGENET_PIXEL_MEAN,
        "MODEL.PIXEL_STD": IMAGENET_PIXEL_STD,
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
    },
    "caffe2": {
        "INPUT.FORMAT": "BGR",
        "MODEL.PIXEL_MEAN": (103.530, 116.280, 123.675),
        "MODEL.PIXEL_STD": (1.0, 1.0, 1.0),
        "MODEL.RESNETS.STRIDE_IN_1X1": True,
    },
}
LAYOUT_NAMES = {"torchvision": "converted torchvision/MoCo weights", "caffe2": "Caffe2 (MSRA R-50.pkl) weights"}


def input_settings(input_norm: Mapping[str, Any] | None = None) -> dict:
    """The input settings converted weights need: the normalisation they record (`mocoeval_input`), ImageNet RGB
    for files written before it was recorded."""
    norm = input_norm or INPUT_NORMS["imagenet"]
    return {
        **INPUT_SETTINGS["torchvision"],
        "INPUT.FORMAT": norm["channels"],
        "MODEL.PIXEL_MEAN": tuple(norm["pixel_mean"]),
        "MODEL.PIXEL_STD": tuple(norm["pixel_std"]),
    }


def input_mismatches(cfg, layout: str | Mapping[str, Any]) -> list[str]:
    """The config's input settings that differ from what `layout` weights need (a layout name of INPUT_SETTINGS or
    the settings themselves, e.g. `input_settings(...)`), as "KEY value (needs X)"."""
    out = []
    for key, want in (INPUT_SETTINGS[layout] if isinstance(layout, str) else layout).items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        same = (
            np.allclose(node, want, atol=1e-3) if isinstance(want, tuple) and len(node) == len(want) else node == want
        )
        if not same:
            shown = list(node) if isinstance(node, (list, tuple)) else node
            out.append(f"{key} {shown} (needs {list(want) if isinstance(want, tuple) else want})")
    return out


# The last BN of a Bottleneck's residual branch, under any prefix (backbone., roi_heads., DDP's module.).


def _check_complete(model: Mapping[str, Any], where: str) -> None:
    """All 53 conv + 53 BN layers of R50 present with their shapes; else UserError naming what is off."""
    missing = [k for k in D2_RESNET50_SHAPES if k not in model]
    if missing:
        raise UserError(
            f"{where}: {len(missing)} of {len(D2_RESNET50_SHAPES)} ResNet-50 tensors missing: {first_few(missing)}"
        )
    wrong = [
        f"{k} {tuple(np.shape(model[k]))} (expected {s})"
        for k, s in D2_RESNET50_SHAPES.items()
        if tuple(np.shape(model[k])) != s
    ]
    if wrong:
        raise UserError(f"{where}: wrong shapes for a ResNet-50: {first_few(wrong, 3)}")
    convs = sum(1 for k in D2_RESNET50_SHAPES if np.ndim(model[k]) == 4)
    norms = sum(1 for k in D2_RESNET50_SHAPES if k.endswith(".norm.running_var"))
    if (convs, norms) != (NUM_CONV, NUM_BN):  # pragma: no cover - guaranteed by the shape table
        raise UserError(f"{where}: found {convs} conv and {norms} BN layers, ResNet-50 has {NUM_CONV} and {NUM_BN}")


def torchvision_to_d2(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """torchvision ResNet-50 state dict -> {Detectron2 name: float32 numpy array}.

    `fc.*` and `num_batches_tracked` are dropped; any other non-ResNet-50 name, a missing tensor or a
    wrong shape raises UserError, so the result is always the complete 265-tensor backbone.
    """
    import torch

    out: dict[str, np.ndarray] = {}
    unknown = []
    for k, v in state_dict.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        if k not in RESNET50_SHAPES:
            unknown.append(k)
            continue
        t = (
            v.detach().to(device="cpu", dtype=torch.float32)
            if isinstance(v, torch.Tensor)
            else torch.as_tensor(v, dtype=torch.float32)
        )
        out[d2_key(k)] = t.contiguous().numpy()
    if unknown:
        raise UserError(f"not a torchvision ResNet-50 state dict: unexpected keys {first_few(unknown)}")
    _check_complete(out, "torchvision state dict")
    return {k: out[k] for k in D2_RESNET50_SHAPES}  # canonical order


def check_output_pkl(out_path) -> Path:
    """A .pkl path in an existing folder, not a directory; else a one-line UserError."""
    out_path = Path(out_path)
    if out_path.suffix != ".pkl":
        raise UserError(f"output {out_path} must end with .pkl (Detectron2 reads only .pkl files as converted weights)")
    if not out_path.parent.is_dir():
        raise UserError(f"output folder does not exist: {out_path.parent}")
    if out_path.is_dir():
        raise UserError(f"output {out_path} is a directory")
    return out_path


def save_d2_pickle(
    out_path, d2_model: Mapping[str, np.ndarray], source: Mapping[str, Any], input_norm: Mapping[str, Any] | None = None
) -> Path:
    """Write the Detectron2 .pkl atomically; refuses an incomplete model (never an empty or partial file).

    `input_norm` ({"channels", "pixel_mean", "pixel_std"} on a 0..255 scale, default ImageNet RGB) is recorded as
    "mocoeval_input": the normalisation the weights were trained with travels with them."""
    out_path = check_output_pkl(out_path)
    _check_complete(d2_model, "converted model")
    data = {
        "model": dict(d2_model),
        "__author__": AUTHOR,
        "matching_heuristics": True,
        "mocoeval_source": dict(source),
        "mocoeval_input": {
            k: list(v) if isinstance(v, tuple) else v for k, v in (input_norm or INPUT_NORMS["imagenet"]).items()
        },
    }
    return atomic_write(out_path, lambda f: pickle.dump(data, f, protocol=4))


class _ForeignObject(pickle.UnpicklingError):
    pass


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists/numbers/strings and numpy arrays only: reading a .pkl never runs foreign code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        # Python 3's protocol-2 pickles (e.g. a re-saved R-50.pkl) store array bytes as
        # _codecs.encode(str, "latin1"): a string conversion, no foreign code (torch allows it too)
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise _ForeignObject(f"holds a {module}.{name} object, not only numpy arrays")
        if module == "numpy.core.multiarray":  # pickles written with numpy 1.x
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def check_input_settings(cfg, layout: str, config_file, input_norm: Mapping[str, Any] | None = None) -> None:
    """Refuse (one line) a config whose input settings contradict the weights, e.g. the MSRA Caffe2 R-50.pkl with
    the RGB MoCo config: it would train without error but on wrongly normalised input. Converted weights need the
    normalisation they record (`input_norm`, their `mocoeval_input`; ImageNet RGB when they record none)."""
    custom = layout == "torchvision" and input_norm and input_settings(input_norm) != INPUT_SETTINGS[layout]
    wrong = input_mismatches(cfg, input_settings(input_norm) if custom else layout)
    if wrong:
        other = next(k for k in INPUT_SETTINGS if k != layout)
        hint = " (the settings of " + LAYOUT_NAMES[other] + ")" if not input_mismatches(cfg, other) else ""
        what = LAYOUT_NAMES[layout] + (" with the input normalisation they record" if custom else "")
        raise UserError(
            f"{config_file} does not fit {what}: {'; '.join(wrong)}{hint}; "
            f"leave out --config-file to get the matching config"
        )


def _read_weights_pickle(path) -> Any:
    """The unpickled content of a weights .pkl (numpy-only unpickling); UserError for a missing/foreign/bad file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"converted weights not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a directory, expected a converted .pkl")
    if path.suffix != ".pkl":
        raise UserError(
            f"{path}: Detectron2 reads converted weights only from .pkl files "
            f"(convert a .pth first: python convert/to_d2.py CKPT OUT.pkl)"
        )
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except _ForeignObject as e:
        raise UserError(f"{path}: not a converted weights file ({e})") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OSError,
    ) as e:
        raise UserError(f"{path}: truncated or corrupted pickle ({type(e).__name__}: {e})") from None


def _caffe2_blobs(data: Any) -> dict | None:
    """The blobs of a pickle in Detectron's Caffe2 layout (what Detectron2 reads as "Caffe2": no "model" +
    "__author__"; blobs at the top level or under "blobs"), or None when it is not one."""
    if not isinstance(data, dict) or ("model" in data and "__author__" in data):
        return None
    blobs = data["blobs"] if isinstance(data.get("blobs"), dict) else data
    return blobs if "conv1_w" in blobs or "res_conv1_bn_s" in blobs else None


def read_weights(path) -> tuple[str, dict]:
    """(layout, data) of a weights .pkl that `run_voc.py` accepts: "torchvision" for a converted file
    (`check_d2_pickle`), "caffe2" for a complete Caffe2 R50 such as the MSRA R-50.pkl (data: its blobs)."""
    data = _read_weights_pickle(path)
    blobs = _caffe2_blobs(data)
    if blobs is None:
        return "torchvision", _check_d2_data(data, Path(path))
    return "caffe2", _check_caffe2_blobs(blobs, str(path))


def recorded_input_norm(path) -> dict | None:
    """The normalisation a converted .pkl records (`mocoeval_input`), None if it has none; no completeness check
    (verification must still report on a partial file)."""
    data = _read_weights_pickle(path)
    norm = data.get("mocoeval_input") if isinstance(data, dict) else None
    return norm if isinstance(norm, dict) else None


def read_caffe2_weights(path) -> dict | None:
    """The checked blobs of a Caffe2-layout .pkl (what the converter passes through), None for any other file."""
    if Path(path).suffix != ".pkl" or not Path(path).is_file():
        return None
    blobs = _caffe2_blobs(_read_weights_pickle(path))
    return None if blobs is None else _check_caffe2_blobs(blobs, str(path))


def _check_caffe2_blobs(blobs: dict, where: str) -> dict:
    if any(not isinstance(blobs.get(k), np.ndarray) for k in C2_RESNET50_SHAPES if k in blobs):
        raise UserError(f"{where}: Caffe2 blobs that are not numpy arrays")
    missing = [k for k in C2_RESNET50_SHAPES if k not in blobs]
    if missing:
        raise UserError(
            f"{where}: Caffe2 weights (conv1_w, res2_0_branch2a_w, ...) but {len(missing)} of "
            f"{len(C2_RESNET50_SHAPES)} ResNet-50 blobs missing: {first_few(missing)}"
        )
    wrong = [f"{k} {blobs[k].shape} (expected {s})" for k, s in C2_RESNET50_SHAPES.items() if blobs[k].shape != s]
    if wrong:
        raise UserError(f"{where}: Caffe2 weights of the wrong shapes for a ResNet-50: {first_few(wrong, 3)}")
    not_finite = [k for k in C2_RESNET50_SHAPES if not np.isfinite(blobs[k]).all()]
    if not_finite:
        raise UserError(f"{where}: NaN or Inf in {first_few(not_finite, 3)}")
    return blobs


def check_d2_pickle(path) -> dict:
    """Load a converted .pkl (numpy-only unpickling) and check it is a complete Detectron2 R50; return its data.

    Accepts files from this converter and from the official MoCo converter (whose extra `stem.fc.*` and
    `num_batches_tracked` entries Detectron2 ignores). Raises UserError naming what is missing or wrong.
    """
    return _check_d2_data(_read_weights_pickle(path), Path(path))


def _check_d2_data(data: Any, path: Path) -> dict:
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise UserError(f"{path}: not a converted weights file (no 'model' dict inside)")
    if "__author__" not in data:
        raise UserError(
            f"{path}: no '__author__' entry, so Detectron2 would read it as a Caffe2 model; "
            f"convert with convert/to_d2.py"
        )
    if not data.get("matching_heuristics"):
        raise UserError(
            f"{path}: 'matching_heuristics' is not set, so Detectron2 would not map res5.* to "
            f"roi_heads.res5.*; convert with convert/to_d2.py"
        )
    model = data["model"]
    not_arrays = [k for k in D2_RESNET50_SHAPES if k in model and not isinstance(model[k], np.ndarray)]
    if not_arrays:
        raise UserError(f"{path}: entries that are not numpy arrays: {first_few(not_arrays)}")
    _check_complete(model, str(path))
    not_finite = [k for k in D2_RESNET50_SHAPES if not np.isfinite(model[k]).all()]
    if not_finite:
        raise UserError(f"{path}: NaN or Inf in {first_few(not_finite, 3)}")
    return data
