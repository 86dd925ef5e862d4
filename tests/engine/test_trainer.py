"""The training loop: exact resume, sampling, accumulation, NaN stop, idle parameters, batches on the device."""

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from mixmask.data import Batch
from mixmask.data.transforms import normalize
from mixmask.engine import checkpoint as ckpt
from mixmask.engine.distributed import Dist
from mixmask.engine.optim import build_optimizer
from mixmask.engine.trainer import DeviceBatches, EpochSampler, TrainingDiverged, fit
from tests.engine.tiny import Interrupt, RandomImages, TinyNet, classify, config


class TwoTokenNet(TinyNet):
    """A second token that the model reports idle in every step but it never uses."""

    def __init__(self):
        super().__init__()
        self.mask_tokens["1"] = nn.Parameter(torch.ones(1, 8, 1, 1))

    def idle_parameters(self):
        return [self.mask_tokens["1"]]

    def forward(self, x):
        return super().forward(x) + 0.0 * self.mask_tokens["1"].sum()


def test_idle_parameters_keep_their_value_and_optimizer_state(tmp_path):
    model = TwoTokenNet()
    fit(config(), tmp_path, model, RandomImages(), classify, Dist())
    assert torch.equal(model.mask_tokens["1"].detach(), torch.ones(1, 8, 1, 1))
    optimizer = build_optimizer(model, config().optim, 1e-3)
    ckpt.load_checkpoint(ckpt.latest_intact_checkpoint(tmp_path), model, optimizer)
    assert model.mask_tokens["1"] not in optimizer.state  # AdamW never took a step on it
    assert int(optimizer.state[model.mask_tokens["0"]]["step"]) == 18  # 48 images / 8 x 3 epochs


def test_sampler_shards_ranks_and_skips_for_resume():
    full = list(EpochSampler(20, 3, seed=1))
    assert len(full) == 18 and len(set(full)) == 18
    ranks = [list(EpochSampler(20, 3, seed=1, rank=r, world=2)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) == len(ranks[1]) == 9
    resumed = EpochSampler(20, 3, seed=1)
    resumed.set_epoch(0, skip_batches=2)
    assert list(resumed) == full[6:]
    grouped = EpochSampler(20, 3, seed=1, group=4)  # accumulation over 4 batches: whole groups only
    assert len(list(grouped)) == 12


def test_resume_mid_epoch_gives_bitwise_the_same_weights(tmp_path):
    cfg = config(checkpoint_every_steps=2)
    cpu = Dist()
    torch.manual_seed(0)
    straight = TinyNet()
    fit(cfg, tmp_path / "straight", straight, RandomImages(), classify, cpu)

    torch.manual_seed(0)
    stopped = TinyNet()
    calls = []

    def stop_in_epoch_two(model, batch, micro_step):
        calls.append(micro_step)
        if micro_step == 9:  # epoch 1 (6 batches per epoch), after the checkpoint at step 8
            raise Interrupt
        return classify(model, batch, micro_step)

    with pytest.raises(Interrupt):
        fit(cfg, tmp_path / "resumed", stopped, RandomImages(), stop_in_epoch_two, cpu)
    torch.manual_seed(123)  # a fresh process: other RNG state, fresh model
    resumed = TinyNet()
    summary = fit(cfg, tmp_path / "resumed", resumed, RandomImages(), classify, cpu)
    assert summary["steps"] == 18
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    lines = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(2, 19, 2))
    assert all(math.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in lines)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = config(checkpoint_every_steps=2)

    def diverge(model, batch, micro_step):
        out = classify(model, batch, micro_step)
        return {"loss": out["loss"] * (float("nan") if micro_step >= 5 else 1.0)}

    with pytest.raises(TrainingDiverged, match="NaN"):
        fit(cfg, tmp_path, TinyNet(), RandomImages(), diverge, Dist())
    newest = ckpt.latest_intact_checkpoint(tmp_path)
    state = json.loads((newest / "state.json").read_text())
    assert state["step"] == 4
    model = TinyNet()
    ckpt.load_checkpoint(newest, model)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path):
    torch.manual_seed(0)
    one = TinyNet(batch_norm=False)  # BatchNorm statistics would differ between 2 x 8 and 16 images
    two = TinyNet(batch_norm=False)
    two.load_state_dict(one.state_dict())
    fit(config(epochs=1, batch_size=16), tmp_path / "a", one, RandomImages(), classify, Dist())
    fit(config(epochs=1, batch_size=8, accum_steps=2), tmp_path / "b", two, RandomImages(), classify, Dist())
    for key, value in one.state_dict().items():
        torch.testing.assert_close(value, two.state_dict()[key], rtol=1e-4, atol=1e-6)


def uint8_batches(count=3):
    g = torch.Generator().manual_seed(0)
    batches = []
    for i in range(count):
        images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g)
        crops = torch.randint(0, 256, (4, 2, 3, 4, 4), dtype=torch.uint8, generator=g)
        batches.append(Batch((images, crops) if i % 2 else images, torch.arange(4), torch.arange(4)))
    return batches


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def expected(images):
    return normalize(images, MEAN, STD) if images.dtype == torch.uint8 else images


def test_device_batches_normalise_uint8_images_and_keep_float_ones():
    float_batch = Batch(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), torch.arange(2))
    source = [*uint8_batches(), float_batch]
    out = list(DeviceBatches(source, torch.device("cpu"), MEAN, STD, channels_last=False))
    assert len(out) == len(source)
    for got, sent in zip(out, source, strict=True):
        if isinstance(sent.images, tuple):  # multi-crop: each part on its own
            assert all(torch.equal(g, expected(s)) for g, s in zip(got.images, sent.images, strict=True))
        else:
            assert got.images.dtype == torch.float32 and torch.equal(got.images, expected(sent.images))
        assert torch.equal(got.labels, sent.labels)
    assert float(out[0].images.mean()) == pytest.approx(
        float(
            (
                (source[0].images.float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
            ).mean()
        ),
        abs=1e-6,
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_batches_prefetch_on_a_side_stream_gives_the_cpu_numbers():
    source = uint8_batches(6)
    on_cpu = list(DeviceBatches(source, torch.device("cpu"), MEAN, STD, channels_last=False))
    on_gpu = list(DeviceBatches(source, torch.device("cuda"), MEAN, STD, channels_last=True))
    torch.cuda.synchronize()
    for got, want in zip(on_gpu, on_cpu, strict=True):
        parts = (
            zip(got.images, want.images, strict=True) if isinstance(want.images, tuple) else [(got.images, want.images)]
        )
        for g, w in parts:
            assert g.is_cuda and torch.allclose(g.cpu(), w, atol=1e-6)
    assert on_gpu[0].images.is_contiguous(memory_format=torch.channels_last)


CHURN = """
import resource, sys
import torch
from mixmask.engine.trainer import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def churn():  # tensors of a few MiB made, filled and freed, as in a training step
    for mib in (1, 3, 8, 2, 16, 5):
        torch.ones(mib << 18)
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    churn()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keep_freed_memory_stops_steps_faulting_their_pages_in_again():
    """glibc's defaults give freed blocks back and every later step faults them in again; after keep_freed_memory
    (which fit calls) the same allocations take no page faults."""
    runs = {
        mode: subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
        for mode in ("default", "keep")
    }
    default_faults = runs["default"].stdout.split()[1]
    kept, faults = runs["keep"].stdout.split()
    assert kept == "True"
    assert int(default_faults) > 1000  # 5 rounds re-fault most of their 35 MiB
    assert int(faults) < 50
