"""Cue-conflict shape bias: known numbers on hand-built decisions, input validation, and predictions on ShapesX."""

import numpy as np
import pytest
import torch
from PIL import Image

from mixmask.data.common import DataError
from mixmask.data.shapesx import CLASSES, ShapesX
from mixmask.evaluation.shape_bias import (
    IMAGENET16,
    CueConflictFolder,
    category_scores,
    cue_conflict_predictions,
    shape_bias,
)

NAMES = ["a", "b", "c"]
SHAPE = [0, 0, 0, 1, 1, 2]
TEXTURE = [1, 2, 1, 0, 2, 0]
# decisions:  shape, texture, shape, texture, shape, neither
PREDICTIONS = [0, 2, 0, 0, 1, 1]


def test_known_numbers():
    result = shape_bias(PREDICTIONS, SHAPE, TEXTURE, NAMES)
    assert result["shape_decisions"] == 3 and result["texture_decisions"] == 2 and result["images"] == 6
    assert result["shape_bias"] == pytest.approx(3 / 5)
    assert result["shape_or_texture_fraction"] == pytest.approx(5 / 6)
    assert result["per_class"] == {
        "a": {"shape_bias": pytest.approx(2 / 3), "shape": 2, "texture": 1, "images": 3},
        "b": {"shape_bias": pytest.approx(1 / 2), "shape": 1, "texture": 1, "images": 2},
        "c": {"shape_bias": None, "shape": 0, "texture": 0, "images": 1},  # its one image was neither
    }
    # tensors work the same way
    tensors = shape_bias(torch.tensor(PREDICTIONS), torch.tensor(SHAPE), torch.tensor(TEXTURE), NAMES)
    assert tensors == result


def test_no_shape_or_texture_decision_at_all():
    result = shape_bias([2, 2], [0, 1], [1, 0], NAMES)
    assert result["shape_bias"] is None and result["shape_or_texture_fraction"] == 0.0


@pytest.mark.parametrize(
    "predictions, shapes, textures, message",
    [
        ([0, 1], [0, 1, 2], [1, 2, 0], "same length"),
        ([0, 1, 0], [0, 3, 2], [1, 2, 0], r"shape_labels\[1\] = 3"),
        ([0, -1, 0], [0, 1, 2], [1, 2, 0], r"predictions\[1\] = -1"),
        ([0, 1, 0], [0, 1, 2], [1, 1, 0], "image 1 has shape and texture label 1"),
        ([0.5, 1, 0], [0, 1, 2], [1, 2, 0], "integer class indices"),
        ([], [], [], "at least one"),
    ],
)
def test_bad_inputs_raise(predictions, shapes, textures, message):
    with pytest.raises(ValueError, match=message):
        shape_bias(predictions, shapes, textures, NAMES)


