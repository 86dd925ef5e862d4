"""ShapesX: a procedurally rendered, factor-annotated image-classification benchmark that needs no download.

Ten classes are defined by the object's *shape*. Every class also has a canonical colour and fill texture, shown by
about 75 % of training objects, so colour and texture are useful but imperfect shortcuts (where texture bias
appears). The test split annotates every image with the 16 ImageNet-X factors (one ``top`` factor, sometimes a
second one) and really draws them; prototypes carry none. The cue-conflict split draws the shape of one class with
the colour and texture of another, for shape bias.

A sample is a ``Scene`` (drawn parameters in normalised image coordinates, y down, the frame is [0, 1]^2) built
from ``np.random.default_rng([seed, split, i])``, and ``draw(scene, size)`` rasterises it, so sample ``i`` is the
same scene at any resolution from 32 to 224 px, and a test can alter one parameter and re-render.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from mixmask.evaluation.imagenet_x import FACTORS  # the 16 ImageNet-X factors, in the package's order

# class: (canonical colour, canonical texture); the index in this table is the label. Circles and rings get
# oriented textures so that their rotation (the pose factor) stays visible; the solid fill and the
# rotation-free rings texture go to shapes without rotational symmetry.
_CANONICAL = {
    "circle": ("red", "stripes"),
    "square": ("orange", "checker"),
    "triangle": ("yellow", "dots"),
    "star": ("green", "noise"),
    "cross": ("teal", "grid"),
    "hexagon": ("blue", "waves"),
    "ring": ("purple", "zigzag"),
    "heart": ("pink", "bricks"),
    "arrow": ("brown", "solid"),
    "crescent": ("white", "rings"),
}
CLASSES: tuple[str, ...] = tuple(_CANONICAL)
CANONICAL_COLOUR: tuple[str, ...] = tuple(colour for colour, _ in _CANONICAL.values())
CANONICAL_TEXTURE: tuple[str, ...] = tuple(texture for _, texture in _CANONICAL.values())
SPLITS = ("train", "test", "cue_conflict")  # the exported splits
# ShapesX also has a "val" split: held-out images of the train distribution (own random stream), for model selection.
_SPLIT_IDS = {"train": 0, "val": 3, "test": 1, "cue_conflict": 2}  # seeds the random streams
DEFAULT_LENGTHS: dict[str, int] = {"train": 10000, "val": 2000, "test": 2720, "cue_conflict": 1000}
TEXTURES = ("solid", "stripes", "dots", "checker", "noise", "waves", "grid", "zigzag", "bricks", "rings")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (250, 140, 0),
    "yellow": (245, 220, 40),
    "green": (40, 160, 60),
    "teal": (0, 185, 185),
    "blue": (35, 75, 215),
    "purple": (135, 55, 195),
    "pink": (245, 110, 185),
    "brown": (125, 75, 30),
    "white": (240, 240, 240),
}

# Geometry. ``scale`` is the radius of the object's unit shape (every shape fits the unit disc) as a fraction of
# the image side; the test factors sit clearly outside the train ranges.
TRAIN_SCALE = (0.24, 0.34)
TRAIN_SHIFT = 0.1  # max offset of the centre from the image centre, per axis
TRAIN_ROTATION = 20.0  # degrees, either way
TRAIN_STRETCH = 1.1  # aspect jitter, either way
CANONICAL_P = 0.75  # share of train objects with canonical colour and texture
SMALLER_SCALE = (0.1, 0.15)
LARGER_SCALE = (0.44, 0.5)
POSE_ROTATION = (100.0, 180.0)  # absolute rotation of asymmetric shapes; far outside +-TRAIN_ROTATION
STRETCH = (1.55, 1.8)
SHEAR = (0.55, 0.8)
DARKER = (0.3, 0.5)  # pixel multiplier
BRIGHTER = (2.2, 3.2)  # distance-to-white divisor
BLOCKED = (0.3, 0.55)  # occluded share of the object's area
VISIBLE = (0.4, 0.75)  # share of the object inside the frame, partial_view
DISTRACTOR_SCALE = (0.45, 0.65)  # relative to the main object
SECOND_FACTOR_P = 0.25
# Second factors that would hide or contradict the first one.
_CONFLICTS = {
    frozenset(pair)
    for pair in [
        ("smaller", "larger"),
        ("darker", "brighter"),
        ("style", "texture"),
        # a turned circle or ring shows its pose only through its oriented texture: no outline, no random fill
        ("pose", "style"),
        ("pose", "texture"),
        ("style", "pattern"),
        ("object_blocking", "person_blocking"),
        ("partial_view", "object_blocking"),
        ("partial_view", "person_blocking"),
        ("partial_view", "larger"),
        ("partial_view", "multiple_objects"),
        ("multiple_objects", "larger"),
        ("multiple_objects", "smaller"),
        ("multiple_objects", "shape"),
        ("shape", "larger"),
    ]
}
_CYCLE = (*FACTORS, "none")  # test sample i has top factor _CYCLE[i % 17]
_REF_SIZE = 64  # resolution at which occlusion and cropping are solved, so they do not depend on size
_RGB = tuple[int, int, int]


# --- shapes: polygons in unit coordinates (y up, inside the unit disc) -------------------------------------------


def _arc(cx: float, cy: float, r: float, a0: float, a1: float, n: int = 64) -> np.ndarray:
    t = np.radians(np.linspace(a0, a1, max(3, int(n * abs(a1 - a0) / 360) + 1)))
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _circle(r: float = 1.0, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    return _arc(cx, cy, r, 0, 360, 64)[:-1]


def _regular(n: int, r: float = 1.0, start: float = 90.0) -> np.ndarray:
    return _arc(0, 0, r, start, start + 360, n)[:-1]


def _star(points: int, inner: float) -> np.ndarray:
    t = np.radians(90 + np.arange(2 * points) * 180 / points)
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _rounded(poly: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Chaikin corner cutting: the same polygon with rounded corners."""
    for _ in range(iterations):
        nxt = np.roll(poly, -1, 0)
        poly = np.stack([0.75 * poly + 0.25 * nxt, 0.25 * poly + 0.75 * nxt], 1).reshape(-1, 2)
    return poly


