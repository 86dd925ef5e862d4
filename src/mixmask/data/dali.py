"""Training batches decoded by NVIDIA DALI (``data.decoder: dali``, the optional extra ``mixmask[dali]``): JPEGs
decoded on the GPU (nvJPEG; on a machine without one, DALI's CPU decoder), cropped, resized and flipped there.

Every random draw still comes from mixmask: for each (epoch, image) the crop window and the flip are drawn exactly
as the PIL path draws them (the same ``RandomResizedCrop.get_params`` and flip draw from a generator seeded by
(seed, epoch, index), ``trainer.SeededAugmentation``), from the image's size read from its header, and handed to
DALI. So the same images land in the same batches with the same crops, a resumed run replays its batches, and the
PIL path (which stays the reference and the CPU path) differs only by decoder and resize rounding.

Only the plain training crop goes through DALI: ``RandomResizedCrop`` and a horizontal flip (masked-image
pretraining, finetuning); a transform with anything else (colour, views, multi-crop) is refused in one line.
A batch that DALI cannot decode is decoded again by the PIL path, which skips and counts the unreadable images.
"""

from __future__ import annotations

import sys

import torch
from torch.utils.data import Dataset, Subset

from mixmask._compat import torchvision
from mixmask.config import Config, ConfigError
from mixmask.data.common import Batch, collate

T = torchvision.transforms


def crop_steps(transform) -> tuple[T.RandomResizedCrop, bool]:
    """The RandomResizedCrop of a plain training transform and whether it flips; ConfigError for anything else."""
    steps = list(getattr(transform, "transforms", []))
    kinds = [type(step).__name__ for step in steps]
    plain = kinds in (
        ["RandomResizedCrop", "PILToTensor"],
        ["RandomResizedCrop", "RandomHorizontalFlip", "PILToTensor"],
    )
    if not plain:
        raise ConfigError(
            "config field `data.decoder`: dali decodes the plain training crop (RandomResizedCrop and a flip: "
            f"masked-image pretraining, finetuning); this run's augmentation is {' -> '.join(kinds) or transform!r}: "
            "use data.decoder=pil"
        )
    crop = steps[0]
    if crop.interpolation != T.InterpolationMode.BILINEAR:
        raise ConfigError("config field `data.decoder`: dali resizes bilinearly; this crop is not bilinear")
    return crop, kinds[1] == "RandomHorizontalFlip"


def files(dataset: Dataset) -> tuple[Dataset, list[tuple[str, int, int]]]:
    """The class-folder data set under ``dataset``'s subsets and repeats, and each item's (path, label, index in
    that data set: the index its PIL items carry)."""
    from mixmask.data import Repeated
    from mixmask.data.folders import ClassFolderDataset

    chain, index_maps = dataset, []
    while not isinstance(chain, ClassFolderDataset):
        if isinstance(chain, Subset):
            index_maps.append(list(chain.indices))
        elif isinstance(chain, Repeated):
            index_maps.append([i % len(chain.dataset) for i in range(len(chain))])
        else:
            raise ConfigError(
                f"config field `data.decoder`: dali reads class folders (data.dataset=folder), not {type(chain).__name__}"
            )
        chain = chain.dataset
    positions = list(range(len(dataset)))
    for mapping in index_maps:
        positions = [mapping[p] for p in positions]
    return chain, [(*chain.samples[p], p) for p in positions]


