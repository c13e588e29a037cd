import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_kd import data


def _tiny_arrays(rng, grey=False, n_train=12, n_test=6, size=8):
    shape = (size, size) if grey else (size, size, 3)
    return {
        "x_train": rng.integers(0, 256, (n_train,) + shape, dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.int64) % 3,
        "x_test": rng.integers(0, 256, (n_test,) + shape, dtype=np.uint8),
        "y_test": np.arange(n_test, dtype=np.int64) % 3,
    }


def _save(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


def _collect(ds):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


# --- load_arrays -------------------------------------------------------------


def test_bundled_subset_shapes_dtypes_and_balance():
    arrays = data.load_arrays()
    assert arrays["x_train"].shape == (6000, 28, 28, 1)
    assert arrays["x_test"].shape == (1000, 28, 28, 1)
    assert arrays["x_train"].dtype == arrays["x_test"].dtype == np.uint8
    assert arrays["y_train"].dtype == arrays["y_test"].dtype == np.int64
    np.testing.assert_array_equal(np.bincount(arrays["y_train"]), [600] * 10)
    np.testing.assert_array_equal(np.bincount(arrays["y_test"]), [100] * 10)
    assert list(arrays["class_names"][:2]) == ["T-shirt/top", "Trouser"]
    assert len(arrays["class_names"]) == 10
    # Shuffled once: classes are interleaved, not in blocks.
    assert len(np.unique(arrays["y_train"][:50])) > 5


@pytest.mark.parametrize("as_str", [True, False])
def test_npz_round_trip(tmp_path, as_str):
    rng = np.random.default_rng(1)
    arrays = _tiny_arrays(rng)
    path = _save(
        tmp_path / "tiny.npz", class_names=np.array(["a", "b", "c"]), **arrays
    )
    loaded = data.load_arrays(str(path) if as_str else path)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)
        assert loaded[key].dtype == value.dtype
    assert list(loaded["class_names"]) == ["a", "b", "c"]


def test_npz_grey_images_get_channel_axis_and_default_class_names(tmp_path):
    arrays = _tiny_arrays(np.random.default_rng(2), grey=True)
    arrays["y_train"] = arrays["y_train"].astype(np.int32)
    loaded = data.load_arrays(_save(tmp_path / "grey.npz", **arrays))
    assert loaded["x_train"].shape == (12, 8, 8, 1)
    np.testing.assert_array_equal(loaded["x_train"][..., 0], arrays["x_train"])
    assert loaded["y_train"].dtype == np.int64
    assert list(loaded["class_names"]) == ["0", "1", "2"]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        data.load_arrays(str(tmp_path / "nowhere.npz"))


def test_npz_lacking_keys_names_them(tmp_path):
    arrays = _tiny_arrays(np.random.default_rng(3))
    del arrays["y_test"]
    with pytest.raises(ValueError, match=r"lacks the keys \['y_test'\]"):
        data.load_arrays(_save(tmp_path / "partial.npz", **arrays))


def test_unreadable_npz(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_text("not an archive")
    with pytest.raises(ValueError, match="broken.npz"):
        data.load_arrays(path)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("y_train", np.zeros((12, 1), np.int64), r"y_train .* shape \(12, 1\)"),
        ("y_train", np.zeros(12, np.float32), "y_train .* dtype float32"),
        (
            "x_train",
            np.zeros((12, 64), np.uint8),
            r"x_train .* shape \(12, 64\)",
        ),
        (
            "x_test",
            np.zeros((6, 8, 8, 3), np.float32),
            "x_test .* dtype float32",
        ),
        ("y_test", np.zeros(5, np.int64), "6 x_test images but 5 y_test"),
        (
            "x_test",
            np.zeros((6, 4, 4, 3), np.uint8),
            r"\(8, 8, 3\) .* \(4, 4, 3\)",
        ),
    ],
)
def test_bad_arrays_say_what_was_received(tmp_path, key, value, message):
    arrays = _tiny_arrays(np.random.default_rng(4))
    arrays[key] = value
    with pytest.raises(ValueError, match=message):
        data.load_arrays(_save(tmp_path / "bad.npz", **arrays))


def test_too_few_class_names(tmp_path):
    arrays = _tiny_arrays(np.random.default_rng(5))
    path = _save(
        tmp_path / "names.npz", class_names=np.array(["a", "b"]), **arrays
    )
    with pytest.raises(
        ValueError, match=r"shape \(2,\); expected .* at least 3"
    ):
        data.load_arrays(path)


def test_bad_source_type():
    with pytest.raises(TypeError, match="received int 3"):
        data.load_arrays(3)