def _crescent(r: float, dx: float) -> np.ndarray:
    """Unit disc minus a disc of radius r centred at (dx, 0), as one polygon (so its outline is right too)."""
    x = (1 - r * r + dx * dx) / (2 * dx)  # where the two circles cross
    outer = math.degrees(math.atan2(math.sqrt(1 - x * x), x))
    inner = math.degrees(math.atan2(math.sqrt(1 - x * x), x - dx))
    return np.concatenate([_arc(0, 0, 1, outer, 360 - outer), _arc(dx, 0, r, 360 - inner, inner)])


def _cross(arm: float, top: float = 0.95, bottom: float = 0.95) -> np.ndarray:
    a = arm
    return np.array(
        [(-a, top), (a, top), (a, a), (0.95, a), (0.95, -a), (a, -a), (a, -bottom), (-a, -bottom)]
        + [(-a, -a), (-0.95, -a), (-0.95, a), (-a, a)]
    )


def _normalised(pts: np.ndarray) -> np.ndarray:
    """Centres the bounding box and scales the farthest point to radius 1."""
    pts = pts - (pts.max(0) + pts.min(0)) / 2
    return pts / np.linalg.norm(pts, axis=1).max()


def _heart_curve() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return _normalised(np.stack([x, y], 1))


def _heart_lobes() -> np.ndarray:
    """A geometric heart: two round lobes, a deep notch and a long pointed tip."""
    right = _arc(0.5, 0.4, 0.45, -35, 180, 48)
    left = _arc(-0.5, 0.4, 0.45, 0, 215, 48)
    return _normalised(np.concatenate([[(0.0, -1.3)], right, [(0.0, 0.15)], left]))


def _heart_polar() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    r = np.sin(t) * np.sqrt(np.abs(np.cos(t))) / (np.sin(t) + 1.4) - 2 * np.sin(t) + 2
    return _normalised(np.stack([r * np.cos(t), r * np.sin(t)], 1))


def _arrow(shaft: float, head: float, neck: float, double: bool = False) -> np.ndarray:
    up = [(0, 0.95), (head, neck), (shaft, neck)]
    down = [(shaft, -neck), (head, -neck), (0, -0.95)] if double else [(shaft, -0.95)]
    right = up + down
    return np.array(right + [(-x, y) for x, y in reversed(right) if x != 0])


def _open_ring(inner: float, gap: float) -> np.ndarray:
    return np.concatenate([_arc(0, 0, 1, gap / 2, 360 - gap / 2), _arc(0, 0, inner, 360 - gap / 2, gap / 2)])


def _scalloped(waves: int, depth: float, square: bool) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    wave = np.sign(np.sin(waves * t)) if square else np.sin(waves * t)
    r = 1 - depth / 2 + depth / 2 * wave
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _bevelled_square(half: float, cut: float) -> np.ndarray:
    h, c = half, half - cut
    return np.array([(-c, h), (c, h), (h, c), (h, -c), (c, -h), (-c, -h), (-h, -c), (-h, c)])


_SQUARE = np.array([(-0.7, 0.7), (0.7, 0.7), (0.7, -0.7), (-0.7, -0.7)])
_TRIANGLE = _regular(3)
_RIGHT_TRIANGLE = np.array([(-0.7, -0.6), (0.75, -0.6), (-0.7, 0.75)])
_HEXAGON = _regular(6, start=0)
# Per class: variant 0 is the canonical shape (train, prototypes), the others are the subcategory factor. A variant
# is a tuple of polygons filled with the even-odd rule, so a polygon inside another one is a hole.
_SHAPES: tuple[tuple[tuple[np.ndarray, ...], ...], ...] = (
    ((_circle(),), (_scalloped(10, 0.12, False),), (_scalloped(14, 0.1, True),)),
    ((_SQUARE,), (_rounded(_SQUARE * 1.1),), (_bevelled_square(0.72, 0.28),)),
    ((_TRIANGLE,), (_rounded(_TRIANGLE * 1.15),), (_normalised(_RIGHT_TRIANGLE),)),
    ((_star(5, 0.45),), (_star(6, 0.5),), (_star(8, 0.62),)),
    ((_cross(0.3),), (_cross(0.3, top=0.6),), (_cross(0.17),)),
    ((_HEXAGON,), (_HEXAGON * (1, 0.6),), (_HEXAGON, _circle(0.4))),
    ((_circle(), _circle(0.55)), (_circle(), _circle(0.75)), (_open_ring(0.55, 50),)),
    ((_heart_curve(),), (_heart_lobes(),), (_heart_polar(),)),
    ((_arrow(0.22, 0.65, 0.15),), (_arrow(0.2, 0.55, 0.4, double=True),), (_arrow(0.1, 0.6, 0.05),)),
    ((_crescent(0.85, 0.45),), (_crescent(0.92, 0.3),), (_crescent(0.7, 0.6),)),
)
N_VARIANTS: tuple[int, ...] = tuple(len(v) for v in _SHAPES)
_POINTS = tuple(tuple(np.concatenate(v) for v in variants) for variants in _SHAPES)  # for extents and radii


def _person(neck: float = 0.3, head: float = 0.55, head_y: float = 1.6) -> np.ndarray:
    """Head-and-shoulders silhouette as one polygon: shoulders 3 wide at y = 0, body down to y = -5."""
    shoulder = _arc(0, 0, 1.5, 0, math.degrees(math.acos(neck / 1.5)), 24) * (1, 0.6)
    a = math.degrees(math.asin(neck / head))  # the head arc starts and ends on the neck
    top = _arc(0, head_y, head, a - 90, 270 - a, 48)
    return np.concatenate([[(1.5, -5.0)], shoulder, top, shoulder[::-1] * (-1, 1), [(-1.5, -5.0)]])