def to_tensor(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


def test_cue_conflict_predictions_on_shapesx():
    dataset = ShapesX("cue_conflict", size=32, length=40, transform=to_tensor)
    seen = []

    def always_star(images):
        seen.append(tuple(images.shape))
        logits = torch.zeros(len(images), len(CLASSES))
        logits[:, CLASSES.index("star")] = 1.0
        return logits

    predictions, shapes, textures, indices = cue_conflict_predictions(always_star, dataset, batch_size=16, device="cpu")
    assert seen == [(16, 3, 32, 32), (16, 3, 32, 32), (8, 3, 32, 32)]
    annotations = [dataset.annotation(i) for i in range(40)]
    assert shapes == [a["shape"] for a in annotations]
    assert textures == [a["texture"] for a in annotations]
    assert predictions == [3] * 40 and indices == list(range(40))

    result = shape_bias(predictions, shapes, textures, CLASSES)
    star_shape = sum(a["shape"] == 3 for a in annotations)
    star_texture = sum(a["texture"] == 3 for a in annotations)
    assert (result["shape_decisions"], result["texture_decisions"]) == (star_shape, star_texture) == (4, 4)
    assert result["shape_bias"] == pytest.approx(0.5)
    assert result["per_class"]["star"] == {"shape_bias": 1.0, "shape": 4, "texture": 0, "images": 4}
    assert result["per_class"]["circle"]["shape_bias"] == 0.0  # star-looking circles were called star


def test_cue_conflict_predictions_need_tensors():
    with pytest.raises(ValueError, match="transform"):
        cue_conflict_predictions(lambda x: x, ShapesX("cue_conflict", size=32, length=4), 2, "cpu")


def test_sixteen_categories_average_probabilities_within_each_category():
    """A hand-made 1000-class probability vector: airplane's one class holds 0.3, the 109 dog classes 0.5 between
    them, everything else the rest. The mean within a category (not the sum) decides: airplane, not dog."""
    assert len(IMAGENET16) == 16 and len(IMAGENET16["dog"]) == 109 and IMAGENET16["airplane"] == [404]
    assert sum(map(len, IMAGENET16.values())) == len({i for v in IMAGENET16.values() for i in v}) == 207
    probabilities = torch.zeros(1000, dtype=torch.float64)
    probabilities[404] = 0.3
    probabilities[IMAGENET16["dog"]] = 0.5 / 109
    rest = [i for i in range(1000) if i != 404 and i not in IMAGENET16["dog"]]
    probabilities[rest] = 0.2 / len(rest)
    scores = category_scores(probabilities.log()[None])  # the softmax of log p is p
    expected = {name: float(probabilities[indices].mean()) for name, indices in IMAGENET16.items()}
    assert scores.shape == (1, 16)
    assert scores[0].tolist() == pytest.approx(list(expected.values()), rel=1e-12)
    assert list(IMAGENET16)[int(scores.argmax())] == "airplane"
    assert expected["dog"] == pytest.approx(0.5 / 109) and expected["knife"] == pytest.approx(0.2 / len(rest))


def test_sixteen_categories_on_a_subset_of_imagenet_classes():
    # columns name each logit's ImageNet class: two columns, airplane and dog; the softmax runs over those two
    columns = [404, 152]
    small = {"airplane": [404], "dog": [152, 153]}
    scores = category_scores(torch.tensor([[0.0, 1.0]]), columns, small)
    e = float(np.exp(1.0))
    assert scores[0].tolist() == pytest.approx([1 / (1 + e), e / (1 + e)])
    with pytest.raises(ValueError, match="none of the ImageNet classes of: .*knife"):
        category_scores(torch.zeros(1, 2), columns)


def write_stimuli(root, names):
    for name in names:
        folder = root / name.split("-")[0].rstrip("0123456789")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), len(name), dtype=np.uint8)).save(folder / name)


def stimulus_names():
    """Two stimuli per category: texture from the next category and, for the first, from the same one."""
    categories = list(IMAGENET16)
    names = []
    for k, shape in enumerate(categories):
        names += [f"{shape}1-{categories[(k + 1) % 16]}2.png", f"{shape}2-{shape}1.png"]
    return names


def test_cue_conflict_folder_reads_the_public_layout(tmp_path):
    write_stimuli(tmp_path, stimulus_names())
    stimuli = CueConflictFolder(tmp_path, transform=to_tensor)
    categories = list(IMAGENET16)
    assert len(stimuli) == 16 and stimuli.same_cue == 16 and stimuli.classes == categories
    for i in range(16):
        image, label, index = stimuli[i]
        assert (label, index) == (i, i) and image.shape == (3, 8, 8)
        assert stimuli.annotation(i) == {"shape": i, "texture": (i + 1) % 16}
        assert stimuli.file_name(i) == f"{categories[i]}1-{categories[(i + 1) % 16]}2.png"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda root: write_stimuli(root, ["airplane3-tiger1.png"]), "expected a name <shape><k>-<texture><j>.png"),
        (lambda root: write_stimuli(root, ["tiger1-bear1.png"]), "must hold the 16 category folders"),
        (
            lambda root: Image.new("RGB", (4, 4)).save(root / "bear" / "cat1-dog1.png"),
            "its shape 'cat' is not its folder's category",
        ),
    ],
)
def test_cue_conflict_folder_refuses_other_layouts(tmp_path, change, message):
    write_stimuli(tmp_path, stimulus_names())
    change(tmp_path)
    with pytest.raises(DataError, match=message):
        CueConflictFolder(tmp_path)
