"""Barlow Twins. Read from facebookresearch/barlowtwins main.py: the full checkpoint is dict(epoch, model=
model.state_dict() of the DDP model -> 'module.backbone.' (torchvision resnet50 with fc = Identity),
'module.projector.', 'module.bn.' (the affine-free BN on the embeddings), optimizer); the final resnet50.pth is the
backbone alone (torchvision names, see torchvision.py)."""

from mocoeval.convert.formats.layout import Candidate, Layout

LAYOUTS = (
    Layout(
        name="barlow_twins",
        source="facebookresearch/barlowtwins: main.py",
        description="Barlow Twins full checkpoint (backbone kept; projector and its BN dropped)",
        markers=(r"^model\.(module\.)?projector\.", r"^model\.(module\.)?backbone\."),
        candidates=(Candidate("backbone", r"model\.(?:module\.)?backbone\.", "the only backbone"),),
        groups=((r"projector\.", "projector"), (r"^model\.(module\.)?bn\.", "embedding BN")),
    ),
)
