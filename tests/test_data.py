"""Mini datasets: real layouts, Detectron2's own VOC loader, exact boxes, determinism, idempotence,
and the layout checker's one-line errors."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mocoeval.data import make_mini_data as mmd
from mocoeval.data import mini_images as mini
from mocoeval.data.layout import check_imagefolder, check_voc_root
from mocoeval.data.sources import NOTO_FONT_PATHS
from mocoeval.data.voc import VOC_CLASS_NAMES
from mocoeval.runtime.errors import UserError

TINY = {
    "voc2007_trainval": 4,
    "voc2007_test": 2,
    "voc2012_trainval": 4,
    "voc_short_side": 48,
    "imagenet_train_per_class": 2,
    "imagenet_val_per_class": 1,
    "imagenet_size": 32,
}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_class_names_are_detectron2s():
    from detectron2.data.datasets.pascal_voc import CLASS_NAMES

    assert VOC_CLASS_NAMES == tuple(CLASS_NAMES)
    assert len(VOC_CLASS_NAMES) == 20


@pytest.mark.parametrize("folder,split", [("VOC2007", "trainval"), ("VOC2007", "test"), ("VOC2012", "trainval")])
def test_voc_splits_load_through_detectron2(mini_data_root, folder, split):
    from detectron2.data.datasets.pascal_voc import CLASS_NAMES, load_voc_instances

    dicts = load_voc_instances(str(mini_data_root / folder), split, CLASS_NAMES)
    expected = mmd.TEST_SIZES[f"voc{folder[3:]}_{split}"]
    assert len(dicts) == expected
    for d in dicts:
        with Image.open(d["file_name"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (d["width"], d["height"])
        assert min(d["width"], d["height"]) == mmd.TEST_SIZES["voc_short_side"]
        assert 1 <= len(d["annotations"]) <= 5
        for a in d["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            assert 0 <= x0 < x1 <= d["width"] and 0 <= y0 < y1 <= d["height"], (d["file_name"], a)
            assert 0 <= a["category_id"] < 20


def test_annotation_xml_is_voc_format(mini_data_root):
    xml_path = mini_data_root / "VOC2007" / "Annotations" / "000001.xml"
    text = xml_path.read_text()
    assert text.startswith("<annotation>\n\t<folder>VOC2007</folder>\n\t<filename>000001.jpg</filename>\n")
    tree = ET.parse(xml_path)
    assert [c.tag for c in tree.getroot()][:5] == ["folder", "filename", "source", "size", "segmented"]
    size = tree.find("size")
    assert [c.tag for c in size] == ["width", "height", "depth"] and size.find("depth").text == "3"
    for obj in tree.findall("object"):
        assert [c.tag for c in obj] == ["name", "pose", "truncated", "difficult", "bndbox"]
        assert [c.tag for c in obj.find("bndbox")] == ["xmin", "ymin", "xmax", "ymax"]
        assert all(c.text.isdigit() for c in obj.find("bndbox"))  # integer 1-based pixels
    # Split files: trainval = train + val; VOC2007 trainval and test are disjoint, both listed.
    main = mini_data_root / "VOC2007" / "ImageSets" / "Main"
    read = lambda name: (main / name).read_text().split()  # noqa: E731
    assert sorted(read("train.txt") + read("val.txt")) == sorted(read("trainval.txt"))
    assert not set(read("trainval.txt")) & set(read("test.txt"))
    per_class = (main / "dog_test.txt").read_text().splitlines()
    assert [line.split()[0] for line in per_class] == read("test.txt")
    assert {line.split()[1] for line in per_class} <= {"-1", "0", "1"}


def test_boxes_are_exact_visible_extents_and_occlusion_is_bounded():
    """Each box is exactly the extent of its object's visible pixels; no object loses more than half
    of its pixels to later ones; the truncated flag matches the cut; difficult and truncated
    objects occur, but are a minority (as in real VOC)."""
    sizes = mmd._normalise_sizes({"voc_short_side": 96})
    assets = mini.load_assets(sizes)
    n_objects = n_difficult = n_truncated = n_occluded = 0
    for number in range(40):
        scene = mini.compose_voc_scene(np.random.default_rng([5, 2007, number]), assets, 96)
        assert scene.canvas.shape[:2] == scene.owner.shape and min(scene.owner.shape) == 96
        assert 1 <= len(scene.objects) <= 5
        for k, obj in enumerate(scene.objects):
            rows, cols = np.nonzero(scene.owner == k)
            assert (obj.xmin, obj.ymin, obj.xmax, obj.ymax) == (
                cols.min() + 1,
                rows.min() + 1,
                cols.max() + 1,
                rows.max() + 1,
            )
            assert obj.name in VOC_CLASS_NAMES
            visible = rows.size
            assert visible >= 0.5 * scene.placed_area[k]
            assert scene.placed_area[k] >= 0.5 * scene.glyph_area[k]
            assert obj.truncated == int(scene.placed_area[k] < 0.95 * scene.glyph_area[k])
            n_occluded += visible < scene.placed_area[k]
        n_objects += len(scene.objects)
        n_difficult += sum(o.difficult for o in scene.objects)
        n_truncated += sum(o.truncated for o in scene.objects)
    assert n_objects > 60
    assert 0 < n_difficult < 0.4 * n_objects
    assert 0 < n_truncated < 0.5 * n_objects
    assert n_occluded > 0


def test_every_split_of_20_or_more_images_holds_every_class(tmp_path):
    """VOC07 test AP is a mean over the 20 classes: a small test set must not lack one."""
    sizes = dict(mmd.DEFAULT_SIZES, voc2007_trainval=23, voc2007_test=20, voc2012_trainval=21)
    voc_ids = mmd._voc_ids(0, sizes)
    tasks = mmd._tasks("voc", 0, sizes, tmp_path, voc_ids)
    first = {t["image_id"]: t["first_class"] for t in tasks}
    for folder, splits in voc_ids.items():
        for split in ("trainval", "test"):
            if split in splits:
                assert {first[i] for i in splits[split]} == set(VOC_CLASS_NAMES), (folder, split)
    # ... and the scene's first object is that class.
    assets = mini.load_assets(mmd._normalise_sizes({"voc_short_side": 96}))
    for number in range(5):
        scene = mini.compose_voc_scene(np.random.default_rng([5, 2007, number]), assets, 96, first_class="cow")
        assert scene.objects[0].name == "cow"


def test_imagenet_mini_is_imagefolder(mini_data_root):
    from torchvision.datasets import ImageFolder

    for split, per_class in (("train", "imagenet_train_per_class"), ("val", "imagenet_val_per_class")):
        ds = ImageFolder(str(mini_data_root / "imagenet-mini" / split))
        assert ds.classes == sorted(VOC_CLASS_NAMES)
        assert len(ds) == 20 * mmd.TEST_SIZES[per_class]
        image, label = ds[0]
        assert image.size == (64, 64) and ds.classes[label] == "aeroplane"


def test_manifest_records_seed_sizes_and_sources(mini_data_root):
    manifest = json.loads((mini_data_root / mmd.MANIFEST_NAME).read_text())
    assert manifest["seed"] == 0
    assert all(manifest["sizes"][k] == v for k, v in mmd.TEST_SIZES.items())
    photos = {p["name"]: p for p in manifest["sources"]["photos"]}
    assert {"astronaut", "coffee", "chelsea", "china", "flower"} <= set(photos)
    assert all(len(p["sha256"]) == 64 and p["licence"] for p in photos.values())
    assert manifest["sources"]["glyph_fonts"][0]["licence"].startswith("CC BY-SA 4.0")
    assert manifest["parts"]["voc"]["images"]["VOC2007"]["test"] == mmd.TEST_SIZES["voc2007_test"]


def test_same_seed_same_bytes_whatever_the_workers_other_seed_differs(tmp_path):
    a = mmd.generate(tmp_path / "a", seed=3, workers=1, **TINY)
    b = mmd.generate(tmp_path / "b", seed=3, workers=2, **TINY)  # 70 images: goes through the pool
    assert a == b
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(files_a) > 100 and files_a == files_b
    mmd.generate(tmp_path / "c", seed=4, workers=1, **TINY)
    files_c = _files(tmp_path / "c")
    assert files_c.keys() == files_a.keys()
    jpegs = [k for k in files_a if k.endswith(".jpg")]
    assert all(files_a[k] != files_c[k] for k in jpegs)


def test_an_unguarded_script_with_torch_loaded_fails_in_one_line_instead_of_hanging(tmp_path):
    """With torch loaded the pool starts its workers by forkserver/spawn, which import the caller's __main__: an
    unguarded script would restart dying workers forever under multiprocessing.Pool."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "import torch\n"
        "from mocoeval.data.make_mini_data import generate\n"
        f"generate({str(tmp_path / 'out')!r}, seed=0, workers=2, **{TINY!r})\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "must guard its top level with `if __name__ == '__main__':`, or pass workers=1" in proc.stderr


