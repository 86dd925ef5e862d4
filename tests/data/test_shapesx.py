"""ShapesX: determinism, annotations, and that every ImageNet-X factor really shows in the pixels."""

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from mixmask.data import shapesx as sx
from mixmask.data.common import collate
from mixmask.data.shapesx import (
    CANONICAL_COLOUR,
    CANONICAL_TEXTURE,
    CLASSES,
    COLOURS,
    SPLITS,
    TRAIN_ROTATION,
    TRAIN_SCALE,
    ShapesX,
    draw,
    example_grid,
    export_shapesx,
    masks,
)
from mixmask.data.shapesx.shapes import SKIN
from mixmask.data.shapesx.textures import second_tone
from mixmask.factors import FACTORS

SIZE = 64
PER_FACTOR = 20  # test images checked per factor (top factor), over all classes


@pytest.fixture(scope="module")
def test_images():
    return ShapesX("test", size=SIZE)


def with_top(ds, factor, n=PER_FACTOR):
    """The first n test indices whose top factor is ``factor`` (top factor cycles with period 17)."""
    k = (*FACTORS, "none").index(factor)
    return [k + 17 * j for j in range(n)]


def luminance(img):
    return (img.astype(float) @ [0.299, 0.587, 0.114]).mean()


def area(scene, size=SIZE):
    return masks(scene, size)["object"].sum()


def visible_object(scene, size=SIZE):
    """Pixels the main object shows: painted by it (its outline only, in the style factor), not occluded."""
    m = masks(scene, size)
    return m["painted"] & ~m["occluder"]


def changed(a, b):
    return np.abs(a.astype(int) - b.astype(int)).sum(-1) > 0


