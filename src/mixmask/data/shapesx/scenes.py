"""ShapesX scenes and their rendering: a ``Scene`` holds a sample's drawn parameters in normalised image coordinates
(y down, the frame is [0, 1]^2), ``draw(scene, size)`` rasterises it at any size, and ``masks`` gives the pixels of
its parts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from PIL import Image, ImageDraw

from mixmask.data.shapesx.shapes import SHAPES
from mixmask.data.shapesx.textures import PATTERN_FN, RGB, TEXTURE_FN, TEXTURES, pick, random_colour, second_tone


@dataclass(frozen=True)
class Thing:
    """One shape with its appearance and placement. The unit shape is mapped by stretch/shear, flip, rotation
    (degrees, counter-clockwise), scale, then moved to centre."""

    shape: int
    colour: RGB
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
    colours: tuple[RGB, RGB]
    angle: float = 0.0  # gradient direction, degrees
    seed: int = 0  # clutter layout


@dataclass(frozen=True)
class Pattern:
    kind: str  # one of PATTERNS
    colour: RGB
    angle: float
    phase: tuple[float, float]


@dataclass(frozen=True)
class Occluder:
    kind: str  # "object" or "person"
    parts: tuple[tuple[tuple[float, ...], RGB], ...]  # (flat x, y polygon in image coordinates, colour)


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
    return [pts @ m + t.centre for pts in SHAPES[t.shape][t.variant]]


def polygon_edges(polygons: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points of every edge of the polygons."""
    return np.concatenate(polygons), np.concatenate([np.roll(p, -1, 0) for p in polygons])


_UNIT_EDGES = tuple(tuple(polygon_edges(list(v)) for v in variants) for variants in SHAPES)


def thing_edges(t: Thing) -> tuple[np.ndarray, np.ndarray]:
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
def _ramp(c0: RGB, c1: RGB) -> np.ndarray:
    """256 packed colours from c0 to c1: a texture's two tones, a gradient background."""
    start = np.asarray(c0, np.float32)
    return _pack(start + _STEPS * (np.asarray(c1, np.float32) - start) + np.float32(0.5))


@lru_cache(maxsize=64)
def _tones(colour: RGB) -> np.ndarray:
    return _ramp(colour, second_tone(colour))


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
    r = _outline(_image_polygons(t), size, _outline_width(t, size)) if outline else _mask(thing_edges(t), size)
    if r is None:
        return None
    m, y0, x0 = r
    region = canvas[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]]
    if outline or t.texture == "solid":
        region[m] = _pack(t.colour)
    else:
        u, v = _object_frame(t, size, y0, x0, *m.shape)
        weight = TEXTURE_FN[t.texture](u + np.float32(t.phase[0]), v + np.float32(t.phase[1]))
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
    kind = pick(rng, [t for t in TEXTURES if t not in ("solid", "noise")])  # crisp, busy patterns
    a, period = math.radians(bg.angle), rng.uniform(0.3, 0.5)
    u = (xs * math.cos(a) - xs[:, None] * math.sin(a)) / period
    v = (xs * math.sin(a) + xs[:, None] * math.cos(a)) / period
    base = _ramp(*bg.colours)[_levels(TEXTURE_FN[kind](u, v))]
    img = Image.frombytes("RGBX", (size, size), base.astype("<u4").tobytes())
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(14, 22)):
        colour = random_colour(rng, saturation=(0.2, 0.7), value=(0.25, 0.95))
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


def draw_image(scene: Scene, size: int) -> Image.Image:
    """Renders a scene to a PIL RGB image (what a data set's transform takes)."""
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
        canvas[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]][m & PATTERN_FN[p.kind](pu, pv)] = _pack(p.colour)
    for occ in scene.occluders:
        for flat, colour in occ.parts:
            r = _mask(polygon_edges([np.asarray(flat).reshape(-1, 2)]), size)
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
    return np.array(draw_image(scene, size))


def masks(scene: Scene, size: int) -> dict[str, np.ndarray]:
    """Full-frame bool masks: ``object`` (main silhouette, before occlusion), ``painted`` (pixels the main object
    paints: its outline in the style factor), ``occluder`` and ``distractors``; for tests and analyses."""
    o = scene.obj
    painted = _outline(_image_polygons(o), size, _outline_width(o, size)) if scene.outline else None
    parts = [polygon_edges([np.asarray(flat).reshape(-1, 2)]) for occ in scene.occluders for flat, _ in occ.parts]
    return {
        "object": frame_mask([thing_edges(o)], size),
        "painted": _full(painted, size) if scene.outline else frame_mask([thing_edges(o)], size),
        "occluder": frame_mask(parts, size),
        "distractors": frame_mask([thing_edges(d) for d in scene.distractors], size),
    }


def frame_mask(shapes: list[tuple[np.ndarray, np.ndarray]], size: int) -> np.ndarray:
    """Full-frame union of several shapes, each given by its edges (as _mask)."""
    out = np.zeros((size, size), bool)
    for edges in shapes:
        out |= _full(_mask(edges, size), size)
    return out
