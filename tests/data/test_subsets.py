"""Subsets: low-label training sets (class-balanced, chosen by the seed alone) and capped evaluations (every class)."""

from collections import Counter

import pytest

from mixmask.config import DataConfig
from mixmask.data import DataError, Repeated, few_images, label_fraction, pretraining_subset, resolve_num_workers
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


class Labelled:
    """A data set of ``labels`` (class folders are sorted by class, so each class is one run of indices)."""

    def __init__(self, labels):
        self.labels, self.classes = list(labels), sorted(set(labels))

    def __len__(self):
        return len(self.labels)

    def label(self, i):
        return self.labels[i]

    def file_name(self, i):
        return f"{i}.png"

    def __getitem__(self, i):
        return f"image {i}", self.labels[i], i


def test_few_images_take_the_classes_in_turn():
    train = ShapesX("train", size=32, length=1000)
    assert [few_images(train, 25, seed=0, in_order=True).indices] == [list(range(25))]  # ShapesX: its first ones
    folders = Labelled([0] * 5 + [1] * 3 + [2] * 8)  # sorted class folders of unequal size
    picked = few_images(folders, 10, seed=1)
    counts = Counter(picked.label(i) for i in range(10))
    assert counts == {0: 4, 1: 3, 2: 3} or counts == {0: 3, 1: 3, 2: 4}  # the small class runs out after 3
    assert [picked.label(i) for i in range(3)] == [0, 1, 2]  # one of each class first
    assert picked.indices == few_images(folders, 10, seed=1).indices  # the seed decides
    assert few_images(folders, 10, seed=2).indices != picked.indices
    assert len(few_images(folders, 1, seed=0)) == 1
    with pytest.raises(DataError, match="data.subset=17, but the training split has only 16 images"):
        few_images(folders, 17, seed=0)


def test_a_pretraining_subset_keeps_the_epoch_at_the_full_size():
    train = ShapesX("train", size=32, length=1000)
    assert pretraining_subset(train, DataConfig(), seed=0) is train
    one = pretraining_subset(train, DataConfig(subset=1), seed=0)
    assert isinstance(one, Repeated) and len(one) == 1000 and {one[i][2] for i in (0, 1, 999)} == {0}
    three = pretraining_subset(train, DataConfig(subset=3, repeat=5), seed=0)
    assert len(three) == 15 and [three[i][1] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    assert len(pretraining_subset(train, DataConfig(subset=300), seed=0)) == 1200  # ceil(1000 / 300) = 4 times


@pytest.mark.parametrize(
    ("cores", "local_processes", "expected"),
    [(2, None, 0), (16, None, 15), (16, "4", 3), (64, "8", 7), (8, "4", 0)],
)
def test_auto_workers_share_the_cores_among_the_local_processes(cores, local_processes, expected, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    if local_processes is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_processes)
    assert resolve_num_workers("auto") == expected
    assert resolve_num_workers(3) == 3
