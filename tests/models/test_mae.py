"""MAE on a tiny timm ViT: the encoder sees visible patches only, the loss is MSE on masked patches (raw or norm_pix
targets), both position-embedding layouts work, the loss falls on ShapesX, and a CLI run gives weights a ViT
classifier loads."""

import json
from pathlib import Path

import pytest
import torch

from mixmask.cli import main
from mixmask.config import ConfigError, MAEConfig, load_config
from mixmask.data.shapesx import ShapesX
from mixmask.data.transforms import eval_transform
from mixmask.masking import MaskBatch, MixedMasker
from mixmask.models.backbone import build_backbone
from mixmask.models.classifier import Classifier, load_backbone_weights, read_weights
from mixmask.models.mae import MAE, patchify, sincos_pos_embed
from mixmask.targets import hog_histograms

ROOT = Path(__file__).resolve().parents[2]
SIZE, PATCH = 32, 8  # a 4x4 grid of ViT patches


def tiny_mae(norm_pix: bool = False, seed: int = 0, target: str = "pixels", hog_cell: int = 8, **timm_kwargs) -> MAE:
    torch.manual_seed(seed)
    backbone = build_backbone(
        "vit_tiny_patch16_224", SIZE, patch_size=PATCH, depth=2, embed_dim=48, num_heads=3, **timm_kwargs
    )
    decoder = MAEConfig(decoder_dim=64, decoder_depth=1, decoder_heads=4)
    return MAE(backbone, decoder, norm_pix=norm_pix, target=target, hog_cell=hog_cell)


def make_masks(model: MAE, batch: int = 4, patch_size: int = PATCH, ratio: float = 0.75, seed: int = 0) -> MaskBatch:
    cfg = load_config(None, [f"masking.strategies=[{{patch_size: {patch_size}, ratio: {ratio}}}]"])
    masker = MixedMasker.from_config(cfg.masking, model.backbone.strides, auto_stage=0)
    return masker(0, batch, SIZE, generator=torch.Generator().manual_seed(seed))


def encoder_output(model: MAE, images: torch.Tensor, masks: MaskBatch) -> torch.Tensor:
    """The encoder's final normalised tokens, caught on the way (the forward runs whole)."""
    caught = []
    handle = model.backbone.model.norm.register_forward_hook(lambda module, args, out: caught.append(out))
    with torch.no_grad():
        model(images, masks)
    handle.remove()
    return caught[0]


def patch_slice(index: int) -> tuple[slice, slice]:
    row, col = divmod(index, SIZE // PATCH)
    return slice(row * PATCH, (row + 1) * PATCH), slice(col * PATCH, (col + 1) * PATCH)


@pytest.mark.parametrize(("patch_size", "ratio", "visible"), [(8, 0.75, 4), (8, 0.5, 8), (16, 0.5, 8)])
def test_encoder_receives_only_the_visible_tokens(patch_size, ratio, visible):
    model = tiny_mae()
    seen = []
    model.backbone.model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    masks = make_masks(model, patch_size=patch_size, ratio=ratio)
    model(torch.randn(4, 3, SIZE, SIZE), masks)
    # 16 patches; ceil(ratio * cells) masked; a 16 px mask cell drops 2x2 ViT patches
    assert seen == [torch.Size([4, 1 + visible, 48])]
    assert (~masks.stages[0]).flatten(1).sum(1).tolist() == [visible] * 4


def test_masked_pixels_never_reach_the_encoder():
    model = tiny_mae().eval()
    images = torch.randn(4, 3, SIZE, SIZE)
    masks = make_masks(model)
    reference = encoder_output(model, images, masks)
    mask = masks.stages[0].flatten(1)

    scribbled = images.clone()
    for b in range(4):
        for index in mask[b].nonzero().flatten().tolist():
            rows, cols = patch_slice(index)
            scribbled[b, :, rows, cols] = torch.randn(3, PATCH, PATCH) * 5
    assert not torch.equal(scribbled, images)
    torch.testing.assert_close(encoder_output(model, scribbled, masks), reference, rtol=0, atol=0)

    changed = images.clone()
    rows, cols = patch_slice(int((~mask[0]).nonzero()[0]))
    changed[0, :, rows, cols] += 1.0
    moved = encoder_output(model, changed, masks)
    assert (moved[0] - reference[0]).abs().max() > 1e-3
    torch.testing.assert_close(moved[1:], reference[1:])


def test_backbone_forward_visible_is_what_the_mae_encoder_computes():
    """The CKA token drop (ViTBackbone.forward_visible) sees an image as MAE's encoder does: the same tokens for the
    same mask, and with every patch kept, the backbone's own stages."""
    model = tiny_mae().eval()
    images = torch.randn(4, 3, SIZE, SIZE)
    masks = make_masks(model)
    mask = masks.stages[0].flatten(1)
    keep = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :4]
    with torch.no_grad():
        stages = model.backbone.forward_visible(images, keep)
        # the norm works token by token: the encoder's normalised patch tokens are the last stage's, normalised
        torch.testing.assert_close(model.backbone.model.norm(stages[-1]), encoder_output(model, images, masks)[:, 1:])
        whole = model.backbone.forward_visible(images, torch.arange(16).expand(4, -1))
        for visible, stage in zip(whole, model.backbone.forward_stages(images), strict=True):
            torch.testing.assert_close(visible, stage.flatten(2).transpose(1, 2))
    assert [s.shape for s in stages] == [torch.Size([4, 4, 48])] * 3