def off_tones(pixels, colour):
    """Distance of each pixel from the segment between a colour and its texture's second tone."""
    a, b = np.asarray(colour, float), np.asarray(second_tone(colour), float)
    k = np.clip((pixels - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
    return np.linalg.norm(pixels - (a + k[:, None] * (b - a)), axis=1)


def test_factors_are_imagenet_x_factors():
    import imagenet_x  # slow to import: only here

    assert FACTORS == tuple(imagenet_x.FACTORS)
    assert len(FACTORS) == 16
    assert len(CLASSES) >= 10 and len(set(CLASSES)) == len(CLASSES)
    assert ShapesX().classes == list(CLASSES)
    # every class has its own canonical colour and texture
    assert len(set(CANONICAL_COLOUR)) == len(set(CANONICAL_TEXTURE)) == len(CLASSES)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "valid"}, "train, val, test, cue_conflict"),
        ({"size": 16}, "between 32 and 224"),
        ({"size": 225}, "between 32 and 224"),
        ({"length": 0}, "at least 1"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesX(**kwargs)


def test_lengths_and_index_errors():
    assert [len(ShapesX(s)) for s in SPLITS] == [sx.DEFAULT_LENGTHS[s] for s in SPLITS]
    assert len(ShapesX("val")) == sx.DEFAULT_LENGTHS["val"]
    assert sx.DEFAULT_LENGTHS["test"] >= 17 * 150
    ds = ShapesX("train", length=5)
    assert len(ds) == 5
    with pytest.raises(IndexError):
        ds.render(5)
    assert np.array_equal(ds.render(-1), ds.render(4))


@pytest.mark.parametrize("split", [*SPLITS, "val"])
def test_deterministic(split):
    a, b = ShapesX(split, seed=3), ShapesX(split, seed=3)
    for i in [0, 1, 16, 33, 250]:
        assert a.render(i).tobytes() == b.render(i).tobytes()
        assert a.annotation(i) == b.annotation(i)
    other_seed = ShapesX(split, seed=4)
    assert all(not np.array_equal(a.render(i), other_seed.render(i)) for i in range(5))
    renders = [a.render(i).tobytes() for i in range(30)]
    assert len(set(renders)) == 30


@pytest.mark.parametrize("size", [32, 64, 224])
def test_sizes(size):
    for split in SPLITS:
        img = ShapesX(split, size=size).render(7)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8


def test_same_scene_at_every_size():
    """Sample i is one scene drawn at any resolution: its object masks agree after resampling."""
    small, large = ShapesX("test", size=32), ShapesX("test", size=224)
    for i in range(0, 170, 7):
        scene = small.scene(i)
        assert scene == large.scene(i)
        big = masks(scene, 224)["object"].reshape(32, 7, 32, 7).mean((1, 3)) > 0.5
        assert (big == masks(scene, 32)["object"]).mean() > 0.99
        # and the pictures agree: 224 px block-averaged to 32 px stays close to the 32 px rendering
        pooled = large.render(i).reshape(32, 7, 32, 7, 3).mean((1, 3))
        assert np.abs(pooled - small.render(i)).mean() < 30


def test_default_test_split_annotations(test_images):
    rows = [test_images.annotation(i) for i in range(len(test_images))]
    tops = Counter(r["top"] for r in rows)
    assert all(tops[f] >= 150 for f in FACTORS), tops
    assert tops["none"] >= 150
    for r in rows:
        assert set(r) == {"file_name", "class", *FACTORS, "top"}
        assert all(r[f] in (0, 1) for f in FACTORS)
        if r["top"] == "none":
            assert sum(r[f] for f in FACTORS) == 0
        else:
            assert r[r["top"]] == 1 and 1 <= sum(r[f] for f in FACTORS) <= 2
    # about a quarter of the factor images carry a second factor, never a contradicting one
    multi = [r for r in rows if r["top"] != "none" and sum(r[f] for f in FACTORS) == 2]
    assert 0.2 < len(multi) / (len(rows) - tops["none"]) < 0.3
    assert not any(r["smaller"] and r["larger"] or r["darker"] and r["brighter"] for r in multi)
    # class balanced within every top factor
    per = Counter((r["top"], r["class"]) for r in rows)
    assert set(per.values()) == {len(rows) // 17 // len(CLASSES)}
    assert len({r["file_name"] for r in rows}) == len(rows)


def test_scene_parameters_match_annotations(test_images):
    for i in range(0, 17 * 12):
        s, a = test_images.scene(i), test_images.annotation(i)
        o = s.obj
        label = a["class"]
        assert o.shape == label == test_images.label(i)
        assert (o.colour != COLOURS[CANONICAL_COLOUR[label]]) == bool(a["color"])
        assert (o.texture != CANONICAL_TEXTURE[label]) == bool(a["texture"])
        assert (o.variant > 0) == bool(a["subcategory"])
        assert (abs(o.rotation) >= TRAIN_ROTATION + 60 or o.flip) == bool(a["pose"])
        assert (abs(np.log(o.stretch)) > np.log(1.5) or abs(o.shear) >= 0.5) == bool(a["shape"])
        assert (o.scale < TRAIN_SCALE[0]) == bool(a["smaller"])
        assert (o.scale > TRAIN_SCALE[1]) == bool(a["larger"])
        assert (s.background.kind == "clutter") == bool(a["background"])
        assert (s.pattern is not None) == bool(a["pattern"])
        assert s.outline == bool(a["style"])
        assert (s.brightness < 1) == bool(a["darker"]) and (s.brightness > 1) == bool(a["brighter"])
        assert ({occ.kind for occ in s.occluders} == {"object"}) == bool(a["object_blocking"])
        assert ({occ.kind for occ in s.occluders} == {"person"}) == bool(a["person_blocking"])
        assert bool(s.distractors) == bool(a["multiple_objects"])
        whole = area(replace(s, obj=replace(o, centre=(0.5, 0.5))))
        if a["partial_view"]:
            assert area(s) < 0.85 * whole
        elif not a["larger"]:
            assert area(s) > 0.97 * whole
        if a["top"] == "none":  # prototypes look like canonical train images
            assert abs(o.rotation) <= TRAIN_ROTATION and TRAIN_SCALE[0] <= o.scale <= TRAIN_SCALE[1]
            assert s.background.kind in ("plain", "gradient") and s.brightness == 1


# --- every factor shows in the pixels, measured against the factor-free version of the same scene ----------------


def test_pose(test_images):
    for i in with_top(test_images, "pose"):
        s = test_images.scene(i)
        assert abs(s.obj.rotation) >= TRAIN_ROTATION + 60 or s.obj.flip
        upright = replace(s, obj=replace(s.obj, rotation=0.0, flip=False))
        obj = visible_object(upright) | visible_object(s)
        # the silhouette or, for round shapes, the texture turns with the object
        assert changed(draw(s, SIZE), draw(upright, SIZE))[obj].mean() > 0.2


def test_background(test_images):
    def clutter(img, keep):  # mean colour change between neighbouring background pixels
        img = img.astype(int)
        dx = np.abs(np.diff(img, axis=1)).sum(-1)[keep[:, 1:] & keep[:, :-1]]
        dy = np.abs(np.diff(img, axis=0)).sum(-1)[keep[1:] & keep[:-1]]
        return np.concatenate([dx, dy]).mean()

    for i in with_top(test_images, "background"):
        s = test_images.scene(i)
        m = masks(s, SIZE)
        keep = ~(m["object"] | m["painted"] | m["occluder"] | m["distractors"])
        plain = replace(s, background=sx.Background("gradient", ((90, 90, 90), (160, 160, 160)), angle=30.0))
        assert clutter(draw(s, SIZE), keep) > 12
        assert clutter(draw(plain, SIZE), keep) < 5
        assert len({tuple(p) for p in draw(s, SIZE)[keep]}) > 5  # many colours: textured and cluttered


def test_pattern(test_images):
    for i in with_top(test_images, "pattern"):
        s = replace(test_images.scene(i), brightness=1.0)
        obj = visible_object(s)
        img, plain = draw(s, SIZE), draw(replace(s, pattern=None), SIZE)
        diff = changed(img, plain)
        assert diff[obj].mean() > 0.1
        # the overlay is in the pattern colour, and only on the object
        assert (img[diff] == s.pattern.colour).all()
        assert not diff[~masks(s, SIZE)["object"]].any()


def test_color(test_images):
    for i in with_top(test_images, "color"):
        s = replace(test_images.scene(i), brightness=1.0)
        canonical = replace(s, obj=replace(s.obj, colour=COLOURS[CANONICAL_COLOUR[s.obj.shape]]))
        obj = visible_object(s)
        shift = np.linalg.norm(draw(s, SIZE)[obj].mean(0) - draw(canonical, SIZE)[obj].mean(0))
        assert shift > 50, (i, shift)


def test_texture(test_images):
    for i in with_top(test_images, "texture"):
        s = test_images.scene(i)
        canonical = replace(s, obj=replace(s.obj, texture=CANONICAL_TEXTURE[s.obj.shape]))
        obj = visible_object(s)
        assert changed(draw(s, SIZE), draw(canonical, SIZE))[obj].mean() > 0.2


@pytest.mark.parametrize("factor", ["smaller", "larger"])
def test_size_factors(test_images, factor):
    for i in with_top(test_images, factor):
        s = test_images.scene(i)
        centred = replace(s.obj, centre=(0.5, 0.5))
        if factor == "smaller":  # well under the smallest train object of the same shape
            assert area(s) < 0.45 * area(replace(s, obj=replace(centred, scale=TRAIN_SCALE[0])))
        else:  # well over the largest
            assert area(s) > 1.3 * area(replace(s, obj=replace(centred, scale=TRAIN_SCALE[1])))


def test_partial_view(test_images):
    for i in with_top(test_images, "partial_view"):
        s = test_images.scene(i)
        whole = area(replace(s, obj=replace(s.obj, centre=(0.5, 0.5))))
        assert 0.3 < area(s) / whole < 0.85
        m = masks(s, SIZE)["object"]
        assert m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()  # cut by the frame


def test_subcategory(test_images):
    variants = set()
    for i in with_top(test_images, "subcategory"):
        s = test_images.scene(i)
        variants.add((s.obj.shape, s.obj.variant))
        a, b = masks(s, SIZE)["object"], masks(replace(s, obj=replace(s.obj, variant=0)), SIZE)["object"]
        assert (a & b).sum() / (a | b).sum() < 0.93
    assert len(variants) >= 12


@pytest.mark.parametrize("factor, kind", [("object_blocking", "object"), ("person_blocking", "person")])
def test_blocking(test_images, factor, kind):
    for i in with_top(test_images, factor):
        s = test_images.scene(i)
        assert [occ.kind for occ in s.occluders] == [kind]
        m = masks(s, SIZE)
        blocked = (m["object"] & m["occluder"]).sum() / m["object"].sum()
        assert 0.25 <= blocked <= 0.6, (i, blocked)
        # the occluded part really is hidden: those pixels changed against the unoccluded scene
        diff = changed(draw(s, SIZE), draw(replace(s, occluders=()), SIZE))
        assert diff[m["object"] & m["occluder"]].mean() > 0.9
    if kind == "person":  # head-and-shoulders silhouette with a skin-coloured head: unlike the boards
        assert len(s.occluders[0].parts) == 2 and s.occluders[0].parts[1][1] in SKIN


@pytest.mark.parametrize("factor", ["darker", "brighter"])
def test_brightness(test_images, factor):
    for i in with_top(test_images, factor):
        s = test_images.scene(i)
        img, normal = draw(s, SIZE), draw(replace(s, brightness=1.0), SIZE)
        if factor == "darker":
            assert luminance(img) < 0.55 * luminance(normal)
        else:
            assert 255 - luminance(img) < 0.5 * (255 - luminance(normal))


def test_style(test_images):
    for i in with_top(test_images, "style"):
        s = test_images.scene(i)
        m = masks(s, SIZE)
        assert m["painted"].sum() < 0.6 * m["object"].sum()
        filled = replace(s, outline=False)
        # inside the outline the background shows through where the filled object was
        inner = m["object"] & ~m["painted"] & ~m["occluder"]
        assert changed(draw(s, SIZE), draw(filled, SIZE))[inner].mean() > 0.8


def test_multiple_objects(test_images):
    for i in with_top(test_images, "multiple_objects"):
        s = test_images.scene(i)
        assert 1 <= len(s.distractors) <= 3
        assert all(d.shape != s.obj.shape and d.scale < s.obj.scale for d in s.distractors)
        m = masks(s, SIZE)
        assert m["distractors"].sum() > 10 and not (m["distractors"] & m["object"]).any()
        diff = changed(draw(s, SIZE), draw(replace(s, distractors=()), SIZE))
        assert diff[m["distractors"]].mean() > 0.8


def test_shape(test_images):
    for i in with_top(test_images, "shape"):
        s = test_images.scene(i)
        assert abs(np.log(s.obj.stretch)) > np.log(1.5) or abs(s.obj.shear) >= 0.5
        a = masks(s, SIZE)["object"]
        b = masks(replace(s, obj=replace(s.obj, stretch=1.0, shear=0.0)), SIZE)["object"]
        assert (a & b).sum() / (a | b).sum() < 0.8


def test_prototypes_are_factor_free(test_images):
    for i in with_top(test_images, "none"):
        s = test_images.scene(i)
        assert s == replace(s, occluders=(), distractors=(), pattern=None, outline=False, brightness=1.0)
        assert s.obj.variant == 0 and s.obj.stretch == pytest.approx(1, abs=0.1) and s.obj.shear == 0
        m = masks(s, SIZE)["object"]
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())


# --- train and cue-conflict ---------------------------------------------------------------------------------------


def test_train_canonical_share():
    ds = ShapesX("train", size=32, seed=1)
    canonical, colour_only, texture_only = 0, 0, 0
    n = 600
    for i in range(n):
        o = ds.scene(i).obj
        same_colour = o.colour == COLOURS[CANONICAL_COLOUR[o.shape]]
        same_texture = o.texture == CANONICAL_TEXTURE[o.shape]
        canonical += same_colour and same_texture
        colour_only += not same_colour and same_texture
        texture_only += same_colour and not same_texture
        assert o.shape == ds.label(i) == i % len(CLASSES)
        assert abs(o.rotation) <= TRAIN_ROTATION and TRAIN_SCALE[0] <= o.scale <= TRAIN_SCALE[1]
    assert 0.7 < canonical / n < 0.8
    assert colour_only > 0.05 * n and texture_only > 0.05 * n
    assert Counter(ds.label(i) for i in range(n)) == Counter({c: n // len(CLASSES) for c in range(len(CLASSES))})


def test_val_split_is_held_out_train_distribution():
    train, val = ShapesX("train", size=32), ShapesX("val", size=32)
    assert val.file_name(5) == "val_000005.png" and val.annotation(5) == {"file_name": "val_000005.png", "class": 5}
    assert all(val.label(i) == train.label(i) == i % len(CLASSES) for i in range(20))
    assert all(not np.array_equal(val.render(i), train.render(i)) for i in range(20))
    scenes = [val.scene(i) for i in range(200)]
    assert all(s.background.kind in ("plain", "gradient") and not s.occluders and s.brightness == 1 for s in scenes)
    canonical = [s.obj.colour == COLOURS[CANONICAL_COLOUR[s.obj.shape]] for s in scenes]
    assert 0.65 < np.mean(canonical) < 0.95


def test_cue_conflict():
    ds = ShapesX("cue_conflict", size=SIZE)
    pairs = set()
    for i in range(90):
        a, s = ds.annotation(i), ds.scene(i)
        assert a["shape"] != a["texture"] and a["class"] == a["shape"] == ds.label(i) == s.obj.shape
        assert a["shape_name"] == CLASSES[a["shape"]] and a["texture_name"] == CLASSES[a["texture"]]
        assert s.obj.colour == COLOURS[CANONICAL_COLOUR[a["texture"]]]
        assert s.obj.texture == CANONICAL_TEXTURE[a["texture"]]
        assert s.background.kind == "plain" and abs(s.obj.rotation) <= TRAIN_ROTATION
        assert not s.occluders and not s.distractors and s.pattern is None and s.obj.variant == 0
        pairs.add((a["shape"], a["texture"]))
        # every object pixel is a mix of the texture class's two tones
        assert off_tones(ds.render(i)[masks(s, SIZE)["object"]], s.obj.colour).max() < 2
    assert len(pairs) == 90  # every ordered pair of distinct classes once


# --- export, items, grid ------------------------------------------------------------------------------------------


def test_export(tmp_path):
    counts = export_shapesx(tmp_path, size=32, n_train=12, n_test=20, n_cue_conflict=10, seed=2, progress=False)
    assert counts == {"train": 12, "test": 20, "cue_conflict": 10}
    for split, n in counts.items():
        ds = ShapesX(split, size=32, length=n, seed=2)
        files = sorted((tmp_path / split).glob("*/*.png"))
        assert len(files) == n
        for i in range(n):
            path = tmp_path / split / CLASSES[ds.label(i)] / ds.file_name(i)
            assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), ds.render(i))
    for split, keys in [("test", {"file_name", "class", *FACTORS, "top"}), ("cue_conflict", None)]:
        lines = (tmp_path / f"{split}_annotations.jsonl").read_text().splitlines()
        assert len(lines) == counts[split]
        rows = [json.loads(line) for line in lines]
        ds = ShapesX(split, size=32, length=counts[split], seed=2)
        assert rows == [ds.annotation(i) for i in range(counts[split])]
        if keys:
            assert all(set(r) == keys for r in rows)
        else:
            assert set(rows[0]) == {"file_name", "class", "shape", "texture", "shape_name", "texture_name"}
    assert not (tmp_path / "train_annotations.jsonl").exists()
    names = [ShapesX(s).file_name(3) for s in SPLITS]
    assert len(set(names)) == 3 and names[1] == "test_000003.png"


def test_getitem_with_transform():
    def to_tensor(img):
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255

    ds = ShapesX("test", size=48, transform=to_tensor)
    image, label, index = ds[20]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert label == ds.label(20) and index == 20
    assert torch.equal(image, to_tensor(Image.fromarray(ds.render(20))))
    batch = collate([ds[i] for i in range(4)])
    assert batch.images.shape == (4, 3, 48, 48) and batch.indices.tolist() == [0, 1, 2, 3]
    plain, label, index = ShapesX("train")[3]
    assert isinstance(plain, Image.Image) and plain.size == (64, 64) and (label, index) == (3, 3)


def test_example_grid(tmp_path):
    path = example_grid(tmp_path / "grid.png", size=48)
    img = Image.open(path)
    assert img.size[0] > 800 and img.size[1] > 400
    assert len(np.unique(np.asarray(img.convert("L")))) > 50
