"""SwAV. Read from facebookresearch/swav main_swav.py at 04b8f4310a21 (saves {'epoch', 'state_dict':
model.state_dict(), 'optimizer'[, 'amp']} of the DDP model: 'module.' prefix), src/resnet50.py at 04b8f4310a21
(torchvision names beside projection_head = Sequential(Linear, BatchNorm1d, ReLU, Linear) and prototypes, a Linear or
MultiPrototypes' prototypes0..N) and hubconf.py at 2c4b00e13ef5 (the released swav_800ep_pretrain.pth.tar is that
state dict bare, 'module.' keys and heads included: it strips 'module.' and loads with strict=False)."""

from mocoeval.convert.formats.layout import CONTAINER, Candidate, Layout

LAYOUTS = (
    Layout(
        name="swav",
        source="facebookresearch/swav: main_swav.py, src/resnet50.py",
        description="SwAV checkpoint (backbone kept; projection head and prototypes dropped)",
        markers=(r"(^|\.)prototypes\.",),
        candidates=(Candidate("model", CONTAINER, "the only network"),),
        groups=((r"projection_head\.", "projection head"), (r"prototypes\.", "prototypes")),
    ),
)
