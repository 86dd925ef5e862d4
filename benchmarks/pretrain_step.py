"""Time of one A2MIM pretraining step divided by one plain supervised step of the same backbone, input and batch.

    python benchmarks/pretrain_step.py                       # resnet_tiny at 64 px on the CPU (and CUDA if present)
    python benchmarks/pretrain_step.py --backbone resnet50 --size 224 --batch 256 --device cuda
    python benchmarks/pretrain_step.py --compile    # also both steps under torch.compile (train.compile)
    python benchmarks/pretrain_step.py --device cuda --json step.json   # the numbers as JSON too
    python benchmarks/pretrain_step.py --breakdown  # where the extra time goes: masks, frequency loss, the rest
    python benchmarks/pretrain_step.py --default-malloc   # without the trainer's keep_freed_memory()

Both steps are forward + backward + AdamW; the A2MIM step also draws masks on the device, fills, adds the token and
computes the spatial + focal frequency loss. Steps alternate between the two so that drifts in machine speed hit both
alike; each step's median time is reported, and the ratio as the geometric mean of the per-round ratios with its 95 %
t interval. Like the trainer, the benchmark first keeps freed memory with the process (``keep_freed_memory``);
``--default-malloc`` leaves glibc's defaults, under which every step faults its tensors' pages in again (the minor
page faults per step are reported). Target: ratio <= 1.15. With ``--compile`` two more steps, the same A2MIM model
compiled as ``train.compile`` does (whole model, masks drawn outside) and the supervised network compiled alike,
alternate with them; compile times are reported apart, ``speedup`` is eager / compiled A2MIM and ``compiled_ratio``
the A2MIM / supervised ratio with both compiled.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import statistics
import time
from pathlib import Path

import torch
from scipy import stats
from torch import nn

from mixmask.config import load_config
from mixmask.engine.optim import build_optimizer
from mixmask.engine.trainer import compile_in_place, keep_freed_memory
from mixmask.models.factory import build_pretrain_model


def timed(step, device: torch.device) -> tuple[float, int]:
    """Seconds and minor page faults of one step."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def paired_ratio(numerators: list[float], denominators: list[float]) -> tuple[float, float, float]:
    """The geometric mean of the per-round ratios and its 95 % t interval (on the log scale)."""
    logs = [math.log(a / b) for a, b in zip(numerators, denominators, strict=True)]
    low, high = stats.t.interval(0.95, len(logs) - 1, statistics.mean(logs), stats.sem(logs))
    return math.exp(statistics.mean(logs)), math.exp(low), math.exp(high)