def test_unknown_tfds_name_suggests_close_names():
    with pytest.raises(
        ValueError, match=r"'cifar1O'.*closest tfds names: \[.*'cifar10'"
    ):
        data.load_arrays("cifar1O")


def test_malformed_tfds_name():
    with pytest.raises(ValueError, match="Unknown data source 'My Data'"):
        data.load_arrays("My Data")


def test_unprepared_tfds_name_without_download(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="'mnist' is not prepared"
    ) as error:
        data.load_arrays("mnist", data_dir=str(tmp_path), download=False)
    message = str(error.value)
    assert "prepare_tfds_directory(" in message and "'mnist_local'" in message
    assert ".npz" in message and "--download" in message
    assert list(tmp_path.iterdir()) == []  # nothing fetched or created


@pytest.mark.parametrize(
    "name, shape, first_class",
    # cifar10 reads its class names from the downloaded files, so mocked it
    # has "0".."9".
    [
        ("cifar10", (32, 32, 3), "0"),
        ("fashion_mnist", (28, 28, 1), "T-shirt/top"),
    ],
)
def test_tfds_name_with_mock_data(name, shape, first_class):
    with tfds.testing.mock_data(num_examples=5):
        arrays = data.load_arrays(name)
    assert arrays["x_train"].shape == (5,) + shape
    assert arrays["x_test"].shape == (5,) + shape
    assert arrays["x_train"].dtype == np.uint8
    assert (
        arrays["y_train"].shape == (5,) and arrays["y_train"].dtype == np.int64
    )
    assert arrays["class_names"][0] == first_class
    assert len(arrays["class_names"]) == 10


# --- prepare_tfds_directory --------------------------------------------------


def test_prepare_tfds_directory_round_trip(tmp_path):
    arrays = _tiny_arrays(np.random.default_rng(6), n_train=7, n_test=4)
    path = _save(
        tmp_path / "tiny.npz", class_names=np.array(["x", "y", "z"]), **arrays
    )
    data_dir = tmp_path / "tfds"
    built = data.prepare_tfds_directory(path, data_dir, "keras_kd_tiny_test")
    assert built.endswith("keras_kd_tiny_test/1.0.0")

    loaded = data.load_arrays(
        "keras_kd_tiny_test", data_dir=str(data_dir), download=False
    )
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)
    assert list(loaded["class_names"]) == ["x", "y", "z"]
    # Plain tfds reads it too.
    ds = tfds.load(
        "keras_kd_tiny_test",
        split="test",
        data_dir=str(data_dir),
        download=False,
    )
    assert ds.cardinality().numpy() == 4

    with pytest.raises(FileExistsError, match="keras_kd_tiny_test"):
        data.prepare_tfds_directory(path, data_dir, "keras_kd_tiny_test")


def test_prepare_tfds_directory_rejects_registered_and_bad_names(tmp_path):
    with pytest.raises(
        ValueError, match="'cifar10' is already .* 'cifar10_local'"
    ):
        data.prepare_tfds_directory(tmp_path / "a.npz", tmp_path, "cifar10")
    with pytest.raises(ValueError, match="received 'My Data'"):
        data.prepare_tfds_directory(tmp_path / "a.npz", tmp_path, "My Data")


# --- make_dataset ------------------------------------------------------------


def test_make_dataset_dtype_shape_and_range():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    x[0, 0, 0] = [0, 255, 7]
    ds = data.make_dataset(x, np.arange(10), batch_size=4)
    images, labels = _collect(ds)
    assert ds.element_spec[0].dtype.name == "float32"
    assert [b.shape[0] for b, _ in ds] == [4, 4, 2]
    assert images.shape == (10, 8, 8, 3)
    np.testing.assert_allclose(images, x / 255.0, atol=1e-6)
    assert images.min() == 0.0 and images.max() == 1.0
    np.testing.assert_array_equal(labels, np.arange(10))
    assert (
        len(
            list(
                data.make_dataset(
                    x, np.arange(10), batch_size=4, drop_remainder=True
                )
            )
        )
        == 2
    )


def test_make_dataset_normalisation_matches_numpy():
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
    images, _ = _collect(data.make_dataset(x, np.arange(6), mean=mean, std=std))
    expected = (x.astype(np.float64) / 255.0 - mean) / std
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)


def test_make_dataset_grey_images_and_float_input():
    x = np.random.default_rng(9).random((4, 6, 6)).astype(np.float32)
    images, _ = _collect(data.make_dataset(x, np.arange(4)))
    assert images.shape == (4, 6, 6, 1)
    np.testing.assert_allclose(images[..., 0], x)


