"""The study report on a real tiny sweep: two pretrained variants (one with mixed masking) and a scratch baseline,
each pretrained, finetuned and evaluated for real, registered in a results store as the sweep runner does (the
``sweep`` fixture: those tests are ``slow``). The fast suite runs ``mixmask report`` on a sweep that has not run yet."""

import csv
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mixmask import __version__
from mixmask.cli import main
from mixmask.config import load_config, to_dict
from mixmask.report import collect, tables
from mixmask.results import results_from_json
from mixmask.store import ResultsStore
from mixmask.tasks.evaluate import evaluate, evaluation_config
from mixmask.tasks.finetune import finetune
from mixmask.tasks.pretrain import pretrain
from mixmask.tasks.report import report

ROOT = Path(__file__).resolve().parents[2]
COMMON = [
    "data.image_size=32",
    "data.num_workers=0",
    "data.shapesx={train: 256, val: 64, test: 170, cue_conflict: 40}",
    "train.epochs=1",
    "train.batch_size=32",
    "train.log_every_steps=2",
]
PRETRAIN = [*COMMON, "train.reconstruction_every_epochs=0"]
EVALUATE = ["eval.cka_images=32", "eval.occlusion_ratios=[0.0, 0.5, 0.9]", "eval.min_factor_images=15"]
VARIANTS = {
    "p4": ["masking.strategies=[{patch_size: 4, ratio: 0.6}]"],
    "mixed_4_16": ["masking.strategies=[{patch_size: 4, ratio: 0.6}, {patch_size: 16, ratio: 0.4}]"],
    "scratch": None,
}
FILES = [
    "comparisons.csv",
    "table1.md",
    "table1.csv",
    "counts.md",
    "counts.csv",
    "summary.md",
    "figure2_error_ratios.png",
    "figure3_reconstructions.png",
    "occlusion.png",
    "cka.png",
    "shape_bias.png",
    *[f"curves_{name}.png" for name in VARIANTS],
    "report.html",
]
SECTION_IDS = ["resolved", "table1", "figure2", "figure3", "occlusion", "cka", "shape-bias", "variants"]


def _run(store: ResultsStore, name: str, stage: str, job) -> None:
    """One stage as the sweep runner records it: start, run, finish with the run's results.json and wall time."""
    store.start(name, 0, stage)
    start = time.perf_counter()
    folder = job()
    store.finish(name, 0, stage, json.loads((Path(folder) / "results.json").read_text()), time.perf_counter() - start)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    store = ResultsStore(root / "results.sqlite")
    text = yaml.safe_dump({"name": "tiny_report", "common": COMMON, "variants": list(VARIANTS)}, sort_keys=False)
    store.set_meta(
        name="tiny_report",
        description="Two tiny A2MIM variants and a scratch baseline.",
        sweep_file="",
        sweep_text=text,
        created=time.time(),
        mixmask_version=__version__,
        machine="test machine",
    )
    for position, (name, masking) in enumerate(VARIANTS.items()):
        runs = root / "runs" / name
        stages = ["finetune", "evaluate"] if masking is None else ["pretrain", "finetune", "evaluate"]
        configs = {}
        if masking is not None:
            configs["pretrain"] = load_config(ROOT / "configs/pretrain/a2mim_tiny_shapesx.yaml", [*PRETRAIN, *masking])
        init = [f"finetune.init={runs / 'pretrain'}"] if masking is not None else []
        configs["finetune"] = load_config(ROOT / "configs/finetune/tiny_shapesx.yaml", [*COMMON, *init])
        spec = {
            "stages": stages,
            "overrides": {},
            "description": "",
            "configs": {s: to_dict(c) for s, c in configs.items()},
        }
        store.add_variant(name, position, spec, {(0, stage): f"runs/{name}/{stage}" for stage in stages})
        if masking is not None:
            _run(store, name, "pretrain", lambda c=configs["pretrain"], r=runs: pretrain(c, out=r / "pretrain"))
        _run(store, name, "finetune", lambda c=configs["finetune"], r=runs: finetune(c, out=r / "finetune"))
        cfg = evaluation_config(runs / "finetune", None, EVALUATE)
        _run(store, name, "evaluate", lambda c=cfg, r=runs: evaluate(c, out=r / "evaluate"))
    store.close()
    return root


