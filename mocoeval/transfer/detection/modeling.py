"""Detectron2 pieces of the MoCo detection protocol: the R50-C4 ROI head with an extra norm after res5.

Importing this module registers `Res5ROIHeadsExtraNorm` in Detectron2's ROI_HEADS_REGISTRY.
"""

from __future__ import annotations

from pathlib import Path

from detectron2.config import CfgNode, get_cfg
from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads

from mocoeval.transfer.detection.benchmark import BENCHMARKS

# run_voc.py's config when --config-file is not given, by the layout of the weights (d2_convert.read_weights)
VOC_CONFIG_FOR_LAYOUT = BENCHMARKS["voc"].configs[None]
DEFAULT_VOC_CONFIG = VOC_CONFIG_FOR_LAYOUT["torchvision"]
# The official supervised-baseline config: Detectron2's input defaults (BGR, std 1, stride in the 1x1 conv),
# which the MSRA Caffe2 R-50.pkl was trained with.
SUPERVISED_VOC_CONFIG = VOC_CONFIG_FOR_LAYOUT["caffe2"]


if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:

    @ROI_HEADS_REGISTRY.register()
    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        """Res5ROIHeads whose res5 ends with one more norm layer (MoCo's R50-C4-BN detector).

        With BN everywhere the res5 output is otherwise unnormalised; the paper's detector adds this
        layer (new parameters, trained from scratch: `roi_heads.res5.norm.*` is expected to be missing
        from any converted backbone).
        """

        @classmethod
        def _build_res5_block(cls, cfg):
            seq, out_channels = super()._build_res5_block(cfg)
            seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
            return seq, out_channels


def load_config(config_file: str | Path = DEFAULT_VOC_CONFIG, opts: list | None = None) -> CfgNode:
    """Detectron2 config from a YAML with `_BASE_` plus `KEY VALUE` overrides."""
    cfg = get_cfg()
    cfg.merge_from_file(str(config_file))
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg
