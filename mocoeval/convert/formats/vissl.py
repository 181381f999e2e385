"""VISSL. Read from facebookresearch/vissl vissl/utils/checkpoint.py (checkpoints hold
classy_state_dict -> base_model -> model -> {trunk, heads}) and vissl/models/trunks/resnext.py (the trunk's
modules live in a ModuleDict `_feature_blocks` with torchvision names: conv1, bn1, layer1..4)."""
from mocoeval.convert.formats.layout import Candidate, Layout

LAYOUTS = (
    Layout(
        name="vissl", source="facebookresearch/vissl: vissl/utils/checkpoint.py, vissl/models/trunks/resnext.py",
        description="VISSL checkpoint (classy_state_dict.base_model.model.trunk kept; heads dropped)",
        markers=(r"^classy_state_dict\.",),
        candidates=(Candidate("trunk", r"classy_state_dict\.base_model\.model\.trunk\.(?:module\.)?_feature_blocks\.",
                              "the trunk, which VISSL's benchmarks evaluate"),),
        groups=((r"\.heads\.", "heads"),)),
)