@pytest.fixture(scope="module")
def built(sweep) -> Path:
    return report(sweep)


@pytest.mark.slow
def test_every_results_file_reads_as_its_record_and_writes_back_unchanged(sweep):
    files = sorted(sweep.glob("runs/*/*/results.json"))
    assert len(files) == 8  # two pretrainings, three finetunings, three evaluations
    for file in files:
        data = json.loads(file.read_text())
        assert results_from_json(data, str(file)).to_json() == data


@pytest.mark.slow
def test_comparisons_with_scratch_come_from_the_per_image_records(sweep, built):
    with (built.parent / "comparisons.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["variant"], r["reference"], r["seed"]) for r in rows} == {
        ("p4", "scratch", "0"),
        ("mixed_4_16", "scratch", "0"),
    }
    by = {(r["variant"], r["metric"]): r for r in rows}
    for name in ("p4", "mixed_4_16"):
        top1 = by[name, "top1"]
        expected = _evaluate_results(sweep, name)["accuracy"]["top1"]
        reference = _evaluate_results(sweep, "scratch")["accuracy"]["top1"]
        assert float(top1["value"]) == pytest.approx(expected) and float(top1["reference_value"]) == pytest.approx(
            reference
        )
        assert top1["test"] == "mcnemar" and int(top1["n_images"]) == 64
        assert float(top1["ci_low"]) <= float(top1["difference"]) <= float(top1["ci_high"])
        assert float(top1["p_value"]) <= float(top1["p_holm"]) <= 1
        assert by[name, "shape_bias"]["test"] == "bootstrap" and int(by[name, "shape_bias"]["n_images"]) == 40
        assert (name, "occlusion/0.5") in by and (name, "occlusion/0") not in by
    page = built.read_text()
    assert "differences to scratch are resolved" in page


def _evaluate_results(sweep: Path, name: str) -> dict:
    return json.loads((sweep / "runs" / name / "evaluate" / "results.json").read_text())


@pytest.mark.slow
def test_two_references_of_one_backbone_give_one_line_and_no_comparisons(sweep, tmp_path, capsys):
    page = report(sweep, out=tmp_path / "out", references=["scratch", "p4"])
    line = "No comparisons: the references scratch and p4 are both resnet_tiny; name one per backbone"
    assert line in capsys.readouterr().out
    assert line.replace("No comparisons: ", "") in page.read_text()
    assert (tmp_path / "out" / "comparisons.csv").read_text().count("\n") == 1  # the header only


@pytest.mark.slow
def test_table1_numbers_are_the_evaluate_results_in_percent(sweep):
    variants = collect.collect_variants(sweep)
    assert [v.name for v in variants] == list(VARIANTS)
    rows = tables.table1(variants)
    header, body, footnotes = tables.table1_grid(rows)
    assert header[2:] == ["background", "color", "partial view", "pattern", "pose", "shape", "subcategory",
                          "texture", "blocking*", "smaller", "larger", "darker", "style", "brighter",
                          "multiple objects", "val. top-1"]  # fmt: skip
    for row, cells in zip(rows, body, strict=True):
        results = _evaluate_results(sweep, row["variant"])
        factors = results["factors"]["factors"]
        for k, column in enumerate(tables.TABLE1_COLUMNS):
            cell = cells[2 + k]
            if column == "val_top1":
                assert cell == f"{100 * results['accuracy']['top1']:.1f}"
            elif column == "blocking":  # pooled: summed correct over summed counts
                parts = [factors["object_blocking"], factors["person_blocking"]]
                correct, count = sum(p["correct"] for p in parts), sum(p["count"] for p in parts)
                assert row["cells"]["blocking"].accuracy == pytest.approx(correct / count)
                assert count == 20 and not row["cells"]["blocking"].thin  # 20 >= min_factor_images=15
                assert cell == f"{100 * correct / count:.1f}"
            else:  # 10 images per factor < 15: every single factor is thin
                assert factors[column]["thin"]
                assert cell == f"{100 * factors[column]['accuracy']:.1f}{tables.THIN}"
    assert any("fewer than 15 images" in note for note in footnotes)
    assert any("object_blocking and person_blocking" in note for note in footnotes)
    masking = {v.name: v.label for v in variants}
    assert masking == {
        "p4": "patch 4 / 0.6 @ stage 1",
        "mixed_4_16": "mixed: patch 4 / 0.6 | patch 16 / 0.4",
        "scratch": "none (scratch)",
    }


