"""Comparisons against the reference from per-image records: the numbers equal direct computations on the records,
seeds pair with seeds, pooled rows appear with two or more seeds, and Holm runs within each seed level."""

import csv

import numpy as np
import pytest

from mixmask.evaluation import statistics
from mixmask.factors import FACTORS
from mixmask.report import comparisons
from mixmask.results import EvaluateResults, Method, StageRun, Variant

N = 200


def _write(path, header, rows):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def replicate(tmp_path, name, seed, correct, shape_decision, backbone=None):
    """An evaluated replicate whose per-image records say which of N images it gets right; images 0-39 show
    texture, 40-79 shape (top factor), and the occlusion record at ratio 0.5 is right on the even images it gets
    right."""
    folder = tmp_path / name / f"seed{seed}"
    folder.mkdir(parents=True)
    names = [f"val_{i:04d}.png" for i in range(N)]
    _write(folder / "val.csv", ["file_name", "correct"], [[n, int(c)] for n, c in zip(names, correct, strict=True)])
    top = ["texture" if i < 40 else "shape" if i < 80 else "pose" for i in range(N)]
    factor_rows = [[n, int(c), *(int(f == t) for f in FACTORS)] for n, c, t in zip(names, correct, top, strict=True)]
    _write(folder / "factors.csv", ["file_name", "correct", *FACTORS], factor_rows)
    occluded = [int(c and i % 2 == 0) for i, c in enumerate(correct)]
    _write(folder / "occ.csv", ["file_name", "correct@0", "correct@0.5"],
           [[n, int(c), o] for n, c, o in zip(names, correct, occluded, strict=True)])  # fmt: skip
    conflict = [[f"cc_{i}.png", int(s), int(not s)] for i, s in enumerate(shape_decision)]
    _write(folder / "cc.csv", ["file_name", "shape_decision", "texture_decision"], conflict)
    per_image = {"top1": "val.csv", "factors": "factors.csv", "occlusion": "occ.csv", "shape_bias": "cc.csv"}
    evaluation = EvaluateResults(run="", run_task="finetune", settings={}, data={}, per_image=per_image)
    run = StageRun("evaluate", "done", folder, results=evaluation)
    method = Method("a2mim", backbone) if backbone else None
    return Variant(name, "", "sweep", method, {"evaluate": run}, seed=seed)


def test_per_seed_rows_equal_direct_tests_on_the_records(tmp_path):
    rng = np.random.default_rng(0)
    ref_correct = rng.random(N) < 0.6
    model_correct = ref_correct | (rng.random(N) < 0.3)  # clearly better
    shape_ref, shape_model = rng.random(50) < 0.2, rng.random(50) < 0.6
    variants = [
        replicate(tmp_path, "scratch", 0, ref_correct, shape_ref),
        replicate(tmp_path, "p4", 0, model_correct, shape_model),
    ]
    references = comparisons.assign_references(variants)
    assert references == {"scratch": "scratch", "p4": "scratch"}
    assert comparisons.assign_references(variants, ["p4"]) == {"scratch": "p4", "p4": "p4"}
    assert comparisons.assign_references(variants, ["x"]) == {}
    rows = {c.metric: c for c in comparisons.compare(variants, references, resamples=500)}
    top1 = rows["top1"]
    direct = statistics.mcnemar(ref_correct, model_correct)
    assert (top1.test, top1.seed, top1.n_images, top1.n_seeds) == ("mcnemar", "0", N, 1)
    assert top1.difference == pytest.approx(direct.difference) and top1.p_value == pytest.approx(direct.p_value)
    texture = rows["factor_acc/texture"]
    assert texture.n_images == 40 and texture.value == pytest.approx(model_correct[:40].mean())
    ratio = rows["error_ratio/texture"]
    assert ratio.test == "bootstrap"
    assert ratio.value == pytest.approx((1 - model_correct[:40].mean()) / (1 - model_correct.mean()))
    assert "occlusion/0" not in rows and rows["occlusion/0.5"].n_images == N
    occluded = model_correct & (np.arange(N) % 2 == 0)
    assert rows["occlusion/0.5"].value == pytest.approx(occluded.mean())
    assert rows["shape_bias"].value == pytest.approx(shape_model.mean()) and rows["shape_bias"].n_images == 50
    assert "factor_acc/style" not in rows  # no image shows it
    # Holm within each table at this seed, by hand: the headline numbers are one family, the factor accuracies another
    assert {comparisons.family(m) for m in rows} == {"headline", "factor_acc", "error_ratio", "occlusion"}
    headline = sorted(rows[m].p_value for m in ("top1", "factor_average", "shape_bias"))
    holm = [min(1, 3 * headline[0]), min(1, max(3 * headline[0], 2 * headline[1]))]
    holm.append(min(1, max(holm[1], headline[2])))
    by_p = sorted(("top1", "factor_average", "shape_bias"), key=lambda m: rows[m].p_value)
    assert [rows[m].p_holm for m in by_p] == pytest.approx(holm)
    assert comparisons.family("probe/linear/factor_acc/pose") == "probe/linear/factor_acc"
    assert comparisons.family("probe/knn/top1") == "headline"
    assert top1.significant and top1.p_holm < 0.05


