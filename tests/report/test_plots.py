"""Every report figure writes a readable PNG, for one model and several, with thin, empty and undefined values."""

import sys

import pytest
import torch
from PIL import Image

from mixmask.report.figures import reconstruction_figure
from mixmask.report.plots import (
    cka_curves,
    error_ratio_bars,
    factor_accuracy_bars,
    frequency_profiles,
    interaction_curves,
    occlusion_curve,
    shape_bias_bars,
)
from mixmask.results import CKACurves, Factors, FrequencyProfile, InteractionCurve, OcclusionCurve, ShapeBias


def factor_results(shift=0.0):
    factors = {
        "pose": {"accuracy": 0.62 + shift, "error_ratio": 1.3, "count": 120, "correct": 74, "ci95": [0.53, 0.70]},
        "background": {"accuracy": 0.8, "error_ratio": 0.7, "count": 300, "correct": 240, "ci95": [0.75, 0.84]},
        "style": {"accuracy": 0.4, "error_ratio": 2.1, "count": 5, "correct": 2, "ci95": [0.12, 0.77], "thin": True},
        "person_blocking": {"accuracy": None, "error_ratio": None, "count": 0, "correct": 0, "ci95": [None, None]},
    }
    for f in factors.values():
        f.setdefault("thin", f["count"] < 10)
    return Factors.from_json(
        {
            "average": 0.71 + shift,
            "worst_factor": "style",
            "images": 425,
            "thin": ["style", "person_blocking"],
            "settings": {"source": "shapesx", "min_count": 10},
            "factors": factors,
        }
    )


def occlusion_results(drop=0.0):
    accuracy = [0.9, 0.7 - drop, None, 0.2]
    correct = [round(100 * a) if a is not None else 0 for a in accuracy]
    return OcclusionCurve([0.0, 0.2, 0.4, 0.6], accuracy, correct, images=100, patch_size=2, fill="zero", seed=0)


def cka_results():
    stages = {"0": [1.0, 0.8, 0.5], "1": [1.0, 0.7, None], "2": [1.0, 0.9, 0.85]}
    return CKACurves([0.0, 0.3, 0.6], stages, images=64, patch_size=4, fill="mean", debiased=False, seed=0)


def shape_results(bias=0.4):
    return ShapeBias(
        shape_bias=bias,
        shape_decisions=40,
        texture_decisions=60,
        images=120,
        shape_or_texture_fraction=100 / 120,
        per_class={
            "circle": {"shape_bias": 0.5, "shape": 10, "texture": 10, "images": 25},
            "square": {"shape_bias": 0.2, "shape": 4, "texture": 16, "images": 22},
            "triangle": {"shape_bias": None, "shape": 0, "texture": 0, "images": 3},
        },
    )


def interactions(shift=0.0):
    ratios = [0.0, 0.5, 1.0]
    return InteractionCurve(4, 8, 16, 0, 32, 20, ratios, [0, 7, 14], [2.0, 1.0, 3.0], [1.0 + shift, 0.5, 1.5 - shift])


def frequency(scale=1.0):
    layers = [
        {"layer": n, "depth": d, "size": [8, 8], "relative_log_amplitude": [0.0, -1.0 * scale], "spatial_variance": v}
        for n, d, v in (("act1", 0.0, 0.5), ("layer1.0", 0.5, 0.2), ("layer2.0", 1.0, 0.05))
    ]
    return FrequencyProfile(
        "a pretraining run", 16, layers, 32, ["layer4.0"], [dict(x, spatial_variance=1.0) for x in layers]
    )


def check_png(path):
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.width > 200 and image.height > 200


CASES = [
    (factor_accuracy_bars, lambda: factor_results()),
    (error_ratio_bars, lambda: factor_results()),
    (error_ratio_bars, lambda: {"A2MIM": factor_results(), "Mix-and-Mask": factor_results(0.05)}),
    (occlusion_curve, lambda: occlusion_results()),
    (occlusion_curve, lambda: {"A2MIM": occlusion_results(), "Mix-and-Mask": occlusion_results(0.1)}),
    (cka_curves, lambda: cka_results()),
    (cka_curves, lambda: {"A2MIM": cka_results(), "Mix-and-Mask": cka_results()}),
    (interaction_curves, lambda: interactions()),
    (interaction_curves, lambda: {"A2MIM": interactions(), "scratch": interactions(0.2)}),
    (frequency_profiles, lambda: frequency()),
    (frequency_profiles, lambda: FrequencyProfile("random init", 16, frequency().layers)),  # an older record
    (frequency_profiles, lambda: {"A2MIM": frequency(), "scratch": frequency(2.0)}),
    (shape_bias_bars, lambda: shape_results()),
    (shape_bias_bars, lambda: {"A2MIM": shape_results(), "Mix-and-Mask": shape_results(None)}),
]


@pytest.mark.parametrize("plot, results", CASES, ids=[f"{p.__name__}-{i}" for i, (p, _) in enumerate(CASES)])
def test_writes_a_png(tmp_path, plot, results):
    path = plot(results(), tmp_path / "sub" / "figure.png")
    assert path == tmp_path / "sub" / "figure.png"
    check_png(path)


def test_titles_can_be_set_and_bad_input_is_named(tmp_path):
    check_png(factor_accuracy_bars(factor_results(), str(tmp_path / "a.png"), title="ShapesX test, A2MIM"))
    with pytest.raises(ValueError, match="expected a Factors record"):
        error_ratio_bars({"A2MIM": {"accuracy": 1}}, tmp_path / "b.png")


def test_reconstruction_figure_draws_without_pyplot(tmp_path):
    rows = {name: torch.rand(3, 3, 16, 16) for name in ("masked", "prediction", "pasted", "original")}
    result = {"rows": rows, "patch_size": 4, "ratio": 0.6, "stage": 1, "psnr_masked": 18.5}
    path = reconstruction_figure(result, tmp_path / "sub" / "recon.png", max_images=2)
    assert Image.open(path).size == (640, 320)  # 4 x 1.6 in by 2 x 1.6 in at 100 dpi
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()