@pytest.mark.slow
def test_files_csv_and_markdown(sweep, built):
    out = built.parent
    assert built == sweep / "report" / "report.html"
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in [n for n in FILES if n.endswith(".png")]:
        with Image.open(out / name) as image:
            assert image.size[0] > 100 and image.size[1] > 100, name

    with (out / "table1.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["variant"] for r in rows] == list(VARIANTS)
    for r in rows:
        results = _evaluate_results(sweep, r["variant"])
        assert float(r["val_top1"]) == pytest.approx(100 * results["accuracy"]["top1"], abs=0.05)
        assert float(r["texture"]) == pytest.approx(
            100 * results["factors"]["factors"]["texture"]["accuracy"], abs=0.05
        )
        assert "texture" in r["thin"].split(";") and "blocking" not in r["thin"].split(";")
        assert r["evaluate_status"] == "done"
    assert rows[2]["masking"] == "none (scratch)"

    with (out / "counts.csv").open(newline="") as handle:
        counts = list(csv.DictReader(handle))
    assert len(counts) == 3 * 17  # 16 factors and pooled blocking per variant
    pose = next(r for r in counts if r["variant"] == "p4" and r["factor"] == "pose")
    expected = _evaluate_results(sweep, "p4")["factors"]["factors"]["pose"]
    assert int(pose["count"]) == expected["count"] and int(pose["correct"]) == expected["correct"]
    assert float(pose["ci_low"]) == pytest.approx(expected["ci95"][0])

    table1 = (out / "table1.md").read_text()
    assert (
        sum(line.startswith("| ") for line in table1.splitlines()) == 1 + len(VARIANTS)
        and tables.THIN in table1
        and "none (scratch)" in table1
    )
    summary = (out / "summary.md").read_text()
    assert "occlusion ER @0.5" in summary and "no pretrain" in summary  # scratch has no pretraining stage


@pytest.mark.slow
def test_html_is_self_contained_with_every_section(built):
    page = built.read_text()
    for name in VARIANTS:
        assert name in page
    for section in SECTION_IDS:
        assert f'id="{section}"' in page, section
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(link|script)[^>]+(src|href)=", page)  # nothing loaded from elsewhere
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 5 + len(VARIANTS) and all(src.startswith("data:image/png;base64,") for src in images)
    assert "tiny_report" in page and "test machine" in page and "<pre>" in page
    assert "imagesBroken" in page


@pytest.mark.slow
def test_a_partially_finished_sweep_renders_with_pending_and_failed_stages(sweep, tmp_path):
    """A second sweep folder whose store points at the fixture's runs by absolute path: p4 done, the scratch
    baseline with its evaluate stage pending, and a variant whose pretraining failed."""
    store = ResultsStore(tmp_path / "results.sqlite")
    store.set_meta(name="partial", created=time.time())
    old = ResultsStore(sweep / "results.sqlite")
    for position, name in enumerate(["p4", "scratch"]):
        spec = old.variants()[list(VARIANTS).index(name)]["spec"]
        runs = {r["stage"]: r for r in old.runs(name)}
        store.add_variant(name, position, spec, {(0, s): str(sweep / r["run_dir"]) for s, r in runs.items()})
        for stage, r in runs.items():
            if name == "scratch" and stage == "evaluate":
                continue  # left pending
            store.start(name, 0, stage)
            store.finish(name, 0, stage, r["results"], r["seconds"])
    store.add_variant("broken", 2, {"stages": ["pretrain", "finetune", "evaluate"]},
                      {(0, s): f"runs/broken/{s}" for s in ("pretrain", "finetune", "evaluate")})  # fmt: skip
    store.start("broken", 0, "pretrain")
    store.fail("broken", 0, "pretrain", "RuntimeError: loss is NaN", 1.5)
    store.close()
    old.close()

    page = report(tmp_path, out=tmp_path / "out")
    text = page.read_text()
    assert "scratch (reference; evaluate pending)" in (tmp_path / "out" / "table1.md").read_text()
    scratch = text[text.index('id="variant-scratch"') :]
    scratch = scratch[: scratch.index("</details>")]
    assert "status-pending" in scratch and "status-done" in scratch
    broken = text[text.index('id="variant-broken"') :]
    assert "status-failed" in broken[: broken.index("</details>")] and "loss is NaN" in broken
    assert "p4" in text and 'id="figure3"' in text
    rows = list(csv.DictReader((tmp_path / "out" / "table1.csv").open(newline="")))
    assert [(r["variant"], r["masking"], r["evaluate_status"], r["texture"]) for r in rows][1:] == [
        ("scratch", "none (scratch)", "pending", ""),
        ("broken", "unknown (pretrain failed)", "pending", ""),  # no config recorded, no run folder
    ]


@pytest.mark.slow
def test_extra_run_folders_become_variants(sweep, tmp_path):
    """An evaluate output folder (named after its parent, as ``evaluate`` says little) and a finetune run folder
    with ``evaluation/`` inside, next to no sweep at all."""
    finetuned = tmp_path / "ft_copy"
    shutil.copytree(sweep / "runs" / "scratch" / "finetune", finetuned)
    shutil.copytree(sweep / "runs" / "scratch" / "evaluate", finetuned / "evaluation")
    extra = [sweep / "runs" / "p4" / "evaluate", finetuned]
    page = report(tmp_path / "nowhere", extra_runs=extra, out=tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "table1.csv").open(newline="")))
    assert [(r["variant"], r["masking"]) for r in rows] == [
        ("p4", "patch 4 / 0.6 @ stage 1"),
        ("ft_copy", "none (scratch)"),
    ]
    expected = _evaluate_results(sweep, "scratch")["accuracy"]["top1"]
    assert float(rows[1]["val_top1"]) == pytest.approx(100 * expected, abs=0.05)
    text = page.read_text()
    assert "p4" in text and "ft_copy" in text and "has no results store" in text
    with pytest.raises(FileNotFoundError, match="evaluation/results.json"):
        report(tmp_path / "nowhere", extra_runs=[sweep / "runs" / "p4" / "pretrain"], out=tmp_path / "out2")


