"""VISSL. Read from facebookresearch/vissl (commit 0832020479cf) vissl/models/base_ssl_model.py
(get_classy_state: base_model -> {"model": {"trunk", "heads"}, "meta": {"trunk", "heads"}}, saved under the checkpoint's
classy_state_dict; a FeatureExtractorModel trunk, as in linear-evaluation runs, nests the network as trunk.base_model)
and vissl/models/trunks/resnext.py (the trunk's modules live in a ModuleDict `_feature_blocks` with torchvision names:
conv1, bn1, layer1..4). vissl/utils/checkpoint.py reads the same path (classy_state_dict.base_model.model.trunk)."""

from mocoeval.convert.formats.layout import Candidate, Layout

LAYOUTS = (
    Layout(
        name="vissl",
        source="facebookresearch/vissl: vissl/models/base_ssl_model.py, vissl/models/trunks/resnext.py",
        description="VISSL checkpoint (classy_state_dict.base_model.model.trunk kept; heads dropped)",
        markers=(r"^classy_state_dict\.",),
        candidates=(
            Candidate(
                "trunk",
                r"classy_state_dict\.base_model\.model\.trunk\.(?:module\.)?(?:base_model\.)?"
                r"_feature_blocks\.",
                "the trunk, which VISSL's benchmarks evaluate",
            ),
        ),
        groups=((r"\.heads\.", "heads"),),
    ),
)
