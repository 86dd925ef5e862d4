"""ImageNet-X scoring: equal to the imagenet-x package's own functions, the paper's ImageNet-100 denominators,
hand-checked ShapesX cases and a clear error for every kind of bad input."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

# isort: off
import mixmask._compat  # noqa: F401  (before imagenet_x: its evaluate submodule imports torchvision)
import imagenet_x
# isort: on

from mixmask.data.imagenet100 import load_class_list
from mixmask.data.shapesx import ShapesX
from mixmask.evaluation import imagenet_x as ix
from mixmask.evaluation.imagenet_x import PredictionError, evaluate, evaluate_annotations, shapesx_rows
from mixmask.factors import FACTORS

# imagenet-x builds a ragged DataFrame of the ReaL labels, which pandas 3 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:Constructing a DataFrame from a list of sequences")
ACCURACY = 0.6  # share of predictions forced to the true label


@pytest.fixture(scope="module")
def val_labels() -> dict[str, int]:
    with open(ix.annotation_dir() / "filename_label.csv", newline="") as f:
        return {row["file_name"]: int(row["label"]) for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def package_annotations():
    return {w: imagenet_x.load_annotations(which_factor=w) for w in ("top", "multi")}


def biased_predictions(labels: dict[str, int], num_classes: int, seed: int = 0) -> dict[str, int]:
    """The true label with probability ACCURACY, else a uniformly random class."""
    rng = np.random.default_rng(seed)
    truth = np.array(list(labels.values()))
    guess = np.where(rng.random(truth.size) < ACCURACY, truth, rng.integers(0, num_classes, truth.size))
    return dict(zip(labels, guess.tolist(), strict=True))


def package_scores(annotations, predictions_1k: dict[str, int]):
    """Accuracy, error ratio and counts per factor from the package, plus its average."""
    model = pd.DataFrame({"file_name": list(predictions_1k), "predicted_class": list(predictions_1k.values())})
    joined = imagenet_x.augment_model_predictions(annotations, {"m": model})
    accuracies = imagenet_x.compute_factor_accuracies(joined, imagenet_x.FACTORS)
    ratios = imagenet_x.error_ratio(accuracies)
    return accuracies.loc["m"], ratios.loc["m"], joined[imagenet_x.FACTORS].sum(), len(joined)


def assert_matches_package(ours, accuracies, ratios, counts, joined):
    assert ours.images == joined
    assert ours.average == pytest.approx(accuracies["average"], abs=1e-12)
    assert ours.accuracy[ours.worst_factor] == pytest.approx(accuracies["worst_factor"], abs=1e-12)
    for f in FACTORS:
        assert ours.counts[f] == counts[f], f
        if math.isnan(accuracies[f]):
            assert math.isnan(ours.accuracy[f]) and math.isnan(ours.error_ratio[f]), f
        else:
            assert ours.accuracy[f] == pytest.approx(accuracies[f], abs=1e-12), f
            assert ours.error_ratio[f] == pytest.approx(ratios[f], abs=1e-12), f


def test_factor_order_and_no_heavy_imports():
    assert list(FACTORS) == list(imagenet_x.FACTORS)
    code = "import sys, mixmask.evaluation.imagenet_x; print([m for m in ('torch', 'pandas', 'imagenet_x') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_fast_parser_equals_json():
    # the comparisons with the package check the fast path on the whole files; here a slice against json
    lines = (ix.annotation_dir() / "imagenet_x_val_multi_factor.jsonl").read_text().splitlines()[:5000]
    text = "\n".join(lines) + "\n"
    fast, slow = ix._parse_fast(text), ix._parse_json(text)
    assert fast[0] == slow[0]
    np.testing.assert_array_equal(fast[1], slow[1])
    np.testing.assert_array_equal(fast[2], slow[2])
    assert ix._parse_fast(text.replace('"class":', '"klass":', 1)) is None  # any unexpected line: json path


@pytest.mark.parametrize("which_factor", ["top", "multi"])
def test_all_val_images_equal_package(which_factor, val_labels, package_annotations):
    predictions = biased_predictions(val_labels, 1000)
    ours = evaluate(predictions, which_factor=which_factor)
    assert_matches_package(ours, *package_scores(package_annotations[which_factor], predictions))
    assert 0.55 < ours.average < 0.65
    assert ours.settings["predictions"] == 50_000
    assert ours.settings["unannotated"] == 50_000 - 48_868
    assert ours.images == 48_868 - ours.settings["prototypes_dropped"]


@pytest.mark.parametrize("which_factor", ["top", "multi"])
@pytest.mark.parametrize("class_list", ["cmc", "kaggle"])
def test_imagenet100_subset_equals_package(class_list, which_factor, val_labels, package_annotations):
    wnids = sorted(load_class_list(class_list))  # ImageFolder order
    to_1k = {i: ix.imagenet_wnids().index(w) for i, w in enumerate(wnids)}
    from_1k = {k: i for i, k in to_1k.items()}
    subset = {name: from_1k[label] for name, label in val_labels.items() if label in from_1k}
    assert len(subset) == 5000
    predictions = biased_predictions(subset, 100, seed=1)
    ours = evaluate(predictions, which_factor=which_factor, wnids=wnids)
    predictions_1k = {name: to_1k[c] for name, c in predictions.items()}
    assert_matches_package(ours, *package_scores(package_annotations[which_factor], predictions_1k))
    assert ours.settings["classes"] == 100 and ours.settings["outside_classes"] == 0


@pytest.mark.parametrize(
    ("class_list", "images", "denominators"),
    [
        ("kaggle", 4664, {"shape": 22, "subcategory": 26, "texture": 21, "partial_view": 63}),
        ("cmc", 4649, {"shape": 58, "subcategory": 63, "texture": 28, "partial_view": 75}),
    ],
)
def test_paper_denominators(class_list, images, denominators, val_labels):
    wnids = sorted(load_class_list(class_list))
    index = {ix.imagenet_wnids().index(w): i for i, w in enumerate(wnids)}
    predictions = {name: index[label] for name, label in val_labels.items() if label in index}
    result = evaluate(predictions, wnids=wnids)  # top factor, prototypes filtered: the defaults
    assert result.images == images
    assert {f: result.counts[f] for f in denominators} == denominators
    assert result.average == 1.0 and all(math.isnan(r) for r in result.error_ratio.values())
    assert result.thin == [f for f in FACTORS if result.counts[f] < 30]
    assert "texture" in result.thin and "pose" not in result.thin


def test_prototypes_and_paths(val_labels):
    predictions = biased_predictions(val_labels, 1000, seed=2)
    filtered, kept = evaluate(predictions), evaluate(predictions, filter_prototypes=False)
    assert kept.images == 48_868 and filtered.images == 48_868 - filtered.settings["prototypes_dropped"]
    assert filtered.settings["prototypes_dropped"] > 2000 and kept.settings["prototypes_dropped"] == 0
    # keys may be paths (either separator) and values numpy integers
    as_paths = {
        f"/data/val/n0/{n}" if i % 2 else f"C:\\val\\{n}": np.int64(c) for i, (n, c) in enumerate(predictions.items())
    }
    assert evaluate(as_paths).to_dict() == filtered.to_dict()


def test_error_ratio_intervals_and_report(val_labels):
    result = evaluate(biased_predictions(val_labels, 1000, seed=3), min_count=500)
    for f in FACTORS:
        count, acc = result.counts[f], result.accuracy[f]
        assert (f in result.thin) == (count < 500)
        if count == 0:
            assert math.isnan(acc) and all(math.isnan(v) for v in result.interval[f])
            continue
        assert acc == result.correct[f] / count
        assert result.error_ratio[f] == pytest.approx((1 - acc) / (1 - result.average), rel=1e-15)
        lo, hi = result.interval[f]
        assert 0 <= lo <= acc <= hi <= 1
    assert result.accuracy[result.worst_factor] == min(a for a in result.accuracy.values() if not math.isnan(a))
    # 7 of 10: the textbook Wilson interval
    lo, hi = ix.wilson_interval(7, 10)
    assert lo == pytest.approx(0.39678, abs=1e-5) and hi == pytest.approx(0.89221, abs=1e-5)
    assert ix.wilson_interval(0, 5)[0] == 0.0 and ix.wilson_interval(5, 5)[1] == 1.0

    data = result.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["factors"]["texture"]["count"] == result.counts["texture"]
    assert data["factors"]["texture"]["ci95"] == list(result.interval["texture"])
    assert data["settings"]["min_count"] == 500 and data["settings"]["which_factor"] == "top"
    table = result.table().splitlines()
    assert len(table) == 2 + len(FACTORS) + 1
    for f in FACTORS:
        (line,) = [row for row in table if row.startswith(f + " ")]
        assert line.endswith("THIN") == (f in result.thin)
        assert f"{result.counts[f]:,}" in line


def test_empty_factor_is_nan():
    # one correct prediction on an annotated non-prototype image: only its top factor has a count
    result = evaluate({"ILSVRC2012_val_00004487.JPEG": 762})
    assert result.images == 1 and result.counts["larger"] == 1 and result.accuracy["larger"] == 1.0
    assert math.isnan(result.accuracy["pose"]) and math.isnan(result.error_ratio["pose"])
    assert result.worst_factor == "larger"
    assert result.to_dict()["factors"]["pose"] == {
        "accuracy": None,
        "error_ratio": None,
        "count": 0,
        "correct": 0,
        "ci95": [None, None],
        "thin": True,
    }


def test_all_wrong_is_zero_not_nan():
    # the package gives NaN for every factor here (no correct row to group); zero is the accuracy
    annotations = ix._annotations("multi")
    keep = ~annotations.prototype
    names, classes = annotations.names[keep][:300], annotations.classes[keep][:300]
    result = evaluate(dict(zip(names.tolist(), ((classes + 1) % 1000).tolist(), strict=True)), which_factor="multi")
    assert result.average == 0.0
    for f in FACTORS:
        assert math.isnan(result.accuracy[f]) if result.counts[f] == 0 else result.accuracy[f] == 0.0
        assert result.counts[f] == 0 or result.error_ratio[f] == 1.0


VAL1 = "ILSVRC2012_val_00004487.JPEG"  # annotated, class 762


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"predictions": {}}, "empty"),
        ({"predictions": {"cat.jpg": 1, "n01440764_1.JPEG": 2, VAL1: 3}}, "2 of 3 prediction file names are not"),
        ({"predictions": {VAL1: 1.0}}, "not integer"),
        ({"predictions": {VAL1: "3"}}, "not integer"),
        ({"predictions": {VAL1: True}}, "not integer"),
        ({"predictions": {VAL1: -1}}, "negative"),
        ({"predictions": {VAL1: 2**70}}, "too large"),
        ({"predictions": {VAL1: 1000}}, ">= 1000"),
        ({"predictions": {VAL1: 5}, "wnids": ["n01440764", "n01443537"]}, ">= 2, the number of wnids"),
        ({"predictions": {VAL1: 0}, "wnids": ["n01440764", "n99999999"]}, "not ImageNet-1k wnids ('n99999999')"),
        ({"predictions": {VAL1: 0}, "wnids": ["n01440764", "n01440764"]}, "repeat"),
        ({"predictions": {VAL1: 0}, "wnids": "n01440764"}, "list of ImageNet wnids"),
        ({"predictions": {"a/" + VAL1: 0, "b/" + VAL1: 0}}, "more than once"),
        ({"predictions": {"ILSVRC2012_val_00007197.JPEG": 0}}, "none of the 1 predicted images"),  # a prototype
        ({"predictions": {VAL1: 0}, "which_factor": "both"}, "which_factor"),
        ({"predictions": {VAL1: 0}, "min_count": -1}, "min_count"),
        ({"predictions": {1: 0}}, "prediction keys must be file names"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(PredictionError) as error:
        evaluate(**kwargs)
    assert message in str(error.value)
    assert isinstance(error.value, ValueError)


def test_unannotated_only_is_an_error(val_labels):
    annotated = set(ix._annotations("top").names)
    unannotated = [n for n in val_labels if n not in annotated][:3]
    with pytest.raises(PredictionError, match="3 unannotated"):
        evaluate(dict.fromkeys(unannotated, 0))


# --- ShapesX ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_rows():
    return shapesx_rows(ShapesX("test", size=32, length=340))  # 20 images per top factor, 20 prototypes


def test_shapesx_all_correct(shapes_rows):
    predictions = {r["file_name"]: r["class"] for r in shapes_rows}
    for which in ("top", "multi"):
        result = evaluate_annotations(predictions, shapes_rows, which_factor=which, num_classes=10)
        assert result.images == 320 and result.settings["prototypes_dropped"] == 20
        assert result.average == 1.0 and all(result.accuracy[f] == 1.0 for f in FACTORS)
        assert result.settings["source"] == "shapesx"
    top = evaluate_annotations(predictions, shapes_rows)
    multi = evaluate_annotations(predictions, shapes_rows, which_factor="multi")
    assert all(top.counts[f] == 20 for f in FACTORS) and sum(top.counts.values()) == 320
    assert all(multi.counts[f] >= 20 for f in FACTORS) and sum(multi.counts.values()) > 320
    expected_multi = {f: sum(r[f] for r in shapes_rows if r["top"] != "none") for f in FACTORS}
    assert multi.counts == expected_multi
    assert evaluate_annotations(predictions, shapes_rows, filter_prototypes=False).images == 340


def test_shapesx_correct_on_one_factor(shapes_rows):
    def wrong(r):
        return (r["class"] + 1) % 10

    # top: right exactly on the 20 texture images
    predictions = {r["file_name"]: r["class"] if r["top"] == "texture" else wrong(r) for r in shapes_rows}
    top = evaluate_annotations(predictions, shapes_rows)
    assert top.average == 20 / 320
    assert top.accuracy["texture"] == 1.0 and top.error_ratio["texture"] == 0.0
    for f in FACTORS:
        if f != "texture":
            assert top.accuracy[f] == 0.0 and top.error_ratio[f] == pytest.approx(1 / (1 - 20 / 320))
    assert top.worst_factor == "pose"  # ties go to the first factor in FACTORS order

    # multi: right exactly where the texture column is 1; other factors score their overlap with texture
    predictions = {r["file_name"]: r["class"] if r["texture"] else wrong(r) for r in shapes_rows}
    multi = evaluate_annotations(predictions, shapes_rows, which_factor="multi", min_count=25)
    scored = [r for r in shapes_rows if r["top"] != "none"]
    average = sum(r["texture"] for r in scored) / 320
    assert multi.average == average
    for f in FACTORS:
        carrying = [r for r in scored if r[f]]
        accuracy = sum(r["texture"] for r in carrying) / len(carrying)
        assert multi.accuracy[f] == accuracy, f
        assert multi.error_ratio[f] == pytest.approx((1 - accuracy) / (1 - average)), f
        assert (f in multi.thin) == (len(carrying) < 25)

    # the prototypes count once kept, and carry no factor
    kept = evaluate_annotations(predictions, shapes_rows, which_factor="multi", filter_prototypes=False)
    assert kept.images == 340 and kept.counts == multi.counts and kept.average == average * 320 / 340

    # the scored images, as the per-image record writes them: they give back every count and the average
    names, correct, shows = multi.scored
    by_name = {r["file_name"]: r for r in scored}
    assert sorted(names) == sorted(by_name) and correct.mean() == multi.average
    assert all(bool(c) == bool(by_name[n]["texture"]) for n, c in zip(names, correct, strict=True))
    assert {f: int(shows[:, k].sum()) for k, f in enumerate(FACTORS)} == multi.counts
    assert {f: int((shows[:, k] & correct).sum()) for k, f in enumerate(FACTORS)} == multi.correct


def test_shapesx_subset_and_bad_input(shapes_rows):
    some = {r["file_name"]: r["class"] for r in shapes_rows[:34]}  # two cycles: 32 factor images, 2 prototypes
    assert evaluate_annotations(some, shapes_rows).images == 32
    with pytest.raises(PredictionError, match="1 of 35 prediction file names are not among the 340"):
        evaluate_annotations({**some, "test_999999.png": 0}, shapes_rows)
    with pytest.raises(PredictionError, match=">= 10"):
        evaluate_annotations({**some, shapes_rows[0]["file_name"]: 10}, shapes_rows, num_classes=10)
    with pytest.raises(PredictionError, match="prototypes"):
        evaluate_annotations({shapes_rows[16]["file_name"]: 0}, shapes_rows)
    no_top = [{k: v for k, v in r.items() if k != "top"} for r in shapes_rows]
    with pytest.raises(PredictionError, match="no 'top' column"):
        evaluate_annotations(some, no_top)
    assert evaluate_annotations(some, no_top, which_factor="multi", filter_prototypes=False).images == 34
    with pytest.raises(PredictionError, match="top factor 'blur'"):
        evaluate_annotations(some, [{**shapes_rows[0], "top": "blur"}, *shapes_rows[1:]])
    with pytest.raises(PredictionError, match="repeat file names"):
        evaluate_annotations(some, [*shapes_rows, shapes_rows[0]])
