"""Shared pytest fixtures."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def mini_data_root(tmp_path_factory):
    """A session-wide mini dataset root, generated once (~1-2 s) with the real generator:
    `VOC2007/` (16 trainval + 12 test), `VOC2012/` (8 trainval), `imagenet-mini/{train,val}/<class>/`
    (20 classes x 4 train / 2 val, 64 px); sizes in `mocoeval.data.make_mini_data.TEST_SIZES`.

    Shared by all tests: treat it as read-only (copy it, e.g. with shutil.copytree, before breaking
    anything). Point Detectron2 at it with `mocoeval.data.voc.register_voc_datasets(root)`.
    """
    from mocoeval.data.make_mini_data import TEST_SIZES, generate

    root = tmp_path_factory.mktemp("mini_data")
    generate(root, seed=0, workers=1, **TEST_SIZES)
    return root
