"""Subsets: low-label training sets (class-balanced, chosen by the seed alone) and capped evaluations (every class)."""

from collections import Counter

from mixmask.data import label_fraction
from mixmask.data.shapesx import ShapesX


def test_a_label_fraction_is_balanced_and_chosen_by_the_seed():
    train = ShapesX("train", size=32, length=1000)  # 100 images per class
    subset = label_fraction(train, 0.1, seed=3)
    assert len(subset) == 100 and subset.classes == train.classes
    assert Counter(subset.label(i) for i in range(len(subset))) == {c: 10 for c in range(10)}
    names = [subset.file_name(i) for i in range(len(subset))]
    assert names == [label_fraction(train, 0.1, seed=3).file_name(i) for i in range(100)]  # the seed decides
    other = {label_fraction(train, 0.1, seed=4).file_name(i) for i in range(100)}
    assert other != set(names) and len(other & set(names)) < 50
    image, label, index = subset[5]  # items keep their own index and label
    assert train.file_name(index) == names[5] and label == train.label(index)
    assert label_fraction(train, 1.0, seed=3) is train
    assert len(label_fraction(train, 0.001, seed=0)) == 10  # at least one image of each class


def test_a_capped_evaluation_covers_every_class():
    """ShapesX labels cycle through the classes: every k-th image would hold only some of them."""
    from mixmask.config import DataConfig
    from mixmask.data import eval_loader
    from mixmask.data.transforms import eval_transform_for

    val = ShapesX("val", size=32, length=1500, transform=eval_transform_for(DataConfig(image_size=32)))
    loader = eval_loader(val, DataConfig(num_workers=0), batch_size=600, max_images=600)
    labels = [label for batch in loader for label in batch.labels.tolist()]
    counts = Counter(labels)
    assert len(labels) == 600 and set(counts) == set(range(10)) and min(counts.values()) > 35
    again = [i for batch in eval_loader(val, DataConfig(num_workers=0), 600, 600) for i in batch.indices.tolist()]
    assert again == [i for batch in loader for i in batch.indices.tolist()]  # the same images for every model
