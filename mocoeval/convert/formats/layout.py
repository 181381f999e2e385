"""What one framework's checkpoint layout is, as data: the unit each format module declares.

Keys are matched on the checkpoint flattened to dotted paths ('state_dict.module.encoder_q.conv1.weight',
'teacher.backbone.layer1.0.bn1.bias'), so nesting and prefixes are one mechanism.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A place where a layout may keep a ResNet-50: `pattern` (a regex anchored at the key's start) matches the
    prefix; what follows is a torchvision name, after `rename` when the framework uses other names."""

    name: str  # what --select takes and the report shows
    pattern: str
    role: str  # why it is (or is not) the one to convert
    rename: Callable[[str], str | None] | None = None


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    source: str  # the framework's file(s) the layout was read from
    candidates: tuple[Candidate, ...] = ()  # first: the backbone the framework itself evaluates
    markers: tuple[str, ...] = ()  # regexes that must each match some key (tensor or not) for the layout to apply
    groups: tuple[tuple[str, str], ...] = ()  # (regex searched in a left-out key, group name) for the report
    input_norm: str = "imagenet"  # a key of resnet50.INPUT_NORMS
    passthrough: bool = False  # already Detectron2 weights (a pickle, not a torch checkpoint): copied as is


CONTAINER = r"(?:state_dict\.|model\.)?(?:module\.)?"  # where most frameworks put the state dict, DDP prefix optional
