import pytest
import torch

from mixmask.config import ConfigError
from mixmask.models.backbone import Backbone


@pytest.mark.parametrize(
    "name, channels",
    [
        ("resnet_tiny", [64, 32, 64, 128, 256]),
        ("resnet18", [64, 64, 128, 256, 512]),
        ("resnet10t", [64, 64, 128, 256, 512]),
        ("resnet50", [64, 256, 512, 1024, 2048]),
    ],
)
def test_resnet_stages_follow_the_official_numbering(name, channels):
    backbone = Backbone(name)
    assert backbone.strides == [4, 4, 8, 16, 32]
    assert backbone.channels == channels
    assert backbone.stage_modules[0][-1] == "maxpool"  # stage 0 = stem output after max-pool


def test_resnet50_stage_shapes_at_224():
    backbone = Backbone("resnet50").eval()
    with torch.no_grad():
        shapes = [tuple(o.shape[1:]) for o in backbone.forward_stages(torch.zeros(1, 3, 224, 224))]
    assert shapes == [(64, 56, 56), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]


def test_stagewise_forward_equals_timm_forward_features():
    backbone = Backbone("resnet_tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), backbone.model.forward_features(x))


def test_hook_changes_the_next_stage_input():
    backbone = Backbone("resnet_tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    seen = []

    def hook(k, features):
        seen.append((k, features.shape[-1]))
        return features + 1.0 if k == 2 else features

    with torch.no_grad():
        out = backbone(x, hook)
        assert not torch.allclose(out, backbone(x))
    assert seen == [(0, 16), (1, 16), (2, 8), (3, 4), (4, 2)]


def test_state_dict_keeps_timm_names():
    keys = Backbone("resnet18").model.state_dict().keys()
    assert "conv1.weight" in keys and "layer4.1.bn2.running_var" in keys


def test_other_timm_cnn_and_clear_errors():
    convnext = Backbone("convnext_atto")
    assert convnext.strides == [4, 4, 8, 16, 32]
    with pytest.raises(ConfigError, match="model.backbone.*resnet51"):
        Backbone("resnet51")
    with pytest.raises(ConfigError, match="model.backbone.*vit_tiny_patch16_224"):
        Backbone("vit_tiny_patch16_224")