def test_secondary_masking_replaces_a_quarter_of_the_visible_tokens():
    """UM-MAE: of the 8 visible patches, int(8 * 0.75) = 6 keep their embedding, 2 become the learnable token plus
    their position; the loss still covers the masked patches only."""
    torch.manual_seed(0)
    backbone = build_backbone("vit_tiny_patch16_224", SIZE, patch_size=PATCH, depth=2, embed_dim=48, num_heads=3)
    model = MAE(backbone, MAEConfig(decoder_dim=64, decoder_depth=1, decoder_heads=4, secondary_ratio=0.25)).eval()
    with torch.no_grad():
        model.vis_mask_token.fill_(1000.0)
    seen = []
    model.backbone.model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    masks = make_masks(model, ratio=0.5)
    with torch.no_grad():
        out = model(torch.randn(4, 3, SIZE, SIZE), masks)
    tokens = seen[0][:, 1:]  # after the class token: the 8 visible patches
    assert tokens.shape == (4, 8, 48) and ((tokens.mean(-1) > 500).sum(1) == 2).all()
    assert torch.isfinite(out["loss"]) and out["loss"] < 100  # the token never enters the target


def test_augmented_inputs_are_seen_and_the_clean_images_are_the_target():
    model = tiny_mae().eval()
    images, inputs = torch.randn(4, 3, SIZE, SIZE), torch.randn(4, 3, SIZE, SIZE)
    masks = make_masks(model)
    with torch.no_grad():
        out = model(images, masks, inputs=inputs)
        pred = model.predict_patches(inputs, masks)
    per_patch = ((pred - patchify(images, PATCH)) ** 2).mean(-1)
    mask = masks.stages[0].flatten(1)
    torch.testing.assert_close(out["loss"], per_patch[mask].mean())
    with torch.no_grad():
        assert not torch.allclose(model(images, masks)["loss"], out["loss"])


def test_patchify_order_is_row_major_patches_of_row_column_channel_pixels():
    images = torch.randn(2, 3, SIZE, SIZE)
    patches = patchify(images, PATCH)
    assert patches.shape == (2, 16, PATCH * PATCH * 3)
    for index in (0, 3, 6, 15):
        rows, cols = patch_slice(index)
        torch.testing.assert_close(patches[:, index], images[:, :, rows, cols].permute(0, 2, 3, 1).flatten(1))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_is_mse_on_masked_patches_of_the_prediction(norm_pix):
    model = tiny_mae(norm_pix=norm_pix)
    images = torch.randn(4, 3, SIZE, SIZE)
    masks = make_masks(model)
    out = model(images, masks)
    assert set(out) == {"loss", "loss_spatial", "prediction"}
    assert out["loss"].shape == () and out["prediction"].shape == images.shape
    assert out["loss_spatial"].item() == out["loss"].item()

    # by hand: cut each masked patch out of the image and out of the prediction
    errors = []
    for b in range(4):
        for index in masks.stages[0][b].flatten().nonzero().flatten().tolist():
            rows, cols = patch_slice(index)
            target = images[b, :, rows, cols].double()
            guess = out["prediction"][b, :, rows, cols].double()
            if norm_pix:  # the prediction is shown in pixels: undo with the target patch's own statistics
                mean, std = target.mean(), (target.var() + 1e-6).sqrt()  # unbiased variance, as MAE
                target, guess = (target - mean) / std, (guess - mean) / std
            errors.append(((guess - target) ** 2).mean())
    assert len(errors) == 4 * 12
    assert out["loss"].item() == pytest.approx(torch.stack(errors).mean().item(), rel=1e-5)
    # with the visible patches counted too the number would differ: only masked patches are in the loss
    everywhere = ((out["prediction"] - images) ** 2).mean().item()
    assert norm_pix or abs(everywhere - out["loss"].item()) > 1e-3

    out["loss"].backward()
    assert model.mask_token.grad.abs().sum() > 0
    assert model.backbone.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.backbone.model.pos_embed.grad is None  # fixed sin-cos, as MAE


