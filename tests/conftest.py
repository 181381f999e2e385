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


@pytest.fixture(scope="session")
def random_r50_pkl(tmp_path_factory):
    """A converted randomly initialised torchvision ResNet-50 (the converter's own functions)."""
    import torch
    import torchvision

    from mocoeval.convert.detectron2_weights import save_d2_pickle, torchvision_to_d2
    from mocoeval.results.store import special_variant

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    out = tmp_path_factory.mktemp("weights") / "r50_random.pkl"
    save_d2_pickle(
        out,
        torchvision_to_d2(model.state_dict()),
        {
            "path": "torchvision resnet50()",
            "sha256": "0" * 64,
            "format": "torchvision",
            "variant": special_variant("random-init").to_record(),
        },
    )
    return out


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty results store of the test's own ($MOCOEVAL_RESULTS_DIR)."""
    path = tmp_path / "store"
    monkeypatch.setenv("MOCOEVAL_RESULTS_DIR", str(path))
    return path
