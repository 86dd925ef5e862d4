"""ShapesX classes and their shapes: the class table (each class's canonical colour and texture), the polygons of
every class and subcategory variant in unit coordinates (y up, inside the unit disc), and the occluders' silhouettes."""

from __future__ import annotations

import math

import numpy as np

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
SHAPES: tuple[tuple[tuple[np.ndarray, ...], ...], ...] = (
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
N_VARIANTS: tuple[int, ...] = tuple(len(v) for v in SHAPES)
POINTS = tuple(tuple(np.concatenate(v) for v in variants) for variants in SHAPES)  # for extents and radii


def _person(neck: float = 0.3, head: float = 0.55, head_y: float = 1.6) -> np.ndarray:
    """Head-and-shoulders silhouette as one polygon: shoulders 3 wide at y = 0, body down to y = -5."""
    shoulder = _arc(0, 0, 1.5, 0, math.degrees(math.acos(neck / 1.5)), 24) * (1, 0.6)
    a = math.degrees(math.asin(neck / head))  # the head arc starts and ends on the neck
    top = _arc(0, head_y, head, a - 90, 270 - a, 48)
    return np.concatenate([[(1.5, -5.0)], shoulder, top, shoulder[::-1] * (-1, 1), [(-1.5, -5.0)]])


PERSON = _person()
PERSON_HEAD = _circle(0.55, 0, 1.6)  # painted over the silhouette in a skin colour
BOARD = np.array([(-1.3, 0.0), (1.3, 0.0), (1.3, -3.0), (-1.3, -3.0)])  # an occluding board, near edge on top
SKIN = ((224, 172, 105), (141, 85, 36), (255, 219, 172), (198, 134, 66))
