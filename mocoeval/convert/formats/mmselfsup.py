"""mmselfsup / mmpretrain, OpenSelfSup and DenseCL. Read from open-mmlab/mmselfsup mmselfsup/models/algorithms/moco.py
at 3c4825a46323 (1.x: encoder_k = ExponentialMovingAverage(Sequential(backbone, neck)) -> 'encoder_k.module.0.',
'encoder_k.steps') and at 0c88e8dceb47 (1.0.0rc: encoder_q / encoder_k = Sequential(backbone, neck) with
self.backbone = encoder_q[0], so 'backbone.' and 'encoder_q.0.' hold the same tensors), mocov3.py at 0c88e8dceb47
(base_encoder / momentum_encoder, the same sharing), WXinlong/DenseCL openselfsup/models/densecl.py (OpenSelfSup's
encoder_q / encoder_k) and mmcv's save_checkpoint ({'meta', 'state_dict' of the unwrapped model, 'optimizer'}).
mmengine's ImgDataPreprocessor (mmengine/model/base_model/data_preprocessor.py at 009091600ead) registers its
mean/std as non-persistent buffers: checkpoints do not carry the normalisation; mmselfsup's ResNet-50 configs use
ImageNet mean/std on RGB, the layout's default. mmcv's ResNet uses torchvision names (bn1, downsample.0/1)."""

from mocoeval.convert.formats.layout import Candidate, Layout

LAYOUTS = (
    Layout(
        name="mmselfsup",
        source="open-mmlab/mmselfsup: mmselfsup/models/algorithms/moco.py, mocov3.py;"
        " WXinlong/DenseCL: openselfsup/models/densecl.py",
        description="mmselfsup / mmpretrain / OpenSelfSup / DenseCL checkpoint (backbone kept; neck, head and "
        "momentum copies dropped)",
        markers=(r"^meta$|^meta\.", r"^state_dict\.backbone\."),
        candidates=(
            Candidate(
                "backbone", r"state_dict\.backbone\.", "the online backbone, which mmselfsup's benchmarks extract"
            ),
            Candidate(
                "momentum",
                r"state_dict\.(?:encoder_k|momentum_encoder|target_net)\.(?:module\.)?0\.",
                "the momentum copy",
            ),
        ),
        groups=(
            (r"^state_dict\.(encoder_k|momentum_encoder|target_net)\.", "momentum copy"),
            (r"^state_dict\.(encoder_q|base_encoder)\.0\.", "query encoder (the backbone's tensors again)"),
            (r"^state_dict\.((encoder_q|base_encoder)\.1|neck)\.", "neck"),
            (r"^state_dict\.head\.", "head"),
            (r"^state_dict\.queue", "queue"),
        ),
    ),
)
