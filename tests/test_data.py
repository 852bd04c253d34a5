"""Data registry: offline digits, seeded synthetic data, the CIFAR/MNIST readers on files written
in the real formats, the restricted unpickler, augmentation, splits and loaders."""

import gzip
import importlib.util
import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import deepcurvature as dc
from deepcurvature.data import cifar as cifar_module

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


# ----------------------------------------------------------------------------------- writers
def write_cifar_batch(path, images, labels, label_key, bytes_keys=True, extra=None):
    """A batch as the original files hold it: a dict pickled with protocol 2."""
    d = {"batch_label": "training batch", label_key: [int(v) for v in labels],
         "data": images.reshape(len(images), -1), "filenames": [f"img_{i}.png" for i in
         range(len(images))]}  # fmt: skip
    d.update(extra or {})
    if bytes_keys:  # Python 2 str keys come back as bytes with encoding="bytes"
        d = {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in d.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(d, protocol=2))


def write_idx(path, array, gz=False):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.fixture
def cifar10_root(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    train_imgs, train_labels = [], []
    for i in range(1, 6):
        imgs = rng.integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=6)
        write_cifar_batch(folder / f"data_batch_{i}", imgs, labels, "labels")
        train_imgs.append(imgs)
        train_labels.append(labels)
    test_imgs = rng.integers(0, 256, size=(7, 3, 32, 32), dtype=np.uint8)
    test_labels = rng.integers(0, 10, size=7)
    write_cifar_batch(folder / "test_batch", test_imgs, test_labels, "labels")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]  # fmt: skip
    meta = {b"label_names": [n.encode() for n in names], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return tmp_path, (np.concatenate(train_imgs), np.concatenate(train_labels)), (
        test_imgs, test_labels), names  # fmt: skip


# ------------------------------------------------------------------------------------ digits
def test_digits_offline_split_shapes_and_standardisation():
    train = dc.get_dataset("digits", train=True)
    test = dc.get_dataset("DIGITS", train=False)
    assert (len(train), len(test)) == (1437, 360)
    assert train.num_classes == test.num_classes == 10
    x, y = train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    xs, ys = train.get_batch(range(len(train)))
    # Standardised with the training pixels' mean/std; the test set uses the same constants.
    assert abs(xs.double().mean().item()) < 1e-5
    assert abs(xs.double().std().item() - 1.0) < 1e-4
    assert test.mean == train.mean and test.std == train.std
    # The two parts are disjoint and together are exactly scikit-learn's 1797 digits.
    xt, yt = test.get_batch(range(len(test)))
    mean, std = train.mean[0], train.std[0]
    raw = torch.cat([xs, xt]).double() * std + mean  # back to [0, 1]
    pixels = np.rint(raw.numpy().reshape(-1, 64) * 16).astype(np.int64)
    ref = load_digits()
    ours = sorted(map(tuple, np.column_stack([pixels, torch.cat([ys, yt]).numpy()])))
    theirs = sorted(map(tuple, np.column_stack([ref.data.astype(np.int64), ref.target])))
    assert ours == theirs
    # Stratified: each class's test count is within 1 of its proportional share.
    counts = np.bincount(ref.target, minlength=10)
    test_counts = np.bincount(yt.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - counts * 360 / 1797) < 1)
    # Deterministic.
    again = dc.get_dataset("digits", train=False)
    assert torch.equal(again.images, test.images) and torch.equal(again.targets, test.targets)


def test_load_data_digits_batches_and_last_batch_sizes():
    bundle = dc.load_data("digits", batch_size=100)
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (10, 1, (8, 8))
    assert bundle.name == "digits" and not bundle.test_is_validation
    sizes = []
    for x, y in bundle.train_loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
        sizes.append(len(y))
    assert sizes == [100] * 14 + [37]
    assert [len(y) for _, y in bundle.test_loader] == [100, 100, 100, 60]
    # A model built from the bundle's facts accepts the batches.
    model = dc.get_model("mlp", **bundle.model_kwargs())
    assert model(next(iter(bundle.test_loader))[0]).shape == (100, 10)


