"""A2MIM and SimMIM on a timm ViT: the stage-by-stage adapter, token injection, method recipes, finetuning."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mixmask.cli import main
from mixmask.config import ConfigError, EvalConfig, load_config
from mixmask.data.shapesx import ShapesX
from mixmask.models.backbone import ViTBackbone, build_backbone, create_timm_model
from mixmask.models.classifier import Classifier
from mixmask.models.factory import build_pretrain_model
from mixmask.tasks.evaluate import reconstruction_results

ROOT = Path(__file__).resolve().parents[2]
TINY_VIT = {"patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3}


def tiny_vit(size=32, **kwargs) -> ViTBackbone:
    torch.manual_seed(0)
    return build_backbone("vit_tiny_patch16_224", size, **TINY_VIT, **kwargs)


def test_vit_backbone_matches_timm_forward_features_and_describes_its_stages():
    backbone = tiny_vit().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(images), backbone.model.forward_features(images))
        stages = backbone.forward_stages(images)
    assert backbone.strides == [8, 8, 8] and backbone.channels == [48, 48, 48]
    assert [s.shape for s in stages] == [torch.Size([2, 48, 4, 4])] * 3
    # stage 0 is the patch embedding, before position embeddings
    torch.testing.assert_close(stages[0], backbone.to_map(backbone.model.patch_embed(images)))
    assert backbone.feature_map(backbone(images)).shape == (2, 48, 4, 4)


def test_a_hook_edits_only_patch_tokens_and_the_class_token_is_kept():
    backbone = tiny_vit().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = backbone(images)
        # zero hook after the last block: patch tokens change, the class token does not
        edited = backbone(images, hook=lambda k, z: z * 0 if k == 2 else z)
    torch.testing.assert_close(edited[:, 0], plain[:, 0])
    assert not torch.allclose(edited[:, 1:], plain[:, 1:])


def vit_a2mim(method="a2mim", stage="auto", patch=8, ratio=0.5):
    cfg = load_config(
        None,
        [
            f"model.method={method}",
            "model.backbone=vit_tiny_p8",
            "data.image_size=32",
            f"masking.strategies=[{{patch_size: {patch}, ratio: {ratio}, stage: {stage}}}]",
        ],
    )
    return cfg, *build_pretrain_model(cfg)


def test_vit_recipe_defaults_follow_the_official_vit_configs():
    cfg, model, masker = vit_a2mim()
    assert (cfg.masking.fill, cfg.model.token_mode, cfg.loss.spatial) == ("mean", "add", "l1")
    assert (cfg.loss.freq_weight, cfg.loss.freq_unmasked_weight) == (0.1, 0.0)
    assert masker.stages == [0]  # auto on a ViT: right after the patch embedding
    assert list(model.mask_tokens) == ["0"]
    assert model.decoder.stride == 8 and model.decoder[-1].out_channels == 8 * 8 * 3


def test_cnn_recipe_defaults_and_explicit_values_win():
    cfg = load_config(None, [])
    assert (cfg.masking.fill, cfg.model.token_mode, cfg.loss.spatial) == ("mean", "add", "focal_l1")
    assert (cfg.loss.freq_weight, cfg.loss.freq_unmasked_weight) == (0.5, 1e-3)
    simmim = load_config(None, ["model.method=simmim"])
    assert (simmim.masking.fill, simmim.model.token_mode, simmim.loss.spatial) == ("zero", "replace", "l1")
    assert simmim.loss.freq_weight == 0.0
    ablated = load_config(None, ["model.method=simmim", "masking.fill=mean", "loss.freq_weight=0.5"])
    assert (ablated.masking.fill, ablated.loss.freq_weight) == ("mean", 0.5)


@pytest.mark.parametrize("token_mode", ["add", "replace"])
def test_vit_token_injection_changes_only_masked_tokens(token_mode):
    cfg, model, masker = vit_a2mim(stage=1)
    model.token_mode = token_mode
    masks = masker(0, 3, 32, generator=torch.Generator().manual_seed(0))
    seen = {}

    def spy(stage, features):
        seen[stage] = (features, model.insert_tokens(stage, features, masks))
        return seen[stage][1]

    model.backbone(torch.randn(3, 3, 32, 32), hook=spy)
    before, after = seen[1]
    changed = (after != before).any(dim=1)
    assert torch.equal(changed, masks.stages[1])
    assert masks.stages[1].sum() == 3 * 8  # ratio 0.5 of 16 tokens, per image
    assert torch.equal(seen[0][0], seen[0][1])  # no token at the other stages


def test_mask_patch_must_be_a_multiple_of_the_vit_patch():
    with pytest.raises(ConfigError, match=r"patch 4 px cannot be masked exactly at stage 0 \(stride 8"):
        vit_a2mim(patch=4)


def test_simmim_loss_equals_a_direct_computation():
    """SimMIM on a ResNet: zero fill, the token replaces stage-0 features, linear decoder, L1 on masked pixels."""
    cfg = load_config(None, ["model.method=simmim", "data.image_size=32", "masking.strategies=[{patch_size: 8}]"])
    torch.manual_seed(0)
    model, masker = build_pretrain_model(cfg)
    assert masker.stages == [0] and list(model.mask_tokens) == ["0"]
    images = torch.randn(4, 3, 32, 32)
    masks = masker(0, 4, 32, generator=torch.Generator().manual_seed(1))
    out = model(images, masks)

    m_pixels = masks.pixels[:, None].float()
    x = images * (1 - m_pixels)
    token = model.mask_tokens["0"]
    m0 = masks.stages[0][:, None].float()
    resnet = model.backbone.model
    x = resnet.maxpool(resnet.act1(resnet.bn1(resnet.conv1(x))))
    x = x * (1 - m0) + token * m0
    x = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(x))))
    prediction = model.decoder(x)
    expected = (F.l1_loss(prediction, images, reduction="none") * m_pixels).sum() / (m_pixels.sum() * 3)
    torch.testing.assert_close(out["prediction"], prediction)
    torch.testing.assert_close(out["loss"], expected)
    assert set(out) == {"loss", "loss_spatial", "prediction"}


def test_vit_classifier_layer_decay_and_weights_from_pretraining():
    cfg, model, _ = vit_a2mim()
    classifier = Classifier("vit_tiny_p8", 5, image_size=32)
    missing, unexpected = classifier.timm_model.load_state_dict(model.backbone.model.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == ["head.bias", "head.weight"]
    assert classifier(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    depth = len(classifier.backbone.stage_modules)  # patch embedding + 6 blocks
    assert depth == 7
    assert classifier.layer_of("backbone.model.cls_token") == 0
    assert classifier.layer_of("backbone.model.pos_embed") == 0
    assert classifier.layer_of("backbone.model.blocks.0.attn.qkv.weight") == 1
    assert classifier.layer_of("backbone.model.blocks.5.mlp.fc2.bias") == 6
    assert classifier.layer_of("backbone.model.head.weight") == depth
    assert classifier.layer_of("backbone.model.norm.weight") == depth
    # exported weights load with timm alone
    timm_vit = create_timm_model("vit_tiny_p8", num_classes=5, img_size=32)
    timm_vit.load_state_dict(classifier.timm_model.state_dict())


@pytest.mark.slow
def test_vit_a2mim_loss_falls_on_shapesx():
    torch.manual_seed(0)
    cfg, model, masker = vit_a2mim(ratio=0.6)
    data = ShapesX("train", size=32, length=32, seed=0)
    mean = torch.tensor(cfg.data.mean).view(3, 1, 1)
    std = torch.tensor(cfg.data.std).view(3, 1, 1)
    images = torch.stack([(torch.from_numpy(data.render(i)).permute(2, 0, 1) / 255 - mean) / std for i in range(32)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for step in range(30):
        masks = masker(step, 32, 32, generator=torch.Generator().manual_seed(step))
        loss = model(images, masks)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # measured over seeds 0-2: the last five steps average 0.59-0.65 of the first five
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5


def test_vit_pretrain_cli_run_and_its_reconstructions_are_saved(tmp_path):
    run = tmp_path / "a2mim_vit"
    config = str(ROOT / "configs/pretrain/a2mim_vit_tiny_shapesx.yaml")
    overrides = ["data.image_size=32", "data.shapesx.train=64", "data.shapesx.val=8", "data.num_workers=0"]
    overrides += ["train.batch_size=32", "train.epochs=1", "masking.strategies=[{patch_size: 16, ratio: 0.5}]"]
    assert main(["pretrain", config, *overrides, "--out", str(run)]) == 0
    [result], per_image = reconstruction_results(run, tmp_path / "eval", torch.device("cpu"), EvalConfig())
    assert (result.patch_size, result.stage) == (16, 0) and 5 < result.psnr_masked < 60
    assert result.scored == 8 and per_image == "reconstruction.csv"  # the 8 validation images, one row each
    assert len((tmp_path / "eval" / per_image).read_text().splitlines()) == 1 + 8
    rows = load_file(tmp_path / "eval" / result.images)
    assert set(rows) == {"masked", "prediction", "pasted", "original"}
    assert all(row.dtype == torch.uint8 and row.shape[1:] == (3, 32, 32) for row in rows.values())
