"""Low-label training sets: class-balanced, determined by the seed alone, keeping the data set's labels and names."""

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