@pytest.mark.slow
def test_extra_seed_folders_of_one_name_are_one_variants_seeds(sweep, tmp_path):
    """Folders laid out as a sweep's, <variant>/seed<k>/..., are named after the variant; different seeds of one name
    are its replicates, the same seed again gets a suffix, as does a sweep variant's name."""
    folders = []
    for seed, place in ((0, "scratch_copy/seed0"), (1, "scratch_copy/seed1"), (0, "again/scratch_copy/seed0")):
        folder = tmp_path / place / "finetune"
        shutil.copytree(sweep / "runs" / "scratch" / "finetune", folder)
        shutil.copytree(sweep / "runs" / "scratch" / "evaluate", folder / "evaluation")
        info = json.loads((folder / "run.json").read_text())
        (folder / "run.json").write_text(json.dumps(info | {"seed": seed}))
        folders.append(folder)  # a finetune run with evaluation/ inside: its run.json gives the seed
    variants = collect.collect_variants(sweep, [*folders, sweep / "runs" / "p4" / "evaluate"])
    extras = [(v.name, v.seed) for v in variants if v.source == "extra"]
    assert extras == [("scratch_copy", 0), ("scratch_copy", 1), ("scratch_copy-2", 0), ("p4-2", 0)]


def test_report_command_on_a_sweep_that_has_not_run_yet(tmp_path, capsys):
    """``mixmask report`` end to end without training: the planned variant is listed with its pending stages."""
    store = ResultsStore(tmp_path / "results.sqlite")
    store.set_meta(name="planned", created=time.time())
    config = to_dict(load_config(ROOT / "configs/pretrain/a2mim_tiny_shapesx.yaml"))
    spec = {"stages": ["pretrain"], "overrides": {}, "description": "", "configs": {"pretrain": config}}
    store.add_variant("p32", 0, spec, {(0, "pretrain"): "runs/p32/pretrain"})
    store.add_variant("damaged", 1, spec, {(0, "pretrain"): "runs/damaged/pretrain"})
    store.start("damaged", 0, "pretrain")  # results written by a release that recorded something this one cannot read
    store.finish("damaged", 0, "pretrain", {"task": "pretrain", "method": "a2mim", "steps": "four"}, 2.0)
    store.close()
    assert main(["report", str(tmp_path)]) == 0
    assert f"report: {(tmp_path / 'report' / 'report.html').resolve()}" in capsys.readouterr().out
    page = (tmp_path / "report" / "report.html").read_text()
    assert "p32" in page and "pending" in page
    assert "p32" in (tmp_path / "report" / "table1.md").read_text()
    damaged = page[page.index('id="variant-damaged"') :]
    assert "status-damaged" in damaged and "PretrainResults field(s) missing: epochs, final_loss" in damaged


