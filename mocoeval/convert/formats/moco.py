"""MoCo v1/v2 (ours and the official release) and MoCo v3 ResNet-50.

Read from facebookresearch/moco main_moco.py (save_checkpoint of model.state_dict(): DDP 'module.', encoder_q /
encoder_k / queue), moco/builder.py (encoder_q.fc is the MLP head) and facebookresearch/moco-v3 main_moco.py at
02655ae4d6ac (save_checkpoint({'epoch', 'arch', 'state_dict' of the DDP model, 'optimizer', 'scaler'})) +
moco/builder.py at 0c5d00a3d513 (base_encoder with its projector, an MLP with BatchNorm1d, in fc; momentum_encoder;
predictor); both main_lincls.py read encoder_q / base_encoder."""

from mocoeval.convert.formats.layout import CONTAINER, Candidate, Layout

LAYOUTS = (
    Layout(
        name="moco",
        source="facebookresearch/moco: main_moco.py, moco/builder.py",
        description="MoCo v1/v2 checkpoint (encoder_q kept; encoder_k, queue and projection head dropped)",
        markers=(r"(^|\.)encoder_q\.",),
        candidates=(
            Candidate(
                "encoder_q", CONTAINER + r"encoder_q\.", "the query encoder, which MoCo's linear evaluation reads"
            ),
            Candidate("encoder_k", CONTAINER + r"encoder_k\.", "the momentum (key) encoder"),
        ),
        groups=((r"encoder_q\.fc\.", "projection head"), (r"encoder_k\.", "momentum copy"), (r"queue", "queue")),
    ),
    Layout(
        name="moco_v3",
        source="facebookresearch/moco-v3: main_moco.py, moco/builder.py",
        description="MoCo v3 ResNet-50 checkpoint (base_encoder kept; momentum encoder, projector, predictor dropped)",
        markers=(r"(^|\.)base_encoder\.",),
        candidates=(
            Candidate(
                "base_encoder",
                CONTAINER + r"base_encoder\.",
                "the online encoder, which MoCo v3's linear evaluation reads",
            ),
            Candidate("momentum_encoder", CONTAINER + r"momentum_encoder\.", "the momentum encoder"),
        ),
        groups=(
            (r"base_encoder\.fc\.", "projector"),
            (r"momentum_encoder\.", "momentum copy"),
            (r"predictor\.", "predictor"),
        ),
    ),
)
