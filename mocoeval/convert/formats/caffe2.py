"""Detectron's Caffe2 weights (the MSRA R-50.pkl of the supervised baseline): {'blobs': {conv1_w, res2_0_branch2a_w,
...}}, frozen BN as scale/bias, BGR input. Read from facebookresearch/detectron2
detectron2/checkpoint/c2_model_loading.py (the renaming Detectron2 applies itself): passed through unchanged."""

from __future__ import annotations

from mocoeval.convert.formats.layout import Layout

LAYOUTS = (
    Layout(
        name="caffe2",
        source="facebookresearch/detectron2: detectron2/checkpoint/c2_model_loading.py",
        description="Detectron Caffe2 weights (.pkl with 'blobs', e.g. MSRA R-50.pkl): passed through, BGR input",
        input_norm="caffe2",
        passthrough=True,
    ),
)
