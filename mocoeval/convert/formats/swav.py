"""SwAV. Read from facebookresearch/swav main_swav.py (saves {'epoch', 'state_dict': model.state_dict(),
'optimizer'} of the DDP model: 'module.' prefix) and src/resnet50.py (torchvision names beside projection_head and
prototypes); the released swav_800ep_pretrain.pth.tar is the bare state dict (hubconf.py)."""
from mocoeval.convert.formats.layout import CONTAINER, Candidate, Layout

LAYOUTS = (
    Layout(
        name="swav", source="facebookresearch/swav: main_swav.py, src/resnet50.py",
        description="SwAV checkpoint (backbone kept; projection head and prototypes dropped)",
        markers=(r"(^|\.)prototypes\.",),
        candidates=(Candidate("model", CONTAINER, "the only network"),),
        groups=((r"projection_head\.", "projection head"), (r"prototypes\.", "prototypes"))),
)
