"""DINO (ResNet-50). Read from facebookresearch/dino main_dino.py (save_dict: 'student', 'teacher' state dicts of
MultiCropWrapper(backbone, head), DDP 'module.' on the student and, with BN, the teacher; 'optimizer', 'epoch',
'args', 'dino_loss' with its center) and eval_linear.py (--checkpoint_key teacher: the teacher is what DINO
evaluates). The backbone-only release is torchvision-named (see torchvision.py)."""

from mocoeval.convert.formats.layout import Candidate, Layout

LAYOUTS = (
    Layout(
        name="dino",
        source="facebookresearch/dino: main_dino.py, eval_linear.py",
        description="DINO full checkpoint (teacher backbone kept; student, heads and loss center dropped)",
        markers=(r"^teacher\.", r"^student\."),
        candidates=(
            Candidate(
                "teacher",
                r"teacher\.(?:module\.)?backbone\.",
                "the teacher, which DINO evaluates (eval_linear.py --checkpoint_key teacher)",
            ),
            Candidate("student", r"student\.(?:module\.)?backbone\.", "the student"),
        ),
        groups=(
            (r"^student\.", "student"),
            (r"^teacher\.(module\.)?head\.", "DINO head"),
            (r"^dino_loss\.", "loss center"),
        ),
    ),
)