def measure(
    backbone: str,
    size: int,
    batch: int,
    patch: int,
    device: torch.device,
    steps: int,
    warmup: int,
    compile_too: bool,
    breakdown: bool = False,
) -> dict:
    settings = [
        f"model.backbone={backbone}",
        f"data.image_size={size}",
        f"masking.strategies=[{{patch_size: {patch}}}]",
    ]
    cfg = load_config(None, settings)
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
    memory_format = torch.channels_last if cuda else torch.contiguous_format

    mim, masker = build_pretrain_model(cfg)
    mim.to(device, memory_format=memory_format).train()
    mim_opt = build_optimizer(mim, cfg.optim, cfg.optim.lr)

    backbone_only = build_pretrain_model(cfg)[0].backbone
    head = nn.Linear(backbone_only.channels[-1], 100)
    classifier = nn.Sequential(backbone_only, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    classifier.to(device, memory_format=memory_format).train()
    sup_opt = build_optimizer(classifier, cfg.optim, cfg.optim.lr)

    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 100, (batch,), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    counter = iter(range(10**9))

    def masked_step(model: nn.Module, optimizer: torch.optim.Optimizer):
        def step():
            masks = masker(next(counter), batch, size, generator=generator)
            with autocast:
                loss = model(images, masks)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def supervised_step(model: nn.Module, optimizer: torch.optim.Optimizer):
        def step():
            with autocast:
                loss = nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    steps_timed = {"a2mim": masked_step(mim, mim_opt), "supervised": supervised_step(classifier, sup_opt)}
    if breakdown:  # where the A2MIM step's extra time goes: drawing masks, the frequency loss, the rest
        no_freq, _ = build_pretrain_model(load_config(None, [*settings, "loss.freq_weight=0"]))
        no_freq.to(device, memory_format=memory_format).train()
        steps_timed["a2mim_without_frequency_loss"] = masked_step(
            no_freq, build_optimizer(no_freq, cfg.optim, cfg.optim.lr)
        )
        steps_timed["masks"] = lambda: masker(next(counter), batch, size, generator=generator)
    compile_s = {}
    if compile_too:
        compiled = copy.deepcopy(mim)
        compile_in_place(compiled)  # as train.compile does
        steps_timed["compiled_a2mim"] = masked_step(compiled, build_optimizer(compiled, cfg.optim, cfg.optim.lr))
        compiled_classifier = torch.compile(copy.deepcopy(classifier))
        steps_timed["compiled_supervised"] = supervised_step(
            compiled_classifier, build_optimizer(compiled_classifier, cfg.optim, cfg.optim.lr)
        )
        compile_s = {name: timed(steps_timed[name], device)[0] for name in ("compiled_a2mim", "compiled_supervised")}

    times: dict[str, list[float]] = {name: [] for name in steps_timed}
    faults: dict[str, list[int]] = {name: [] for name in steps_timed}
    for i in range(warmup + steps):
        for name, step in steps_timed.items():
            elapsed, step_faults = timed(step, device)
            if i >= warmup:
                times[name].append(elapsed)
                faults[name].append(step_faults)
    median = {name: statistics.median(values) for name, values in times.items()}
    mim_t, sup_t = median["a2mim"], median["supervised"]
    compiled_t = median.get("compiled_a2mim")
    ratio = paired_ratio(times["a2mim"], times["supervised"])
    compiled_ratio = paired_ratio(times["compiled_a2mim"], times["compiled_supervised"]) if compiled_t else None
    parts = {}
    if breakdown:  # shares of the supervised step's time
        no_freq_t, masks_t = median["a2mim_without_frequency_loss"], median["masks"]
        parts = {
            "share_masks": masks_t / sup_t,
            "share_frequency_loss": (mim_t - no_freq_t) / sup_t,
            "share_fill_token_decoder_spatial_loss": (no_freq_t - masks_t - sup_t) / sup_t,
        }
    return parts | {
        "compiled_s": compiled_t,
        "compiled_supervised_s": median.get("compiled_supervised"),
        "compiled_ratio": compiled_ratio[0] if compiled_ratio else None,
        "compile_s": compile_s.get("compiled_a2mim"),
        "speedup": mim_t / compiled_t if compiled_t else None,
        "backbone": backbone,
        "size": size,
        "batch": batch,
        "device": str(device)
        + (f" ({torch.cuda.get_device_name()})" if cuda else f" ({torch.get_num_threads()} threads)"),
        "a2mim_s": mim_t,
        "supervised_s": sup_t,
        "ratio": ratio[0],
        "ratio_interval": ratio[1:],
        "compiled_ratio_interval": compiled_ratio[1:] if compiled_ratio else None,
        "page_faults_per_step": {
            "a2mim": statistics.median(faults["a2mim"]),
            "supervised": statistics.median(faults["supervised"]),
        },
        "a2mim_img_s": batch / mim_t,
        "supervised_img_s": batch / sup_t,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--patch", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu, then cuda when present)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time both steps under torch.compile")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the measurements to FILE")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time mask drawing and the step without the frequency loss"
    )
    parser.add_argument(
        "--default-malloc", action="store_true", help="leave glibc's malloc settings (no keep_freed_memory)"
    )
    args = parser.parse_args()
    if not args.default_malloc:
        keep_freed_memory()

    runs = []
    if args.device in (None, "cpu"):
        runs.append(("cpu", args.backbone or "resnet_tiny", args.size or 64, args.batch or 64, args.patch or 8))
    if args.device == "cuda" or (args.device is None and torch.cuda.is_available()):
        runs.append(("cuda", args.backbone or "resnet50", args.size or 224, args.batch or 256, args.patch or 32))
    print(
        f"{'device':<32} {'backbone':<12} {'size':>4} {'batch':>5} {'A2MIM s':>8} {'sup. s':>8} {'ratio [95 % CI]':>21} "
        f"{'A2MIM img/s':>11} {'faults/step':>13}"
    )
    results = []
    for device, backbone, size, batch, patch in runs:
        r = measure(
            backbone, size, batch, patch, torch.device(device), args.steps, args.warmup, args.compile, args.breakdown
        )
        results.append(r)
        low, high = r["ratio_interval"]
        faults = r["page_faults_per_step"]
        print(
            f"{r['device']:<32} {backbone:<12} {size:>4} {batch:>5} {r['a2mim_s']:>8.4f} {r['supervised_s']:>8.4f} "
            f"{r['ratio']:>6.3f} [{low:.3f}, {high:.3f}] {r['a2mim_img_s']:>11.1f} "
            f"{faults['a2mim']:>6.0f} {faults['supervised']:>6.0f}"
        )
        if r["compiled_s"] is not None:
            print(
                f"  compiled A2MIM step {r['compiled_s']:.4f} s (compiling took {r['compile_s']:.0f} s): "
                f"speedup {r['speedup']:.3f} x over eager; A2MIM / supervised, both compiled: "
                f"{r['compiled_ratio']:.3f} [{r['compiled_ratio_interval'][0]:.3f}, {r['compiled_ratio_interval'][1]:.3f}]"
            )
        if args.breakdown:
            print(
                "  beyond the supervised step, as shares of it: masks {share_masks:.3f}, frequency loss "
                "{share_frequency_loss:.3f}, fill + token + decoder + spatial loss "
                "{share_fill_token_decoder_spatial_loss:.3f}".format(**r)
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