def test_training_order_is_seeded():
    def first_targets(seed):
        b = dc.load_data("digits", batch_size=50, seed=seed)
        return next(iter(b.train_loader))[1]

    assert torch.equal(first_targets(3), first_targets(3))
    assert not torch.equal(first_targets(3), first_targets(4))
    unshuffled = dc.load_data("digits", batch_size=50, shuffle_train=False)
    assert torch.equal(next(iter(unshuffled.train_loader))[1], unshuffled.train_set.targets[:50])


def test_worker_processes_give_the_same_batches():
    a = dc.load_data("digits", batch_size=256, seed=1)
    b = dc.load_data("digits", batch_size=256, seed=1, num_workers=1)
    for (xa, ya), (xb, yb) in zip(a.train_loader, b.train_loader, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# --------------------------------------------------------------------------------- synthetic
def test_synthetic_is_seeded_and_shaped():
    kw = {"n_train": 64, "n_test": 32, "num_classes": 3, "in_channels": 2, "input_size": (5, 6)}
    a = dc.get_dataset("synthetic", **kw)
    b = dc.get_dataset("synthetic", **kw)
    c = dc.get_dataset("synthetic", data_seed=1, **kw)
    t = dc.get_dataset("synthetic", train=False, **kw)
    assert len(a) == 64 and len(t) == 32
    assert a.images.shape == (64, 2, 5, 6) and a.num_classes == 3
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images[:32], t.images)
    assert set(a.targets.tolist()) == {0, 1, 2}
    bundle = dc.load_data("synthetic", batch_size=16, **kw)
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (3, 2, (5, 6))


def test_synthetic_labels_are_learnable():
    """A small MLP trained on 1024 samples predicts held-out labels far above chance (25%)."""
    bundle = dc.load_data("synthetic", n_train=1024, n_test=512, num_classes=4, in_channels=1,
                          input_size=8, batch_size=1024)  # fmt: skip
    x, y = next(iter(bundle.train_loader))
    xt, yt = next(iter(bundle.test_loader))
    counts = torch.bincount(y, minlength=4)
    assert counts.min() > 0.1 * len(y)  # roughly balanced classes
    model = dc.get_model("mlp", seed=0, **bundle.model_kwargs())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.55


