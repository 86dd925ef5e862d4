"""A joint-embedding method's ShapesX config trained on fixed views: the losses of its first steps."""

from pathlib import Path

import torch

from mixmask.config import load_config
from mixmask.data import collate
from mixmask.data.shapesx import ShapesX
from mixmask.models.factory import build_pretrain_model

ROOT = Path(__file__).resolve().parents[2]


def losses_on_fixed_views(method: str, transform, steps: int = 15, images: int = 32) -> list[float]:
    """``configs/pretrain/<method>_tiny_shapesx.yaml``'s model at 32 px, ``steps`` AdamW steps (lr 1e-2) on the
    same views of ``images`` ShapesX images."""
    torch.manual_seed(0)
    dataset = ShapesX("train", size=32, length=images, transform=transform)
    views = collate([dataset[i] for i in range(images)]).images
    config = load_config(ROOT / f"configs/pretrain/{method}_tiny_shapesx.yaml", ["data.image_size=32"])
    model = build_pretrain_model(config)[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for step in range(steps):
        loss = model(views, progress=step / steps)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