def test_hog_targets_are_each_masked_patchs_cells():
    """loss.target=hog: 108 numbers per 8 px patch (2x2 cells of 4 px x 9 bins x 3 channels); the loss is the MSE
    over the masked patches' cells against the clean image's HOG, and no visible patch's cells get a gradient."""
    model = tiny_mae(target="hog", hog_cell=4)
    assert model.decoder_pred.out_features == 108
    images = torch.randn(4, 3, SIZE, SIZE)
    masks = make_masks(model)
    heads = []  # the head's output (B, patches, 108), to see its gradient

    def keep(module, args, output):
        output.retain_grad()
        heads.append(output)

    model.decoder_pred.register_forward_hook(keep)
    out = model(images, masks)
    prediction = out["prediction"]
    assert prediction.shape == (4, 27, 8, 8)
    out["loss"].backward()

    cells = masks.pixels[:, ::4, ::4]  # each masked 8 px patch is 2x2 masked cells
    assert cells.sum() == 4 * 12 * 4
    errors = (prediction - hog_histograms(images, 4)).permute(0, 2, 3, 1)
    assert out["loss"].item() == pytest.approx(errors[cells].pow(2).mean().item(), rel=1e-5)
    grad, mask = heads[0].grad, masks.stages[0].flatten(1)
    assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask])) and grad[mask].abs().sum() > 0
    assert model.backbone.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match=r"`loss.hog_cell`: got 16; expected a divisor of the ViT patch \(8 px\)"):
        tiny_mae(target="hog", hog_cell=16)


@pytest.mark.parametrize(
    "timm_kwargs",
    [
        {},
        {"no_embed_class": True},
        {"no_embed_class": True, "reg_tokens": 2},
        {"class_token": False, "global_pool": "avg"},
    ],
)
def test_position_embedding_layouts_match_timm(timm_kwargs):
    model = tiny_mae(**timm_kwargs).eval()
    vit = model.backbone.model
    prefix = vit.num_prefix_tokens
    assert prefix == (0 if "class_token" in timm_kwargs else 1 + timm_kwargs.get("reg_tokens", 0))
    # MAE's fixed sin-cos on the patches; class/register slots (when the table has them) zero
    table = vit.pos_embed[0]
    slots = 0 if vit.no_embed_class else prefix
    assert table.shape[0] == 16 + slots and not vit.pos_embed.requires_grad
    torch.testing.assert_close(table[slots:], sincos_pos_embed((4, 4), 48))
    assert torch.equal(table[:slots], torch.zeros(slots, 48))

    images = torch.randn(4, 3, SIZE, SIZE)
    masks = make_masks(model, ratio=0.5)
    got = encoder_output(model, images, masks)
    # timm's own embedding of the full sequence, then the prefix and visible tokens kept: must be the same
    with torch.no_grad():
        full = vit._pos_embed(vit.patch_embed(images))
        expected = []
        for b in range(4):
            keep = list(range(prefix)) + [prefix + i for i in (~masks.stages[0][b].flatten()).nonzero().flatten()]
            expected.append(vit.norm(vit.blocks(vit.norm_pre(full[b : b + 1, keep]))))
    assert got.shape == (4, prefix + 8, 48)
    torch.testing.assert_close(got, torch.cat(expected), atol=1e-5, rtol=1e-5)

    model.train()
    out = model(images, masks)
    out["loss"].backward()
    # parts MAE never runs (the avg-pool ViT's fc_norm) still get a (zero) gradient, for DDP
    for name, param in model.named_parameters():
        assert not param.requires_grad or param.grad is not None, name


def test_bad_masks_are_refused_clearly():
    model = tiny_mae()
    images = torch.randn(2, 3, SIZE, SIZE)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 0, :3] = True
    mask[1, 0, :2] = True  # per_sample mixing of strategies with different counts
    uneven = MaskBatch(torch.zeros(2, dtype=torch.long), torch.zeros(2, SIZE, SIZE, dtype=torch.bool), {0: mask})
    with pytest.raises(ValueError, match=r"same number of patches.*\[2, 3\]"):
        model(images, uneven)
    with pytest.raises(ValueError, match="stage 0"):
        model(images, MaskBatch(uneven.strategy, uneven.pixels, {2: mask}))


