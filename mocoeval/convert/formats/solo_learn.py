"""solo-learn. Read from vturrisi/solo-learn solo/methods/base.py (BaseMethod: self.backbone, a torchvision
ResNet with fc = Identity, self.classifier (online linear probe); BaseMomentumMethod: momentum_backbone,
momentum_classifier) and the methods' projector / predictor; saved by PyTorch Lightning (.ckpt: 'state_dict',
'pytorch-lightning_version', ...). main_linear.py loads 'backbone.'."""
from mocoeval.convert.formats.layout import Candidate, Layout

LAYOUTS = (
    Layout(
        name="solo_learn", source="vturrisi/solo-learn: solo/methods/base.py",
        description="solo-learn Lightning checkpoint (backbone kept; momentum_backbone, projector, predictor, "
                    "classifier dropped)",
        markers=(r"^pytorch-lightning_version$", r"^state_dict\.backbone\."),
        candidates=(Candidate("backbone", r"state_dict\.backbone\.", "the online backbone, which solo-learn's "
                                                                     "linear evaluation loads"),
                    Candidate("momentum_backbone", r"state_dict\.momentum_backbone\.", "the momentum copy")),
        groups=((r"^state_dict\.momentum_", "momentum copy"), (r"^state_dict\.projector\.", "projector"),
                (r"^state_dict\.predictor\.", "predictor"), (r"^state_dict\.classifier\.", "classifier"))),
)
