import pytest
import torch

from mixmask.config import ConfigError, LossConfig, load_config
from mixmask.masking import MaskBatch, MixedMasker
from mixmask.models.a2mim import A2MIM, PixelShuffleDecoder, fill_masked
from mixmask.models.backbone import Backbone, build_backbone
from mixmask.models.factory import build_pretrain_model
from mixmask.targets import hog_histograms


def masks_for(masker, batch=4, size=64, step=0):
    return masker(step, batch, size, generator=torch.Generator().manual_seed(step))


def tiny_model(strategies="[{patch_size: 16, ratio: 0.6}]", **kwargs):
    cfg = load_config(None, [f"masking.strategies={strategies}"])
    backbone = Backbone("resnet_tiny")
    masker = MixedMasker.from_config(cfg.masking, backbone.strides)
    return A2MIM(backbone, masker.stages, cfg.loss, **kwargs), masker


def test_mean_fill_uses_the_whole_image_mean():
    images = torch.randn(2, 3, 8, 8)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    filled = fill_masked(images, mask, "mean")
    mean = images.mean(dim=(2, 3))
    torch.testing.assert_close(filled[:, :, :4], mean[:, :, None, None].expand(2, 3, 4, 8))
    torch.testing.assert_close(filled[:, :, 4:], images[:, :, 4:])
    assert torch.equal(fill_masked(images, mask, "zero")[:, :, :4], torch.zeros(2, 3, 4, 8))
    assert torch.equal(fill_masked(images, mask, "none"), images)


@pytest.mark.parametrize("token_mode", ["add", "replace"])
def test_token_changes_the_stage_features_only_where_masked(token_mode):
    model, masker = tiny_model(token_mode=token_mode)
    stage = masker.stages[0]
    assert stage == 3  # patch 16 on resnet_tiny: deepest stage (<= 3) whose stride divides 16
    masks = masks_for(masker)
    features = torch.randn(4, model.backbone.channels[stage], 4, 4)
    out = model.insert_tokens(stage, features, masks)
    changed = (out != features).any(dim=1)
    assert torch.equal(changed, masks.stages[stage])
    if token_mode == "add":
        token = model.mask_tokens[str(stage)][0, :, 0, 0]
        m = masks.stages[stage][0]
        torch.testing.assert_close(out[0][:, m] - features[0][:, m], token[:, None].expand(-1, int(m.sum())))
    assert torch.equal(model.insert_tokens(stage - 1, features, masks), features)


@pytest.mark.parametrize("hidden, out_channels", [(0, 3), (16, 3), (0, 27)])
def test_decoder_is_the_official_conv_and_pixel_shuffle(hidden, out_channels):
    """The decoder's matrix product + reshape is Conv2d(1x1) + PixelShuffle (float64), with the same parameters."""
    decoder = PixelShuffleDecoder(32, 4, hidden, out_channels).double()
    features = torch.randn(2, 32, 3, 5, dtype=torch.float64)
    *front, project = decoder
    expected = torch.nn.functional.pixel_shuffle(project(torch.nn.Sequential(*front)(features)), 4)
    assert expected.shape == (2, out_channels, 12, 20)
    torch.testing.assert_close(decoder(features), expected, rtol=1e-12, atol=1e-12)
    assert [name for name, _ in decoder.named_parameters()][-2:] == [f"{len(front)}.weight", f"{len(front)}.bias"]