def test_seeds_pair_by_seed_and_pool_with_a_hierarchical_bootstrap(tmp_path):
    rng = np.random.default_rng(1)
    variants = []
    for seed in (0, 1, 2):
        ref = rng.random(N) < 0.6
        variants.append(replicate(tmp_path, "scratch", seed, ref, rng.random(30) < 0.5))
        variants.append(replicate(tmp_path, "p4", seed, ref ^ (rng.random(N) < 0.05), rng.random(30) < 0.5))
    variants.append(replicate(tmp_path, "p4", 3, rng.random(N) < 0.6, rng.random(30) < 0.5))  # no reference seed 3
    rows = comparisons.compare(variants, {"p4": "scratch"}, resamples=500)
    top1 = [c for c in rows if c.metric == "top1"]
    assert [c.seed for c in top1] == ["0", "1", "2", "all"]
    pooled = top1[-1]
    assert pooled.test == "hierarchical_bootstrap" and pooled.n_seeds == 3 and pooled.n_images == 3 * N
    assert pooled.difference == pytest.approx(np.mean([c.difference for c in top1[:3]]))
    assert pooled.ci_low < pooled.difference < pooled.ci_high
    assert not pooled.significant  # 5 % of images flipped at random: no direction
    lines = comparisons.resolved_lines(rows)
    assert lines[0].startswith(f"0 of {len(comparisons.headline(rows))} differences to scratch are resolved")
    assert any(line.startswith("not resolved: p4: top1") and "3 seeds" in line for line in lines)
    assert not any(line.startswith("caution") for line in lines)  # three seeds
    two = [v for v in variants if v.seed in (0, 1)]
    assert comparisons.resolved_lines(comparisons.compare(two, {"p4": "scratch"}, resamples=200))[-1].startswith(
        "caution"
    )
    header, body, notes = comparisons.headline_grid(rows)
    assert header == ["variant", "val. top-1", "factor avg.", "shape bias"] and [r[0] for r in body] == ["p4"]
    assert body[0][1] == f"{100 * pooled.difference:+.1f} [{100 * pooled.ci_low:+.1f}, {100 * pooled.ci_high:+.1f}]"
    assert "hierarchical bootstrap (3 seed(s))" in notes[0]
    path = comparisons.write_csv(rows, tmp_path / "comparisons.csv")
    with path.open(newline="") as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == comparisons.COLUMNS and len(read) == len(rows)


