"""The DALI decoder (``data.decoder: dali``) against the PIL path: the same keys, crops and flips, pixels within
decoder and resize rounding; refused augmentations; an undecodable batch through PIL. Runs DALI's CPU decoder here
(skipped without ``nvidia-dali``); benchmarks/gpu_check.sh runs the GPU one."""

import numpy as np
import pytest
import torch
from PIL import Image

from mixmask.config import ConfigError, load_config
from mixmask.data import build_dataset, collate, label_fraction
from mixmask.data.transforms import train_transform, two_view_transform
from mixmask.engine.trainer import EpochSampler, SeededAugmentation

pytest.importorskip("nvidia.dali")
from mixmask.data.dali import DaliBatches  # noqa: E402


def gradient_image(width, height, seed):
    """Smooth colour ramps (where a pixel came from shows in its value) plus a per-image tint."""
    y, x = np.mgrid[0:height, 0:width]
    tint = np.random.default_rng(seed).integers(0, 60)
    rgb = np.stack([x * 200 // width + tint, y * 200 // height + tint, (x + y) * 100 // (width + height)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.fixture
def jpeg_folder(tmp_path):
    for split, count in (("train", 24), ("val", 4)):
        for i in range(count):
            folder = tmp_path / split / f"class{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            gradient_image(90 + 7 * i, 70 + 3 * i, i).save(folder / f"img{i:03d}.JPEG", quality=95)
    return tmp_path


def setup(root, overrides=(), fraction=1.0):
    cfg = load_config(
        None,
        ["data.dataset=folder", f"data.root={root}", "data.image_size=32", "train.batch_size=8", *overrides],
    )
    transform = train_transform(32, (0.2, 1.0), mean=None, std=None)
    dataset = label_fraction(build_dataset(cfg.data, "train", transform), fraction, seed=0)
    sampler = EpochSampler(len(dataset), 8, seed=cfg.train.seed)
    fallback = SeededAugmentation(dataset, cfg.train.seed)
    return cfg, dataset, sampler, fallback


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_dali_gives_the_pil_batches_within_rounding(jpeg_folder, fraction):
    cfg, dataset, sampler, fallback = setup(jpeg_folder, fraction=fraction)
    dali = DaliBatches(dataset, fallback, sampler, cfg, torch.device("cpu"))
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        pil = [collate([fallback[k] for k in keys[i : i + 8]]) for i in range(0, len(keys), 8)]
        got = list(dali)
        assert len(got) == len(pil)
        for a, b in zip(got, pil, strict=True):
            assert torch.equal(a.labels, b.labels) and torch.equal(a.indices, b.indices)
            assert a.images.dtype == torch.uint8 and a.images.shape == b.images.shape == (8, 3, 32, 32)
            difference = (a.images.float() - b.images.float()).abs()
            assert difference.mean() < 0.5 and difference.max() < 8  # a wrong crop or flip is off by tens
    assert dali.fallbacks == 0  # every batch decoded by DALI


def test_other_augmentations_and_data_sets_are_refused(jpeg_folder):
    cfg, dataset, sampler, fallback = setup(jpeg_folder)
    dataset.transform = two_view_transform(32, (0.2, 1.0), mean=None, std=None)
    with pytest.raises(ConfigError, match=r"`data.decoder`: dali decodes the plain training crop"):
        DaliBatches(dataset, fallback, sampler, cfg, torch.device("cpu"))
    from mixmask.tasks.pretrain import pretrain

    simclr = load_config(
        None, ["model.method=simclr", "data.dataset=folder", f"data.root={jpeg_folder}", "data.decoder=dali"]
    )
    with pytest.raises(ConfigError, match=r"`data.decoder`: dali decodes the plain training crop"):
        pretrain(simclr, out=jpeg_folder / "run")
    assert not (jpeg_folder / "run").exists()  # refused before a run folder exists
    with pytest.raises(ConfigError, match=r"`data.decoder`: got 'dali'; expected pil"):
        load_config(None, ["data.decoder=dali"])  # ShapesX is rendered, not decoded


def test_an_undecodable_batch_goes_through_pil_and_is_counted(jpeg_folder):
    broken = sorted((jpeg_folder / "train" / "class0").iterdir())[0]
    broken.write_bytes(b"not a jpeg")
    cfg, dataset, sampler, fallback = setup(jpeg_folder)
    dali = DaliBatches(dataset, fallback, sampler, cfg, torch.device("cpu"))
    batches = list(dali)
    assert [s.path for b in batches for s in b.skipped] == [str(broken)] and dali.fallbacks == 1
    assert sum(len(b) for b in batches) == len(dataset) - 1


def test_pretraining_with_dali_follows_the_pil_run(jpeg_folder, tmp_path):
    from mixmask.tasks.pretrain import pretrain

    losses = {}
    for decoder in ("pil", "dali"):
        cfg = load_config(
            None,
            [
                "data.dataset=folder",
                f"data.root={jpeg_folder}",
                "data.image_size=32",
                "data.num_workers=0",
                f"data.decoder={decoder}",
                "train.batch_size=8",
                "train.epochs=2",
                "train.log_every_steps=1",
                "masking.strategies=[{patch_size: 8, ratio: 0.6}]",
            ],
        )
        run = pretrain(cfg, out=tmp_path / decoder)
        losses[decoder] = [float(line.split('"loss": ')[1].split(",")[0]) for line in open(run / "metrics.jsonl")]
    assert len(losses["dali"]) == len(losses["pil"]) == 6
    assert losses["dali"] != losses["pil"] and np.allclose(losses["dali"], losses["pil"], rtol=0.05)  # DALI decoded