def test_interactions_are_compared_on_the_images_every_variant_got_right(tmp_path):
    from mixmask.results import EvaluateResults, InteractionCurve, StageRun, Variant
    from mixmask.tasks.report import common_interactions

    ratios = [0.0, 0.5, 1.0]
    variants = []
    for name, rows in (("a", {"x": [1, 2, 3], "y": [3, 2, 1]}), ("b", {"y": [2, 2, 2], "z": [9, 9, 9]})):
        folder = tmp_path / name
        folder.mkdir()
        lines = ["file_name,j@0,j@0.5,j@1"] + [f"{f},{','.join(map(str, v))}" for f, v in rows.items()]
        (folder / "interactions.csv").write_text("\n".join(lines) + "\n")
        curve = InteractionCurve(4, 8, 16, 0, 3, len(rows), ratios, [0, 7, 14], [0, 0, 0], [0, 0, 0])
        evaluation = EvaluateResults(
            "", "finetune", {}, {}, interactions=curve, per_image={"interactions": "interactions.csv"}
        )
        variants.append(
            Variant(name, "", "sweep", None, {"evaluate": StageRun("evaluate", "done", folder, results=evaluation)})
        )
    curves = common_interactions(variants)
    assert curves["a"].images == curves["b"].images == 1  # only y was right in both
    assert curves["a"].strength == [3, 2, 1] and curves["a"].normalised == pytest.approx([1.5, 1.0, 0.5])
    assert curves["b"].strength == [2, 2, 2] and curves["b"].normalised == [1, 1, 1]


def test_figures_average_the_seeds():
    from mixmask.results import OcclusionCurve, ShapeBias
    from mixmask.tasks.report import seed_mean

    a = OcclusionCurve([0.0, 0.5], [0.8, 0.4], [80, 40], 100, 4, "zero", 0)
    b = OcclusionCurve([0.0, 0.5], [0.6, None], [60, 0], 100, 4, "zero", 0)
    mean = seed_mean([a, b])
    assert mean.accuracy == pytest.approx([0.7, 0.4]) and mean.correct == [140, 40] and mean.images == 200
    assert seed_mean([a]) is a
    per_class = {"circle": {"shape_bias": 0.5, "shape": 5, "texture": 5, "images": 12}}
    x = ShapeBias(0.2, 10, 40, 60, 50 / 60, per_class)
    y = ShapeBias(0.4, 20, 30, 60, 50 / 60, {"circle": {"shape_bias": None, "shape": 0, "texture": 0, "images": 12}})
    both = seed_mean([x, y])
    assert both.shape_bias == pytest.approx(0.3) and both.shape_decisions == 30 and both.images == 120
    assert both.per_class["circle"] == {"shape_bias": 0.5, "shape": 5, "texture": 5, "images": 24}


def test_no_store_and_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.sqlite"):
        report(tmp_path)
    assert not (tmp_path / "results.sqlite").exists() and not (tmp_path / "report").exists()