def _augmented(x, augment, seed):
    ds = data.make_dataset(
        x,
        np.arange(len(x)),
        batch_size=8,
        training=True,
        augment=augment,
        seed=seed,
    )
    images, labels = _collect(ds)
    return images[np.argsort(labels)], np.sort(labels)


@pytest.mark.parametrize("augment", ["crop_flip", "flip"])
def test_augmentation_keeps_shape_is_seeded_and_changes_images(augment):
    x = np.random.default_rng(10).integers(
        1, 256, (16, 8, 8, 3), dtype=np.uint8
    )
    first, labels = _augmented(x, augment, seed=3)
    second, _ = _augmented(x, augment, seed=3)
    other, _ = _augmented(x, augment, seed=4)
    np.testing.assert_array_equal(labels, np.arange(16))
    assert first.shape == (16, 8, 8, 3)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)
    assert not np.allclose(first, x / 255.0)

    # Every output is the original, mirrored or not, shifted inside a zero pad.
    reach = 4 if augment == "crop_flip" else 0
    for image, original in zip(first, x / 255.0):
        padded = np.pad(original, [(reach, reach), (reach, reach), (0, 0)])
        windows = [
            view[i : i + 8, j : j + 8]
            for view in (padded, padded[:, ::-1])
            for i in range(2 * reach + 1)
            for j in range(2 * reach + 1)
        ]
        assert any(np.allclose(image, window, atol=1e-6) for window in windows)


def test_training_shuffles_with_seed_and_evaluation_does_not():
    x = np.zeros((20, 2, 2, 1), np.uint8)
    order = lambda seed: _collect(  # noqa: E731
        data.make_dataset(
            x, np.arange(20), batch_size=5, training=True, seed=seed
        )
    )[1]
    np.testing.assert_array_equal(order(1), order(1))
    assert not np.array_equal(order(1), np.arange(20))
    np.testing.assert_array_equal(
        _collect(data.make_dataset(x, np.arange(20)))[1], np.arange(20)
    )


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"augment": "mixup"}, ValueError, "received 'mixup'"),
        (
            {"mean": [0.5], "std": [0.5]},
            ValueError,
            r"1 values; expected one per channel \(3\)",
        ),
        ({"mean": [0.5] * 3}, ValueError, "both `mean` and `std`"),
        ({"mean": [0.5] * 3, "std": [0.1, 0.0, 0.1]}, ValueError, "positive"),
        ({"batch_size": 0}, ValueError, "received 0"),
    ],
)
def test_make_dataset_bad_arguments(kwargs, error, message):
    x = np.zeros((4, 4, 4, 3), np.uint8)
    with pytest.raises(error, match=message):
        data.make_dataset(x, np.arange(4), **kwargs)


def test_make_dataset_bad_arrays():
    with pytest.raises(TypeError, match="dtype int32"):
        data.make_dataset(np.zeros((4, 4, 4, 3), np.int32), np.arange(4))
    with pytest.raises(ValueError, match="4 images and 3 labels"):
        data.make_dataset(np.zeros((4, 4, 4, 3), np.uint8), np.arange(3))


# --- channel_stats -----------------------------------------------------------


def test_channel_stats_matches_numpy():
    x = np.random.default_rng(11).integers(
        0, 256, (50, 8, 8, 3), dtype=np.uint8
    )
    mean, std = data.channel_stats(x, chunk_size=7)
    reference = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, reference.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, reference.std(axis=(0, 1, 2)), rtol=1e-10)
    assert mean.shape == std.shape == (3,)


def test_channel_stats_grey_and_bad_dtype():
    x = np.random.default_rng(12).integers(0, 256, (5, 4, 4), dtype=np.uint8)
    mean, std = data.channel_stats(x)
    assert mean.shape == (1,)
    np.testing.assert_allclose(mean[0], x.mean() / 255.0)
    with pytest.raises(TypeError, match="dtype float32"):
        data.channel_stats(x.astype(np.float32))


def test_balanced_subset_keeps_each_class_share():
    from keras_kd.data import balanced_subset

    y = np.repeat(np.arange(3), [10, 20, 30])
    x = np.arange(60)
    xs, ys = balanced_subset(x, y, 0.1, seed=1)
    assert np.bincount(ys).tolist() == [1, 2, 3]
    np.testing.assert_array_equal(xs, np.sort(xs))  # order preserved
    np.testing.assert_array_equal(y[xs], ys)
    assert balanced_subset(x, y, 1.0)[0] is x
    with pytest.raises(ValueError, match="received 0"):
        balanced_subset(x, y, 0)
