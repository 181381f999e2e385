"""lightly. Read from lightly-ai/lightly examples/pytorch/moco.py and byol.py (the documented models):
backbone = nn.Sequential(*list(resnet.children())[:-1]), so children are numbered: 0 conv1, 1 bn1, 2 relu,
3 maxpool, 4-7 layer1-4, 8 avgpool; backbone_momentum and projection_head(_momentum) / prediction_head beside it
(examples/pytorch_lightning/*: the same under Lightning's 'state_dict')."""

import re

from mocoeval.convert.formats.layout import Candidate, Layout

_CHILD = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def sequential_to_torchvision(name: str) -> str | None:
    """'4.0.conv1.weight' -> 'layer1.0.conv1.weight'; None for names outside the numbered children."""
    m = re.match(r"(\d+)\.(.+)$", name)
    return f"{_CHILD[m[1]]}.{m[2]}" if m and m[1] in _CHILD else None


LAYOUTS = (
    Layout(
        name="lightly",
        source="lightly-ai/lightly: examples/pytorch/moco.py, examples/pytorch/byol.py",
        description="lightly model (backbone = Sequential of the ResNet's children; backbone_momentum and heads dropped)",
        markers=(r"(^|\.)backbone\.0\.weight$", r"(^|\.)backbone\.4\.0\.conv1\.weight$"),
        candidates=(
            Candidate(
                "backbone",
                r"(?:state_dict\.)?(?:module\.)?backbone\.",
                "the online backbone, the one lightly's examples evaluate",
                sequential_to_torchvision,
            ),
            Candidate(
                "backbone_momentum",
                r"(?:state_dict\.)?(?:module\.)?backbone_momentum\.",
                "the momentum copy",
                sequential_to_torchvision,
            ),
        ),
        groups=(
            (r"_momentum\.", "momentum copy"),
            (r"projection_head\.", "projection head"),
            (r"prediction_head\.", "prediction head"),
        ),
    ),
)