@pytest.mark.slow
def test_loss_falls_on_shapesx_and_beats_any_constant_patch():
    data = ShapesX("train", size=SIZE, length=32, transform=eval_transform(SIZE, 1.0))
    images = torch.stack([data[i][0] for i in range(32)])
    held_out = make_masks(tiny_mae(), batch=32, seed=12345)
    mask = held_out.stages[0].flatten(1)
    targets = patchify(images, PATCH)
    best_constant = targets[mask].mean(0)  # the one patch that fits the held-out masked patches best
    constant_loss = ((targets[mask] - best_constant) ** 2).mean().item()
    for seed in range(3):
        model = tiny_mae(seed=seed)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05
        )
        losses = []
        for step in range(40):
            loss = model(images, make_masks(model, batch=32, seed=1000 * seed + step))["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        # measured on seeds 0..2: the last five average 0.31-0.36 of the first loss
        assert sum(losses[-5:]) / 5 < 0.5 * losses[0], (seed, losses)
        # and the reconstructions use the visible patches: measured 0.60 of the best constant patch
        with torch.no_grad():
            held_out_loss = model.eval()(images, held_out)["loss"].item()
        assert held_out_loss < 0.8 * constant_loss, (seed, held_out_loss, constant_loss)


def test_pretrain_cli_run_gives_weights_a_vit_classifier_loads(tmp_path):
    run = tmp_path / "mae"
    overrides = [
        "data.image_size=32",
        "data.shapesx.train=64",
        "data.shapesx.val=8",
        "data.num_workers=0",
        "train.batch_size=32",
        "train.epochs=1",
        "train.log_every_steps=1",
        "model.mae.decoder_dim=32",
        "model.mae.decoder_depth=1",
        "model.mae.decoder_heads=2",
        "masking.strategies=[{patch_size: 8, ratio: 0.75}, {patch_size: 16, ratio: 0.75}]",
    ]
    config = str(ROOT / "configs/pretrain/mae_vit_tiny_shapesx.yaml")
    assert main(["pretrain", config, *overrides, "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "mae" and results["steps"] == 2
    assert [(r["patch_size"], r["stage"]) for r in results["reconstruction"]] == [(8, 0), (16, 0)]
    for r in results["reconstruction"]:
        assert 5 < r["psnr_masked"] < 60
        assert (run / r["figure"]).is_file()

    weights = read_weights(run)
    assert "pos_embed" in weights and not any(k.startswith("decoder") or k == "mask_token" for k in weights)
    classifier = Classifier("vit_tiny_p8", 10, image_size=32)
    assert load_backbone_weights(classifier, run) == {"loaded": len(weights), "head_initialised": 2}
    state = classifier.timm_model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert classifier(torch.randn(2, 3, 32, 32)).shape == (2, 10)

    # the encoder's CKA occlusion invariance with the occluded patches dropped, as the MAE encoder drops them
    assert main(["evaluate", str(run), "eval.cka_drop=tokens", "eval.cka_images=8", "eval.reconstruction=false"]) == 0
    cka = json.loads((run / "evaluation" / "results.json").read_text())["cka"]
    assert (cka["fill"], cka["patch_size"], cka["images"], len(cka["stages"])) == ("tokens dropped", 8, 8, 7)


def test_per_sample_mixing_of_unequal_counts_fails_when_the_config_is_built():
    from mixmask.config import ConfigError
    from mixmask.models.factory import build_pretrain_model

    config = ROOT / "configs/pretrain/mae_vit_tiny_shapesx.yaml"
    per_sample = ["data.image_size=32", "masking.mix=per_sample"]
    unequal = "masking.strategies=[{patch_size: 8, ratio: 0.75}, {patch_size: 8, ratio: 0.5}]"
    with pytest.raises(ConfigError, match=r"masking.mix.*\[8, 12\]"):
        build_pretrain_model(load_config(config, [*per_sample, unequal]))
    equal = "masking.strategies=[{patch_size: 8, ratio: 0.75}, {patch_size: 16, ratio: 0.75}]"
    build_pretrain_model(load_config(config, [*per_sample, equal]))


def test_a_decoder_width_the_sin_cos_embedding_cannot_take_fails_at_load():
    from mixmask.config import ConfigError

    config = ROOT / "configs/pretrain/mae_vit_tiny_shapesx.yaml"
    with pytest.raises(ConfigError, match=r"model\.mae\.decoder_dim.*got 6.*and of 4"):
        load_config(config, ["model.mae.decoder_dim=6", "model.mae.decoder_heads=2"])
    with pytest.raises(ConfigError, match=r"model\.mae\.decoder_dim.*got 36.*decoder_heads=8"):
        load_config(config, ["model.mae.decoder_dim=36", "model.mae.decoder_heads=8"])
