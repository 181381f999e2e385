"""solo-learn. Read from vturrisi/solo-learn solo/methods/base.py at c980e9e3f553 (BaseMethod: self.backbone, a
ResNet with fc = Identity, and self.classifier, the online linear probe; BaseMomentumMethod: momentum_backbone and an
optional momentum_classifier), the methods' projector / predictor, and at 008f64fa7851 (the first releases:
self.encoder, and momentum_encoder in the momentum methods). Saved by PyTorch Lightning (.ckpt: 'state_dict',
'pytorch-lightning_version', ...). Its main_linear.py loads 'backbone.', renaming an older file's 'encoder' first."""

from mocoeval.convert.formats.layout import Candidate, Layout

_EVALUATED = "the online backbone, which solo-learn's linear evaluation loads"

LAYOUTS = (
    Layout(
        name="solo_learn",
        source="vturrisi/solo-learn: solo/methods/base.py",
        description="solo-learn Lightning checkpoint (backbone kept; momentum_backbone, projector, predictor, "
        "classifier dropped)",
        markers=(r"^pytorch-lightning_version$", r"^state_dict\.(backbone|encoder)\."),
        candidates=(
            Candidate("backbone", r"state_dict\.backbone\.", _EVALUATED),
            Candidate("momentum_backbone", r"state_dict\.momentum_backbone\.", "the momentum copy"),
            Candidate("encoder", r"state_dict\.encoder\.", _EVALUATED + " (an older file's name for it)"),
            Candidate("momentum_encoder", r"state_dict\.momentum_encoder\.", "the momentum copy"),
        ),
        groups=(
            (r"^state_dict\.momentum_", "momentum copy"),
            (r"^state_dict\.projector\.", "projector"),
            (r"^state_dict\.predictor\.", "predictor"),
            (r"^state_dict\.classifier\.", "classifier"),
        ),
    ),
)
