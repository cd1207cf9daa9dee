"""The synthetic captioned world: seeded shapes x colours x backgrounds x sizes, drawn with PIL.

Why synthetic: no pretrained CLIP weights or photo collections can be downloaded here, so the project trains
its own tiny CLIP on this world and measures relevance against captions it knows to be true. Every image is
a pure function of (seed, stream, index), so the same seed gives the same captions and pixels on any machine,
and images can be rendered on the fly (training) or written as files (the gallery the indexer reads).

A few (colour, shape) pairs are held out: training never draws them, the gallery does, so relevance can be
reported separately for compositions the model has never seen.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from indexer.lab.languages import captions

WORLD_VERSION = 1

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "crescent")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 185, 60),
    "blue": (35, 75, 225),
    "yellow": (245, 215, 35),
    "purple": (140, 55, 185),
    "orange": (250, 140, 25),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS: tuple[str, ...] = ("grass", "sand", "sky", "brick", "night", "wood")
SIZES: tuple[str, ...] = ("small", "large")
# (colour, shape) pairs never drawn for training; each colour and each shape still appears in training.
UNSEEN_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "star"), ("green", "crescent"), ("blue", "triangle"), ("yellow", "cross"), ("purple", "circle"),
     ("orange", "square")}
)
LICENCES: tuple[str, ...] = ("CC0-1.0", "CC-BY-4.0", "PhotoStock-Standard")

STREAM_TRAIN = 1
STREAM_GALLERY = 2
GALLERY_UNSEEN_SHARE = 0.25  # gallery draws held-out pairs this often, so unseen queries are plentiful


@dataclass(frozen=True)
class Composition:
    """What an image shows; the caption is a function of it, so equal captions mean equal compositions."""

    size: str
    colour: str
    shape: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} on a {self.background} background"

    @property
    def tags(self) -> list[str]:
        return [self.size, self.colour, self.shape, self.background]

    @property
    def unseen(self) -> bool:
        return (self.colour, self.shape) in UNSEEN_PAIRS

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def vocabulary() -> list[str]:
    """Every word any caption can contain (the tiny tokenizer's merges are cut to these)."""
    words = {"a", "on", "background", *SHAPES, *COLOURS, *BACKGROUNDS, *SIZES}
    return sorted(words)


def all_compositions() -> list[Composition]:
    return [Composition(z, c, s, b) for z in SIZES for c in COLOURS for s in SHAPES for b in BACKGROUNDS]


def training_compositions() -> list[Composition]:
    return [c for c in all_compositions() if not c.unseen]


def image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """Independent generator per image, so images can be made in any order or in parallel."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), int(index)]))


def sample_composition(rng: np.random.Generator, split: str) -> Composition:
    """`train` never yields a held-out pair; `gallery` yields one with probability GALLERY_UNSEEN_SHARE."""
    if split == "train":
        seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in UNSEEN_PAIRS]
        colour, shape = seen[rng.integers(len(seen))]
    elif split == "gallery":
        pool = sorted(UNSEEN_PAIRS) if rng.random() < GALLERY_UNSEEN_SHARE else \
            [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in UNSEEN_PAIRS]
        colour, shape = pool[rng.integers(len(pool))]
    else:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'gallery'")
    return Composition(SIZES[rng.integers(len(SIZES))], colour, shape, BACKGROUNDS[rng.integers(len(BACKGROUNDS))])


# ---------------------------------------------------------------------------------------------- drawing


def _background(name: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A textured background (H, W, 3) uint8: textures make images less trivial than flat fills."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = float(min(w, h))
    if name == "grass":
        base = np.array([70, 125, 45], np.float32) + rng.normal(0, 18, (h, w, 1)).astype(np.float32)
        img = np.broadcast_to(base, (h, w, 3)).copy()
    elif name == "sand":
        img = np.array([212, 190, 140], np.float32) + rng.normal(0, 9, (h, w, 1)).astype(np.float32)
    elif name == "sky":
        t = (yy / max(h - 1, 1))[..., None]
        img = (1 - t) * np.array([95, 160, 230], np.float32) + t * np.array([215, 232, 250], np.float32)
    elif name == "brick":
        img = np.broadcast_to(np.array([160, 70, 45], np.float32), (h, w, 3)).copy()
        bh = max(s / 8, 2.0)
        row = np.floor(yy / bh)
        mortar = ((yy % bh) < max(bh * 0.15, 1)) | (((xx + (row % 2) * bh) % (2 * bh)) < max(bh * 0.15, 1))
        img[mortar] = (205, 200, 190)
    elif name == "night":
        img = np.broadcast_to(np.array([15, 20, 55], np.float32), (h, w, 3)).copy()
        stars = rng.random((h, w)) < 0.004
        img[stars] = (230, 230, 200)
    elif name == "wood":
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(yy / s * 2 * np.pi * 6 + 0.8 * np.sin(xx / s * 2 * np.pi) + phase)[..., None]
        img = np.array([140, 95, 55], np.float32) + wave * np.array([25, 18, 10], np.float32)
    else:
        raise ValueError(f"unknown background {name!r}")
    return np.clip(img, 0, 255).astype(np.uint8)


def _rotate(points: list[tuple[float, float]], angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]


def _shape_polygon(shape: str, r: float) -> list[tuple[float, float]]:
    """Polygon (centred on 0,0) for the polygonal shapes."""
    if shape == "square":
        a = r * 0.85
        return [(-a, -a), (a, -a), (a, a), (-a, a)]
    if shape == "triangle":
        return [(r * math.cos(t), r * math.sin(t)) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            t = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(t), rad * math.sin(t)))
        return pts
    if shape == "cross":
        a, b = r, r * 0.33
        return [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b),
                (-b, -b)]
    raise ValueError(f"not a polygon shape: {shape!r}")


def _draw_object(img: Image.Image, comp: Composition, rng: np.random.Generator, box: tuple[int, int, int]) -> None:
    """Draw the object inside the central square `box` (x0, y0, side), so a centre crop never cuts it off."""
    x0, y0, side = box
    frac = rng.uniform(0.15, 0.19) if comp.size == "small" else rng.uniform(0.27, 0.33)
    r = frac * side
    margin = r + side * 0.03
    cx = x0 + rng.uniform(margin, side - margin)
    cy = y0 + rng.uniform(margin, side - margin)
    jitter = rng.integers(-15, 16, 3)
    fill = tuple(int(v) for v in np.clip(np.array(COLOURS[comp.colour]) + jitter, 0, 255))
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    outline = (235, 235, 235) if luminance < 80 else (15, 15, 15)
    width = max(1, round(side / 64))
    angle = rng.uniform(-0.35, 0.35)
    draw = ImageDraw.Draw(img)
    if comp.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
    elif comp.shape == "crescent":
        dx, dy = 0.5 * r * math.cos(angle * 4), 0.5 * r * math.sin(angle * 4)
        disc, bite = Image.new("L", img.size, 0), Image.new("L", img.size, 0)
        ImageDraw.Draw(disc).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ImageDraw.Draw(bite).ellipse((cx + dx - r * 0.8, cy + dy - r * 0.8, cx + dx + r * 0.8, cy + dy + r * 0.8),
                                     fill=255)
        mask = ImageChops.subtract(disc, bite)
        img.paste(outline, (0, 0), mask.filter(ImageFilter.MaxFilter(2 * width + 1)))
        img.paste(fill, (0, 0), mask)
    else:
        poly = _rotate(_shape_polygon(comp.shape, r), angle, cx, cy)
        draw.polygon(poly, fill=fill, outline=outline, width=width)


def render(comp: Composition, rng: np.random.Generator, size: tuple[int, int] = (128, 128)) -> Image.Image:
    """Draw `comp` as an RGB image of `size` (width, height); all randomness comes from `rng`."""
    w, h = size
    img = Image.fromarray(_background(comp.background, w, h, rng), "RGB")
    side = min(w, h)
    _draw_object(img, comp, rng, ((w - side) // 2, (h - side) // 2, side))
    return img


def jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    """What an image looks like after being saved as JPEG and decoded again (training sees the artefacts)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


@dataclass(frozen=True)
class WorldItem:
    index: int
    composition: Composition
    image: Image.Image
    popularity: float
    licence: str
    fmt: str  # "jpg" or "png"


def gallery_item(seed: int, index: int, size: tuple[int, int]) -> WorldItem:
    """The gallery's `index`-th image: a pure function of (seed, index, size)."""
    rng = image_rng(seed, STREAM_GALLERY, index)
    comp = sample_composition(rng, "gallery")
    popularity = round(float(rng.random()), 4)
    licence = LICENCES[rng.integers(len(LICENCES))]
    fmt = "png" if rng.random() < 0.25 else "jpg"
    image = render(comp, rng, size)
    return WorldItem(index, comp, image, popularity, licence, fmt)


def iter_gallery(seed: int, count: int, size: tuple[int, int]) -> Iterator[WorldItem]:
    for index in range(count):
        yield gallery_item(seed, index, size)


def training_example(seed: int, index: int, size: tuple[int, int]) -> tuple[Composition, Image.Image]:
    """The `index`-th training image (never a held-out pair); training draws fresh indices every step."""
    rng = image_rng(seed, STREAM_TRAIN, index)
    comp = sample_composition(rng, "train")
    return comp, render(comp, rng, size)


# ---------------------------------------------------------------------------------------------- files

GALLERY_DIR = "gallery"
QUERIES_FILE = "queries.jsonl"
WORLD_FILE = "world.json"
FOLDER_SIZE = 100  # images per subfolder, so the indexer walks a real tree


def parse_size(text: str) -> tuple[int, int]:
    """`128` -> (128, 128); `640x480` -> (640, 480) (width x height)."""
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"image size must look like 128 or 640x480, got {text!r}") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 16 or max(dims) > 8192:
        raise ValueError(f"image size must be one or two integers in 16..8192, got {text!r}")
    return dims[0], dims[1]


