"""ShapesX scene sampling: the train distribution (each class's canonical look most of the time, moderate jitter),
test scenes with ImageNet-X factors applied to a train-like scene, and cue-conflict scenes. Every function draws from
the generator it is given, so a sample depends only on that generator's seed."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from mixmask.data.shapesx.scenes import (
    Background,
    Occluder,
    Pattern,
    Scene,
    Thing,
    frame_mask,
    polygon_edges,
    thing_edges,
)
from mixmask.data.shapesx.shapes import (
    BOARD,
    CANONICAL_COLOUR,
    CANONICAL_TEXTURE,
    CLASSES,
    N_VARIANTS,
    PERSON,
    PERSON_HEAD,
    POINTS,
    SKIN,
)
from mixmask.data.shapesx.textures import COLOURS, PATTERNS, TEXTURES, luminance, pick, random_colour, uniform
from mixmask.factors import FACTORS

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
CYCLE = (*FACTORS, "none")  # test sample i has top factor CYCLE[i % 17]
_REF_SIZE = 64  # resolution at which occlusion and cropping are solved, so they do not depend on size


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _plain_or_gradient(rng: np.random.Generator) -> Background:
    c0 = random_colour(rng)
    if rng.random() < 0.5:
        return Background("plain", (c0, c0))
    return Background("gradient", (c0, random_colour(rng)), angle=uniform(rng, 0, 360))


# Per class, the palette colours far (RGB distance > 100) from its canonical one, and the other textures.
_OTHER_COLOURS = tuple([c for c in COLOURS.values() if math.dist(c, COLOURS[own]) > 100] for own in CANONICAL_COLOUR)
_OTHER_TEXTURES = tuple([t for t in TEXTURES if t != own] for own in CANONICAL_TEXTURE)


def _jittered(rng: np.random.Generator, shape: int, appearance_of: int | None = None) -> Thing:
    """A train-like thing: canonical appearance (of ``appearance_of``, default its own class), moderate jitter."""
    look = shape if appearance_of is None else appearance_of
    return Thing(
        shape=shape,
        colour=COLOURS[CANONICAL_COLOUR[look]],
        texture=CANONICAL_TEXTURE[look],
        centre=(0.5 + uniform(rng, -TRAIN_SHIFT, TRAIN_SHIFT), 0.5 + uniform(rng, -TRAIN_SHIFT, TRAIN_SHIFT)),
        scale=uniform(rng, *TRAIN_SCALE),
        rotation=uniform(rng, -TRAIN_ROTATION, TRAIN_ROTATION),
        stretch=TRAIN_STRETCH ** uniform(rng, -1, 1),
        phase=(rng.random(), rng.random()),
    )


def _extent(t: Thing) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (lo, hi) of the thing in normalised image coordinates."""
    pts = POINTS[t.shape][t.variant] @ t.matrix.T + t.centre
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
    return float(np.linalg.norm(POINTS[t.shape][t.variant] @ t.matrix.T, axis=1).max())


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
    a, b = thing_edges(replace(t, centre=(0.5, 0.5)))
    area = frame_mask([(a, b)], _REF_SIZE).sum()
    angle = uniform(rng, 0, 2 * math.pi)
    direction = np.array([math.cos(angle), math.sin(angle)])

    def hidden(d: float) -> float:
        return 1 - frame_mask([(a + d * direction, b + d * direction)], _REF_SIZE).sum() / area

    d = _solve(hidden, 1 - uniform(rng, *VISIBLE), 0.0, 0.75 + t.scale)
    return replace(t, centre=tuple(float(c) for c in 0.5 + d * direction))


