"""The 16 ImageNet-X factors (Idrissi et al., 2022), in the order of the ``imagenet-x`` package.

A leaf module (no mixmask imports), so data sets that annotate factors (ShapesX) and the evaluation that scores
them (``mixmask.evaluation.imagenet_x``) share one list without depending on each other.
"""

FACTORS: tuple[str, ...] = (
    "pose",
    "background",
    "pattern",
    "color",
    "smaller",
    "shape",
    "partial_view",
    "subcategory",
    "texture",
    "larger",
    "darker",
    "object_blocking",
    "person_blocking",
    "style",
    "brighter",
    "multiple_objects",
)