def test_several_references_each_compare_the_variants_of_their_backbone(tmp_path):
    """reference: [scratch, scratch_vit]: the ResNet variants against scratch, the ViT ones against scratch_vit (Holm
    within each reference's rows); a variant of a third backbone against the first named."""
    rng = np.random.default_rng(2)
    cnn_ref, vit_ref = rng.random(N) < 0.5, rng.random(N) < 0.5
    shape = rng.random(30) < 0.5
    variants = [
        replicate(tmp_path, "scratch", 0, cnn_ref, shape, "resnet_tiny"),
        replicate(tmp_path, "a2mim", 0, cnn_ref | (rng.random(N) < 0.4), shape, "resnet_tiny"),
        replicate(tmp_path, "scratch_vit", 0, vit_ref, shape, "vit_tiny_p8"),
        replicate(tmp_path, "mae", 0, vit_ref & (rng.random(N) < 0.6), shape, "vit_tiny_p8"),
        replicate(tmp_path, "convnext", 0, cnn_ref, shape, "convnext_atto"),
    ]
    references = comparisons.assign_references(variants, ["scratch", "scratch_vit"])
    assert references == {
        "scratch": "scratch", "a2mim": "scratch", "scratch_vit": "scratch_vit", "mae": "scratch_vit",
        "convnext": "scratch",
    }  # fmt: skip
    with pytest.raises(ValueError, match="the references scratch and a2mim are both resnet_tiny; name one per"):
        comparisons.assign_references(variants, ["scratch", "a2mim"])
    rows = comparisons.compare(variants, references, resamples=200)
    top1 = {c.variant: c for c in rows if c.metric == "top1"}
    assert {v: c.reference for v, c in top1.items()} == {
        "a2mim": "scratch",
        "mae": "scratch_vit",
        "convnext": "scratch",
    }
    assert top1["mae"].reference_value == pytest.approx(vit_ref.mean())
    assert top1["a2mim"].reference_value == top1["convnext"].reference_value == pytest.approx(cnn_ref.mean())
    assert top1["a2mim"].significant and top1["a2mim"].difference > 0
    assert top1["mae"].significant and top1["mae"].difference < 0
    assert top1["convnext"].difference == 0
    header, body, notes = comparisons.headline_grid(rows)
    assert header[:2] == ["variant", "vs"] and [r[:2] for r in body][:2] == [
        ["a2mim", "scratch"],
        ["mae", "scratch_vit"],
    ]
    assert "the reference of the variant's backbone" in notes[0]
    first_line = comparisons.resolved_lines(rows)[0]
    assert "differences to scratch / scratch_vit (each variant's backbone) are resolved" in first_line


def test_masked_psnr_is_compared_image_by_image_for_the_strategies_both_pretrainings_used(tmp_path):
    """psnr/<strategy> rows: the pooled PSNR 10 log10(sum count / sum sse) of each model on the images both scored,
    with a paired bootstrap; a strategy only one model used gives no row."""
    rng = np.random.default_rng(3)
    names = [f"val_{i:04d}.png" for i in range(N)]
    count = np.full(N, 3 * 64.0)
    sse = {"a": rng.uniform(0.5, 1.5, N), "b": rng.uniform(0.5, 1.5, N) * 0.7}  # b's errors 30 % smaller
    variants = []
    for name in ("a", "b"):
        v = replicate(tmp_path, name, 0, rng.random(N) < 0.5, rng.random(30) < 0.5)
        folder = v.runs["evaluate"].run_dir
        header = ["file_name", "sse@p8_r0.6", "count@p8_r0.6"] + (
            ["sse@p4_r0.6", "count@p4_r0.6"] if name == "b" else []
        )
        rows = [[n, s, c] + ([s, c] if name == "b" else []) for n, s, c in zip(names, sse[name], count, strict=True)]
        _write(folder / "recon.csv", header, rows)
        v.evaluation.per_image["reconstruction"] = "recon.csv"
        variants.append(v)
    rows = {c.metric: c for c in comparisons.compare(variants, {"b": "a"}, resamples=500)}
    assert [m for m in rows if m.startswith("psnr/")] == ["psnr/p8_r0.6"]
    psnr = rows["psnr/p8_r0.6"]
    assert psnr.test == "bootstrap" and psnr.n_images == N
    assert psnr.value == pytest.approx(10 * np.log10(count.sum() / sse["b"].sum()))
    assert psnr.reference_value == pytest.approx(10 * np.log10(count.sum() / sse["a"].sum()))
    assert psnr.significant and psnr.difference == pytest.approx(10 * np.log10(sse["a"].sum() / sse["b"].sum()))
    assert comparisons.family("psnr/p8_r0.6") == "psnr"
    assert " dB [" in comparisons.describe(psnr)
    header, body, _ = comparisons.headline_grid(list(rows.values()))
    assert header[-1] == "PSNR p8_r0.6 (dB)"
    assert body[0][-1] == f"{psnr.difference:+.2f} [{psnr.ci_low:+.2f}, {psnr.ci_high:+.2f}]↑"
