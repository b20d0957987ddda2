"""Data loaders: real Fashion-MNIST and digits offline; tiny fake copies in the real formats."""

import pickle
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import pbridge.data as data
from pbridge.cli import main
from pbridge.config import ImageConfig, image_preset
from pbridge.data import load_images

needs_fashion = pytest.mark.skipif(
    not (data.DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)


@needs_fashion
def test_fashion_mnist_from_the_debian_package(tmp_path):
    test = load_images("fashion-mnist", "test", root=tmp_path)
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    assert (tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    assert load_images("fashion-mnist", "train", root=tmp_path).images.shape[0] == 60000
    assert 60 < float(test.images.float().mean()) < 80  # mean intensity of Fashion-MNIST ~ 73


def test_missing_fashion_mnist_names_the_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_images("fashion-mnist", "train", root=tmp_path)


def _write_fake_cifar(base, rng):
    folder = base / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, 4).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": images.reshape(4, -1), "labels": labels}, handle)
        batches[name] = (images, labels)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)
    return batches


def test_cifar10_reads_the_pickled_batches(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    batches = _write_fake_cifar(tmp_path, np.random.default_rng(0))
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)  # fake md5s
    test = load_images("cifar10", "test", root=tmp_path)
    images, labels = batches["test_batch"]
    assert torch.equal(test.images, torch.from_numpy(images))
    assert test.labels.tolist() == labels
    assert load_images("cifar10", "train", root=tmp_path).images.shape == (20, 3, 32, 32)


def test_missing_cifar10_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_images("cifar10", "train", root=tmp_path)


def test_miniimagenet_pickle_cache(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 84, 84, 3), dtype=np.uint8)
    (tmp_path / "miniimagenet").mkdir()
    content = {"image_data": images, "class_dict": {"n02": [3, 4, 5], "n01": [0, 1, 2]}}
    with open(tmp_path / "miniimagenet" / "mini-imagenet-cache-test.pkl", "wb") as handle:
        pickle.dump(content, handle)
    loaded = load_images("miniimagenet", "test", root=tmp_path)
    assert torch.equal(loaded.images, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert loaded.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_miniimagenet_image_folder_is_resized_and_cropped(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for cls in ("a", "b"):
        folder = tmp_path / "miniimagenet" / "train" / cls
        folder.mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    loaded = load_images("miniimagenet", "train", root=tmp_path)
    assert loaded.images.shape == (4, 3, 84, 84) and loaded.labels.tolist() == [0, 0, 1, 1]


def test_missing_miniimagenet_names_both_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match="mini-imagenet-cache-train.pkl"):
        load_images("miniimagenet", "train", root=tmp_path)


def test_digits_without_scikit_learn_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if absent
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'pbridge\[digits\]'"):
        load_images("digits", "test")
    assert main(["train", "digits", "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pbridge: ModuleNotFoundError: the digits data set needs scikit-learn")
    assert "\n" not in err and not (tmp_path / "run").exists()


def test_digits_split(tmp_path):
    train, test = load_images("digits", "train"), load_images("digits", "test")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert 0.0 <= float(test.as_float().min()) and float(test.as_float().max()) == 1.0


@pytest.mark.parametrize(
    "name, split, match",
    [("mnist-96", "train", "unknown data set 'mnist-96'"), ("digits", "val", "unknown split")],
)
def test_unknown_names_are_reported(name, split, match):
    with pytest.raises(ValueError, match=match):
        load_images(name, split)


@pytest.mark.parametrize("name", list(data.DATASETS))
def test_load_images_takes_loader_and_shape_from_the_registry(name, tmp_path, monkeypatch):
    """The registry is the one source: the loader load_images calls is the entry's, and the
    shape it checks the images against is the entry's."""
    entry, calls = data.DATASETS[name], []

    def stand_in(root, split, download):
        calls.append((root, split, download))
        return torch.zeros(2, *entry.shape, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)

    monkeypatch.setitem(data.DATASETS, name, replace(entry, loader=stand_in))
    assert load_images(name, "test", root=tmp_path).images.shape == (2, *entry.shape)
    assert calls == [(tmp_path, "test", False)]
    monkeypatch.setitem(data.DATASETS, name, replace(entry, loader=stand_in, shape=(1, 2, 2)))
    with pytest.raises(ValueError, match=rf"{name} images have shape .* expected \(1, 2, 2\)"):
        load_images(name, "test", root=tmp_path)


@pytest.mark.parametrize("name", ["digits", pytest.param("fashion-mnist", marks=needs_fashion)])
def test_real_data_has_the_registry_shape(name, tmp_path):
    assert tuple(load_images(name, "test", root=tmp_path).images.shape[1:]) == (
        data.DATASETS[name].shape
    )


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "miniimagenet"])
def test_missing_data_names_the_path_then_the_registry_hint(name, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(FileNotFoundError) as info:
        load_images(name, "train", root=tmp_path)
    assert str(tmp_path) in str(info.value) and str(info.value).endswith(data.DATASETS[name].hint)


def test_an_unknown_data_set_is_refused_naming_the_registry(monkeypatch):
    """One message everywhere a data set is named, listing the registry's names (an entry
    added to it included)."""
    monkeypatch.setitem(data.DATASETS, "extra", replace(data.DATASETS["digits"], name="extra"))
    expected = "unknown data set 'svhn'; expected one of fashion-mnist, cifar10, miniimagenet, "
    expected += "digits, extra"
    refusals = [
        lambda: data.data_set("svhn"),
        lambda: load_images("svhn"),
        lambda: ImageConfig(dataset="svhn"),
        lambda: image_preset("svhn", "small"),
    ]
    for refuse in refusals:
        with pytest.raises(ValueError) as info:
            refuse()
        assert str(info.value) == expected


def test_image_preset_reads_the_registry_facts(monkeypatch):
    """Downsampling stages and the small code grid come from the entry, not from its name."""
    assert image_preset("miniimagenet", "paper").downsamples == 2
    assert image_preset("digits", "small").num_codes == 32
    cifar = data.DATASETS["cifar10"]
    monkeypatch.setitem(data.DATASETS, "cifar10", replace(cifar, downsamples=3, small_grid=True))
    small = image_preset("cifar10", "small")
    assert (small.downsamples, small.num_codes, small.unet_mults) == (3, 32, (1, 2))
    assert image_preset("cifar10", "paper").downsamples == 3
    digits = replace(data.DATASETS["digits"], small_grid=False)
    monkeypatch.setitem(data.DATASETS, "digits", digits)
    assert image_preset("digits", "small").num_codes == 128


def test_train_help_lists_every_data_set_with_its_summary(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at the terminal's width
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for name, entry in data.DATASETS.items():
        assert f"{name} ({'x'.join(map(str, entry.shape))}), {entry.summary}" in out
