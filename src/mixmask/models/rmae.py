"""R-MAE, the relaxed MAE of "Understanding Masked Image Modeling via Learning Occlusion Invariant Feature" (Kong &
Zhang, CVPR 2023, Eq. 8), read top to bottom.

MAE's loss pulls the prediction of the masked region towards the pixels. The paper reads MAE as learning occlusion
invariance between the masked image and its complement, and relaxes the pixel target into a second branch: with M the
patches branch 1 sees and one decoder d shared by both branches,

    L = || (d(f(x * M)) - d(f(x * (1 - M)))) * (1 - M) ||^2  +  lambda * || (d(f(x * (1 - M))) - x) * (1 - M) ||^2

branch 1 predicts what it does not see and is pulled towards branch 2's output there; branch 2 sees exactly that
region and reconstructs it. Both terms cover only the region branch 1 does not see, and the gradients flow through both
branches. Reported (ViT-B, 100 epochs, ImageNet-1k): MAE 83.1 top-1 / 22.2 dB PSNR, R-MAE 82.7 / 23.7 dB.

On a ViT each branch is MAE (``RelaxedMAE``: its encoder sees only its visible tokens, its decoder fills the rest with
the mask token); on a CNN each branch is A2MIM (``RelaxedA2MIM``: what a branch does not see is filled with the mean
and gets the mask token). The network and its weights are the base method's, so finetuning reads them as it reads
MAE's or A2MIM's. ``model(images, masks)["prediction"]`` is branch 1's, so reconstruction PSNR is MAE's measure.

The paper released no code; where it is silent (``model.rmae``):
- ``weight`` (lambda) 1.
- ``branch2``: ``complement`` (Eq. 8), or the Table 1 variants ``independent`` (branch 2 draws its own mask at
  ``branch2_ratio`` 0.25, with the same strategy as branch 1; the loss covers the intersection: what branch 1 does not
  see and branch 2 sees) and ``full`` (branch 2 sees the whole image).
- ``stop_gradient``: ``branch1`` or ``branch2`` makes that branch's prediction a fixed target in the first term; the
  second term always trains branch 2.
- The squares are means over the covered pixels and channels (MAE's per-patch mean over masked patches, in pixels);
  targets are the normalised pixels, not MAE's per-patch ``norm_pix`` targets (refused with this method). The CNN
  branches drop A2MIM's frequency loss: Eq. 8 is the whole loss.
- Branch 2's independent mask is drawn from torch's global generator on the images' device (MAE draws its masks so);
  the trainer's checkpoints keep that generator's state, so a resumed run draws the same masks.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from mixmask.config import RMAEConfig
from mixmask.masking import MaskBatch, MixedMasker, complement, unmasked
from mixmask.models.a2mim import A2MIM
from mixmask.models.mae import MAE


class _Relaxed:
    """R-MAE's step on a base method that can ``predict(images, masks)`` an image and names its ``untouched``
    parameters. Set up by ``_relax``."""

    rmae: RMAEConfig
    second: MixedMasker | None

    def _relax(self, cfg: RMAEConfig, masker: MixedMasker) -> None:
        self.rmae = cfg
        # branch 2's own masks: branch 1's strategies at branch2_ratio (the same patch sizes and stages)
        specs = [replace(spec, ratio=cfg.branch2_ratio) for spec in masker.specs]
        self.second = (
            MixedMasker(specs, masker.stages, masker.strides, masker.mix) if cfg.branch2 == "independent" else None
        )

    def branch_two(self, masks: MaskBatch, image_size: int) -> MaskBatch:
        """What branch 2 does not see, for branch 1's ``masks``."""
        if self.rmae.branch2 == "complement":
            return complement(masks)
        if self.rmae.branch2 == "full":
            return unmasked(masks)
        return self.second.masks_for(masks.strategy.cpu(), image_size, device=masks.pixels.device)

    def forward(
        self, images: torch.Tensor, masks: MaskBatch, inputs: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Eq. 8's two terms and branch 1's prediction, for normalised ``images`` and branch 1's ``masks``; both
        branches see ``inputs`` (the images with ``data.input_augment``) when given, ``x`` stays ``images``."""
        seen = images if inputs is None else inputs
        second = self.branch_two(masks, images.shape[-1])
        first_prediction = self.predict(seen, masks).float()
        second_prediction = self.predict(seen, second).float()
        region = (masks.pixels & ~second.pixels)[:, None].float()  # branch 1 does not see it, branch 2 does
        covered = (region.sum() * images.shape[1]).clamp(min=1)

        stop = self.rmae.stop_gradient
        one = first_prediction.detach() if stop == "branch1" else first_prediction
        two = second_prediction.detach() if stop == "branch2" else second_prediction
        consistency = ((one - two) ** 2 * region).sum() / covered
        reconstruction = ((second_prediction - images.float()) ** 2 * region).sum() / covered
        loss = consistency + self.rmae.weight * reconstruction
        untouched = self.untouched(masks)
        if untouched:
            loss = loss + sum(p.sum() for p in untouched) * 0.0
        return {
            "loss": loss,
            "loss_spatial": consistency.detach(),
            "loss_reconstruction": reconstruction.detach(),
            "prediction": first_prediction,
        }


class RelaxedMAE(_Relaxed, MAE):
    """R-MAE on a ViT: both branches are MAE's encoder (visible tokens only) and decoder."""

    def __init__(self, backbone, mae_cfg, rmae_cfg: RMAEConfig, masker: MixedMasker):
        super().__init__(backbone, mae_cfg)
        self._relax(rmae_cfg, masker)


class RelaxedA2MIM(_Relaxed, A2MIM):
    """R-MAE on a CNN: both branches are A2MIM's (what a branch does not see: mean fill and the mask token)."""

    def __init__(self, backbone, masker: MixedMasker, loss, rmae_cfg: RMAEConfig, **a2mim_options):
        super().__init__(backbone, masker.stages, loss, **a2mim_options)
        self._relax(rmae_cfg, masker)