# ------------------------------------------------------------------------------------- CIFAR
def test_cifar10_reader_reads_back_exactly(cifar10_root):
    root, (train_x, train_y), (test_x, test_y), names = cifar10_root
    images, labels, classes = dc.read_cifar(root, "cifar10", train=True)
    assert images.dtype == np.uint8 and images.shape == (30, 3, 32, 32)
    np.testing.assert_array_equal(images, train_x)
    np.testing.assert_array_equal(labels, train_y)
    assert classes == names
    ds = dc.get_dataset("cifar-10", root, train=False, normalize=False)
    assert len(ds) == 7 and ds.num_classes == 10 and ds.classes == names
    x, y = ds.get_batch(range(7))
    torch.testing.assert_close(x, torch.from_numpy(test_x).float() / 255, rtol=0, atol=0)
    assert torch.equal(y, torch.from_numpy(test_y))
    # Standard per-channel normalisation.
    ds = dc.get_dataset("CIFAR10", root, train=False)
    x, _ = ds.get_batch(range(7))
    mean = torch.tensor(dc.data.cifar.CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(dc.data.cifar.CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (torch.from_numpy(test_x).float() / 255 - mean) / std)


def test_cifar100_reader_fine_and_coarse_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    data = {}
    for split, n in (("train", 9), ("test", 4)):
        imgs = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, size=n), rng.integers(0, 20, size=n)
        # Python 3 style file (str keys) this time.
        write_cifar_batch(folder / split, imgs, fine, "fine_labels", bytes_keys=False,
                          extra={"coarse_labels": [int(c) for c in coarse]})  # fmt: skip
        data[split] = (imgs, fine, coarse)
    meta = {"fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)]}  # fmt: skip
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    bundle = dc.load_data("CIFAR100", tmp_path, batch_size=4, augment=False, shuffle_train=False)
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (100, 3, (32, 32))
    assert bundle.name == "CIFAR100"
    assert [len(y) for _, y in bundle.train_loader] == [4, 4, 1]
    ys = torch.cat([y for _, y in bundle.train_loader])
    assert torch.equal(ys, torch.from_numpy(data["train"][1]))
    coarse = dc.get_dataset("cifar_100", tmp_path, train=False, label_type="coarse")
    assert coarse.num_classes == 20 and coarse.classes[:2] == ["c0", "c1"]
    assert torch.equal(coarse.targets, torch.from_numpy(data["test"][2]))
    np.testing.assert_array_equal(coarse.images.numpy(), data["test"][0])


class _Py2StylePickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING), as cPickle did for the
    original CIFAR files."""

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[bytes] = save_bytes


def test_python2_era_cifar_pickles_load(tmp_path):
    """The original files: protocol 2, Python 2 byte strings for keys and array data, and the
    numpy 1.x module path numpy.core.multiarray."""
    rng = np.random.default_rng(4)
    imgs = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    d = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 1, 4], b"data": imgs,
         b"filenames": [b"a.png", b"b.png", b"c.png"]}  # fmt: skip
    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump(d)
    payload = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"_codecs" not in payload and b"numpy.core.multiarray\n_reconstruct" in payload
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(payload)
    images, labels, classes = dc.read_cifar(tmp_path, "cifar10", train=False)
    np.testing.assert_array_equal(images.reshape(3, -1), imgs)
    np.testing.assert_array_equal(labels, [3, 1, 4])
    assert classes is None  # no batches.meta here


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_other_globals(tmp_path, cifar10_root):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker)}, protocol=2)
    with pytest.raises(dc.UnsafePickleError, match=r"references the global (posix|os|nt)\.system"):
        dc.safe_load_pickle(payload)
    assert not marker.exists()
    # A tampered CIFAR batch is refused by the reader, with its path in the message.
    root = cifar10_root[0]
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="test_batch references the global"):
        dc.get_dataset("cifar10", root, train=False)
    assert not marker.exists()
    # Numpy arrays of Python objects are refused too (their items would be unpickled freely).
    obj_array = pickle.dumps(np.array([1, "a"], dtype=object), protocol=2)
    with pytest.raises(dc.UnsafePickleError, match="Python objects"):
        dc.safe_load_pickle(obj_array)
    # What the genuine files need loads.
    ok = dc.safe_load_pickle(pickle.dumps({b"x": np.arange(5, dtype=np.uint8), "y": [1]}, 2))
    np.testing.assert_array_equal(ok[b"x"], np.arange(5))


def test_cifar_augmentation_is_seeded_and_pads_with_black(cifar10_root):
    root = cifar10_root[0]
    ds = dc.get_dataset("cifar10", root, train=True, augment=True, normalize=False)
    plain = ds.without_augmentation()
    torch.manual_seed(5)
    a, ya = ds.get_batch(range(30))
    torch.manual_seed(5)
    b, _ = ds.get_batch(range(30))
    c, _ = ds.get_batch(range(30))
    assert a.shape == (30, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    x, y = plain.get_batch(range(30))
    assert torch.equal(y, ya)
    # Every augmented image is a (possibly mirrored) 32x32 window of the zero-padded original.
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(30):
        found = False
        for img in (padded[i], padded[i].flip(-1)):
            windows = img.unfold(1, 32, 1).unfold(2, 32, 1)  # (3, 9, 9, 32, 32)
            diff = (windows - a[i][:, None, None]).abs().amax(dim=(0, 3, 4))
            found = found or bool((diff == 0).any())
        assert found, i
    # The validation split of an augmented training set is not augmented.
    bundle = dc.load_data("cifar10", root, use_test=False, val_fraction=0.2, batch_size=64)
    v1 = next(iter(bundle.test_loader))[0]
    v2 = next(iter(bundle.test_loader))[0]
    assert torch.equal(v1, v2)


def test_transforms_on_known_inputs():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert torch.equal(dc.RandomCrop((4, 5))(x), x)
    assert torch.equal(dc.RandomHorizontalFlip(1.0)(x), x.flip(-1))
    assert torch.equal(dc.RandomHorizontalFlip(0.0)(x), x)
    out = dc.RandomCrop(4, padding=2)(x[0], generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 4, 4)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    aug = dc.cifar_augmentation(4, 2)
    assert torch.equal(aug(x[:, :, :, :4], g1), aug(x[:, :, :, :4], g2))
    norm = dc.Normalize([1.0, 2.0, 3.0], [2.0, 2.0, 4.0])
    expected = (x - torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)) / torch.tensor(
        [2.0, 2.0, 4.0]).view(1, 3, 1, 1)  # fmt: skip
    torch.testing.assert_close(norm(x), expected)
    with pytest.raises(ValueError, match="std must be positive"):
        dc.Normalize([0.0], [0.0])


# ------------------------------------------------------------------------------------- MNIST
@pytest.mark.parametrize(("name", "folder", "gz"), [("mnist", "MNIST/raw", False),
                         ("MNIST", "MNIST/raw", True), ("fashion-mnist", "FashionMNIST/raw",
                         True), ("FashionMNIST", "FashionMNIST/raw", False)])  # fmt: skip
def test_mnist_readers_read_back_exactly(tmp_path, name, folder, gz):
    rng = np.random.default_rng(2)
    raw = tmp_path / folder
    arrays = {}
    for prefix, n in (("train", 11), ("t10k", 5)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", imgs, gz=gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
        arrays[prefix] = (imgs, labels)
    kind = "mnist" if "fashion" not in name.lower() else "fashionmnist"
    images, labels = dc.read_mnist(tmp_path, kind, train=True)
    np.testing.assert_array_equal(images[:, 0], arrays["train"][0])
    np.testing.assert_array_equal(labels, arrays["train"][1])
    assert labels.dtype == np.int64
    bundle = dc.load_data(name, tmp_path, batch_size=4, shuffle_train=False)
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (10, 1, (28, 28))
    assert [len(y) for _, y in bundle.test_loader] == [4, 1]
    x, y = next(iter(bundle.test_loader))
    mean, std = (0.1307, 0.3081) if kind == "mnist" else (0.2860, 0.3530)
    expected = (torch.from_numpy(arrays["t10k"][0][:4]).float()[:, None] / 255 - mean) / std
    torch.testing.assert_close(x, expected)
    assert torch.equal(y, torch.from_numpy(arrays["t10k"][1][:4]).long())


def test_idx_reader_rejects_corrupt_files(tmp_path):
    arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    write_idx(tmp_path / "ok", arr)
    np.testing.assert_array_equal(dc.read_idx(tmp_path / "ok"), arr)
    (tmp_path / "short").write_bytes((tmp_path / "ok").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        dc.read_idx(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an idx file"):
        dc.read_idx(tmp_path / "junk")
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="3 images but .* 2 labels"):
        dc.get_dataset("mnist", tmp_path, train=False)


# ----------------------------------------------------------------------------- missing data
@pytest.mark.parametrize(("name", "where"), [("cifar10", "cifar-10-batches-py"),
                         ("cifar100", "cifar-100-python"), ("mnist", "MNIST/raw"),
                         ("fashionmnist", "FashionMNIST/raw")])  # fmt: skip
def test_missing_dataset_explains_where_and_how(tmp_path, name, where):
    with pytest.raises(FileNotFoundError) as err:
        dc.load_data(name, tmp_path / "data")
    msg = str(err.value)
    assert str((tmp_path / "data" / where).resolve()) in msg
    assert "download=True" in msg and "--download" in msg and "deepcurvature[vision]" in msg
    assert isinstance(err.value, dc.DatasetNotFoundError)


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed")
def test_download_without_torchvision_says_what_to_install(tmp_path):
    with pytest.raises(ImportError, match=r'pip install "deepcurvature\[vision\]"'):
        dc.get_dataset("cifar100", tmp_path, download=True)


def test_default_data_path_comes_from_the_environment(tmp_path, monkeypatch, cifar10_root):
    monkeypatch.setenv("DEEPCURVATURE_DATA", str(cifar10_root[0]))
    assert dc.resolve_data_path() == cifar10_root[0]
    assert len(dc.get_dataset("cifar10", train=False)) == 7


# ------------------------------------------------------------------------- splits and loaders
def test_validation_split_is_disjoint_reproducible_and_stratified():
    full = dc.get_dataset("digits")
    a = dc.load_data("digits", use_test=False, val_fraction=0.1, seed=0)
    b = dc.load_data("digits", use_test=False, val_fraction=0.1, seed=0)
    c = dc.load_data("digits", use_test=False, val_fraction=0.1, seed=1)
    assert a.test_is_validation
    tr, va = set(a.train_set.indices), set(a.test_set.indices)
    assert not tr & va and tr | va == set(range(len(full)))
    assert len(va) == round(0.1 * len(full))
    assert a.test_set.indices == b.test_set.indices and a.test_set.indices != c.test_set.indices
    counts = np.bincount(full.targets.numpy(), minlength=10)
    val_counts = np.bincount(full.targets.numpy()[sorted(va)], minlength=10)
    assert np.all(np.abs(val_counts - counts * len(va) / len(full)) < 1)
    # Evaluation batches keep the last, smaller batch.
    d = dc.load_data("digits", use_test=False, batch_size=50, seed=0)
    assert [len(y) for _, y in d.test_loader] == [50, 50, 44]


def test_subsample_is_seeded_and_inside_the_training_part():
    a = dc.load_data("digits", use_test=False, subsample=100, seed=3)
    b = dc.load_data("digits", use_test=False, subsample=100, seed=3)
    assert len(a.train_set) == 100 and a.train_set.indices == b.train_set.indices
    assert not set(a.train_set.indices) & set(a.test_set.indices)
    assert len(a.test_set) == 144  # the validation part is not subsampled
    with pytest.raises(ValueError, match="larger than the 1437 training samples"):
        dc.load_data("digits", subsample=5000)


def test_user_datasets_and_loaders_are_used_as_they_are():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 2, 5, 7, generator=g)
    y = torch.arange(50) % 4
    ds = TensorDataset(x, y)
    bundle = dc.load_data(ds, batch_size=16)
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (4, 2, (5, 7))
    assert bundle.train_set is ds and bundle.test_loader is None
    assert [len(b[1]) for b in bundle.train_loader] == [16, 16, 16, 2]
    loader = DataLoader(ds, batch_size=20)
    b2 = dc.load_data(loader)
    assert b2.train_loader is loader and b2.num_classes == 4
    b3 = dc.load_data((ds, loader))
    assert b3.test_loader is loader and b3.test_set is ds
    b4 = dc.load_data(ds, num_classes=6)
    assert b4.num_classes == 6
    val = dc.load_data(ds, use_test=False, val_fraction=0.2)
    assert len(val.test_set) == 10 and len(val.train_set) == 40
    # Feature vectors: 1 x 1 x F, so an MLP built from the facts takes them.
    feats = TensorDataset(torch.randn(30, 9), torch.arange(30) % 3)
    fb = dc.load_data(feats, batch_size=8)
    assert (fb.in_channels, fb.input_size, fb.num_classes) == (1, (1, 9), 3)
    assert dc.get_model("mlp", **fb.model_kwargs())(next(iter(fb.train_loader))[0]).shape == (8, 3)


def test_bad_requests_are_explained():
    with pytest.raises(ValueError, match="unknown data set 'imagenet'.*CIFAR100"):
        dc.load_data("imagenet")
    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['n_train'\]"):
        dc.get_dataset("digits", n_train=3)
    with pytest.raises(ValueError, match="digits has num_classes=10, not 5"):
        dc.load_data("digits", num_classes=5)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        dc.load_data("digits", batch_size=0)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        dc.load_data("digits", use_test=False, val_fraction=1.5)
    assert {"CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "digits", "synthetic"} <= set(
        dc.list_datasets()
    )


def test_cifar_module_reports_the_download_url(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        cifar_module.read_cifar(tmp_path, "cifar10")
