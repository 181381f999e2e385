"""Find the ResNet-50 inside a checkpoint, whatever wrote it, without running pickled code.

`load_resnet50(path)` returns a torchvision-keyed ResNet-50 state dict (no `fc.*`, no
`num_batches_tracked`, float32) plus an `info` dict saying what the file was. Formats:

- ``moco``: MoCo v1/v2 checkpoints, ours and the official ones: ``state_dict`` holding
  ``[module.]encoder_q.*`` (kept), ``encoder_k.*``, ``queue``, ``queue_ptr`` (dropped); the projection
  head ``encoder_q.fc.*`` is dropped.
- ``moco_v3``: official MoCo v3 ResNet-50: ``[module.]base_encoder.*`` (kept, projector ``fc.*``
  dropped), ``momentum_encoder.*`` and ``predictor.*`` dropped.
- ``torchvision``: a torchvision ResNet-50 state dict (``fc.*`` dropped).

Any of them may sit at the top level or under ``state_dict`` / ``model``, with or without the
``module.`` prefix of (Distributed)DataParallel. Every bad input raises `UserError` with one line.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mocoeval.runtime.checkpoint_io import torch_load_safely
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.fileio import sha256_file, sha256_json
from mocoeval.results.store import pretrain_variant, special_variant

FORMATS = {
    "moco": "MoCo v1/v2 checkpoint (encoder_q kept; encoder_k, queue and projection head dropped)",
    "moco_v3": "MoCo v3 ResNet-50 checkpoint (base_encoder kept; momentum encoder, projector, predictor dropped)",
    "torchvision": "torchvision ResNet-50 state dict (fc dropped)",
}
# Where each format keeps the backbone, before an optional "module." prefix.
_FORMAT_PREFIX = {"moco": "encoder_q.", "moco_v3": "base_encoder.", "torchvision": ""}

RESNET50_BLOCKS = (3, 4, 6, 3)
_KNOWN_BOTTLENECK_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
_KNOWN_BASIC_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34}
# Classifier / SSL heads that sit beside the backbone under the same prefix: dropped, never converted.
_HEAD_NAMES = ("fc", "head", "heads", "projector", "projection_head", "predictor", "classifier")
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def resnet50_shapes() -> "OrderedDict[str, tuple[int, ...]]":
    """Every tensor a ResNet-50 backbone needs, torchvision names, in module order.

    53 conv weights (stem, 16 blocks x 3, 4 downsamples) and 53 BN layers x 4 tensors: 265 tensors.
    Built from the architecture, not from torchvision, so the tests can cross-check it against torchvision.
    """
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def conv_bn(conv: str, bn: str, cout: int, cin: int, k: int):
        shapes[f"{conv}.weight"] = (cout, cin, k, k)
        for t in _BN_TENSORS:
            shapes[f"{bn}.{t}"] = (cout,)

    conv_bn("conv1", "bn1", 64, 3, 7)
    cin = 64
    for stage, nblocks in enumerate(RESNET50_BLOCKS, start=1):
        width = 64 * 2 ** (stage - 1)
        cout = width * 4
        for b in range(nblocks):
            p = f"layer{stage}.{b}"
            conv_bn(f"{p}.conv1", f"{p}.bn1", width, cin, 1)
            conv_bn(f"{p}.conv2", f"{p}.bn2", width, width, 3)
            conv_bn(f"{p}.conv3", f"{p}.bn3", cout, width, 1)
            if b == 0:
                conv_bn(f"{p}.downsample.0", f"{p}.downsample.1", cout, cin, 1)
            cin = cout
    return shapes


RESNET50_SHAPES = resnet50_shapes()
NUM_CONV = sum(1 for k, s in RESNET50_SHAPES.items() if len(s) == 4)
NUM_BN = sum(1 for k in RESNET50_SHAPES if k.endswith(".running_var"))
assert NUM_CONV == 53 and NUM_BN == 53 and len(RESNET50_SHAPES) == 53 + 53 * 4


def first_few(items, n: int = 5) -> str:
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


def _checkpoint_stem(path: Path) -> str:
    """'moco_v2_200ep_pretrain.pth.tar' -> 'moco_v2_200ep_pretrain'."""
    name = path.name
    while True:
        stem, dot, ext = name.rpartition(".")
        if dot and stem and ext.lower() in ("pth", "pt", "tar", "ckpt", "bin", "pkl"):
            name = stem
        else:
            return name


def _tensor_items(d: Mapping) -> dict:
    import torch

    return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _find_state_dict(obj: Any, path: Path) -> tuple[str, dict]:
    """(where, {name: tensor}) — the state dict at the top level or under 'state_dict' / 'model'."""
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: holds a {type(obj).__name__}, expected a dict of tensors (a state dict) "
                        f"or a checkpoint dict with one under 'state_dict' or 'model'")
    for where in ("state_dict", "model"):
        inner = obj.get(where)
        if isinstance(inner, Mapping) and _tensor_items(inner):
            return where, _tensor_items(inner)
    top = _tensor_items(obj)
    if top:
        return "top level", top
    keys = first_few(repr(k) for k in obj.keys())
    raise UserError(f"{path}: no state dict inside (no tensors at the top level nor under 'state_dict' or "
                    f"'model'; top-level keys: {keys or 'none'})")


def _backbone_prefixes(keys, fmt: str) -> list[str]:
    """The prefixes ('module.encoder_q.', 'encoder_q.', ...) under which `fmt` keeps a backbone, most keys first."""
    base = _FORMAT_PREFIX[fmt]
    counts = {}
    for prefix in ("module." + base, base):
        if fmt == "torchvision":
            n = sum(1 for k in keys if k.startswith(prefix) and re.match(r"(conv1\.|bn1\.|layer\d+\.)", k[len(prefix):]))
        else:
            n = sum(1 for k in keys if k.startswith(prefix))
        if n:
            counts[prefix] = n
    return sorted(counts, key=lambda p: -counts[p])


def detect_format(keys) -> tuple[str, str] | None:
    """(format, prefix) of a state dict's keys, or None when no known layout matches."""
    keys = list(keys)
    for fmt in ("moco", "moco_v3", "torchvision"):
        prefixes = _backbone_prefixes(keys, fmt)
        if prefixes:
            return fmt, prefixes[0]
    return None


