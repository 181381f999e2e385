"""Does a .pkl load into the R50-C4 detector as the transfer runs use it, with the source's tensors? The check
behind `convert/to_d2.py --verify`: build the detector, load through Detectron2's checkpointer, compare."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mocoeval.convert.detectron2_weights import (
    D2_RESNET50_SHAPES,
    NEW_IN_DETECTOR,
    input_mismatches,
    input_settings,
    recorded_input_norm,
)
from mocoeval.convert.formats import first_few
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.logger import quiet_loggers


def load_into_detector(pkl_path, config_file=None, opts: list | None = None):
    """Build the R50-C4 detector (CPU, eval mode) and load `pkl_path` through DetectionCheckpointer.

    Returns (model, cfg, incompatible) where incompatible has missing_keys / unexpected_keys /
    incorrect_shapes as DetectionCheckpointer computed them.
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from mocoeval.transfer.detection.modeling import DEFAULT_VOC_CONFIG, load_config

    class RecordingCheckpointer(DetectionCheckpointer):
        """DetectionCheckpointer that keeps the incompatible-keys result its `load` only logs."""

        incompatible = None

        def _load_model(self, checkpoint):
            self.incompatible = super()._load_model(checkpoint)
            return self.incompatible

    cfg = load_config(config_file or DEFAULT_VOC_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *(opts or [])])
    with quiet_loggers("fvcore.common.checkpoint", "detectron2"):
        model = build_model(cfg)
        checkpointer = RecordingCheckpointer(model)
        checkpointer.load(str(pkl_path))
    model.eval()
    return model, cfg, checkpointer.incompatible


def classify_load_result(incompatible) -> dict:
    """Split a load result into expected gaps (new heads, BN batch counters) and problems."""
    missing = list(incompatible.missing_keys)
    new_heads = [k for k in missing if k.startswith(NEW_IN_DETECTOR)]
    counters = [k for k in missing if k not in new_heads and k.endswith("num_batches_tracked")]
    other_missing = [k for k in missing if k not in new_heads and k not in counters]
    return {
        "missing_new_heads": new_heads,
        # BN step counters: only used when BN momentum is None (Detectron2 uses 0.1), so not loading them is harmless.
        "missing_batch_counters": counters,
        "missing_other": other_missing,
        "unexpected": list(incompatible.unexpected_keys),
        "incorrect_shapes": [f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes],
    }


def verify_conversion(
    state_dict: Mapping[str, Any],
    pkl_path,
    config_file=None,
    *,
    tol: float = 1e-4,
    image_size: int = 64,
    batch_size: int = 2,
    seed: int = 0,
) -> dict:
    """Numerically compare the source torchvision ResNet-50 with the detector built from the converted file.

    Both in eval mode, fp32, fed the same already-normalised tensor (Detectron2's backbone does not
    normalise; GeneralizedRCNN.preprocess_image does): backbone res4 vs layer3 and roi_heads.res5
    without its appended `norm` vs layer4. Also checks what loading left out (only RPN, box predictor
    and roi_heads.res5.norm may be missing) and that the config normalises inputs as the .pkl records
    (`mocoeval_input`; without config_file the default config takes that normalisation).
    Returns a dict with "ok", the max abs differences, the load report and a one-line "line".
    """
    import torch
    import torchvision

    # The normalisation the .pkl records is what the detector must feed: the default config takes it, a given
    # config must agree with it.
    needed = input_settings(recorded_input_norm(pkl_path))
    opts = (
        []
        if config_file
        else [
            x
            for k in ("INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD")
            for x in (k, list(needed[k]) if isinstance(needed[k], tuple) else needed[k])
        ]
    )
    model, cfg, incompatible = load_into_detector(pkl_path, config_file, opts)
    load = classify_load_result(incompatible)
    problems = []
    if load["missing_other"]:
        problems.append(f"missing after loading: {first_few(load['missing_other'], 3)}")
    if load["incorrect_shapes"]:
        problems.append(f"shape mismatches: {first_few(load['incorrect_shapes'], 2)}")
    wrong_inputs = input_mismatches(cfg, needed)
    if wrong_inputs:
        problems.append(
            f"config feeds {cfg.INPUT.FORMAT} input that the weights were not trained with (the "
            f"normalisation the .pkl records): {', '.join(wrong_inputs)}"
        )

    # The source model: built on the meta device (no random init to pay for), then given the checkpoint's
    # tensors; fc and the BN step counters are not part of the backbone and get placeholders.
    with torch.device("meta"):
        source = torchvision.models.resnet50()
    full = {
        k: torch.zeros(v.shape, dtype=v.dtype)
        for k, v in source.state_dict().items()
        if k.startswith("fc.") or k.endswith("num_batches_tracked")
    }
    full.update({k: v for k, v in state_dict.items() if not (k.startswith("fc.") or k.endswith("num_batches_tracked"))})
    try:
        source.load_state_dict(full, strict=True, assign=True)
    except RuntimeError as e:  # the state dict comes from load_resnet50: a bug if this fires
        raise UserError(f"source state dict is not a torchvision ResNet-50: {' '.join(str(e).split())[:300]}") from None
    source.eval()

    res5 = model.roi_heads.res5
    res5_blocks = torch.nn.Sequential(*[m for name, m in res5.named_children() if name != "norm"])
    x = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = source.maxpool(source.relu(source.bn1(source.conv1(x))))
        layer3 = source.layer3(source.layer2(source.layer1(y)))
        layer4 = source.layer4(layer3)
        res4 = model.backbone(x)["res4"]
        res5_out = res5_blocks(res4)
    if res4.shape != layer3.shape or res5_out.shape != layer4.shape:
        problems.append(
            f"output shapes differ: res4 {tuple(res4.shape)} vs layer3 {tuple(layer3.shape)}, "
            f"res5 {tuple(res5_out.shape)} vs layer4 {tuple(layer4.shape)}"
        )
        diff4 = diff5 = float("inf")
    else:
        diff4 = (res4 - layer3).abs().max().item()
        diff5 = (res5_out - layer4).abs().max().item()
    if not (diff4 <= tol and diff5 <= tol):
        problems.append(f"features differ by more than {tol:g}")
    ok = not problems
    diffs = f"max|res4-layer3| {diff4:.2e}, max|res5-layer4| {diff5:.2e} (tol {tol:g}, fp32"
    if ok:
        counters = len(load["missing_batch_counters"])
        line = (
            f"verify: OK {diffs}, input {batch_size}x3x{image_size}x{image_size}, feature max "
            f"{layer3.abs().max().item():.3g}/{layer4.abs().max().item():.3g}); loaded all "
            f"{len(D2_RESNET50_SHAPES)} backbone+res5 tensors, missing only the new heads "
            f"({len(load['missing_new_heads'])} RPN/box-predictor/res5.norm tensors"
            + (f", {counters} BN step counters" if counters else "")
            + ")"
        )
    else:
        line = f"verify: FAIL {'; '.join(problems)}; {diffs})"
    return {
        "ok": ok,
        "line": line,
        "max_abs_diff": {"res4_vs_layer3": diff4, "res5_vs_layer4": diff5},
        "tol": tol,
        "problems": problems,
        "load": load,
    }
