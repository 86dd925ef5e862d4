"""The one place that imports torchvision and timm, working around a CPU-torch / CUDA-torchvision mismatch.

On machines where pip pairs a CPU-only torch with a CUDA build of torchvision (the pinned torchvision 0.28.0
wheel is CUDA-only), ``import torchvision`` fails with "operator torchvision::nms does not exist": its meta
registrations expect op schemas that only its compiled extension defines. Defining the two schemas first lets
torchvision (models, transforms, datasets) and all of timm import; ``torchvision.ops`` kernels and
``torchvision.io`` decoding stay unavailable, which is why mixmask decodes images with PIL.
On a normal install the first import succeeds and nothing here runs.
"""

from __future__ import annotations

import sys

import torch

_schema_library = None  # kept alive: the op definitions vanish when the Library object is collected


def _import_torchvision():
    global _schema_library
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        _schema_library = torch.library.Library("torchvision", "FRAGMENT")
        _schema_library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _schema_library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision
    return torchvision


torchvision = _import_torchvision()
import timm  # noqa: E402  (must come after the torchvision fix)

__all__ = ["torchvision", "timm"]