def describe_architecture(sd: Mapping[str, Any]) -> str | None:
    """Why `sd` (prefix stripped) is not a ResNet-50, in words; None if its block structure is ResNet-50's."""
    blocks: dict[int, set[int]] = {}
    has_conv3 = False
    for k in sd:
        m = re.match(r"layer(\d+)\.(\d+)\.(\w+)", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
            has_conv3 |= m.group(3) == "conv3"
    n_conv = sum(1 for v in sd.values() if getattr(v, "ndim", 0) == 4)
    if not blocks:
        if any(re.search(r"(^|\.)(patch_embed|cls_token|pos_embed|class_token|conv_proj|blocks\.\d+\.attn|"
                         r"encoder\.layers\.)", k) for k in sd):
            return (f"a Vision Transformer ({len(sd)} tensors: patch embedding and attention blocks, "
                    f"{n_conv} conv layer(s), no ResNet stages)")
        if n_conv == 0:
            return f"no convolution layers at all among its {len(sd)} tensors (keys like {first_few(sd, 3)})"
        if "conv1.weight" not in sd:
            return f"{n_conv} convolution kernels but no ResNet stages (layer1..layer4); keys like {first_few(sd, 3)}"
        return None  # a stem without stages: reported as missing keys
    per_stage = tuple(len(blocks.get(i, ())) for i in range(1, max(blocks) + 1))
    shown = "-".join(map(str, per_stage))
    if len(per_stage) != 4:
        return f"a network with {len(per_stage)} residual stages (blocks per stage {shown}); ResNet-50 has 4"
    if not has_conv3:
        depth = _KNOWN_BASIC_DEPTHS.get(per_stage)
        name = f"a ResNet-{depth}" if depth else "a ResNet"
        return (f"{name} with BasicBlocks (two 3x3 convs, no conv3 in its blocks; blocks per stage {shown}); "
                f"ResNet-50 has Bottleneck blocks 3-4-6-3")
    depth = _KNOWN_BOTTLENECK_DEPTHS.get(per_stage)
    if depth and depth != 50:
        return f"a ResNet-{depth} (Bottleneck blocks per stage {shown}); ResNet-50 has 3-4-6-3"
    w = sd.get("layer1.0.conv2.weight")
    if w is not None and w.ndim == 4 and tuple(w.shape) != RESNET50_SHAPES["layer1.0.conv2.weight"]:
        if w.shape[1] != w.shape[0]:
            return f"a ResNeXt-50 (grouped 3x3 convs: layer1.0.conv2.weight is {tuple(w.shape)}, ResNet-50 (64, 64, 3, 3))"
        return f"a wide ResNet-50 (layer1.0.conv2.weight is {tuple(w.shape)}, ResNet-50 (64, 64, 3, 3))"
    return None


def _variant(obj: Any, fmt: str, path: Path, name: str | None) -> dict:
    extras = obj if isinstance(obj, Mapping) else {}
    if isinstance(extras.get("variant"), Mapping):  # our pretrainer's checkpoints
        variant = dict(extras["variant"])
        if name:
            variant["name"] = name
        return variant
    if isinstance(extras.get("config"), Mapping):
        return pretrain_variant(extras["config"], name=name).to_record()
    if name:
        return special_variant(name).to_record()
    if fmt == "torchvision":
        return special_variant("supervised").to_record()
    return special_variant(_checkpoint_stem(path)).to_record()


def load_resnet50(path, fmt: str | None = None, trust_pickle: bool = False, *,
                  variant: str | None = None) -> tuple["OrderedDict[str, Any]", dict]:
    """The ResNet-50 backbone of a checkpoint as a torchvision-keyed float32 state dict, and what the file was.

    fmt: None to auto-detect, else one of FORMATS. variant: a name overriding the detected variant's name
    (e.g. 'random-init' for a randomly initialised torchvision model, which would otherwise count as
    'supervised'). Raises UserError (one line) for anything that is not a complete ResNet-50.
    """
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    obj = torch_load_safely(path, trust_pickle=trust_pickle)
    import torch  # already imported by the load; here (not at the top) so bad paths fail fast
    where, tensors = _find_state_dict(obj, path)

    detected = detect_format(tensors)
    if fmt is None:
        if detected is None:
            why = describe_architecture(tensors)
            raise UserError(f"{path}: no ResNet-50 weights found ({why or 'no encoder_q/base_encoder/conv1/layerN keys'}"
                            f"; state dict under {where}, keys like {first_few(tensors, 3)})")
        fmt, prefix = detected
    else:
        prefixes = _backbone_prefixes(tensors, fmt)
        if not prefixes:
            hint = f"; it looks like --format {detected[0]}" if detected else ""
            raise UserError(f"{path}: --format {fmt}: no [module.]{_FORMAT_PREFIX[fmt] or 'conv1/layerN '}* keys in the "
                            f"state dict (keys like {first_few(tensors, 3)}){hint}")
        prefix = prefixes[0]

    backbone, heads, unknown, batch_counters = {}, [], [], 0
    for k, v in tensors.items():
        if not k.startswith(prefix):
            continue
        name = k[len(prefix):]
        if name.endswith("num_batches_tracked"):
            batch_counters += 1
        elif name.split(".", 1)[0] in _HEAD_NAMES:
            heads.append(name)
        elif name in RESNET50_SHAPES:
            backbone[name] = v
        else:
            unknown.append(name)
    outside = len(tensors) - len(backbone) - len(heads) - len(unknown) - batch_counters

    why = describe_architecture({**backbone, **{u: tensors[prefix + u] for u in unknown}})
    if why:
        raise UserError(f"{path}: no ResNet-50 weights under '{prefix}': found {why}")
    missing = [k for k in RESNET50_SHAPES if k not in backbone]
    if missing:
        raise UserError(f"{path}: incomplete ResNet-50 under '{prefix}' ({fmt} format): {len(missing)} of "
                        f"{len(RESNET50_SHAPES)} tensors missing: {first_few(missing)}")
    if unknown:
        raise UserError(f"{path}: unexpected tensors for a ResNet-50 under '{prefix}' ({fmt} format): "
                        f"{first_few(unknown)} (a modified ResNet? only {', '.join(_HEAD_NAMES)} heads are dropped)")
    wrong = [f"{k} {tuple(v.shape)} (expected {RESNET50_SHAPES[k]})" for k, v in backbone.items()
             if tuple(v.shape) != RESNET50_SHAPES[k]]
    if wrong:
        raise UserError(f"{path}: not a standard ResNet-50: wrong shapes: {first_few(wrong, 3)}")
    not_float = [k for k, v in backbone.items() if not v.is_floating_point()]
    if not_float:
        raise UserError(f"{path}: non-floating-point weights: {first_few(not_float)}")

    state_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    cast = sorted({str(v.dtype) for v in backbone.values() if v.dtype != torch.float32})
    for k in RESNET50_SHAPES:  # canonical order; a copy so nothing stays mapped to the source file
        state_dict[k] = backbone[k].detach().to(dtype=torch.float32, copy=True).contiguous()
    # numpy's isfinite: ~10x faster than torch's on this CPU (it dominated the conversion time)
    not_finite = [k for k, v in state_dict.items() if not np.isfinite(v.numpy()).all()]
    if not_finite:
        raise UserError(f"{path}: NaN or Inf in {len(not_finite)} tensors ({first_few(not_finite, 3)}): "
                        f"a diverged or corrupted run")

    extras = obj if isinstance(obj, Mapping) else {}
    info = {
        "format": fmt,
        "format_description": FORMATS[fmt],
        "path": str(path.resolve()),
        "source_sha256": sha256_file(path),
        "variant": _variant(obj, fmt, path, variant),
        "container": where,
        "prefix": prefix,
        "num_tensors": len(state_dict),
        "num_conv": NUM_CONV,
        "num_bn": NUM_BN,
        "dropped": {"head": len(heads), "num_batches_tracked": batch_counters, "outside_backbone": outside},
        "head_keys": heads,
        "cast_to_float32_from": cast,
        "epoch": extras.get("epoch") if isinstance(extras.get("epoch"), int) else None,
        "arch": extras.get("arch") if isinstance(extras.get("arch"), str) else None,
    }
    return state_dict, info


RANDOM_INIT_PREFIX = "random-init:"  # the converter's pseudo-checkpoint "random-init:SEED"


def random_init_source_sha256(seed: int, residual_bn_init: float = 1.0) -> str:
    """Identity of a random-init backbone in the results store: linear and VOC runs of one network join."""
    identity = {"random-init": int(seed), "arch": "resnet50"}
    if residual_bn_init != 1.0:  # torchvision's init keeps the identity it had before the extension
        identity["residual_bn_init"] = float(residual_bn_init)
    return sha256_json(identity)


def random_init_resnet50(seed: int, residual_bn_init: float = 1.0) -> tuple["OrderedDict[str, Any]", dict]:
    """The tables' "random init" row: torchvision's ResNet-50 initialised under `seed` (fc dropped), as
    `load_resnet50` returns a checkpoint's backbone. `residual_bn_init` starts the last BN scale of every residual
    branch there, as `train_moco.py --residual-bn-init` does (1: torchvision's init; the network at the start of
    such a pretraining). The caller's RNG state is left untouched."""
    import torch
    from torchvision.models import resnet50

    from mocoeval.pretrain.residual_scaling import check_residual_bn_init, set_residual_branch_scales

    check_residual_bn_init(residual_bn_init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = resnet50(weights=None)
    set_residual_branch_scales(model, residual_bn_init)
    state = model.state_dict()
    state_dict = OrderedDict((k, state[k].detach().clone()) for k in RESNET50_SHAPES)
    variant = special_variant("random-init", residual_bn_init=float(residual_bn_init)).to_record()
    description = f"randomly initialised torchvision ResNet-50 (seed {seed})"
    if residual_bn_init != 1.0:
        description = description[:-1] + f", residual branches' last BN scale {residual_bn_init:g})"
    info = {
        "format": "random-init", "format_description": description,
        "path": None, "source_sha256": random_init_source_sha256(seed, residual_bn_init), "variant": variant,
        "seed": int(seed), "container": "-", "prefix": "", "num_tensors": len(state_dict), "num_conv": NUM_CONV,
        "num_bn": NUM_BN, "dropped": {"head": 0, "num_batches_tracked": 0, "outside_backbone": 0}, "head_keys": [],
        "cast_to_float32_from": [], "epoch": None, "arch": "resnet50",
    }
    return state_dict, info


def parse_random_init(spec: str) -> int | None:
    """SEED of a "random-init:SEED" pseudo-checkpoint, None for a real path; a bad seed is a UserError."""
    if not str(spec).startswith(RANDOM_INIT_PREFIX):
        return None
    seed = str(spec)[len(RANDOM_INIT_PREFIX):]
    if not seed.isdigit():
        raise UserError(f"{spec}: expected {RANDOM_INIT_PREFIX}SEED with a non-negative integer SEED")
    return int(seed)