class DaliBatches:
    """Batches of (epoch, index) keys from ``sampler`` as ``Batch`` records with uint8 (B, 3, H, W) images on the
    pipeline's device, the same items as the PIL loader yields (``DeviceBatches`` normalises both alike).
    ``fallback`` is the PIL loader's data set (``SeededAugmentation``): it decodes a batch DALI cannot."""

    def __init__(self, dataset: Dataset, fallback: Dataset, sampler, cfg: Config, device: torch.device):
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise ConfigError(
                "config field `data.decoder`: dali needs NVIDIA DALI: pip install 'mixmask[dali]' (or data.decoder=pil)"
            ) from None
        folder, self.items = files(dataset)
        self.crop, self.flips = crop_steps(folder.transform)
        self.sampler, self.fallback, self.device = sampler, fallback, device
        self.batch_size, self.seed = cfg.train.batch_size, cfg.train.seed
        self.pipe = self._build()
        self.fallbacks, self.warned = 0, False  # batches decoded by PIL instead

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        height, width = self.crop.size
        gpu = self.device.type == "cuda"

        @pipeline_def(
            batch_size=self.batch_size,
            num_threads=4,
            device_id=(self.device.index or 0) if gpu else None,
            prefetch_queue_depth=1,  # each batch is fed just before it runs (feed_input)
            exec_async=False,
            exec_pipelined=False,
        )
        def pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8)
            anchor = fn.external_source(name="anchor", dtype=types.FLOAT)
            shape = fn.external_source(name="shape", dtype=types.FLOAT)
            flip = fn.external_source(name="flip", dtype=types.INT32)
            images = fn.decoders.image_slice(
                encoded,
                anchor,
                shape,
                device="mixed" if gpu else "cpu",
                output_type=types.RGB,
                axis_names="WH",
                normalized_anchor=False,  # pixels, as drawn
                normalized_shape=False,
            )
            images = fn.resize(images, resize_x=width, resize_y=height, interp_type=types.INTERP_LINEAR)
            images = fn.flip(images, horizontal=flip)
            return fn.transpose(images, perm=[2, 0, 1])  # HWC -> CHW, still uint8

        pipe = pipeline()
        pipe.build()
        return pipe

    def draws(self, epoch: int, index: int, path: str) -> tuple[tuple[int, int, int, int], bool]:
        """The crop (top, left, height, width) and the flip that the PIL path draws for this key."""
        from PIL import Image

        with Image.open(path) as image:  # reads the header only
            width, height = image.size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)  # as SeededAugmentation
            box = T.RandomResizedCrop.get_params(
                torch.empty(1, 1, 1).expand(3, height, width), list(self.crop.scale), list(self.crop.ratio)
            )
            flipped = self.flips and bool(torch.rand(1) < 0.5)
        return box, flipped

    def decode(self, keys: list[tuple[int, int]]) -> Batch:
        import numpy as np
        from nvidia.dali.plugin.pytorch import feed_ndarray

        inputs: dict[str, list] = {"encoded": [], "anchor": [], "shape": [], "flip": []}
        for epoch, index in keys:
            path = self.items[index][0]
            (top, left, height, width), flipped = self.draws(epoch, index, path)
            inputs["encoded"].append(np.fromfile(path, dtype=np.uint8))
            inputs["anchor"].append(np.array([left, top], dtype=np.float32))
            inputs["shape"].append(np.array([width, height], dtype=np.float32))
            inputs["flip"].append(np.array(int(flipped), dtype=np.int32))
        for name, data in inputs.items():
            self.pipe.feed_input(name, data)
        (decoded,) = self.pipe.run()
        dense = decoded.as_tensor()  # every crop has the same size
        images = torch.empty(dense.shape(), dtype=torch.uint8, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(dense, images, cuda_stream=stream)
        labels = torch.tensor([self.items[index][1] for _, index in keys], dtype=torch.long)
        return Batch(images, labels, torch.tensor([self.items[index][2] for _, index in keys], dtype=torch.long))

    def __iter__(self):
        keys = list(self.sampler)
        for start in range(0, len(keys) - self.batch_size + 1, self.batch_size):
            chunk = keys[start : start + self.batch_size]
            try:
                batch = self.decode(chunk)
            except Exception as error:  # a file that cannot be read (header, DALI): this batch through PIL, which
                # skips and counts the unreadable images (or stops on one with data.strict)
                self.pipe = self._build()  # a pipeline that raised is not used again
                batch = collate([self.fallback[key] for key in chunk])
                self.fallbacks += 1
                if not batch.skipped and not self.warned:  # PIL reads them all: DALI's own limit, said once
                    print(
                        f"mixmask: warning: DALI failed on a batch PIL reads; decoded by PIL: {error}", file=sys.stderr
                    )
                    self.warned = True
            yield batch
