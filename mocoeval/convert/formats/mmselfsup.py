"""mmselfsup / mmpretrain, OpenSelfSup and DenseCL. Read from open-mmlab/mmcv mmcv/runner/checkpoint.py
(save_checkpoint: {'meta', 'state_dict', 'optimizer'}), open-mmlab/mmselfsup mmselfsup/models/algorithms/moco.py
and base.py (backbone / neck / head; encoder_k or momentum_encoder / target_net: an EMA copy wrapping
Sequential(backbone, neck) -> '<name>.module.0.'; data_preprocessor.mean/std buffers on a 0..255 RGB scale),
open-mmlab/OpenSelfSup openselfsup/models/moco.py and WXinlong/DenseCL openselfsup/models/densecl.py
(encoder_q = Sequential(backbone, neck) with self.backbone = encoder_q[0], so 'backbone.' and 'encoder_q.0.'
hold the same tensors; encoder_k.0 is the momentum copy). mmcv's ResNet uses torchvision names."""
from mocoeval.convert.formats.layout import Candidate, Layout

LAYOUTS = (
    Layout(
        name="mmselfsup", source="open-mmlab/mmselfsup: mmselfsup/models/algorithms/moco.py; open-mmlab/OpenSelfSup: "
                                 "openselfsup/models/moco.py; WXinlong/DenseCL: openselfsup/models/densecl.py",
        description="mmselfsup / mmpretrain / OpenSelfSup / DenseCL checkpoint (backbone kept; neck, head and "
                    "momentum copies dropped)",
        markers=(r"^meta$|^meta\.", r"^state_dict\.backbone\."),
        candidates=(Candidate("backbone", r"state_dict\.backbone\.", "the online backbone, which mmselfsup's "
                                                                     "benchmarks extract"),
                    Candidate("momentum", r"state_dict\.(?:encoder_k|momentum_encoder|target_net)\.(?:module\.)?0\.",
                              "the momentum copy")),
        groups=((r"^state_dict\.(encoder_k|momentum_encoder|target_net)\.", "momentum copy"),
                (r"^state_dict\.encoder_q\.0\.", "query encoder (the backbone's tensors again)"),
                (r"^state_dict\.(encoder_q\.1|neck)\.", "neck"), (r"^state_dict\.head\.", "head"),
                (r"^state_dict\.queue", "queue"),
                (r"^state_dict\.data_preprocessor\.", "input normalisation (recorded)"))),
)