_PERSON = _person()
_PERSON_HEAD = _circle(0.55, 0, 1.6)  # painted over the silhouette in a skin colour
_BOARD = np.array([(-1.3, 0.0), (1.3, 0.0), (1.3, -3.0), (-1.3, -3.0)])  # an occluding board, near edge on top
_SKIN = ((224, 172, 105), (141, 85, 36), (255, 219, 172), (198, 134, 66))


# --- textures: weight of the second tone, evaluated in the object's own frame so they turn and scale with it -----


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


_NOISE_LATTICE = np.random.default_rng(20240601).random((32, 32), dtype=np.float32)


def _value_noise(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    fu, fv = np.floor(u), np.floor(v)
    tu, tv = u - fu, v - fv
    tu, tv = tu * tu * (3 - 2 * tu), tv * tv * (3 - 2 * tv)
    iu, iv = fu.astype(np.int64) & 31, fv.astype(np.int64) & 31
    iu1, iv1 = (iu + 1) & 31, (iv + 1) & 31
    top = _NOISE_LATTICE[iv, iu] + (_NOISE_LATTICE[iv, iu1] - _NOISE_LATTICE[iv, iu]) * tu
    bottom = _NOISE_LATTICE[iv1, iu] + (_NOISE_LATTICE[iv1, iu1] - _NOISE_LATTICE[iv1, iu]) * tu
    return top + (bottom - top) * tv


def _stripes(u, v):
    return _frac((0.5 * u + 0.866 * v) / 0.42) < 0.5


def _dots(u, v):
    a, b = _frac(u / 0.42) - 0.5, _frac(v / 0.42) - 0.5
    return a * a + b * b < 0.1


def _checker(u, v):
    return (np.floor(u / 0.3) + np.floor(v / 0.3)) % 2


def _noise(u, v):
    return np.clip((_value_noise(u / 0.3, v / 0.3) - 0.3) * 2.5, 0, 1)


def _waves(u, v):
    return _frac((v + 0.12 * np.sin(u * (2 * np.pi / 0.7))) / 0.4) < 0.5


def _grid(u, v):
    return (_frac(u / 0.42) < 0.28) | (_frac(v / 0.42) < 0.28)


def _zigzag(u, v):
    return _frac((v + 0.5 * np.abs(_frac(u / 0.45) - 0.5)) / 0.36) < 0.5


def _bricks(u, v):
    row = np.floor(v / 0.3)
    return (_frac(v / 0.3) < 0.22) | (_frac(u / 0.56 + 0.5 * (row % 2)) < 0.11)


def _rings(u, v):
    return _frac(np.sqrt(u * u + v * v) / 0.34) < 0.5


_TEXTURE_FN = {
    "stripes": _stripes,
    "dots": _dots,
    "checker": _checker,
    "noise": _noise,
    "waves": _waves,
    "grid": _grid,
    "zigzag": _zigzag,
    "bricks": _bricks,
    "rings": _rings,
}
# Overlays for the pattern factor: coarser than any texture and in black or white, over the texture.
PATTERNS = ("spots", "bands", "blotches")
_PATTERN_FN = {
    "spots": lambda u, v: (_frac(u / 0.6) - 0.5) ** 2 + (_frac(v / 0.6) - 0.5) ** 2 < 0.07,
    "bands": lambda u, v: _frac((u + 0.12 * np.sin(v * 5.0)) / 0.65) < 0.35,
    "blotches": lambda u, v: _value_noise(u / 0.45, v / 0.45) > 0.52,
}


def _luminance(colour: _RGB) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def _second_tone(colour: _RGB) -> _RGB:
    """The texture's other tone: a darker shade of a light colour, a lighter tint of a dark one."""
    if _luminance(colour) > 110:
        return tuple(round(0.4 * c) for c in colour)
    return tuple(round(c + 0.6 * (255 - c)) for c in colour)


# --- scenes ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thing:
    """One shape with its appearance and placement. The unit shape is mapped by stretch/shear, flip, rotation
    (degrees, counter-clockwise), scale, then moved to centre."""

    shape: int
    colour: _RGB
    texture: str
    centre: tuple[float, float] = (0.5, 0.5)
    scale: float = 0.3
    rotation: float = 0.0
    flip: bool = False
    stretch: float = 1.0  # x scaled by stretch, y by 1 / stretch (area kept)
    shear: float = 0.0
    variant: int = 0
    phase: tuple[float, float] = (0.0, 0.0)  # texture offset, object units

    @cached_property
    def matrix(self) -> np.ndarray:
        """2x2 map from unit shape coordinates (y up) to normalised image coordinates (y down): stretch/shear,
        flip, rotation, scale; written out (and cached) because every drawing step needs it."""
        a = math.radians(self.rotation)
        c, s = math.cos(a), math.sin(a)
        f = -1.0 if self.flip else 1.0
        k, h = self.stretch, self.shear
        return self.scale * np.array([[c * f * k, c * f * h - s / k], [-s * f * k, -(s * f * h + c / k)]])


@dataclass(frozen=True)
class Background:
    kind: str  # "plain", "gradient" or "clutter"
    colours: tuple[_RGB, _RGB]
    angle: float = 0.0  # gradient direction, degrees
    seed: int = 0  # clutter layout


@dataclass(frozen=True)
class Pattern:
    kind: str  # one of PATTERNS
    colour: _RGB
    angle: float
    phase: tuple[float, float]


@dataclass(frozen=True)
class Occluder:
    kind: str  # "object" or "person"
    parts: tuple[tuple[tuple[float, ...], _RGB], ...]  # (flat x, y polygon in image coordinates, colour)


@dataclass(frozen=True)
class Scene:
    obj: Thing
    background: Background
    distractors: tuple[Thing, ...] = ()
    occluders: tuple[Occluder, ...] = ()
    pattern: Pattern | None = None
    outline: bool = False  # style factor: outline only
    brightness: float = 1.0  # < 1 darkens (multiplier), > 1 brightens (divides the distance to white)


def _image_polygons(t: Thing) -> list[np.ndarray]:
    m = t.matrix.T
    return [pts @ m + t.centre for pts in _SHAPES[t.shape][t.variant]]


def _edges(polygons: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points of every edge of the polygons."""
    return np.concatenate(polygons), np.concatenate([np.roll(p, -1, 0) for p in polygons])


_UNIT_EDGES = tuple(tuple(_edges(list(v)) for v in variants) for variants in _SHAPES)


def _thing_edges(t: Thing) -> tuple[np.ndarray, np.ndarray]:
    m = t.matrix.T
    a, b = _UNIT_EDGES[t.shape][t.variant]
    return a @ m + t.centre, b @ m + t.centre


def _mask(edges: tuple[np.ndarray, np.ndarray], size: int) -> tuple[np.ndarray, int, int] | None:
    """Even-odd fill of polygons given by their edges (normalised coordinates) at native resolution, within
    their bounding box: a pixel is inside when its centre is. Exact, unlike PIL's polygon fill, which rounds
    vertices and grows shapes by up to a pixel (10-20 % of the area of a 32 px object).

    Returns (bool mask, y0, x0), or None when no pixel centre is covered.
    """
    a, b = edges[0] * size - 0.5, edges[1] * size - 0.5  # pixel centres sit at integer coordinates
    lo, hi = a.min(0).tolist(), a.max(0).tolist()
    x0, y0 = max(math.ceil(lo[0]), 0), max(math.ceil(lo[1]), 0)
    w, h = min(math.floor(hi[0]), size - 1) + 1 - x0, min(math.floor(hi[1]), size - 1) + 1 - y0
    if w <= 0 or h <= 0:
        return None
    (ax, ay), (bx, by) = a.T, b.T
    dy = by - ay
    slope = (bx - ax) / np.where(dy == 0, 1.0, dy)
    rows = np.arange(y0, y0 + h, dtype=np.float64)[:, None] - ay  # (row, edge): row centre above the edge start
    # where each edge crosses each row, as the first pixel whose centre lies right of the crossing
    first = np.ceil(rows * slope + (ax - x0))
    np.clip(first, 0, w, out=first)
    first[(rows < 0) == (rows < dy)] = w  # the edge does not span the row (half-open, so vertices count once)
    first += np.arange(0, h * (w + 1), w + 1)[:, None]
    # every crossing flips the pixels to its right: count flips per pixel, inside = odd
    flips = np.bincount(first.astype(np.int64).ravel(), minlength=h * (w + 1)).reshape(h, w + 1)
    return np.cumsum(flips[:, :w], 1, dtype=np.uint8) & 1 > 0, y0, x0


def _outline(polygons: list[np.ndarray], size: int, width: int) -> tuple[np.ndarray, int, int] | None:
    """The polygons' outlines, ``width`` pixels wide (style factor), as _mask."""
    px = [pts * size - 0.5 for pts in polygons]
    pts = np.concatenate(px)
    lo = np.maximum(np.floor(pts.min(0)).astype(int) - width, 0)
    hi = np.minimum(np.ceil(pts.max(0)).astype(int) + 1 + width, size)
    if (hi <= lo).any():
        return None
    img = Image.new("L", tuple((hi - lo).tolist()), 0)
    draw = ImageDraw.Draw(img)
    for p in px:
        draw.polygon((p - lo).ravel().tolist(), outline=255, width=width)
    return np.asarray(img) > 127, int(lo[1]), int(lo[0])


def _full(r: tuple[np.ndarray, int, int] | None, size: int) -> np.ndarray:
    out = np.zeros((size, size), bool)
    if r is not None:
        m, y0, x0 = r
        out[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]] = m
    return out


def _outline_width(t: Thing, size: int) -> int:
    return max(1, round(0.06 * t.scale * size))


# The canvas is a (size, size) uint32 array of packed RGB (little-endian: R in the low byte): masked writes of a
# whole pixel are several times faster than on an (h, w, 3) array, and PIL unpacks it at C speed.
def _pack(rgb) -> np.ndarray:
    c = np.asarray(rgb, np.uint32)
    return c[..., 0] | (c[..., 1] << 8) | (c[..., 2] << 16)


_STEPS = (np.arange(256, dtype=np.float32) / 255)[:, None]


@lru_cache(maxsize=4096)
def _ramp(c0: _RGB, c1: _RGB) -> np.ndarray:
    """256 packed colours from c0 to c1: a texture's two tones, a gradient background."""
    start = np.asarray(c0, np.float32)
    return _pack(start + _STEPS * (np.asarray(c1, np.float32) - start) + np.float32(0.5))


@lru_cache(maxsize=64)
def _tones(colour: _RGB) -> np.ndarray:
    return _ramp(colour, _second_tone(colour))


def _levels(weight: np.ndarray) -> np.ndarray:
    return (weight * np.float32(255) + np.float32(0.5)).astype(np.uint8)


@lru_cache(maxsize=8)
def _pixel_centres(size: int) -> np.ndarray:
    return (np.arange(size, dtype=np.float32) + 0.5) / size


def _object_frame(t: Thing, size: int, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-shape coordinates (u, v) of the pixel centres in a box: where textures and patterns are evaluated,
    so that they turn, stretch and scale with the object."""
    (a, b), (c, d) = t.matrix.tolist()
    det = a * d - b * c
    xs = _pixel_centres(size)[x0 : x0 + w] - np.float32(t.centre[0])
    ys = _pixel_centres(size)[y0 : y0 + h, None] - np.float32(t.centre[1])
    return (xs * np.float32(d / det) - ys * np.float32(b / det), ys * np.float32(a / det) - xs * np.float32(c / det))


def _paint(canvas: np.ndarray, t: Thing, outline: bool = False) -> tuple[np.ndarray, int, int] | None:
    """Draws one thing onto the canvas; returns the painted mask (as _mask)."""
    size = canvas.shape[0]
    r = _outline(_image_polygons(t), size, _outline_width(t, size)) if outline else _mask(_thing_edges(t), size)
    if r is None:
        return None
    m, y0, x0 = r
    region = canvas[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]]
    if outline or t.texture == "solid":
        region[m] = _pack(t.colour)
    else:
        u, v = _object_frame(t, size, y0, x0, *m.shape)
        weight = _TEXTURE_FN[t.texture](u + np.float32(t.phase[0]), v + np.float32(t.phase[1]))
        region[m] = _tones(t.colour)[_levels(weight[m])]
    return r


def _background(bg: Background, size: int) -> np.ndarray:
    if bg.kind == "plain":
        return np.full((size, size), _pack(bg.colours[0]), np.uint32)
    xs = _pixel_centres(size) - np.float32(0.5)
    if bg.kind == "gradient":
        a = math.radians(bg.angle)  # levels 0..255 along the direction, across the image diagonal
        across = xs * np.float32(255 * math.cos(a) / 1.42) + np.float32(128)
        down = xs * np.float32(255 * math.sin(a) / 1.42)
        return _ramp(*bg.colours)[(across + down[:, None]).astype(np.uint8)]
    return _clutter(bg, size, xs)


def _clutter(bg: Background, size: int, xs: np.ndarray) -> np.ndarray:
    """Background factor: a large-scale texture in two muted colours under random strokes and irregular blobs."""
    rng = np.random.default_rng(bg.seed)
    kind = _pick(rng, [t for t in TEXTURES if t not in ("solid", "noise")])  # crisp, busy patterns
    a, period = math.radians(bg.angle), rng.uniform(0.3, 0.5)
    u = (xs * math.cos(a) - xs[:, None] * math.sin(a)) / period
    v = (xs * math.sin(a) + xs[:, None] * math.cos(a)) / period
    base = _ramp(*bg.colours)[_levels(_TEXTURE_FN[kind](u, v))]
    img = Image.frombytes("RGBX", (size, size), base.astype("<u4").tobytes())
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(14, 22)):
        colour = _random_colour(rng, saturation=(0.2, 0.7), value=(0.25, 0.95))
        if rng.random() < 0.6:  # a stroke
            p0 = rng.uniform(-0.1, 1.1, 2)
            p1 = p0 + rng.uniform(-0.5, 0.5, 2)
            draw.line((p0 * size).tolist() + (p1 * size).tolist(), fill=colour, width=max(1, int(0.03 * size)))
        else:  # an irregular blob, lumpy enough not to look like any class
            n = rng.integers(5, 9)
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = rng.uniform(0.03, 0.12) * rng.uniform(0.4, 1.0, n)
            pts = rng.uniform(0, 1, 2) + np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
            draw.polygon((pts * size).ravel().tolist(), fill=colour)
    return np.frombuffer(img.tobytes(), "<u4").reshape(size, size).copy()  # writable


def _draw_image(scene: Scene, size: int) -> Image.Image:
    canvas = _background(scene.background, size)
    for d in scene.distractors:
        _paint(canvas, d)
    painted = _paint(canvas, scene.obj, scene.outline)
    if scene.pattern is not None and painted is not None:
        m, y0, x0 = painted
        p = scene.pattern
        u, v = _object_frame(scene.obj, size, y0, x0, *m.shape)
        a = math.radians(p.angle)
        pu = u * math.cos(a) - v * math.sin(a) + p.phase[0]
        pv = u * math.sin(a) + v * math.cos(a) + p.phase[1]
        canvas[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]][m & _PATTERN_FN[p.kind](pu, pv)] = _pack(p.colour)
    for occ in scene.occluders:
        for flat, colour in occ.parts:
            r = _mask(_edges([np.asarray(flat).reshape(-1, 2)]), size)
            if r is not None:
                m, y0, x0 = r
                canvas[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]][m] = _pack(colour)
    img = Image.frombuffer("RGBX", (size, size), canvas, "raw", "RGBX", 0, 1).convert("RGB")
    if scene.brightness < 1:  # darker: scale towards black
        img = Image.blend(Image.new("RGB", img.size, (0, 0, 0)), img, scene.brightness)
    elif scene.brightness > 1:  # brighter: shrink the distance to white
        img = Image.blend(Image.new("RGB", img.size, (255, 255, 255)), img, 1 / scene.brightness)
    return img


def draw(scene: Scene, size: int) -> np.ndarray:
    """Renders a scene to a uint8 (size, size, 3) array."""
    return np.array(_draw_image(scene, size))


def masks(scene: Scene, size: int) -> dict[str, np.ndarray]:
    """Full-frame bool masks: ``object`` (main silhouette, before occlusion), ``painted`` (pixels the main object
    paints: its outline in the style factor), ``occluder`` and ``distractors``; for tests and analyses."""
    o = scene.obj
    painted = _outline(_image_polygons(o), size, _outline_width(o, size)) if scene.outline else None
    parts = [_edges([np.asarray(flat).reshape(-1, 2)]) for occ in scene.occluders for flat, _ in occ.parts]
    return {
        "object": _frame_mask([_thing_edges(o)], size),
        "painted": _full(painted, size) if scene.outline else _frame_mask([_thing_edges(o)], size),
        "occluder": _frame_mask(parts, size),
        "distractors": _frame_mask([_thing_edges(d) for d in scene.distractors], size),
    }


def _frame_mask(shapes: list[tuple[np.ndarray, np.ndarray]], size: int) -> np.ndarray:
    """Full-frame union of several shapes, each given by its edges (as _mask)."""
    out = np.zeros((size, size), bool)
    for edges in shapes:
        out |= _full(_mask(edges, size), size)
    return out


# --- sampling ----------------------------------------------------------------------------------------------------
# Scalar draws go through rng.random(): rng.uniform and rng.choice cost several times more per call.


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * rng.random()


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _random_colour(rng: np.random.Generator, saturation=(0.0, 0.3), value=(0.25, 0.85)) -> _RGB:
    rgb = colorsys.hsv_to_rgb(rng.random(), _uniform(rng, *saturation), _uniform(rng, *value))
    return tuple(round(255 * c) for c in rgb)


def _plain_or_gradient(rng: np.random.Generator) -> Background:
    c0 = _random_colour(rng)
    if rng.random() < 0.5:
        return Background("plain", (c0, c0))
    return Background("gradient", (c0, _random_colour(rng)), angle=_uniform(rng, 0, 360))


# Per class, the palette colours far (RGB distance > 100) from its canonical one, and the other textures.
_OTHER_COLOURS = tuple([c for c in COLOURS.values() if math.dist(c, COLOURS[own]) > 100] for own in CANONICAL_COLOUR)
_OTHER_TEXTURES = tuple([t for t in TEXTURES if t != own] for own in CANONICAL_TEXTURE)


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.random() * len(options))]


def _jittered(rng: np.random.Generator, shape: int, appearance_of: int | None = None) -> Thing:
    """A train-like thing: canonical appearance (of ``appearance_of``, default its own class), moderate jitter."""
    look = shape if appearance_of is None else appearance_of
    return Thing(
        shape=shape,
        colour=COLOURS[CANONICAL_COLOUR[look]],
        texture=CANONICAL_TEXTURE[look],
        centre=(0.5 + _uniform(rng, -TRAIN_SHIFT, TRAIN_SHIFT), 0.5 + _uniform(rng, -TRAIN_SHIFT, TRAIN_SHIFT)),
        scale=_uniform(rng, *TRAIN_SCALE),
        rotation=_uniform(rng, -TRAIN_ROTATION, TRAIN_ROTATION),
        stretch=TRAIN_STRETCH ** _uniform(rng, -1, 1),
        phase=(rng.random(), rng.random()),
    )


def _extent(t: Thing) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (lo, hi) of the thing in normalised image coordinates."""
    pts = _POINTS[t.shape][t.variant] @ t.matrix.T + t.centre
    return pts.min(0), pts.max(0)


def _fit_in_frame(t: Thing, margin: float = 0.02) -> Thing:
    """Moves the thing (as little as possible) so that its bounding box lies inside the frame."""
    reach = t.scale * max(t.stretch, 1 / t.stretch) * (1 + abs(t.shear))  # bounds the distance from the centre
    if max(abs(t.centre[0] - 0.5), abs(t.centre[1] - 0.5)) + reach <= 0.5 - margin:
        return t  # most things: inside for sure, skip the exact bounding box
    lo, hi = _extent(t)
    centre = list(t.centre)
    for k, (a, b) in enumerate(zip(lo.tolist(), hi.tolist(), strict=True)):
        if b - a > 1 - 2 * margin:  # cannot fit: centre it
            centre[k] += 0.5 - (a + b) / 2
        else:
            centre[k] += max(margin - a, 0) - max(b - (1 - margin), 0)
    return t if tuple(centre) == t.centre else replace(t, centre=tuple(centre))


def _radius(t: Thing) -> float:
    """Distance from the centre to the farthest point of the thing."""
    return float(np.linalg.norm(_POINTS[t.shape][t.variant] @ t.matrix.T, axis=1).max())


def _solve(fraction, target: float, lo: float, hi: float, steps: int = 10) -> float:
    """Bisection for fraction(x) = target, with fraction(lo) < target < fraction(hi)."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        if fraction(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _partial_view(rng: np.random.Generator, t: Thing) -> Thing:
    """Slides the object out of the frame (in a random direction) until only VISIBLE of it stays inside."""
    a, b = _thing_edges(replace(t, centre=(0.5, 0.5)))
    area = _frame_mask([(a, b)], _REF_SIZE).sum()
    angle = _uniform(rng, 0, 2 * math.pi)
    direction = np.array([math.cos(angle), math.sin(angle)])

    def hidden(d: float) -> float:
        return 1 - _frame_mask([(a + d * direction, b + d * direction)], _REF_SIZE).sum() / area

    d = _solve(hidden, 1 - _uniform(rng, *VISIBLE), 0.0, 0.75 + t.scale)
    return replace(t, centre=tuple(float(c) for c in 0.5 + d * direction))


def _occluder(rng: np.random.Generator, t: Thing, person: bool) -> Occluder:
    """An occluder slid over the object until it covers BLOCKED of the object's area.

    object_blocking: a plain board from a random side; person_blocking: a head-and-shoulders silhouette rising
    from below (clothes-coloured, with a skin-coloured head).
    """
    obj = _frame_mask([_thing_edges(t)], _REF_SIZE)
    area = obj.sum()
    if person:
        up = math.radians(90 + _uniform(rng, -25, 25))  # the way the person's head points, y up
        unit = t.scale * _uniform(rng, 0.5, 0.7)
        shapes = [_PERSON, _PERSON_HEAD]
        skin = _pick(rng, _SKIN)
        colours = [_random_colour(rng, saturation=(0.2, 0.8), value=(0.15, 0.6)), skin]
        lateral = _uniform(rng, -0.4, 0.4) * t.scale
        travel = (-2.3 * unit - 1.2 * t.scale, t.scale)  # shoulder line from far below the object to above it
    else:
        up = _uniform(rng, 0, 2 * math.pi)
        unit = t.scale
        shapes = [_BOARD]
        colours = [_random_colour(rng, saturation=(0.05, 0.5), value=(0.2, 0.8))]
        lateral = 0.0
        travel = (-1.2 * t.scale, t.scale)  # near edge from outside the object to beyond its centre
    axis_up = np.array([math.cos(up), -math.sin(up)])  # the occluder's y axis, in image coordinates (y down)
    side = np.array([math.sin(up), math.cos(up)])  # its x axis
    to_image = unit * np.stack([side, axis_up])  # rows: images of the unit x and y axes
    origin = np.asarray(t.centre) + lateral * side
    a, b = (e @ to_image + origin for e in _edges([shapes[0]]))  # the silhouette at offset 0

    def covered(x: float) -> float:  # with the occluder moved by x along its y axis
        return (_frame_mask([(a + x * axis_up, b + x * axis_up)], _REF_SIZE) & obj).sum() / area

    origin = origin + _solve(covered, _uniform(rng, *BLOCKED), *travel) * axis_up
    parts = tuple((tuple((s @ to_image + origin).ravel().tolist()), c) for s, c in zip(shapes, colours, strict=True))
    return Occluder("person" if person else "object", parts)


def _distractors(rng: np.random.Generator, t: Thing) -> tuple[Thing, ...]:
    """1-3 smaller canonical shapes of other classes, placed around the main object without touching it."""
    r_main = _radius(t)
    placed: list[tuple[Thing, float]] = []
    for _ in range(1 + int(3 * rng.random())):
        shape = (t.shape + 1 + int(rng.random() * (len(CLASSES) - 1))) % len(CLASSES)
        d = replace(_jittered(rng, shape), scale=t.scale * _uniform(rng, *DISTRACTOR_SCALE))
        r = _radius(d)
        for _ in range(50):
            c = np.array([_uniform(rng, r + 0.01, 0.99 - r), _uniform(rng, r + 0.01, 0.99 - r)])
            if math.dist(c, t.centre) > r_main + r and all(math.dist(c, o.centre) > r + ro for o, ro in placed):
                placed.append((replace(d, centre=(float(c[0]), float(c[1]))), r))
                break
    if not placed:  # there is always room in the corner farthest from the object
        corner = tuple(0.88 if c < 0.5 else 0.12 for c in t.centre)
        placed.append((replace(d, centre=corner, scale=t.scale * DISTRACTOR_SCALE[0]), r))
    return tuple(d for d, _ in placed)


# Rotational symmetry of each class's silhouette (0: round). Posed shapes turn by an odd multiple of half their
# symmetry angle (a square becomes a diamond, a triangle points down); round ones show the turn in their texture.
_SYMMETRY = {"circle": 0, "square": 4, "triangle": 3, "star": 5, "cross": 4, "hexagon": 6, "ring": 0}


def _pose_rotation(rng: np.random.Generator, label: int) -> float:
    n = _SYMMETRY.get(CLASSES[label], 1)
    if n == 0:  # oriented textures repeat after 180 degrees
        return _sign(rng) * _uniform(rng, 90, 150)
    if n == 1:
        return _sign(rng) * _uniform(rng, *POSE_ROTATION)
    half = 180 / n
    turn = _pick(rng, [k * half for k in range(1, 2 * n, 2) if 90 <= k * half <= 270]) + _uniform(rng, -8, 8)
    return (turn + 180) % 360 - 180


def _test_label(i: int) -> int:
    return (i // len(_CYCLE)) % len(CLASSES)  # every (top factor, class) pair equally often


def _test_plan(rng: np.random.Generator, i: int) -> tuple[str, tuple[str, ...]]:
    """Top factor and all factors of test sample i (the first draws of its rng)."""
    top = _CYCLE[i % len(_CYCLE)]
    if top == "none":
        return top, ()
    if rng.random() >= SECOND_FACTOR_P:
        return top, (top,)
    return top, (top, _pick(rng, [f for f in FACTORS if f != top and frozenset((f, top)) not in _CONFLICTS]))


def _test_scene(rng: np.random.Generator, label: int, factors: tuple[str, ...]) -> Scene:
    """A canonical train-like scene, then each factor applied to it."""
    f = set(factors)
    t = _jittered(rng, label)
    background = _plain_or_gradient(rng)
    brightness = 1.0
    if "color" in f:
        t = replace(t, colour=_pick(rng, _OTHER_COLOURS[label]))
    if "texture" in f:
        t = replace(t, texture=_pick(rng, _OTHER_TEXTURES[label]))
    if "subcategory" in f:
        t = replace(t, variant=1 + int(rng.random() * (N_VARIANTS[label] - 1)))
    if "pose" in f:
        t = replace(t, rotation=_pose_rotation(rng, label), flip=rng.random() < 0.5)
    if "shape" in f:  # stretched along either axis, or sheared; small enough to stay in the frame
        sign, stretch, shear = _sign(rng), 1.0, 0.0
        if rng.random() < 0.5:
            stretch = _uniform(rng, *STRETCH) ** sign
        else:
            shear = sign * _uniform(rng, *SHEAR)
        t = replace(t, scale=_uniform(rng, 0.24, 0.26), stretch=stretch, shear=shear)
    if "smaller" in f:
        t = replace(t, scale=_uniform(rng, *SMALLER_SCALE))
    if "larger" in f:
        t = replace(t, scale=_uniform(rng, *LARGER_SCALE), centre=(0.5, 0.5))
    if "multiple_objects" in f:  # leave room for the distractors
        t = replace(t, scale=min(t.scale, 0.27))
    pattern = None
    if "pattern" in f:
        colour = (25, 25, 25) if _luminance(t.colour) > 110 else (245, 245, 245)
        pattern = Pattern(_pick(rng, PATTERNS), colour, _uniform(rng, 0, 360), (rng.random(), rng.random()))
    if "darker" in f:
        brightness = _uniform(rng, *DARKER)
    if "brighter" in f:
        brightness = _uniform(rng, *BRIGHTER)
    if "background" in f:
        colours = (_random_colour(rng, value=(0.25, 0.45)), _random_colour(rng, value=(0.6, 0.85)))
        background = Background("clutter", colours, angle=_uniform(rng, 0, 360), seed=int(rng.integers(2**31)))
    t = _partial_view(rng, t) if "partial_view" in f else _fit_in_frame(t)
    occluders = []
    if "object_blocking" in f:
        occluders.append(_occluder(rng, t, person=False))
    if "person_blocking" in f:
        occluders.append(_occluder(rng, t, person=True))
    distractors = _distractors(rng, t) if "multiple_objects" in f else ()
    return Scene(t, background, distractors, tuple(occluders), pattern, "style" in f, brightness)


def _train_scene(rng: np.random.Generator, label: int) -> Scene:
    t = _jittered(rng, label)
    if rng.random() >= CANONICAL_P:  # off-canonical: colour, texture or both
        change = int(3 * rng.random())
        colour = _pick(rng, _OTHER_COLOURS[label]) if change != 1 else t.colour
        texture = _pick(rng, _OTHER_TEXTURES[label]) if change != 0 else t.texture
        t = replace(t, colour=colour, texture=texture)
    return Scene(_fit_in_frame(t), _plain_or_gradient(rng))


def _cue_conflict_pair(i: int) -> tuple[int, int]:
    """(shape, texture class) of cue-conflict sample i: all 90 ordered pairs of distinct classes in turn."""
    n = len(CLASSES)
    shape = i % n
    return shape, (shape + 1 + (i // n) % (n - 1)) % n


class ShapesX(Dataset):
    """ShapesX split rendered on the fly: items are ``(image, label, index)`` as in ``mixmask.data.common``."""

    def __init__(self, split: str = "train", size: int = 64, length: int | None = None, seed: int = 0, transform=None):
        if split not in _SPLIT_IDS:
            raise ValueError(f"unknown ShapesX split {split!r}; valid splits: {', '.join(_SPLIT_IDS)}")
        if not 32 <= size <= 224:
            raise ValueError(f"ShapesX size must be between 32 and 224 pixels, got {size}")
        length = DEFAULT_LENGTHS[split] if length is None else length
        if length < 1:
            raise ValueError(f"ShapesX length must be at least 1, got {length}")
        if seed < 0:
            raise ValueError(f"ShapesX seed must be non-negative, got {seed}")
        self.split, self.size, self.length, self.seed, self.transform = split, size, length, seed, transform
        self.classes = list(CLASSES)
        self._split_id = _SPLIT_IDS[split]

    def __len__(self) -> int:
        return self.length

    def _index(self, i: int) -> int:
        i = int(i)
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for ShapesX {self.split} of length {self.length}")
        return i % self.length

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._split_id, i])

    def scene(self, i: int) -> Scene:
        """The drawn parameters of sample i; depends only on (seed, split, i)."""
        i = self._index(i)
        rng = self._rng(i)
        if self.split in ("train", "val"):
            return _train_scene(rng, i % len(CLASSES))
        if self.split == "test":
            return _test_scene(rng, _test_label(i), _test_plan(rng, i)[1])
        shape, texture = _cue_conflict_pair(i)
        t = _fit_in_frame(_jittered(rng, shape, appearance_of=texture))
        colour = _random_colour(rng)
        return Scene(t, Background("plain", (colour, colour)))

    def render(self, i: int) -> np.ndarray:
        """Sample i as a uint8 (size, size, 3) array."""
        return draw(self.scene(i), self.size)

    def label(self, i: int) -> int:
        i = self._index(i)
        if self.split == "test":
            return _test_label(i)
        return i % len(CLASSES)  # train and val cycle through classes, cue-conflict labels its shape

    def file_name(self, i: int) -> str:
        """Unique across splits: the join key of ImageNet-X-style evaluation."""
        return f"{self.split}_{self._index(i):06d}.png"

    def annotation(self, i: int) -> dict:
        """test: class, the 16 factor columns (0/1) and the top factor ("none" for prototypes); cue_conflict:
        shape and texture class; train and val: class."""
        i = self._index(i)
        out = {"file_name": self.file_name(i), "class": self.label(i)}
        if self.split == "test":
            top, factors = _test_plan(self._rng(i), i)
            out.update({f: int(f in factors) for f in FACTORS})
            out["top"] = top
        elif self.split == "cue_conflict":
            shape, texture = _cue_conflict_pair(i)
            out.update(shape=shape, texture=texture, shape_name=CLASSES[shape], texture_name=CLASSES[texture])
        return out

    def __getitem__(self, i: int) -> tuple:
        image = _draw_image(self.scene(i), self.size)
        return (self.transform(image) if self.transform else image), self.label(i), self._index(i)


def export_shapesx(
    out: str | Path,
    size: int = 64,
    n_train: int | None = None,
    n_test: int | None = None,
    n_cue_conflict: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """Writes ShapesX as class folders of PNGs (out/<split>/<class>/<file_name>) plus JSON-lines annotations
    for the test and cue-conflict splits; returns the number of images written per split."""
    from tqdm import tqdm

    out = Path(out)
    counts = {}
    for split, n in zip(SPLITS, (n_train, n_test, n_cue_conflict), strict=True):
        ds = ShapesX(split, size=size, length=n, seed=seed)
        for name in CLASSES:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        annotations = []
        for i in tqdm(range(len(ds)), desc=f"ShapesX {split}", disable=not progress):
            Image.fromarray(ds.render(i)).save(out / split / CLASSES[ds.label(i)] / ds.file_name(i))
            if split != "train":
                annotations.append(json.dumps(ds.annotation(i)))
        if annotations:
            (out / f"{split}_annotations.jsonl").write_text("\n".join(annotations) + "\n")
        counts[split] = len(ds)
    return counts


def example_grid(out: str | Path, size: int = 96, seed: int = 0) -> Path:
    """Draws a PNG overview: canonical examples of every class, one test image per factor (titled with its class
    and factors), and cue-conflict examples."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    test = ShapesX("test", size=size, seed=seed)
    cue = ShapesX("cue_conflict", size=size, seed=seed)
    # Test sample i has top factor _CYCLE[i % 17] and class (i // 17) % 10: 16 + 17 c is the prototype of class c.
    n = len(_CYCLE)
    panels = [(test, 16 + n * c, f"{CLASSES[c]}\n(canonical)") for c in range(len(CLASSES))]
    for k, factor in enumerate(FACTORS):
        # the first image with this factor alone, classes varied across factors
        i = next(i for i in range(k + n * (k % 10), len(test), n) if sum(test.annotation(i)[f] for f in FACTORS) == 1)
        panels.append((test, i, f"{CLASSES[test.label(i)]}\n{factor}"))
    for i in (0, 11, 22, 33):
        a = cue.annotation(i)
        panels.append((cue, i, f"{a['shape_name']} shape,\n{a['texture_name']} look"))
    cols = len(CLASSES)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(cols * 1.35, rows * 1.7))
    FigureCanvasAgg(fig)
    for k, (ds, i, title) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(ds.render(i))
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.suptitle("ShapesX: canonical classes, one test image per ImageNet-X factor, cue conflicts", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