def test_rerun_is_a_noop_and_changed_flags_regenerate_only_their_part(tmp_path):
    mmd.generate(tmp_path, seed=1, workers=1, **TINY)
    voc_jpg = tmp_path / "VOC2007" / "JPEGImages" / "000001.jpg"
    in_jpg = tmp_path / "imagenet-mini" / "train" / "cat" / "cat_00001.jpg"
    stat_voc, stat_in = voc_jpg.stat(), in_jpg.stat()
    mmd.generate(tmp_path, seed=1, workers=1, **TINY)
    assert voc_jpg.stat().st_ino == stat_voc.st_ino and voc_jpg.stat().st_mtime_ns == stat_voc.st_mtime_ns
    assert in_jpg.stat().st_ino == stat_in.st_ino

    manifest = mmd.generate(tmp_path, seed=1, workers=1, **dict(TINY, imagenet_size=40))
    assert manifest["sizes"]["imagenet_size"] == 40
    with Image.open(in_jpg) as im:
        assert im.size == (40, 40)
    assert voc_jpg.stat().st_ino == stat_voc.st_ino  # VOC part untouched
    assert not (tmp_path / mmd.STAGING_NAME).exists()
    check_voc_root(tmp_path)
    check_imagefolder(tmp_path / "imagenet-mini")


