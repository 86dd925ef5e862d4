"""ShapesX: a procedurally rendered, factor-annotated image-classification benchmark that needs no download.

Ten classes are defined by the object's *shape*. Every class also has a canonical colour and fill texture, shown by
about 75 % of training objects, so colour and texture are useful but imperfect shortcuts (where texture bias
appears). The test split annotates every image with the 16 ImageNet-X factors (one ``top`` factor, sometimes a
second one) and really draws them; prototypes carry none. The cue-conflict split draws the shape of one class with
the colour and texture of another, for shape bias.

A sample is a ``Scene`` (drawn parameters in normalised image coordinates, y down, the frame is [0, 1]^2) built
from ``np.random.default_rng([seed, split, i])``, and ``draw(scene, size)`` rasterises it, so sample ``i`` is the
same scene at any resolution from 32 to 224 px, and a test can alter one parameter and re-render.

Modules, in dependency order: ``shapes`` (classes, polygons), ``textures`` (palette, textures, patterns),
``scenes`` (scene parameters, rendering, masks), ``sampling`` (random scenes per split), ``dataset`` (``ShapesX``),
``export`` (PNG export, example grid).
"""

from mixmask.data.shapesx.dataset import DEFAULT_LENGTHS, SPLITS, ShapesX
from mixmask.data.shapesx.export import example_grid, export_shapesx
from mixmask.data.shapesx.sampling import TRAIN_ROTATION, TRAIN_SCALE, TRAIN_SHIFT, TRAIN_STRETCH
from mixmask.data.shapesx.scenes import Background, Occluder, Pattern, Scene, Thing, draw, masks
from mixmask.data.shapesx.shapes import CANONICAL_COLOUR, CANONICAL_TEXTURE, CLASSES, N_VARIANTS
from mixmask.data.shapesx.textures import COLOURS, PATTERNS, TEXTURES

__all__ = [
    "CANONICAL_COLOUR",
    "CANONICAL_TEXTURE",
    "CLASSES",
    "COLOURS",
    "DEFAULT_LENGTHS",
    "N_VARIANTS",
    "PATTERNS",
    "SPLITS",
    "TEXTURES",
    "TRAIN_ROTATION",
    "TRAIN_SCALE",
    "TRAIN_SHIFT",
    "TRAIN_STRETCH",
    "Background",
    "Occluder",
    "Pattern",
    "Scene",
    "ShapesX",
    "Thing",
    "draw",
    "example_grid",
    "export_shapesx",
    "masks",
]