def _occluder(rng: np.random.Generator, t: Thing, person: bool) -> Occluder:
    """An occluder slid over the object until it covers BLOCKED of the object's area.

    object_blocking: a plain board from a random side; person_blocking: a head-and-shoulders silhouette rising
    from below (clothes-coloured, with a skin-coloured head).
    """
    obj = frame_mask([thing_edges(t)], _REF_SIZE)
    area = obj.sum()
    if person:
        up = math.radians(90 + uniform(rng, -25, 25))  # the way the person's head points, y up
        unit = t.scale * uniform(rng, 0.5, 0.7)
        shapes = [PERSON, PERSON_HEAD]
        skin = pick(rng, SKIN)
        colours = [random_colour(rng, saturation=(0.2, 0.8), value=(0.15, 0.6)), skin]
        lateral = uniform(rng, -0.4, 0.4) * t.scale
        travel = (-2.3 * unit - 1.2 * t.scale, t.scale)  # shoulder line from far below the object to above it
    else:
        up = uniform(rng, 0, 2 * math.pi)
        unit = t.scale
        shapes = [BOARD]
        colours = [random_colour(rng, saturation=(0.05, 0.5), value=(0.2, 0.8))]
        lateral = 0.0
        travel = (-1.2 * t.scale, t.scale)  # near edge from outside the object to beyond its centre
    axis_up = np.array([math.cos(up), -math.sin(up)])  # the occluder's y axis, in image coordinates (y down)
    side = np.array([math.sin(up), math.cos(up)])  # its x axis
    to_image = unit * np.stack([side, axis_up])  # rows: images of the unit x and y axes
    origin = np.asarray(t.centre) + lateral * side
    a, b = (e @ to_image + origin for e in polygon_edges([shapes[0]]))  # the silhouette at offset 0

    def covered(x: float) -> float:  # with the occluder moved by x along its y axis
        return (frame_mask([(a + x * axis_up, b + x * axis_up)], _REF_SIZE) & obj).sum() / area

    origin = origin + _solve(covered, uniform(rng, *BLOCKED), *travel) * axis_up
    parts = tuple((tuple((s @ to_image + origin).ravel().tolist()), c) for s, c in zip(shapes, colours, strict=True))
    return Occluder("person" if person else "object", parts)


def _distractors(rng: np.random.Generator, t: Thing) -> tuple[Thing, ...]:
    """1-3 smaller canonical shapes of other classes, placed around the main object without touching it."""
    r_main = _radius(t)
    placed: list[tuple[Thing, float]] = []
    for _ in range(1 + int(3 * rng.random())):
        shape = (t.shape + 1 + int(rng.random() * (len(CLASSES) - 1))) % len(CLASSES)
        d = replace(_jittered(rng, shape), scale=t.scale * uniform(rng, *DISTRACTOR_SCALE))
        r = _radius(d)
        for _ in range(50):
            c = np.array([uniform(rng, r + 0.01, 0.99 - r), uniform(rng, r + 0.01, 0.99 - r)])
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
        return _sign(rng) * uniform(rng, 90, 150)
    if n == 1:
        return _sign(rng) * uniform(rng, *POSE_ROTATION)
    half = 180 / n
    turn = pick(rng, [k * half for k in range(1, 2 * n, 2) if 90 <= k * half <= 270]) + uniform(rng, -8, 8)
    return (turn + 180) % 360 - 180