@pytest.mark.slow
def test_the_page_renders_in_a_headless_browser(built, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not installed: apt-get install chromium (the CI script installs it)")
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path}"]
    dom = subprocess.run(
        [*base, "--dump-dom", built.as_uri()], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    total = re.search(r'data-images-total="(\d+)"', body)
    broken = re.search(r'data-images-broken="(\d+)"', body)
    assert total and broken, body
    assert int(total.group(1)) == dom.count("<img ") and int(total.group(1)) > 0
    assert broken.group(1) == "0"
    assert "Table 1" in dom
    for name in VARIANTS:
        assert name in dom

    shot = tmp_path / "shot.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,2000", built.as_uri()],
                   capture_output=True, timeout=60, check=True)  # fmt: skip
    with Image.open(shot) as image:
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [0, 0]) > 1


def test_planned_variants_are_labelled_by_method(tmp_path):
    """Labels come from the planned configs before anything ran: MoCo v3 masks nothing, a ViT trained from scratch
    says which network, MAE and the A2MIM no-token ablation show no stage."""
    pretrain_configs = {
        "moco": ("mocov3_tiny_shapesx.yaml", []),
        "mae": ("mae_vit_tiny_shapesx.yaml", []),
        "no_token": ("a2mim_tiny_shapesx.yaml", ["model.token_mode=none", "masking.strategies=[{patch_size: 16}]"]),
        "simmim": ("simmim_tiny_shapesx.yaml", ["masking.strategies=[{patch_size: 8, ratio: 0.6}]"]),
    }
    store = ResultsStore(tmp_path / "results.sqlite")
    store.set_meta(name="planned", created=time.time())
    for position, (name, (file, overrides)) in enumerate(pretrain_configs.items()):
        config = to_dict(load_config(ROOT / "configs/pretrain" / file, overrides))
        spec = {"stages": ["pretrain"], "overrides": {}, "description": "", "configs": {"pretrain": config}}
        store.add_variant(name, position, spec, {(0, "pretrain"): f"runs/{name}/pretrain"})
    vit = to_dict(load_config(ROOT / "configs/finetune/tiny_shapesx.yaml", ["model.backbone=vit_tiny_p8"]))
    spec = {"stages": ["finetune"], "overrides": {}, "description": "", "configs": {"finetune": vit}}
    store.add_variant("vit_scratch", 4, spec, {(0, "finetune"): "runs/vit_scratch/finetune"})
    store.close()
    labels = {v.name: v.label for v in collect.collect_variants(tmp_path)}
    assert labels == {
        "moco": "MoCo v3: two views, no mask",
        "mae": "MAE [vit_tiny_p8]: patch 8 / 0.75",
        "no_token": "A2MIM, no token: patch 16 / 0.6",
        "simmim": "SimMIM: patch 8 / 0.6 @ stage 0",  # the planned stage, resolved as the run will resolve it
        "vit_scratch": "none (scratch, vit_tiny_p8)",
    }


@pytest.mark.slow
def test_a_collapsed_pretraining_is_flagged_at_the_top(sweep, tmp_path):
    """The fixture's p4 variant, its pretraining recorded as collapsed: the page says which run and why."""
    store = ResultsStore(tmp_path / "results.sqlite")
    store.set_meta(name="collapsed", created=time.time())
    old = ResultsStore(sweep / "results.sqlite")
    spec = old.variants()[list(VARIANTS).index("p4")]["spec"]
    runs = {r["stage"]: r for r in old.runs("p4")}
    store.add_variant("p4", 0, spec, {(0, s): str(sweep / r["run_dir"]) for s, r in runs.items()})
    for stage, r in runs.items():
        results = r["results"]
        if stage == "pretrain":
            results = {**results, "collapse": "embeddings collapsed (spread 0.010 < 0.1; about 1 when spread out)"}
        store.start("p4", 0, stage)
        store.finish("p4", 0, stage, results, r["seconds"])
    store.close()
    old.close()
    text = report(tmp_path, out=tmp_path / "out").read_text()
    assert "Collapsed pretraining" in text and "p4 seed 0: embeddings collapsed (spread 0.010" in text
    assert "Collapsed pretraining" not in report(sweep, out=tmp_path / "healthy").read_text()