def relative_path(item: WorldItem) -> str:
    return f"part-{item.index // FOLDER_SIZE:03d}/img-{item.index:06d}.{item.fmt}"


def write_if_changed(target: Path, data: bytes) -> bool:
    """Write `data` to `target` only when the file's bytes differ (atomically); True when it wrote.

    Why: a rerun of `world` with the same arguments must leave every file (and its mtime) as it was, so an
    incremental index build sees no change and publishes no new version.
    """
    try:
        if target.stat().st_size == len(data) and target.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return True


def encoded(item: WorldItem) -> bytes:
    """The item's file contents (JPEG quality 90 or PNG): deterministic for a given Pillow build."""
    buf = io.BytesIO()
    if item.fmt == "jpg":
        item.image.save(buf, format="JPEG", quality=90)
    else:
        item.image.save(buf, format="PNG")
    return buf.getvalue()


def save_item(item: WorldItem, root: Path) -> bool:
    """Write the item's file under `root` unless an identical one is there; True when it wrote."""
    return write_if_changed(root / relative_path(item), encoded(item))


def metadata_record(item: WorldItem) -> dict[str, Any]:
    """One line of the sidecar `metadata.jsonl` the indexer reads (agreed format)."""
    return {"path": relative_path(item), "caption": item.composition.caption, "tags": item.composition.tags,
            "licence": item.licence, "popularity": item.popularity}