def test_forward_gives_loss_terms_and_full_size_prediction():
    model, masker = tiny_model()
    images = torch.randn(4, 3, 64, 64)
    out = model(images, masks_for(masker))
    assert out["prediction"].shape == images.shape
    assert set(out) == {"loss", "loss_spatial", "loss_freq", "prediction"}
    expected = out["loss_spatial"] + 0.5 * out["loss_freq"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    assert model.mask_tokens["3"].grad is not None and model.mask_tokens["3"].grad.abs().sum() > 0


def test_tokens_of_unused_stages_still_get_gradients():
    model, masker = tiny_model("[{patch_size: 4, ratio: 0.6}, {patch_size: 32, ratio: 0.6}]")
    assert sorted(model.mask_tokens) == ["1", "3"]
    masks = masks_for(masker, step=0)
    used = set(masks.stages)
    assert len(used) == 1  # per_batch: one strategy this step
    model(torch.randn(4, 3, 64, 64), masks)["loss"].backward()
    for key, token in model.mask_tokens.items():
        assert token.grad is not None
        assert (token.grad.abs().sum() > 0) == (int(key) in used)


def test_gamma_variant_and_no_frequency_loss():
    loss = LossConfig(freq_weight=0.0, spatial="l1", freq_unmasked_weight=0.0)
    cfg = load_config(None, ["masking.strategies=[{patch_size: 16}]"])
    backbone = Backbone("resnet_tiny")
    masker = MixedMasker.from_config(cfg.masking, backbone.strides)
    model = A2MIM(backbone, masker.stages, loss, gamma_init=1e-6)
    assert list(model.mask_gammas) == ["3"]
    out = model(torch.randn(2, 3, 64, 64), masks_for(masker, batch=2))
    assert "loss_freq" not in out and out["loss"].item() == pytest.approx(out["loss_spatial"].item())
    empty = MaskBatch(torch.zeros(2, dtype=torch.long), torch.zeros(2, 64, 64, dtype=torch.bool), {})
    features = torch.randn(2, 128, 4, 4)
    assert torch.equal(model.insert_tokens(3, features, empty), features)


@pytest.mark.parametrize("vit", [False, True])
def test_hog_targets_predict_every_cell_and_score_only_the_masked_ones(vit):
    """loss.target=hog: the decoder gives a 27-channel map on the 8 px cell grid (on a ViT with 16 px patches, 108
    numbers per token: MaskFeat's head), the loss is the MSE against the clean image's HOG over masked cells only."""
    torch.manual_seed(0)
    cfg = load_config(None, ["masking.strategies=[{patch_size: 16, ratio: 0.5}]"])
    if vit:
        backbone = build_backbone("vit_tiny_patch16_224", 64, depth=1, embed_dim=48, num_heads=3)
    else:
        backbone = Backbone("resnet_tiny")
    masker = MixedMasker.from_config(cfg.masking, backbone.strides, auto_stage=0 if vit else None)
    loss = LossConfig(target="hog", hog_cell=8, spatial="l2", freq_weight=0.0)
    model = A2MIM(backbone, masker.stages, loss, token_mode="replace" if vit else "add")
    assert model.decoder[0].out_channels == (108 if vit else 16 * 27)  # (stride / cell)^2 cells x 27
    images = torch.randn(4, 3, 64, 64)
    masks = masks_for(masker)
    out = model(images, masks)
    prediction = out["prediction"]
    assert set(out) == {"loss", "loss_spatial", "prediction"} and prediction.shape == (4, 27, 8, 8)
    prediction.retain_grad()
    out["loss"].backward()

    cells = masks.pixels[:, ::8, ::8]  # (4, 8, 8): a 16 px mask patch is 2x2 cells
    assert 0 < cells.sum() < cells.numel()
    errors = (prediction - hog_histograms(images, 8)).permute(0, 2, 3, 1)  # (B, h, w, 27)
    assert out["loss"].item() == pytest.approx(errors[cells].pow(2).mean().item(), rel=1e-5)
    grad = prediction.grad.permute(0, 2, 3, 1)
    assert torch.equal(grad[~cells], torch.zeros_like(grad[~cells])) and grad[cells].abs().sum() > 0


def test_hog_cells_must_tile_the_decoders_map():
    """The decoder predicts the cells from the last map: the cell must divide its stride (32 on resnet_tiny)."""
    cfg = load_config(
        None, ["data.image_size=96", "loss.target=hog", "loss.hog_cell=3", "masking.strategies=[{patch_size: 48}]"]
    )
    with pytest.raises(ConfigError, match=r"`loss.hog_cell`: got 3; expected a divisor of 32"):
        build_pretrain_model(cfg)
