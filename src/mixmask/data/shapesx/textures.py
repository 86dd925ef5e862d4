"""ShapesX looks: the colour palette, the fill textures and pattern overlays (weights of a second tone, evaluated in
the object's own frame so they turn and scale with it), and random colour draws."""

from __future__ import annotations

import colorsys

import numpy as np

RGB = tuple[int, int, int]
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


TEXTURE_FN = {
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
PATTERN_FN = {
    "spots": lambda u, v: (_frac(u / 0.6) - 0.5) ** 2 + (_frac(v / 0.6) - 0.5) ** 2 < 0.07,
    "bands": lambda u, v: _frac((u + 0.12 * np.sin(v * 5.0)) / 0.65) < 0.35,
    "blotches": lambda u, v: _value_noise(u / 0.45, v / 0.45) > 0.52,
}


def luminance(colour: RGB) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def second_tone(colour: RGB) -> RGB:
    """The texture's other tone: a darker shade of a light colour, a lighter tint of a dark one."""
    if luminance(colour) > 110:
        return tuple(round(0.4 * c) for c in colour)
    return tuple(round(c + 0.6 * (255 - c)) for c in colour)


# Scalar draws go through rng.random(): rng.uniform and rng.choice cost several times more per call.


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * rng.random()


def random_colour(rng: np.random.Generator, saturation=(0.0, 0.3), value=(0.25, 0.85)) -> RGB:
    rgb = colorsys.hsv_to_rgb(rng.random(), uniform(rng, *saturation), uniform(rng, *value))
    return tuple(round(255 * c) for c in rgb)


def pick(rng: np.random.Generator, options: list):
    return options[int(rng.random() * len(options))]