def query_records(items: list[WorldItem]) -> list[dict[str, Any]]:
    """Each distinct gallery caption with its relevant (caption-matching) images, in first-seen order, and the
    same query in every language of indexer.lab.languages (`translations`, English included)."""
    by_caption: dict[str, list[WorldItem]] = {}
    for item in items:
        by_caption.setdefault(item.composition.caption, []).append(item)
    return [
        {"query": caption, "unseen": group[0].composition.unseen, "composition": group[0].composition.to_dict(),
         "translations": captions(**group[0].composition.to_dict()), "relevant": [relative_path(i) for i in group]}
        for caption, group in by_caption.items()
    ]


def write_world(out: Path, seed: int = 0, gallery: int = 600, size: tuple[int, int] = (128, 128)) -> dict[str, Any]:
    """Write OUT/gallery/ (images + metadata.jsonl), OUT/queries.jsonl and OUT/world.json; returns a summary.

    Files whose bytes are already right are left alone (their mtimes too): `files_written` counts the others.

    The queries file lives outside the image folder so the indexer never mistakes it for gallery data.
    """
    import json

    out = Path(out)
    root = out / GALLERY_DIR
    root.mkdir(parents=True, exist_ok=True)
    items: list[WorldItem] = []
    written = 0
    for item in iter_gallery(seed, gallery, size):
        written += save_item(item, root)
        items.append(item)
    metadata = "".join(json.dumps(metadata_record(item)) + "\n" for item in items)
    written += write_if_changed(root / "metadata.jsonl", metadata.encode("utf-8"))
    queries = query_records(items)
    written += write_if_changed(out / QUERIES_FILE,
                                "".join(json.dumps(record) + "\n" for record in queries).encode("utf-8"))
    summary = {
        "world_version": WORLD_VERSION, "seed": seed, "gallery": gallery, "size": list(size),
        "gallery_dir": str(root), "queries_file": str(out / QUERIES_FILE), "queries": len(queries),
        "unseen_queries": sum(q["unseen"] for q in queries),
        "unseen_images": sum(i.composition.unseen for i in items),
    }
    written += write_if_changed(out / WORLD_FILE, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    summary["files_written"] = written  # 0 on a rerun with the same arguments: nothing for an index to pick up
    return summary
