"""Cue-conflict shape bias: known numbers on hand-built decisions, input validation, and predictions on ShapesX."""

import numpy as np
import pytest
import torch

from mixmask.data.shapesx import CLASSES, ShapesX
from mixmask.evaluation.shape_bias import cue_conflict_predictions, shape_bias

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
