"""Find the ResNet-50 inside a checkpoint, whatever framework wrote it, without running pickled code.

`load_resnet50(path)` returns a torchvision-keyed ResNet-50 state dict (no `fc.*`, no `num_batches_tracked`,
float32) plus an `info` dict saying what the file was, including `info["report"]`: the lines the converter
prints (format recognised, where the backbone was found, 265/265 tensors mapped, what was left out by group).

The formats are a registry: one module per framework in this package declares its `LAYOUTS` (see layout.py):
markers that recognise it, candidate backbones (the one the framework evaluates first) and the groups it leaves
out. Adding a framework is one module here, one entry in `_MODULES` and one test. Detection flattens the
checkpoint to dotted keys and takes the first layout whose markers all match (torchvision names last, as the
fallback). `--select NAME` converts another candidate (a momentum copy, DINO's student); `--prefix P` reads any
layout we do not know (strip P, then torchvision names). Every bad input raises `UserError` with one line.
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mocoeval.convert.formats import (
    barlow_twins,
    caffe2,
    dino,
    lightly,
    mmselfsup,
    moco,
    solo_learn,
    swav,
    torchvision,
    vissl,
)
from mocoeval.convert.formats.layout import Candidate, Layout
from mocoeval.convert.resnet50 import (  # noqa: F401
    INPUT_NORMS,
    NUM_BN,
    NUM_CONV,
    RESNET50_BLOCKS,
    RESNET50_SHAPES,
    first_few,
    resnet50_shapes,
)
from mocoeval.results.store import pretrain_variant, special_variant
from mocoeval.runtime.checkpoint_io import torch_load_safely
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.fileio import sha256_file, sha256_json

# Detection order: specific layouts before the generic ones they contain (mmselfsup/solo-learn/lightly before a
# plain 'backbone.', SwAV before bare torchvision names); torchvision is the fallback.
_MODULES = (vissl, mmselfsup, solo_learn, lightly, dino, barlow_twins, moco, swav, torchvision, caffe2)
LAYOUTS: OrderedDict[str, Layout] = OrderedDict((lay.name, lay) for m in _MODULES for lay in m.LAYOUTS)
# Formats load_resnet50 reads (Caffe2 weights are already Detectron2's: the converter copies them).
FORMATS = {name: lay.description for name, lay in LAYOUTS.items() if not lay.passthrough}

_KNOWN_BOTTLENECK_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
_KNOWN_BASIC_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34}
# Left-out groups every layout shares, tried after the layout's own.
_COMMON_GROUPS = (
    (r"num_batches_tracked$", "BN step counters"),
    (r"(^|\.)optimizer", "optimizer state"),
    (r"(^|\.)(fc|head|heads|projector|projection_head|predictor|classifier)\.", "classifier / head"),
)
_RESNET_PART = re.compile(r"(conv1|bn1|layer\d+)\.")


def _checkpoint_stem(path: Path) -> str:
    """'moco_v2_200ep_pretrain.pth.tar' -> 'moco_v2_200ep_pretrain'."""
    name = path.name
    while True:
        stem, dot, ext = name.rpartition(".")
        if dot and stem and ext.lower() in ("pth", "pt", "tar", "ckpt", "bin", "pkl"):
            name = stem
        else:
            return name


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
        if any(
            re.search(
                r"(^|\.)(patch_embed|cls_token|pos_embed|class_token|conv_proj|blocks\.\d+\.attn|"
                r"encoder\.layers\.)",
                k,
            )
            for k in sd
        ):
            return (
                f"a Vision Transformer ({len(sd)} tensors: patch embedding and attention blocks, "
                f"{n_conv} conv layer(s), no ResNet stages)"
            )
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
        return (
            f"{name} with BasicBlocks (two 3x3 convs, no conv3 in its blocks; blocks per stage {shown}); "
            f"ResNet-50 has Bottleneck blocks 3-4-6-3"
        )
    depth = _KNOWN_BOTTLENECK_DEPTHS.get(per_stage)
    if depth and depth != 50:
        return f"a ResNet-{depth} (Bottleneck blocks per stage {shown}); ResNet-50 has 3-4-6-3"
    w = sd.get("layer1.0.conv2.weight")
    if w is not None and w.ndim == 4 and tuple(w.shape) != RESNET50_SHAPES["layer1.0.conv2.weight"]:
        if w.shape[1] != w.shape[0]:
            return (
                f"a ResNeXt-50 (grouped 3x3 convs: layer1.0.conv2.weight is {tuple(w.shape)}, ResNet-50 (64, 64, 3, 3))"
            )
        return f"a wide ResNet-50 (layer1.0.conv2.weight is {tuple(w.shape)}, ResNet-50 (64, 64, 3, 3))"
    return None


def _variant(obj: Any, path: Path, name: str | None) -> dict:
    extras = obj if isinstance(obj, Mapping) else {}
    if isinstance(extras.get("variant"), Mapping):  # our pretrainer's checkpoints
        variant = dict(extras["variant"])
        if name:
            variant["name"] = name
        return variant
    if isinstance(extras.get("config"), Mapping):
        return pretrain_variant(extras["config"], name=name).to_record()
    # Any other file is named after itself: torchvision names say nothing about how the weights were trained (DINO's
    # and Barlow Twins' backbone-only files have them too), so none lands on the supervised row unasked.
    return special_variant(name or _checkpoint_stem(path)).to_record()


def _flatten(obj: Any) -> tuple[dict, list[str]]:
    """({dotted key: tensor}, every dotted key including non-tensor leaves) of nested mappings."""
    import torch

    tensors, keys = {}, []

    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping):
                keys.append(key)  # containers count for markers too (mmcv's 'meta')
                walk(v, key + ".")
                continue
            keys.append(key)
            if isinstance(v, torch.Tensor):
                tensors[key] = v

    walk(obj, "")
    return tensors, keys


def _find(tensors: Mapping, cand: Candidate) -> tuple[str, dict] | None:
    """(prefix, {torchvision name: flat key}) where `cand` holds the most ResNet-50 tensors; None if none."""
    pattern = re.compile(cand.pattern)
    found: dict[str, dict] = {}
    for key in tensors:
        m = pattern.match(key)
        if not m:
            continue
        name = key[m.end() :]
        name = cand.rename(name) if cand.rename else name
        if name in RESNET50_SHAPES:
            found.setdefault(m.group(0), {})[name] = key
    if not found:
        return None
    prefix = max(found, key=lambda p: len(found[p]))
    return prefix, found[prefix]


def _resnet_prefixes(tensors: Mapping) -> Counter:
    """How many ResNet-50 tensor names sit under each dotted prefix (the longest name a key ends with)."""
    counts: Counter = Counter()
    for key in tensors:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in RESNET50_SHAPES:
                counts[".".join(parts[:i]) + ("." if i else "")] += 1
                break
    return counts


def _structure(obj: Any, tensors: Mapping) -> str:
    """The top-level structure, e.g. "'state_dict' (322 tensors: 'backbone.body.', 'fpn.'), 'epoch'"."""
    parts = []
    for k, v in list(obj.items())[:8]:
        if isinstance(v, Mapping):
            inner = [t[len(str(k)) + 1 :] for t in tensors if t.startswith(f"{k}.")]
            heads = sorted({i.split(".")[0] + "." for i in inner if "." in i})
            parts.append(f"{k!r} ({len(inner)} tensors: {first_few(heads, 4)})" if inner else f"{k!r} (no tensors)")
        else:
            parts.append(repr(k))
    return ", ".join(parts) + (f" (+{len(obj) - 8} more)" if len(obj) > 8 else "")


def _candidates(lay: Layout, tensors: Mapping) -> list[tuple[Candidate, str, dict]]:
    return [(c, *hit) for c in lay.candidates for hit in [_find(tensors, c)] if hit]


def _recognise(tensors: Mapping, keys: list[str]) -> tuple[Layout, list] | None:
    for lay in LAYOUTS.values():
        if lay.passthrough or not all(any(re.search(m, k) for k in keys) for m in lay.markers):
            continue
        found = _candidates(lay, tensors)
        if found:
            return lay, found
    return None


def _unknown_layout(path: Path, obj: Mapping, tensors: Mapping, select: str | None) -> tuple[Layout, list]:
    """The layout of a checkpoint no format recognised: a candidate --select names, else a UserError that shows
    the structure and suggests the flag that reads it."""
    counts = _resnet_prefixes(tensors)
    complete = [p for p, n in counts.most_common() if n == len(RESNET50_SHAPES)]
    if select is not None and select in complete:
        generic = Layout(
            name="prefix",
            description=f"backbone chosen with --select {select!r}",
            source="-",
            candidates=(Candidate(select, re.escape(select), "chosen with --select"),),
        )
        return generic, _candidates(generic, tensors)
    where = f"{path}: no known checkpoint layout (top level: {_structure(obj, tensors)})"
    if len(complete) > 1:
        raise UserError(
            f"{where}; {len(complete)} equally plausible ResNet-50 backbones, under "
            f"{first_few(repr(p) for p in complete)}: choose one with --select PREFIX "
            f"(e.g. --select {complete[0]})"
        )
    if counts:
        best, n = counts.most_common(1)[0]
        raise UserError(
            f"{where}; the most likely backbone is under {best!r} ({n} of {len(RESNET50_SHAPES)} "
            f"ResNet-50 tensors): rerun with --prefix {best}"
        )
    why = describe_architecture(tensors)
    raise UserError(f"{where}; no ResNet-50 weights found ({why or 'no conv1/bn1/layerN tensors under any prefix'})")


def _with_prefix(path: Path, tensors: Mapping, prefix: str) -> tuple[Layout, list]:
    """--prefix P: the one dotted prefix ending in P that holds ResNet tensors (P may omit the container)."""
    counts = _resnet_prefixes(tensors)
    hits = [p for p in counts if p == prefix or p.endswith("." + prefix)]
    if not hits:
        shown = first_few(f"{p!r} ({n})" for p, n in counts.most_common()) or "none"
        raise UserError(
            f"{path}: --prefix {prefix!r} matches no ResNet-50 tensors; prefixes holding some (tensor count): {shown}"
        )
    if len(hits) > 1:
        raise UserError(
            f"{path}: --prefix {prefix!r} matches {len(hits)} backbones ({first_few(repr(h) for h in hits)});"
            f" give the full prefix"
        )
    generic = Layout(
        name="prefix",
        description=f"torchvision names under --prefix {prefix!r}",
        source="-",
        candidates=(Candidate(hits[0], re.escape(hits[0]), "chosen with --prefix"),),
    )
    return generic, _candidates(generic, tensors)


def _group(key: str, lay: Layout) -> str:
    for pattern, group in (*lay.groups, *_COMMON_GROUPS):
        if re.search(pattern, key):
            return group
    return "other"


def load_resnet50(
    path,
    fmt: str | None = None,
    trust_pickle: bool = False,
    *,
    variant: str | None = None,
    select: str | None = None,
    prefix: str | None = None,
) -> tuple[OrderedDict[str, Any], dict]:
    """The ResNet-50 backbone of a checkpoint as a torchvision-keyed float32 state dict, and what the file was.

    fmt: None to auto-detect, else one of FORMATS. select: the candidate backbone to convert instead of the one the
    framework evaluates (its name, e.g. 'student', or for an unknown layout a prefix). prefix: read torchvision names
    under this prefix (any layout). variant: a name overriding the detected variant's name (e.g. 'supervised' for
    supervised torchvision weights; without it a torchvision-named file is named after itself, with a warning in
    info["warnings"]). Raises UserError (one
    line) for anything that is not one complete ResNet-50.
    """
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if prefix is not None and (fmt or select):
        raise UserError("--prefix reads torchvision names under a prefix of any layout: leave out --format/--select")
    obj = torch_load_safely(path, trust_pickle=trust_pickle)
    import torch  # already imported by the load; here (not at the top) so bad paths fail fast

    if not isinstance(obj, Mapping):
        raise UserError(
            f"{path}: holds a {type(obj).__name__}, expected a dict of tensors (a state dict) "
            f"or a checkpoint dict holding one"
        )
    tensors, keys = _flatten(obj)
    if not tensors:
        raise UserError(
            f"{path}: no state dict inside (no tensors anywhere; top-level keys: "
            f"{first_few(repr(k) for k in obj.keys()) or 'none'})"
        )

    if prefix is not None:
        lay, found = _with_prefix(path, tensors, prefix)
    elif fmt is not None:
        lay, found = LAYOUTS[fmt], _candidates(LAYOUTS[fmt], tensors)
        if not found:
            detected = _recognise(tensors, keys)
            hint = f"; it looks like --format {detected[0].name}" if detected else ""
            raise UserError(
                f"{path}: --format {fmt}: no backbone where {fmt} keeps it "
                f"({first_few(c.pattern for c in lay.candidates)}; keys like {first_few(tensors, 3)}){hint}"
            )
    else:
        lay, found = _recognise(tensors, keys) or _unknown_layout(path, obj, tensors, select)

    chosen = found[0]
    if select is not None and lay.name != "prefix":
        named = [f for f in found if f[0].name == select]
        if not named:
            raise UserError(
                f"{path}: --select {select!r}: the {lay.name} layout has no such backbone; found "
                f"{first_few(repr(f[0].name) for f in found)}"
            )
        chosen = named[0]
    cand, where, mapped = chosen

    # Everything under the chosen prefix, as the backbone's names: what is not ResNet-50 there says what it is.
    under = {}
    for key, v in tensors.items():
        if key.startswith(where):
            name = key[len(where) :]
            name = cand.rename(name) if cand.rename else name
            if name is not None:
                under[name] = v
    backbone = {name: tensors[key] for name, key in mapped.items()}
    unknown = [
        n for n in under if n not in RESNET50_SHAPES and _RESNET_PART.match(n) and not n.endswith("num_batches_tracked")
    ]
    why = describe_architecture({**backbone, **{u: under[u] for u in unknown}})
    if why:
        raise UserError(f"{path}: no ResNet-50 weights under '{where}': found {why}")
    missing = [k for k in RESNET50_SHAPES if k not in backbone]
    if missing:
        raise UserError(
            f"{path}: incomplete ResNet-50 under '{where}' ({lay.name} format): {len(missing)} of "
            f"{len(RESNET50_SHAPES)} tensors missing: {first_few(missing)}"
        )
    if unknown:
        raise UserError(
            f"{path}: unexpected tensors for a ResNet-50 under '{where}' ({lay.name} format): "
            f"{first_few(unknown)} (a modified ResNet?)"
        )
    wrong = [
        f"{k} {tuple(v.shape)} (expected {RESNET50_SHAPES[k]})"
        for k, v in backbone.items()
        if tuple(v.shape) != RESNET50_SHAPES[k]
    ]
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
        raise UserError(
            f"{path}: NaN or Inf in {len(not_finite)} tensors ({first_few(not_finite, 3)}): a diverged or corrupted run"
        )

    used = set(mapped.values())
    left_out = Counter(_group(k, lay) for k in tensors if k not in used)
    heads = [
        k[len(where) :]
        for k in tensors
        if k.startswith(where)
        and k not in used
        and _group(k, lay) in ("classifier / head", "projection head", "projector")
    ]
    others = [f for f in found if f is not chosen]
    report = [
        f"format: {lay.name}: {lay.description} (layout read from {lay.source})",
        f"backbone: {cand.name} under '{where}': {cand.role}"
        + (" (chosen with --select)" if chosen is not found[0] else ""),
        f"mapped {len(state_dict)} of {len(RESNET50_SHAPES)} ResNet-50 tensors ({NUM_CONV} conv + {NUM_BN} "
        f"BN layers)" + (f"; cast {'/'.join(cast)} to float32" if cast else ""),
    ]
    if others:
        report.append(
            "also found: " + "; ".join(f"{c.name} under '{p}' ({c.role}; --select {c.name})" for c, p, _ in others)
        )
    report.append("left out: " + (", ".join(f"{g} {n}" for g, n in left_out.most_common()) or "nothing"))
    extras = obj
    info = {
        "format": lay.name,
        "format_description": lay.description,
        "format_source": lay.source,
        "path": str(path.resolve()),
        "source_sha256": sha256_file(path),
        "variant": _variant(obj, path, variant),
        # the user may mean the supervised row: say how, as torchvision names cannot tell
        "warnings": [
            f"{path.name}: torchvision names say nothing about how the weights were trained: recorded as "
            f"variant '{_checkpoint_stem(path)}'; pass --variant supervised if they are supervised ImageNet "
            f"weights"
        ]
        if lay.name == "torchvision" and not variant
        else [],
        "container": (where.split(".")[0] if isinstance(obj.get(where.split(".")[0]), Mapping) else "top level"),
        "prefix": where,
        "candidate": cand.name,
        "num_tensors": len(state_dict),
        "num_conv": NUM_CONV,
        "num_bn": NUM_BN,
        "dropped": {
            "head": len(heads),
            "num_batches_tracked": left_out.get("BN step counters", 0),
            "outside_backbone": sum(left_out.values()) - left_out.get("BN step counters", 0) - len(heads),
        },
        "left_out": dict(left_out),
        "head_keys": heads,
        "cast_to_float32_from": cast,
        "input": dict(INPUT_NORMS[lay.input_norm]),
        "report": report,
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


def random_init_resnet50(seed: int, residual_bn_init: float = 1.0) -> tuple[OrderedDict[str, Any], dict]:
    """The tables' "random init" row: torchvision's ResNet-50 initialised under `seed` (fc dropped), as
    `load_resnet50` returns a checkpoint's backbone. `residual_bn_init` starts the last BN scale of every residual
    branch there, as `train_moco.py --residual-bn-init` does (1: torchvision's init; the network at the start of
    such a pretraining). The caller's RNG state is left untouched."""
    import torch
    from torchvision.models import resnet50

    from mocoeval.pretrain.config import check_residual_bn_init
    from mocoeval.pretrain.residual_scaling import set_residual_branch_scales

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
        "format": "random-init",
        "format_description": description,
        "path": None,
        "source_sha256": random_init_source_sha256(seed, residual_bn_init),
        "variant": variant,
        "seed": int(seed),
        "container": "-",
        "prefix": "",
        "num_tensors": len(state_dict),
        "num_conv": NUM_CONV,
        "num_bn": NUM_BN,
        "dropped": {"head": 0, "num_batches_tracked": 0, "outside_backbone": 0},
        "head_keys": [],
        "cast_to_float32_from": [],
        "epoch": None,
        "arch": "resnet50",
    }
    return state_dict, info


def parse_random_init(spec: str) -> int | None:
    """SEED of a "random-init:SEED" pseudo-checkpoint, None for a real path; a bad seed is a UserError."""
    if not str(spec).startswith(RANDOM_INIT_PREFIX):
        return None
    seed = str(spec)[len(RANDOM_INIT_PREFIX) :]
    if not seed.isdigit():
        raise UserError(f"{spec}: expected {RANDOM_INIT_PREFIX}SEED with a non-negative integer SEED")
    return int(seed)