def factor_label(i: int) -> int:
    """Class of test sample i: every (top factor, class) pair equally often."""
    return (i // len(CYCLE)) % len(CLASSES)


def factor_plan(rng: np.random.Generator, i: int) -> tuple[str, tuple[str, ...]]:
    """Top factor and all factors of test sample i (the first draws of its rng)."""
    top = CYCLE[i % len(CYCLE)]
    if top == "none":
        return top, ()
    if rng.random() >= SECOND_FACTOR_P:
        return top, (top,)
    return top, (top, pick(rng, [f for f in FACTORS if f != top and frozenset((f, top)) not in _CONFLICTS]))


def factor_scene(rng: np.random.Generator, label: int, factors: tuple[str, ...]) -> Scene:
    """A canonical train-like scene, then each factor applied to it."""
    f = set(factors)
    t = _jittered(rng, label)
    background = _plain_or_gradient(rng)
    brightness = 1.0
    if "color" in f:
        t = replace(t, colour=pick(rng, _OTHER_COLOURS[label]))
    if "texture" in f:
        t = replace(t, texture=pick(rng, _OTHER_TEXTURES[label]))
    if "subcategory" in f:
        t = replace(t, variant=1 + int(rng.random() * (N_VARIANTS[label] - 1)))
    if "pose" in f:
        t = replace(t, rotation=_pose_rotation(rng, label), flip=rng.random() < 0.5)
    if "shape" in f:  # stretched along either axis, or sheared; small enough to stay in the frame
        sign, stretch, shear = _sign(rng), 1.0, 0.0
        if rng.random() < 0.5:
            stretch = uniform(rng, *STRETCH) ** sign
        else:
            shear = sign * uniform(rng, *SHEAR)
        t = replace(t, scale=uniform(rng, 0.24, 0.26), stretch=stretch, shear=shear)
    if "smaller" in f:
        t = replace(t, scale=uniform(rng, *SMALLER_SCALE))
    if "larger" in f:
        t = replace(t, scale=uniform(rng, *LARGER_SCALE), centre=(0.5, 0.5))
    if "multiple_objects" in f:  # leave room for the distractors
        t = replace(t, scale=min(t.scale, 0.27))
    pattern = None
    if "pattern" in f:
        colour = (25, 25, 25) if luminance(t.colour) > 110 else (245, 245, 245)
        pattern = Pattern(pick(rng, PATTERNS), colour, uniform(rng, 0, 360), (rng.random(), rng.random()))
    if "darker" in f:
        brightness = uniform(rng, *DARKER)
    if "brighter" in f:
        brightness = uniform(rng, *BRIGHTER)
    if "background" in f:
        colours = (random_colour(rng, value=(0.25, 0.45)), random_colour(rng, value=(0.6, 0.85)))
        background = Background("clutter", colours, angle=uniform(rng, 0, 360), seed=int(rng.integers(2**31)))
    t = _partial_view(rng, t) if "partial_view" in f else _fit_in_frame(t)
    occluders = []
    if "object_blocking" in f:
        occluders.append(_occluder(rng, t, person=False))
    if "person_blocking" in f:
        occluders.append(_occluder(rng, t, person=True))
    distractors = _distractors(rng, t) if "multiple_objects" in f else ()
    return Scene(t, background, distractors, tuple(occluders), pattern, "style" in f, brightness)


def train_scene(rng: np.random.Generator, label: int) -> Scene:
    """A train (or val) scene of class ``label``: canonical look with probability CANONICAL_P, moderate jitter."""
    t = _jittered(rng, label)
    if rng.random() >= CANONICAL_P:  # off-canonical: colour, texture or both
        change = int(3 * rng.random())
        colour = pick(rng, _OTHER_COLOURS[label]) if change != 1 else t.colour
        texture = pick(rng, _OTHER_TEXTURES[label]) if change != 0 else t.texture
        t = replace(t, colour=colour, texture=texture)
    return Scene(_fit_in_frame(t), _plain_or_gradient(rng))


def cue_conflict_pair(i: int) -> tuple[int, int]:
    """(shape, texture class) of cue-conflict sample i: all 90 ordered pairs of distinct classes in turn."""
    n = len(CLASSES)
    shape = i % n
    return shape, (shape + 1 + (i // n) % (n - 1)) % n


def cue_conflict_scene(rng: np.random.Generator, i: int) -> Scene:
    """Cue-conflict sample i: one class's shape with another's canonical colour and texture, on a plain background."""
    shape, texture = cue_conflict_pair(i)
    t = _fit_in_frame(_jittered(rng, shape, appearance_of=texture))
    colour = random_colour(rng)
    return Scene(t, Background("plain", (colour, colour)))
