"""The embedded default dataset: characters drawn in the fonts matplotlib ships, no download.

A class is one character; its images are that character in different fonts (the main
within-class variation) under seeded jitter (affine, stroke weight, blur, contrast, noise).
The class list depends only on the font files, never on the seed or image size, so a class id
means the same character in every run. Classes are ordered by a fixed permutation and split
in halves, class-disjoint like CUB (docs/protocol.md). Generated arrays are cached as .npz.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import tempfile
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.data.base import DMLDataset, InMemoryImages, user_cache_dir

# Bump when anything below changes what gets generated: old cache files then stop matching.
VERSION = 1
# Fixed, independent of the user's seed: the class order (hence the train/test halves) is a
# property of the dataset, like CUB's class numbering, not of a run.
CLASS_ORDER_SEED = 20240611
# A character becomes a class only if this many fonts really draw it (>= 1 of them not DejaVu).
MIN_FONTS = 12
# Fonts that are not text faces: size variants, private-use symbols, a placeholder-box font,
# TeX math symbol/extension fonts whose ASCII codes hold other symbols.
_EXCLUDED_FONT_PARTS = ("LastResort", "Display", "STIXNonUni", "STIXSiz", "cmex", "cmsy")
# Letters, digits and common symbols; code points with a Unicode decomposition (accented
# letters, superscripts, compatibility copies like the micro sign) are left out below.
_CANDIDATE_RANGES = (
    (0x0021, 0x007E),  # ASCII letters, digits, punctuation
    (0x00A1, 0x00FF),  # Latin-1 symbols and letters
    (0x0391, 0x03C9),  # Greek
    (0x0400, 0x045F),  # Cyrillic
    (0x2010, 0x205E),  # general punctuation
    (0x20A0, 0x20BF),  # currency
)
# Glyph names the Adobe Glyph List maps to a symbol (Ohm, increment, micro) that fonts such as
# DejaVu use for the Greek letter: accept them for the Greek letter too.
_GREEK_NAMES = {"Delta": "\u0394", "Omega": "\u03a9", "mu": "\u03bc"}
# Class selection and the homoglyph check are done at this size, whatever image_size is asked.
_PROBE_SIZE = 32
_SUPERSAMPLE = 2
# Cap height as a fraction of the image, and the minimum ink (in full pixels at probe size).
_CAP_FRACTION = 0.58
_MIN_INK = 6.0
# Two characters are homoglyphs if in some font both draw, their probe images differ by less
# than this root-mean-square difference (pixels in [0, 1]). Identical outlines give 0.000,
# near-copies (hyphen and hyphen bullet, middle dot and hyphenation point) about 0.02, and the
# closest distinct pairs (I and l in cmss10, the quotes) 0.03 and up.
_HOMOGLYPH_TOLERANCE = 0.025


@dataclass(frozen=True, eq=False)
class GlyphArrays:
    """The generated dataset: images grouped by class id, with what identifies classes and fonts."""

    images: np.ndarray  # uint8 [N, H, W], ink bright on dark
    labels: np.ndarray  # int64 [N], class id
    class_names: tuple[str, ...]  # the character of each class id
    fonts: tuple[str, ...]  # font file names used
    font_ids: np.ndarray  # int64 [N], index into `fonts` of each image's font


@dataclass(frozen=True, eq=False)
class _Catalogue:
    """Which characters are classes (in class-id order) and which fonts draw each."""

    chars: tuple[str, ...]
    fonts: tuple[str, ...]
    font_dir: str
    draws: tuple[tuple[int, ...], ...]  # per class, indices into `fonts`
    cap_ratio: tuple[float, ...]  # per font, cap height / em, to give all fonts one cap height
    # The probe renderings (image_size == _PROBE_SIZE masters), reused by generation at that size.
    probe_masters: dict[tuple[str, int], Any]


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _candidates() -> list[int]:
    out = []
    for lo, hi in _CANDIDATE_RANGES:
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            if unicodedata.category(ch)[0] in "LNPS" and not unicodedata.decomposition(ch):
                out.append(cp)
    return out


def _drawn_by_name(path: Path, candidates: list[int]) -> set[int]:
    """Code points whose cmap glyph is named for that character.

    The TeX (cm*) fonts map ASCII codes to other glyphs (cmr10 '<' is '¡', cmmi10 digits are
    old-style); the glyph name, read through the Adobe Glyph List, tells what is really there.
    """
    from fontTools import agl
    from fontTools.ttLib import TTFont

    cmap = TTFont(str(path), lazy=True).getBestCmap() or {}

    def named_for(cp: int) -> bool:
        name = cmap[cp]
        return agl.toUnicode(name) == chr(cp) or _GREEK_NAMES.get(name.split(".")[0]) == chr(cp)

    return {cp for cp in candidates if cp in cmap and named_for(cp)}


class _Renderer:
    """Draws one character of one font at the canonical place: fixed baseline, centred ink.

    Every font is scaled to the same cap height, so size and height cues (o/O, x/X, comma
    vs quote) mean the same in every font; the ink is centred horizontally because fonts
    differ in advance width (monospace) but not in what the character is.
    """

    def __init__(self, font_dir: Path, image_size: int) -> None:
        self.font_dir = font_dir
        self.canvas = image_size * _SUPERSAMPLE
        self._fonts: dict[tuple[str, float], Any] = {}

    def font(self, name: str, size: float) -> Any:
        from PIL import ImageFont

        key = (name, round(size, 3))
        if key not in self._fonts:
            self._fonts[key] = ImageFont.truetype(str(self.font_dir / name), size=key[1])
        return self._fonts[key]

    def cap_ratio(self, name: str) -> float:
        left, top, right, bottom = self.font(name, 200.0).getbbox("H", anchor="ls")
        return -top / 200.0

    def master(self, ch: str, name: str, cap_ratio: float) -> Any:
        """Supersampled greyscale PIL image [canvas, canvas] of `ch` in font `name`."""
        from PIL import Image, ImageDraw

        m = self.canvas
        cap = _CAP_FRACTION * m
        size = cap / cap_ratio
        font = self.font(name, size)
        left, _, right, _ = font.getbbox(ch, anchor="ls")
        if right - left > 0.92 * m:  # a few wide glyphs (per mille, em dash) shrink to fit
            size *= 0.92 * m / (right - left)
            font = self.font(name, size)
            left, _, right, _ = font.getbbox(ch, anchor="ls")
        descent = 0.33 * cap  # nominal descender: the cap-to-descender band is centred
        baseline = 0.5 * m + 0.5 * (cap - descent)
        img = Image.new("L", (m, m), 0)
        ImageDraw.Draw(img).text((0.5 * m - 0.5 * (left + right), baseline), ch, font=font,
                                 fill=255, anchor="ls")
        return img


def _downsample(master: Any) -> np.ndarray:
    """Box-filter a supersampled master to float [0, 1] at the nominal size."""
    return np.asarray(master.reduce(_SUPERSAMPLE), dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=4)
def _catalogue(font_dir: str) -> _Catalogue:
    """Choose the classes: characters that enough fonts really draw, minus homoglyphs."""
    root = Path(font_dir)
    fonts = tuple(sorted(p.name for p in root.glob("*.ttf")
                         if not any(part in p.name for part in _EXCLUDED_FONT_PARTS)))
    if not fonts:
        raise RuntimeError(f"No usable TrueType fonts in {root}: the glyphs dataset draws with them.")
    candidates = _candidates()
    named = [_drawn_by_name(root / f, candidates) for f in fonts]
    renderer = _Renderer(root, _PROBE_SIZE)
    cap_ratio = tuple(renderer.cap_ratio(f) for f in fonts)

    def enough(font_ids: list[int]) -> bool:
        return len(font_ids) >= MIN_FONTS and any(not fonts[i].startswith("DejaVu") for i in font_ids)

    # Render every (character, font) the names allow; keep those with real ink.
    probes: dict[int, dict[int, np.ndarray]] = {}
    masters: dict[tuple[str, int], Any] = {}
    for cp in candidates:
        owners = [i for i, have in enumerate(named) if cp in have]
        if not enough(owners):
            continue
        images = {}
        for i in owners:
            master = renderer.master(chr(cp), fonts[i], cap_ratio[i])
            img = _downsample(master).ravel()
            if img.sum() >= _MIN_INK:
                images[i] = img
                masters[chr(cp), i] = master
        if enough(list(images)):
            probes[cp] = images

    # Homoglyphs (Latin A, Greek Alpha, Cyrillic A; italic Cyrillic te and m): pairs that look
    # the same in some font both draw. Then keep each character unless it clashes with one kept
    # before it by code point.
    clashes: dict[int, set[int]] = {cp: set() for cp in probes}
    for i in range(len(fonts)):
        cps = [cp for cp in sorted(probes) if i in probes[cp]]
        if len(cps) < 2:
            continue
        x = np.stack([probes[cp][i] for cp in cps])
        sq = (x * x).sum(axis=1)
        rms = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0) / x.shape[1])
        for a, b in zip(*np.nonzero(np.triu(rms < _HOMOGLYPH_TOLERANCE, k=1))):
            clashes[cps[a]].add(cps[b])
            clashes[cps[b]].add(cps[a])
    kept: list[int] = []
    for cp in sorted(probes):
        if not clashes[cp].intersection(kept):
            kept.append(cp)

    order = np.random.default_rng(CLASS_ORDER_SEED).permutation(len(kept))
    chars = tuple(chr(kept[k]) for k in order)
    draws = tuple(tuple(sorted(probes[ord(ch)])) for ch in chars)
    masters = {key: m for key, m in masters.items() if key[0] in chars}
    return _Catalogue(chars=chars, fonts=fonts, font_dir=str(root), draws=draws, cap_ratio=cap_ratio,
                      probe_masters=masters)


def _dilate(master: Any) -> Any:
    """Heavier stroke: a 3x3 max filter on the 2x master adds half a pixel each side at 1x.

    Done in numpy because PIL's MaxFilter (a rank filter) is several times slower.
    """
    from PIL import Image

    x = np.pad(np.asarray(master), 1)
    rows = np.maximum(np.maximum(x[:-2], x[1:-1]), x[2:])
    return Image.fromarray(np.maximum(np.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:]))


def _augment(master: Any, bold: Any, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """One jittered uint8 [S, S] image from a supersampled master (or its heavier-stroke copy).

    All randomness comes from `rng`, drawn in a fixed order, so the image is a function of it.
    """
    from PIL import Image, ImageFilter

    u = rng.random(12).tolist()
    img = bold if u[0] < 0.35 else master
    angle = math.radians(-7.0 + 14.0 * u[1])
    shear = -0.1 + 0.2 * u[2]
    scale = 0.9 + 0.2 * u[3]
    aspect = 0.93 + 0.14 * u[4]
    m = master.size[0]
    tx, ty = (-0.06 + 0.12 * u[5]) * m, (-0.06 + 0.12 * u[6]) * m
    # Forward map about the centre: rotation @ shear @ scale(sx, sy); PIL wants output -> input.
    sx, sy = scale * aspect, scale / aspect
    cos, sin = math.cos(angle), math.sin(angle)
    a, b, c, d = cos * sx, (cos * shear - sin) * sy, sin * sx, (sin * shear + cos) * sy
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    centre = 0.5 * m
    ox, oy = centre + tx, centre + ty
    data = (ia, ib, centre - ia * ox - ib * oy, ic, id_, centre - ic * ox - id_ * oy)
    img = img.transform((m, m), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    img = img.reduce(_SUPERSAMPLE)
    if u[7] < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(0.3 + 0.4 * u[8]))
    background = 40.0 * u[9]
    foreground = 170.0 + 85.0 * u[10]
    sigma = 2.0 + 10.0 * u[11]
    noise = rng.standard_normal((image_size, image_size), dtype=np.float32)
    out = np.asarray(img, dtype=np.float32) * np.float32((foreground - background) / 255.0)
    out += np.float32(background)
    out += np.float32(sigma) * noise
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _generate(catalogue: _Catalogue, seed: int, image_size: int, images_per_class: int) -> GlyphArrays:
    """Render every class: its fonts round-robin in a seeded order, each image jittered anew."""
    renderer = _Renderer(Path(catalogue.font_dir), image_size)
    n = len(catalogue.chars) * images_per_class
    images = np.empty((n, image_size, image_size), dtype=np.uint8)
    font_ids = np.empty(n, dtype=np.int64)
    k = 0
    for ch, owners in zip(catalogue.chars, catalogue.draws):
        # Seeded per character, so a class's images do not depend on which other classes exist.
        rng = np.random.default_rng([seed, ord(ch)])
        order = [owners[j] for j in rng.permutation(len(owners))]
        masters: dict[int, tuple[Any, Any]] = {}
        for j in range(images_per_class):
            f = order[j % len(order)]
            if f not in masters:
                plain = catalogue.probe_masters.get((ch, f)) if image_size == _PROBE_SIZE else None
                if plain is None:
                    plain = renderer.master(ch, catalogue.fonts[f], catalogue.cap_ratio[f])
                masters[f] = (plain, _dilate(plain))
            images[k] = _augment(*masters[f], image_size, rng)
            font_ids[k] = f
            k += 1
    # Report only the fonts some class uses, and renumber font ids into that list.
    used = sorted(set(font_ids.tolist()))
    remap = np.full(len(catalogue.fonts), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    labels = np.repeat(np.arange(len(catalogue.chars), dtype=np.int64), images_per_class)
    return GlyphArrays(images=images, labels=labels, class_names=catalogue.chars,
                       fonts=tuple(catalogue.fonts[i] for i in used), font_ids=remap[font_ids])


def _cache_key(seed: int, image_size: int, images_per_class: int, font_dir: Path) -> dict[str, Any]:
    """Everything that decides the bytes: parameters, this module's version, libraries, fonts."""
    import numpy
    import PIL
    from PIL import features

    fonts = sorted((p.name, p.stat().st_size) for p in font_dir.glob("*.ttf"))
    return {
        "version": VERSION, "seed": seed, "image_size": image_size,
        "images_per_class": images_per_class, "class_order_seed": CLASS_ORDER_SEED,
        "min_fonts": MIN_FONTS, "numpy": numpy.__version__, "pillow": PIL.__version__,
        "freetype": features.version("freetype2"), "fonts": fonts,
    }


