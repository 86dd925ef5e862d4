"""R-MAE (Eq. 8) on a tiny ViT and a tiny ResNet: branch 2's masks, the loss against a direct computation, where the
gradients flow, and a CLI run whose weights a classifier loads."""

import json
from pathlib import Path

import pytest
import torch

from mixmask.cli import main
from mixmask.config import ConfigError, load_config
from mixmask.masking import MaskBatch, complement
from mixmask.models.classifier import Classifier, load_backbone_weights
from mixmask.models.factory import build_pretrain_model, describe
from mixmask.models.rmae import RelaxedA2MIM, RelaxedMAE

ROOT = Path(__file__).resolve().parents[2]
VIT = ["model.backbone=vit_tiny_p8", "model.mae={decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}"]
VIT += ["masking.strategies=[{patch_size: 8, ratio: 0.75}]"]


def build(overrides, seed=0):
    cfg = load_config(None, ["data.image_size=32", "model.method=rmae", *overrides])
    torch.manual_seed(seed)
    model, masker = build_pretrain_model(cfg)
    return cfg, model, masker


def masks_of(masker, batch=4, step=0, seed=0):
    return masker(step, batch, 32, generator=torch.Generator().manual_seed(seed))


def test_the_method_picks_its_base_by_backbone_and_keeps_the_base_weights_names():
    cfg, vit, _ = build(VIT)
    assert isinstance(vit, RelaxedMAE) and (cfg.masking.fill, cfg.model.token_mode, cfg.loss.spatial) == (
        "none",
        "none",
        "l2",
    )
    cfg, cnn, masker = build(["masking.strategies=[{patch_size: 8, ratio: 0.6}]"])
    assert isinstance(cnn, RelaxedA2MIM) and (cfg.masking.fill, cfg.model.token_mode, cfg.loss.freq_weight) == (
        "mean",
        "add",
        0.0,
    )
    assert describe(cfg, cnn, masker).name == "rmae" and describe(cfg, cnn, masker).token
    # the state dict is the base method's: finetuning reads the backbone under backbone.model.
    assert all(k.startswith(("backbone.model.", "mask_tokens.", "decoder.")) for k in cnn.state_dict())


def test_complement_masks_hide_what_branch_one_sees_on_every_grid():
    cfg, _, masker = build(
        ["masking.strategies=[{patch_size: 8, ratio: 0.6}, {patch_size: 16, ratio: 0.5}]", "masking.mix=per_sample"]
    )
    masks = masks_of(masker, batch=8)
    other = complement(masks)
    assert torch.equal(other.pixels, ~masks.pixels)
    for stage, mask in masks.stages.items():
        uses = mask.flatten(1).any(1)  # the images whose strategy masks at this stage
        assert torch.equal(other.stages[stage][uses], ~mask[uses])
        assert not other.stages[stage][~uses].any()
    assert len(masks.stages) == 2 and not uses.all()


def direct_loss(model, images, first, second, weight=1.0):
    p1, p2 = model.predict(images, first).float(), model.predict(images, second).float()
    region = (first.pixels & ~second.pixels)[:, None].expand_as(images)
    return ((p1 - p2)[region] ** 2).mean() + weight * ((p2 - images)[region] ** 2).mean(), p1, p2


@pytest.mark.parametrize("backbone", ["vit", "cnn"])
def test_loss_is_eq8_on_the_region_branch_one_does_not_see(backbone):
    overrides = VIT if backbone == "vit" else ["masking.strategies=[{patch_size: 8, ratio: 0.6}]"]
    _, model, masker = build([*overrides, "model.rmae.weight=0.5"])
    model.eval()
    images = torch.randn(4, 3, 32, 32)
    masks = masks_of(masker)
    out = model(images, masks)
    expected, p1, _ = direct_loss(model, images, masks, complement(masks), weight=0.5)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["prediction"], p1)  # branch 1's: its PSNR is MAE's measure