def test_imagenet_style_is_recorded_and_regenerates_only_imagenet(tmp_path):
    manifest = mmd.generate(tmp_path, seed=1, workers=1, **TINY)
    assert manifest["parts"]["imagenet"]["request"]["imagenet_style"] == "object"
    voc_jpg = tmp_path / "VOC2007" / "JPEGImages" / "000001.jpg"
    in_jpg = tmp_path / "imagenet-mini" / "train" / "cat" / "cat_00001.jpg"
    stat_voc, object_bytes = voc_jpg.stat(), in_jpg.read_bytes()
    manifest = mmd.generate(tmp_path, seed=1, workers=1, **dict(TINY, imagenet_style="photo"))
    assert manifest["parts"]["imagenet"]["request"]["imagenet_style"] == "photo"
    assert in_jpg.read_bytes() != object_bytes
    assert voc_jpg.stat().st_ino == stat_voc.st_ino  # VOC part untouched
    check_imagefolder(tmp_path / "imagenet-mini")
    with pytest.raises(UserError, match=r"--imagenet-style: unknown style 'cartoon'"):
        mmd.generate(tmp_path, seed=1, workers=1, **dict(TINY, imagenet_style="cartoon"))


def test_object_style_backdrop_is_plain_and_the_object_is_kept_whole():
    rng = np.random.default_rng(0)
    backdrop = mini._backdrop(rng, 64)
    assert backdrop.shape == (64, 64, 3)
    assert np.array_equal(backdrop[..., 0], backdrop[..., 2])  # grey: nothing but brightness and grain
    assert abs(float(backdrop.std()) - mini._IN_BACKDROP_GRAIN) < 1.5

    sprite = mini.load_assets(mmd._normalise_sizes({"imagenet_size": 64}))["imagenet"]["sprites"]["cat"][0]
    before = np.asarray(sprite, dtype=np.float64)
    shapes = set()
    for seed in range(4):
        warped = np.asarray(mini._warp_sprite(np.random.default_rng(seed), sprite), dtype=np.float64)
        # The warp stretches and squeezes locally (area changes by some percent) but loses no part of the
        # drawing at the padded border, and the result is cropped tight to the drawing.
        assert abs(warped[..., 3].sum() / before[..., 3].sum() - 1) < 0.25
        assert warped[0, :, 3].max() > 0 and warped[-1, :, 3].max() > 0
        assert warped[:, 0, 3].max() > 0 and warped[:, -1, 3].max() > 0
        # Colours are resampled, not changed: the solid pixels' mean colour stays the drawing's.
        solid, solid_before = warped[..., 3] > 250, before[..., 3] > 250
        assert np.allclose(warped[solid, :3].mean(0), before[solid_before, :3].mean(0), rtol=0.1, atol=3)
        shapes.add(warped.shape)
    assert len(shapes) == 4  # each draw its own pose