def _cache_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / (f"glyphs-v{key['version']}-seed{key['seed']}-{key['image_size']}px-"
                        f"{key['images_per_class']}pc-{digest}.npz")


def _load_cache(path: Path, key: dict[str, Any]) -> GlyphArrays | None:
    """The cached arrays, or None when missing, unreadable or made under another key."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["key"])) != json.loads(json.dumps(key)):
                return None
            return GlyphArrays(images=z["images"], labels=z["labels"],
                               class_names=tuple(str(c) for c in z["class_names"]),
                               fonts=tuple(str(f) for f in z["fonts"]), font_ids=z["font_ids"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing or torn: regenerate
        return None


def _save_cache(path: Path, key: dict[str, Any], arrays: GlyphArrays) -> None:
    """Write atomically (temp file in the same folder, then os.replace): concurrent runs are safe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, key=np.array(json.dumps(key, sort_keys=True)), images=arrays.images,
                                labels=arrays.labels, class_names=np.array(arrays.class_names),
                                fonts=np.array(arrays.fonts), font_ids=arrays.font_ids)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def render_glyphs(seed: int = 0, image_size: int = 32, images_per_class: int = 40,
                  cache_dir: str | Path | None = None) -> GlyphArrays:
    """The glyphs dataset for these parameters: from the cache, or generated (seconds) and cached.

    Same parameters give byte-identical arrays. `cache_dir` defaults to $DMLTUNE_CACHE or
    ~/.cache/dmltune; an unwritable cache only costs a warning.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}.")
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be >= 1, got {images_per_class}.")
    font_dir = _font_dir()
    key = _cache_key(int(seed), int(image_size), int(images_per_class), font_dir)
    path = _cache_path(Path(cache_dir) if cache_dir is not None else user_cache_dir(), key)
    cached = _load_cache(path, key)
    if cached is not None:
        return cached
    arrays = _generate(_catalogue(str(font_dir)), int(seed), int(image_size), int(images_per_class))
    try:
        _save_cache(path, key, arrays)
    except OSError as err:
        warnings.warn(f"glyphs: could not write the cache {path} ({err}); continuing without it.",
                      stacklevel=2)
    return arrays


class GlyphsDataset(DMLDataset):
    """The embedded default benchmark: first half of the class ids trains, second half tests.

    Images carry their augmentation from generation (fixed per item), so `train` does not
    change what `_load` returns; the trainer adds any online augmentation it wants.
    """

    name = "glyphs"
    channels = 1

    def __init__(self, seed: int = 0, image_size: int = 32, images_per_class: int = 40,
                 cache_dir: str | Path | None = None) -> None:
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.images_per_class = int(images_per_class)
        self.arrays = render_glyphs(self.seed, self.image_size, self.images_per_class, cache_dir)
        self.labels = self.arrays.labels
        n_classes = len(self.arrays.class_names)
        self.train_classes = np.arange(n_classes // 2, dtype=np.int64)
        self.test_classes = np.arange(n_classes // 2, n_classes, dtype=np.int64)
        self._images = torch.from_numpy(self.arrays.images)
        self._labels = torch.from_numpy(self.arrays.labels)
        self._digest: str | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.arrays.class_names

    def _load(self, indices: np.ndarray, train: bool) -> InMemoryImages:
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return InMemoryImages(self._images[idx].unsqueeze(1).contiguous(), self._labels[idx].clone())

    def fingerprint_parts(self) -> dict[str, Any]:
        if self._digest is None:
            self._digest = hashlib.sha256(np.ascontiguousarray(self.arrays.images).tobytes()).hexdigest()
        return {
            "generator": "glyphs", "version": VERSION, "seed": self.seed,
            "image_size": self.image_size, "images_per_class": self.images_per_class,
            "classes": len(self.arrays.class_names), "fonts": len(self.arrays.fonts),
            "images_sha256": self._digest,
        }
