"""torchvision names, optionally under 'state_dict' / 'model' and DDP's 'module.': torchvision itself, timm's
resnet50, SimCLR checkpoints converted to PyTorch, and the backbone-only releases of DINO (dino_resnet50_pretrain.pth)
and Barlow Twins (resnet50.pth). Read from pytorch/vision torchvision/models/resnet.py, huggingface/pytorch-image-models
timm/models/resnet.py (same names: conv1, bn1, layerN, fc), tonylins/simclr-converter convert.py
({'state_dict': ...}), facebookresearch/dino hubconf.py and facebookresearch/barlowtwins main.py. The fallback:
tried last."""

from mocoeval.convert.formats.layout import CONTAINER, Candidate, Layout

LAYOUTS = (
    Layout(
        name="torchvision",
        source="pytorch/vision: torchvision/models/resnet.py (timm, SimCLR-converted, DINO and "
        "Barlow Twins backbone-only files use the same names)",
        description="torchvision names: torchvision, timm, SimCLR converted, DINO/Barlow Twins backbone-only (fc dropped)",
        candidates=(Candidate("model", CONTAINER, "the only network"),),
    ),
)