def test_refuses_to_replace_folders_it_did_not_make(tmp_path):
    (tmp_path / "VOC2007").mkdir()
    with pytest.raises(UserError, match=r"VOC2007 exists and was not made by make_mini_data"):
        mmd.generate(tmp_path, seed=0, workers=1, **TINY)
    assert not (tmp_path / "VOC2012").exists()


def test_cli_help_and_one_line_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        mmd.main(["--help"])
    assert e.value.code == 0
    assert "--voc2007-trainval" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        mmd.main(["--root", str(tmp_path), "--voc2007-test", "1", "-q"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --voc2007-test must be at least 2, got 1"
    with pytest.raises(SystemExit) as e:
        mmd.main(["--root", str(tmp_path), "--glyph-styles", "comic", "-q"])
    assert e.value.code == 2
    assert "unknown style 'comic'" in capsys.readouterr().err
    assert "--imagenet-style" in mmd.build_parser().format_help()


# ----------------------------------------------------------------------------------- layout checker
@pytest.fixture
def broken_root(mini_data_root, tmp_path):
    """A private copy of the mini data to break."""
    root = tmp_path / "data"
    shutil.copytree(mini_data_root, root)
    return root


def test_checker_accepts_generated_data(mini_data_root):
    summary = check_voc_root(mini_data_root)
    assert summary["VOC2007/test"]["images"] == mmd.TEST_SIZES["voc2007_test"]
    assert summary["VOC2012/trainval"]["objects"] >= mmd.TEST_SIZES["voc2012_trainval"]
    folders = check_imagefolder(mini_data_root / "imagenet-mini")
    assert folders == {"train": {"classes": 20, "images": 80}, "val": {"classes": 20, "images": 40}}


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_checker_missing_folder(broken_root):
    shutil.rmtree(broken_root / "VOC2012")
    with pytest.raises(UserError) as e:
        check_voc_root(broken_root)
    assert _one_line(e) == f"{broken_root / 'VOC2012'}: missing VOC2012 folder"
    shutil.rmtree(broken_root / "VOC2007" / "JPEGImages")
    with pytest.raises(UserError) as e:
        check_voc_root(broken_root, splits=(("2007", "test"),))
    assert str(broken_root / "VOC2007" / "JPEGImages") in _one_line(e)


def test_checker_missing_split_file(broken_root):
    (broken_root / "VOC2007" / "ImageSets" / "Main" / "test.txt").unlink()
    with pytest.raises(UserError) as e:
        check_voc_root(broken_root)
    assert _one_line(e) == f"{broken_root / 'VOC2007/ImageSets/Main/test.txt'}: missing split file"


def test_checker_image_without_annotation(broken_root):
    image_id = (broken_root / "VOC2012" / "ImageSets" / "Main" / "trainval.txt").read_text().split()[3]
    xml = broken_root / "VOC2012" / "Annotations" / f"{image_id}.xml"
    xml.unlink()
    with pytest.raises(UserError) as e:
        check_voc_root(broken_root)
    assert _one_line(e).startswith(f"{xml}: missing annotation for image {image_id}.jpg")


def test_checker_missing_image(broken_root):
    image_id = (broken_root / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    jpg = broken_root / "VOC2007" / "JPEGImages" / f"{image_id}.jpg"
    jpg.unlink()
    with pytest.raises(UserError) as e:
        check_voc_root(broken_root)
    assert _one_line(e).startswith(f"{jpg}: missing image")


def test_checker_malformed_xml(broken_root):
    image_id = (broken_root / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()[-1]
    xml = broken_root / "VOC2007" / "Annotations" / f"{image_id}.xml"
    xml.write_text(xml.read_text()[:-30])  # truncated file
    with pytest.raises(UserError) as e:
        check_voc_root(broken_root)
    assert _one_line(e).startswith(f"{xml}: malformed XML")


def test_checker_unknown_class_and_bad_box(broken_root):
    xml = broken_root / "VOC2007" / "Annotations" / "000001.xml"
    original = xml.read_text()
    name = ET.fromstring(original).find("object/name").text
    xml.write_text(original.replace(f"<name>{name}</name>", "<name>unicorn</name>", 1))
    with pytest.raises(UserError) as e:
        check_voc_root(broken_root)
    assert _one_line(e).startswith(f"{xml}: unknown class name 'unicorn'")
    width = ET.fromstring(original).find("size/width").text
    xml.write_text(original.replace(f"<width>{width}</width>", "<width>3</width>"))
    with pytest.raises(UserError) as e:
        check_voc_root(broken_root)
    assert _one_line(e).startswith(f"{xml}: object '{name}' box")


def test_checker_imagefolder_errors(broken_root):
    root = broken_root / "imagenet-mini"
    for image in (root / "val" / "dog").iterdir():
        image.unlink()
    with pytest.raises(UserError) as e:
        check_imagefolder(root)
    assert _one_line(e).startswith(f"{root / 'val' / 'dog'}: class folder without images")

    shutil.rmtree(root / "val" / "dog")
    with pytest.raises(UserError) as e:
        check_imagefolder(root)
    assert _one_line(e).startswith(f"{root / 'val' / 'dog'}: missing class folder")

    (root / "val" / "unicorn").mkdir()
    shutil.copy(next((root / "train" / "cat").iterdir()), root / "val" / "unicorn" / "u.jpg")
    with pytest.raises(UserError) as e:
        check_imagefolder(root)
    assert (
        _one_line(e) == f"{root / 'val' / 'unicorn'}: class not in {root / 'train'} "
        f"(the splits must have the same class folders)"
    )

    shutil.rmtree(root / "train")
    (root / "train").mkdir()
    with pytest.raises(UserError) as e:
        check_imagefolder(root)
    assert _one_line(e).startswith(f"{root / 'train'}: no class folders")
    shutil.rmtree(root / "train")
    with pytest.raises(UserError) as e:
        check_imagefolder(root)
    assert _one_line(e) == f"{root / 'train'}: missing 'train' split folder"


def test_noto_style_missing_font_is_a_one_line_error(monkeypatch, tmp_path):
    from mocoeval.data import sources

    monkeypatch.setattr(sources, "NOTO_FONT_PATHS", (str(tmp_path / "NotoColorEmoji.ttf"),))
    with pytest.raises(UserError) as e:
        mmd.generate(tmp_path / "out", seed=0, workers=1, **dict(TINY, glyph_styles="openmoji,noto"))
    assert "apt-get install fonts-noto-color-emoji" in _one_line(e)
    assert not (tmp_path / "out" / "VOC2007").exists()


@pytest.mark.skipif(
    not any(Path(p).is_file() for p in NOTO_FONT_PATHS),
    reason="Noto Color Emoji not installed (Debian fonts-noto-color-emoji)",
)
def test_noto_style_adds_drawings_per_class(tmp_path):
    only = mini.load_assets(mmd._normalise_sizes({"voc_short_side": 48, "imagenet_size": 32}))
    counts = {k: len(v) for k, v in only["voc"]["sprites"].items()}
    both = mini.load_assets(
        mmd._normalise_sizes({"voc_short_side": 48, "imagenet_size": 32, "glyph_styles": "openmoji,noto"})
    )
    assert all(len(both["voc"]["sprites"][k]) >= counts[k] for k in counts)
    assert len(both["voc"]["sprites"]["dog"]) > counts["dog"]
    manifest = mmd.generate(tmp_path, seed=0, workers=1, **dict(TINY, glyph_styles="openmoji,noto"))
    assert [g["style"] for g in manifest["sources"]["glyph_fonts"]] == ["openmoji", "noto"]
    check_voc_root(tmp_path)
