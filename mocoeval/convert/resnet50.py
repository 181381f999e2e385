"""The ResNet-50 backbone every converter input must hold: its 265 tensors (torchvision names, shapes) and the
input normalisations weights are trained with. Shared by the format readers and the Detectron2 writer."""

from __future__ import annotations

from collections import OrderedDict

RESNET50_BLOCKS = (3, 4, 6, 3)
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")

# Input normalisations on Detectron2's 0..255 pixel scale: the .pkl records one, so that the transfer runs feed
# the network what it was trained on.
IMAGENET_PIXEL_MEAN = (123.675, 116.280, 103.530)
IMAGENET_PIXEL_STD = (58.395, 57.120, 57.375)
INPUT_NORMS = {
    "imagenet": {"channels": "RGB", "pixel_mean": IMAGENET_PIXEL_MEAN, "pixel_std": IMAGENET_PIXEL_STD},
    # inputs only scaled to 0..1, no mean/std (e.g. SimCLR's TensorFlow checkpoints converted to PyTorch)
    "none": {"channels": "RGB", "pixel_mean": (0.0, 0.0, 0.0), "pixel_std": (255.0, 255.0, 255.0)},
    # Detectron's Caffe2 models (MSRA R-50.pkl): BGR, mean subtracted, std 1
    "caffe2": {"channels": "BGR", "pixel_mean": (103.530, 116.280, 123.675), "pixel_std": (1.0, 1.0, 1.0)},
}


def resnet50_shapes() -> OrderedDict[str, tuple[int, ...]]:
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
