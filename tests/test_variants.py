"""The typed variant (mocoeval.results.variants): the dicts on disk stay what they were before the class."""

from __future__ import annotations

import json

from mocoeval.results.store import REPO_ROOT, load_records, pretrain_variant, special_variant, write_run_record
from mocoeval.results.variants import Variant

CLAIM_RUNS = REPO_ROOT / "results" / "claim-in-miniature" / "runs"


def test_pretrain_variant_records_the_same_dict_as_before():
    cfg = dict(
        mlp=True,
        aug_plus=True,
        cos=True,
        epochs=200,
        batch_size=256,
        moco_k=65536,
        moco_t=0.2,
        moco_m=0.999,
        image_size=224,
        residual_bn_init=0.1,
        residual_bn_ramp=[6, 16],
        warmup_epochs=0,
    )
    v = pretrain_variant(cfg)
    assert isinstance(v, Variant) and v.name == "d"
    record = v.to_record()
    assert record == {
        "name": "d",
        "mlp": True,
        "aug_plus": True,
        "cos": True,
        "epochs": 200,
        "batch_size": 256,
        "moco_k": 65536,
        "moco_t": 0.2,
        "moco_m": 0.999,
        "arch": "resnet50",
        "image_size": 224,
        "residual_bn_init": 0.1,
        "residual_bn_ramp": (6, 16),
    }
    assert list(record) == [
        "name",
        "mlp",
        "aug_plus",
        "cos",
        "epochs",
        "batch_size",
        "moco_k",
        "moco_t",
        "moco_m",
        "arch",
        "image_size",
        "residual_bn_init",
        "residual_bn_ramp",
    ]  # as the dict had them
    assert v.extensions == (("residual_bn_init", 0.1), ("residual_bn_ramp", (6, 16)))
    assert v.get("moco_k") == 65536 and v.get("epochs") == 200 and v.get("nope", 1) == 1
    assert pretrain_variant(cfg, name="mine").name == "mine" and v.renamed("mine") == pretrain_variant(cfg, "mine")


def test_special_variant_records_the_same_dict_as_before():
    assert special_variant("supervised").to_record() == {
        "name": "supervised",
        "mlp": None,
        "aug_plus": None,
        "cos": None,
        "epochs": None,
    }
    assert (
        special_variant("random-init", residual_bn_init=1.0).to_record() == special_variant("random-init").to_record()
    )
    assert special_variant("random-init", residual_bn_init=0.1).to_record() == {
        "name": "random-init",
        "mlp": None,
        "aug_plus": None,
        "cos": None,
        "epochs": None,
        "residual_bn_init": 0.1,
    }


def test_from_record_gives_every_stored_record_back():
    records = load_records(CLAIM_RUNS)
    assert records
    for rec in records:
        v = Variant.from_record(rec["variant"])
        assert v.to_record() == rec["variant"]


def test_a_record_written_from_a_variant_is_the_dict_one(tmp_path):
    v = pretrain_variant(dict(mlp=False, aug_plus=True, cos=False, epochs=10, residual_bn_ramp=[4, 8]))
    paths = [
        write_run_record("linear", variant=x, metrics={"top1": 1.0}, source_sha256="a" * 64, store_dir=tmp_path)
        for x in (v, v.to_record())
    ]
    texts = [json.loads(p.read_text())["variant"] for p in paths]
    assert texts[0] == texts[1] == {**v.to_record(), "residual_bn_ramp": [4, 8]}
    assert paths[0].name.split("_")[2] == "b"  # the file is named after the variant