def test_branch_two_of_the_vit_sees_only_what_branch_one_does_not():
    _, model, masker = build(VIT)
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    masks = masks_of(masker, batch=2)
    other = complement(masks)
    seen = []
    hook = model.backbone.model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        model(images, masks)
    hook.remove()
    assert seen == [1 + 4, 1 + 12]  # class token + the 4 visible patches, then the 12 others
    # scribbling over what branch 1 sees leaves branch 2's prediction as it was
    scribbled = torch.where(masks.pixels[:, None], images, torch.randn_like(images) * 5)
    with torch.no_grad():
        torch.testing.assert_close(model.predict(scribbled, other), model.predict(images, other))


@pytest.mark.parametrize("stop", ["none", "branch1", "branch2"])
def test_gradients_flow_through_both_branches_unless_one_is_stopped(stop):
    _, model, masker = build([*VIT, f"model.rmae.stop_gradient={stop}"])
    images = torch.randn(2, 3, 32, 32)
    masks = masks_of(masker, batch=2)
    model.zero_grad()
    model(images, masks)["loss"].backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    p1, p2 = model.predict(images, masks).float(), model.predict(images, complement(masks)).float()
    one, two = (p1.detach() if stop == "branch1" else p1), (p2.detach() if stop == "branch2" else p2)
    region = masks.pixels[:, None].expand_as(images)
    (((one - two)[region] ** 2).mean() + ((p2 - images)[region] ** 2).mean()).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_independent_and_full_second_branches():
    _, model, masker = build([*VIT, "model.rmae.branch2=independent", "model.rmae.branch2_ratio=0.25"])
    model.eval()
    images = torch.randn(4, 3, 32, 32)
    masks = masks_of(masker)
    torch.manual_seed(5)
    second = model.branch_two(masks, 32)
    assert second.stages[0].flatten(1).sum(1).tolist() == [4] * 4  # ceil(0.25 * 16) of its own
    torch.manual_seed(5)  # the same draw inside the step
    expected, _, _ = direct_loss(model, images, masks, second)
    torch.testing.assert_close(model(images, masks)["loss"], expected, rtol=1e-5, atol=1e-6)

    _, full, masker = build([*VIT, "model.rmae.branch2=full"])
    full.eval()
    masks = masks_of(masker)
    assert not full.branch_two(masks, 32).pixels.any()
    none = MaskBatch(masks.strategy, torch.zeros_like(masks.pixels), {0: torch.zeros_like(masks.stages[0])})
    expected, _, _ = direct_loss(full, images, masks, none)
    torch.testing.assert_close(full(images, masks)["loss"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "override, fragment",
    [("loss.norm_pix=true", "loss.norm_pix"), ("loss.spatial=l1", "loss.spatial"), ("loss.freq_weight=0.5", "freq")],
)
def test_settings_that_eq8_does_not_use_are_refused(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, ["model.method=rmae", override])


def test_pretrain_cli_run_gives_weights_a_classifier_loads(tmp_path):
    run = tmp_path / "rmae"
    small = ["data.image_size=32", "data.shapesx={train: 64, val: 8}", "data.num_workers=0", "train.epochs=1"]
    small += ["train.batch_size=32", "masking.strategies=[{patch_size: 8, ratio: 0.6}]"]
    assert main(["pretrain", str(ROOT / "configs/pretrain/rmae_tiny_shapesx.yaml"), *small, "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "rmae" and results["steps"] == 2 and 5 < results["reconstruction"][0]["psnr_masked"]
    classifier = Classifier("resnet_tiny", 10, image_size=32)
    assert load_backbone_weights(classifier, run)["loaded"] > 0


def shapesx_images(n=32):
    from mixmask.data.shapesx import ShapesX
    from mixmask.data.transforms import eval_transform

    data = ShapesX("train", size=32, length=n, transform=eval_transform(32, 1.0))
    return torch.stack([data[i][0] for i in range(n)])


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vit", "cnn"])
def test_loss_falls_on_shapesx(backbone):
    overrides = VIT if backbone == "vit" else ["masking.strategies=[{patch_size: 8, ratio: 0.6}]"]
    _, model, masker = build(overrides)
    images = shapesx_images()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    losses = []
    for step in range(30):
        out = model(images, masks_of(masker, batch=32, step=step, seed=step))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0], losses
