"""Preprocessing ops and pp strings: each op's effect on a real image, eagerly and in tf.data."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from vision_jax.data import ops, pp, randaugment
from vision_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CIFAR_ZIP = REPO.parent / "shared" / "data" / "cifar10" / "cifar10_train_jpeg.zip"
SEED = (3, 4)


# ----------------------------------------------------------------------------------------------
# A real image, and running a pp string both eagerly and inside tf.data
# ----------------------------------------------------------------------------------------------


def _digit_png() -> bytes:
    """Fallback without ../shared: an sklearn digit, upsampled to 32x32 and tinted so channels differ."""
    from sklearn.datasets import load_digits

    grey = Image.fromarray(np.round(load_digits().images[0] * (255 / 16)).astype(np.uint8))
    g = np.asarray(grey.resize((32, 32), Image.NEAREST), np.float64)  # sharp edges: blur has work to do
    rgb = np.stack([g, 0.5 * g + 100, 255 - 0.8 * g], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(np.round(rgb).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def encoded() -> bytes:
    """A CIFAR-10 JPEG when ../shared is present, else a tinted digit PNG."""
    if not CIFAR_ZIP.is_file():
        return _digit_png()
    with zipfile.ZipFile(CIFAR_ZIP) as archive:
        name = min(n for n in archive.namelist() if n.startswith("train/frog/") and n.endswith(".jpg"))
        return archive.read(name)


@pytest.fixture(scope="module")
def pixels(encoded) -> np.ndarray:
    """The image decoded by PIL: uint8 [32, 32, 3]."""
    image = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    assert image.shape == (32, 32, 3) and np.abs(np.diff(image.astype(int), axis=-1)).mean() > 5  # has colour
    return image


@pytest.fixture(scope="module")
def image(pixels) -> np.ndarray:
    """The image as every op after `decode` sees it: float32 in [0, 1]."""
    return pixels.astype(np.float32) / np.float32(255)


def run_seeds(spec: str, data: dict, seeds, batch: bool = False) -> list[dict]:
    """Runs the pp string for each seed eagerly and inside one tf.data map; asserts that the two
    agree; returns the outputs."""
    fn = pp.parse_batch(spec) if batch else pp.parse(spec)
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(seeds, tf.int64)).map(
        tf.autograph.experimental.do_not_convert(lambda seed: fn(data, seed)))
    outputs = []
    for seed, in_graph in zip(seeds, dataset.as_numpy_iterator(), strict=True):
        eager = {k: np.asarray(v) for k, v in fn(data, tf.constant(seed, tf.int64)).items()}
        assert set(in_graph) == set(eager)
        for key in eager:
            np.testing.assert_allclose(in_graph[key], eager[key], rtol=0, atol=1e-6, err_msg=f"{spec}: {key}")
        outputs.append(eager)
    return outputs


def run(spec: str, data: dict, seed=SEED, batch: bool = False) -> dict:
    return run_seeds(spec, data, [seed], batch)[0]


def run_image(spec: str, image: np.ndarray, seed=SEED) -> np.ndarray:
    return run(spec, {"image": image}, seed)["image"]


def run_image_seeds_list(spec: str, image: np.ndarray, seeds) -> list[np.ndarray]:
    return [out["image"] for out in run_seeds(spec, {"image": image}, seeds)]


def run_image_seeds(spec: str, image: np.ndarray, n: int) -> list[np.ndarray]:
    return run_image_seeds_list(spec, image, [(1, i) for i in range(n)])


def many_seeds(spec: str, image: np.ndarray, n: int) -> np.ndarray:
    """Outputs for seeds (0, 0) .. (0, n-1), in one tf.data pass (for statistics over seeds)."""
    fn = pp.parse(spec)
    dataset = tf.data.Dataset.range(n).map(tf.autograph.experimental.do_not_convert(
        lambda i: fn({"image": image}, tf.stack([tf.constant(0, tf.int64), i]))))
    return next(dataset.batch(n).as_numpy_iterator())["image"]


def high_frequency_energy(image: np.ndarray) -> float:
    return float(np.mean(np.diff(image, axis=0) ** 2) + np.mean(np.diff(image, axis=1) ** 2))


# ----------------------------------------------------------------------------------------------
# decode
# ----------------------------------------------------------------------------------------------


def test_decode_bytes_matches_pil(encoded, pixels):
    out = run_image("decode", encoded)
    assert out.dtype == np.float32 and out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out, pixels.astype(np.float32) / np.float32(255))


def test_decode_uint8_grey_and_rgba(pixels):
    np.testing.assert_array_equal(run_image("decode", pixels), pixels / np.float32(255))
    grey = pixels[..., :1]
    np.testing.assert_array_equal(run_image("decode", grey), np.repeat(grey, 3, -1) / np.float32(255))
    rgba = np.concatenate([pixels, np.full_like(grey, 7)], -1)
    np.testing.assert_array_equal(run_image("decode", rgba), pixels / np.float32(255))
    buffer = io.BytesIO()
    Image.fromarray(grey[..., 0], mode="L").save(buffer, format="PNG")
    np.testing.assert_array_equal(run_image("decode", buffer.getvalue()), np.repeat(grey, 3, -1) / np.float32(255))


def test_decode_then_value_range_is_the_classic_rescaling(pixels):
    out = run_image("decode|value_range(-1, 1)", pixels)
    np.testing.assert_array_equal(out, pixels.astype(np.float32) / np.float32(127.5) - np.float32(1))


def test_image_ops_demand_decode_first(pixels, image):
    with pytest.raises(ConfigError, match=r"'flip_lr' needs a float32 image.*uint8.*put 'decode' first"):
        pp.parse("flip_lr")({"image": pixels}, SEED)
    with pytest.raises(ConfigError, match="decode.*float32.*decoded twice"):
        pp.parse("decode")({"image": image}, SEED)


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def test_resize_exact_size(image):
    assert run_image("resize(16)", image).shape == (16, 16, 3)
    out = run_image("resize((12, 20))", image)
    assert out.shape == (12, 20, 3) and 0 <= out.min() and out.max() <= 1
    assert abs(out.mean() - image.mean()) < 0.02  # the same picture, smaller
    np.testing.assert_allclose(run_image("resize(32)", image), image, atol=1e-6)


def test_resize_small_keeps_aspect(image):
    tall, wide = image[:, :20], image[:20, :]
    assert run_image("resize_small(10)", tall).shape == (16, 10, 3)
    assert run_image("resize_small(10)", wide).shape == (10, 16, 3)


def test_central_crop_takes_the_centre(image):
    np.testing.assert_array_equal(run_image("central_crop((16, 20))", image), image[8:24, 6:26])
    np.testing.assert_array_equal(run_image("central_crop(8)", image), image[12:20, 12:20])


def test_random_crop_is_a_window_of_the_padded_image(image):
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="reflect")
    offsets = set()
    for out in run_image_seeds("random_crop(32, padding=4)", image, 6):
        matches = [(dy, dx) for dy in range(9) for dx in range(9)
                   if np.array_equal(padded[dy:dy + 32, dx:dx + 32], out)]
        assert matches, "random_crop output is not a window of the reflect-padded image"
        offsets.add(matches[0])
    assert len(offsets) > 1


def test_random_resized_crop_size_and_source(image):
    out = run_image("random_resized_crop(24)", image)
    assert out.shape == (24, 24, 3) and 0 <= out.min() and out.max() <= 1
    # A square crop of a quarter of the area, resized to its own size, is a window of the image.
    windows = set()
    for crop in run_image_seeds("random_resized_crop(16, scale=(0.25, 0.25), ratio=(1, 1))", image, 4):
        found = [(y, x) for y in range(17) for x in range(17)
                 if np.allclose(image[y:y + 16, x:x + 16], crop, atol=1e-6)]
        assert found, "the crop does not come from the image"
        windows.add(found[0])
    assert len(windows) > 1
    assert run_image("random_resized_crop((8, 12), ratio=(3/4, 4/3))", image).shape == (8, 12, 3)


def test_random_resized_crop_scale_bounds_the_area():
    """On an image whose red and green values are the x and y coordinates, the output's value
    ranges give the crop's box; its area stays within `scale` (DINO's local crops here)."""
    y, x = np.mgrid[:64, :64].astype(np.float32) / 63
    coordinates = np.stack([x, y, np.zeros_like(x)], -1)
    areas = []
    for out in run_image_seeds("random_resized_crop(32, scale=(0.05, 0.4), method='bilinear')", coordinates, 12):
        width = (out[..., 0].max() - out[..., 0].min()) * 64 / 63  # pixel centres span all but one pixel
        height = (out[..., 1].max() - out[..., 1].min()) * 64 / 63
        areas.append(width * height)
    assert 0.04 <= min(areas) and max(areas) <= 0.42
    assert max(areas) - min(areas) > 0.1


def test_flip_lr(image):
    np.testing.assert_array_equal(run_image("flip_lr(p=1)", image), image[:, ::-1])
    np.testing.assert_array_equal(run_image("flip_lr(0)", image), image)
    outs = many_seeds("flip_lr", image, 40)
    flipped = [np.array_equal(o, image[:, ::-1]) for o in outs]
    assert all(f or np.array_equal(o, image) for f, o in zip(flipped, outs))
    assert 8 <= sum(flipped) <= 32


# ----------------------------------------------------------------------------------------------
# Colour and filters
# ----------------------------------------------------------------------------------------------


def test_color_jitter_brightness_scales_the_image(image):
    dim = image * 0.5  # at most 0.5, so a factor <= 1.4 never clips
    factors = []
    for out in run_image_seeds("color_jitter(brightness=0.4, contrast=0, saturation=0, hue=0, p=1)", dim, 5):
        factor = out.mean() / dim.mean()
        assert 0.6 - 1e-5 <= factor <= 1.4 + 1e-5
        np.testing.assert_allclose(out, factor * dim, atol=1e-5)
        factors.append(factor)
    assert np.ptp(factors) > 0.05
    np.testing.assert_array_equal(run_image("color_jitter(p=0)", image), image)


def test_color_jitter_saturation_keeps_luma_and_full_jitter_changes_colour(image):
    luma = lambda x: x @ np.array([0.2989, 0.587, 0.114], np.float32)
    mid = 0.25 + 0.5 * image  # room to move without clipping
    out = run_image("color_jitter(brightness=0, contrast=0, saturation=0.5, hue=0, p=1)", mid)
    assert not np.allclose(out, mid, atol=1e-3)
    np.testing.assert_allclose(luma(out), luma(mid), atol=1e-4)
    out = run_image("color_jitter(p=1)", image)
    assert np.abs(out - image).mean() > 0.01 and 0 <= out.min() and out.max() <= 1


def test_random_grayscale(image):
    out = run_image("random_grayscale(p=1)", image)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    np.testing.assert_allclose(out[..., 0], image @ np.array([0.2989, 0.587, 0.114], np.float32), atol=1e-5)
    np.testing.assert_array_equal(run_image("random_grayscale(p=0)", image), image)


def test_gaussian_blur_matches_a_separable_gaussian(image):
    out = run_image("gaussian_blur(p=1, sigma=(1.0, 1.0), kernel_size=5)", image)
    kernel = np.exp(-np.arange(-2, 3) ** 2 / 2.0)
    kernel /= kernel.sum()
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="reflect")
    rows = sum(w * padded[:, i:i + 32] for i, w in enumerate(kernel))
    expected = sum(w * rows[i:i + 32] for i, w in enumerate(kernel))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert high_frequency_energy(out) < 0.5 * high_frequency_energy(image)


def test_gaussian_blur_default_kernel_lowers_high_frequencies(image):
    blurred = run_image("gaussian_blur(p=1, sigma=(1.5, 2.0))", image)
    assert high_frequency_energy(blurred) < 0.6 * high_frequency_energy(image)
    assert abs(blurred.mean() - image.mean()) < 0.01
    np.testing.assert_array_equal(run_image("gaussian_blur(p=0)", image), image)


def test_solarize_inverts_above_threshold(image):
    out = run_image("solarize(p=1)", image)
    np.testing.assert_allclose(out, np.where(image >= 0.5, 1 - image, image), atol=1e-7)
    assert out.max() <= 0.5
    np.testing.assert_allclose(run_image("solarize(p=1, threshold=0.8)", image),
                               np.where(image >= 0.8, 1 - image, image), atol=1e-7)
    np.testing.assert_array_equal(run_image("solarize(p=0)", image), image)


# ----------------------------------------------------------------------------------------------
# Model range, labels, keys
# ----------------------------------------------------------------------------------------------


def test_value_range_endpoints(image):
    ends = np.stack([np.zeros((2, 3)), np.ones((2, 3))]).astype(np.float32)
    out = run_image("value_range(-1, 1)", ends)
    assert (out[0] == -1).all() and (out[1] == 1).all()
    out = run_image("value_range(vmin=0, vmax=255)", image)
    np.testing.assert_allclose(out, image * 255, atol=1e-4)


def test_normalize_mean_std(image):
    out = run_image("normalize", image)
    np.testing.assert_allclose(out, (image - np.array(ops.IMAGENET_MEAN)) / np.array(ops.IMAGENET_STD), atol=1e-5)
    mean, std = image.mean((0, 1)), image.std((0, 1))
    out = run_image(f"normalize(mean={tuple(mean.tolist())}, std={tuple(std.tolist())})", image)
    np.testing.assert_allclose(out.mean((0, 1)), 0, atol=1e-4)
    np.testing.assert_allclose(out.std((0, 1)), 1, atol=1e-4)


def test_onehot_with_smoothing():
    out = run("onehot(5)", {"label": np.int32(3)})["label"]
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 0])
    out = run("onehot(4, smoothing=0.2, outkey='soft')", {"label": np.array([0, 2], np.int32)})
    np.testing.assert_allclose(out["soft"].sum(-1), 1, atol=1e-6)
    np.testing.assert_allclose(out["soft"][1], [0.05, 0.05, 0.85, 0.05], atol=1e-6)
    assert out["label"].tolist() == [0, 2]  # outkey leaves the input in place


def test_keep_and_rename(image):
    out = run("rename(labels='label')|keep('image', 'labels')", {"image": image, "label": np.int32(7),
                                                                    "extra": np.float32(1)})
    assert set(out) == {"image", "labels"} and out["labels"] == 7
    with pytest.raises(ConfigError, match=r"'keep' reads data\['nope'\].*keys \['image'\]"):
        pp.parse("keep('nope')")({"image": image}, SEED)


def test_key_and_outkey_route_image_ops(image):
    out = run("flip_lr(p=1, key='other', outkey='flipped')", {"image": image, "other": image * 0.5})
    np.testing.assert_array_equal(out["flipped"], (image * 0.5)[:, ::-1])
    np.testing.assert_array_equal(out["image"], image)


# ----------------------------------------------------------------------------------------------
# RandAugment and random erasing
# ----------------------------------------------------------------------------------------------


def test_randaugment_changes_the_image_per_seed(image):
    assert len(randaugment.RANDAUGMENT_OPS) >= 14
    out, again, other = run_image_seeds_list("randaugment(2, 9)", image, [SEED, SEED, (5, 6)])
    assert out.shape == image.shape and 0 <= out.min() and out.max() <= 1
    assert not np.allclose(out, image)
    np.testing.assert_array_equal(again, out)  # same seed, same output
    assert not np.array_equal(other, out)
    single = many_seeds("randaugment(num_layers=1, magnitude=9)", image, 60)
    distinct = {np.round(o, 4).tobytes() for o in single}
    assert len(distinct) >= 12  # many different ops (and signs) are drawn
    assert any(np.array_equal(o, image) for o in single)  # 'identity' is one of them
    assert sum(not np.allclose(o, image, atol=1e-3) for o in single) > 40


def test_randaugment_pixel_ops_match_pil(pixels, image):
    from PIL import ImageOps

    pil = Image.fromarray(pixels)
    as_uint8 = lambda x: np.round(np.asarray(x) * 255).astype(np.uint8)
    np.testing.assert_array_equal(as_uint8(randaugment._equalize(tf.constant(image))), np.asarray(ImageOps.equalize(pil)))
    np.testing.assert_array_equal(as_uint8(randaugment._posterize(tf.constant(image), 4)),
                                  np.asarray(ImageOps.posterize(pil, 4)))
    autocontrast = as_uint8(randaugment._autocontrast(tf.constant(image))).astype(int)
    assert np.abs(autocontrast - np.asarray(ImageOps.autocontrast(pil), int)).max() <= 1  # PIL rounds its LUT


def test_random_erasing_erases_one_rectangle(image):
    out = run_image("normalize|random_erasing(p=1)", image)
    reference = run_image("normalize", image)
    erased = ~np.isclose(out, reference).all(-1)
    rows, cols = np.where(erased)
    assert erased.any()
    box = np.zeros_like(erased)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    np.testing.assert_array_equal(erased, box)  # a solid rectangle
    assert (out[erased] == 0).all()  # value=0, the mean colour after normalize
    assert 0.01 <= erased.mean() <= 0.34
    out = run_image("random_erasing(p=1, value=0.5, scale=(0.1, 0.1), ratio=(1, 1))", image)
    assert ((out == 0.5).all(-1) != (image == 0.5).all(-1)).sum() in (100, 81)  # a 10x10 (rounded 9x9) square
    np.testing.assert_array_equal(run_image("random_erasing(p=0)", image), image)


# ----------------------------------------------------------------------------------------------
# Batch ops
# ----------------------------------------------------------------------------------------------


def _batch(image) -> dict:
    images = np.stack([image, image[::-1], image[:, ::-1], 1 - image])
    labels = np.eye(5, dtype=np.float32)[[0, 1, 2, 3]]
    return {"image": images, "label": labels}


def test_mixup_is_a_convex_combination_with_one_lambda(image):
    batch = _batch(image)
    out = run("mixup(0.2)", batch, batch=True)
    lam = out["label"][0, 0]
    assert 0 <= lam <= 1
    np.testing.assert_allclose(out["label"], lam * batch["label"] + (1 - lam) * batch["label"][::-1], atol=1e-6)
    np.testing.assert_allclose(out["image"], lam * batch["image"] + (1 - lam) * batch["image"][::-1], atol=1e-6)
    outs = run_seeds("mixup(1.0)", batch, [(0, s) for s in range(4)], batch=True)
    lams = {round(float(out["label"][0, 0]), 6) for out in outs}
    assert len(lams) == 4


def test_cutmix_pastes_a_box_and_mixes_labels_by_area(image):
    batch = _batch(image)
    outs = run_seeds("cutmix", batch, [(0, s) for s in range(6)], batch=True)
    out = max(outs, key=lambda o: (o["image"][0] != batch["image"][0]).any(-1).sum())  # the biggest box
    pasted = (out["image"][0] != batch["image"][0]).any(-1)
    assert 0 < pasted.mean() < 1
    rows, cols = np.where(pasted)
    box = np.zeros_like(pasted)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    np.testing.assert_array_equal(pasted, box)
    np.testing.assert_array_equal(out["image"][0][pasted], batch["image"][3][pasted])  # from the reversed batch
    area = pasted.mean()
    np.testing.assert_allclose(out["label"][0], (1 - area) * batch["label"][0] + area * batch["label"][3], atol=1e-6)
    np.testing.assert_allclose(out["label"].sum(-1), 1, atol=1e-6)


def test_batch_ops_need_one_hot_labels(image):
    batch = {"image": _batch(image)["image"], "label": np.arange(4, dtype=np.int32)}
    for spec in ("mixup", "cutmix"):
        with pytest.raises(ConfigError, match=rf"'{spec}' mixes labels.*one-hot.*onehot\(num_classes\)"):
            pp.parse_batch(spec)(batch, SEED)


# ----------------------------------------------------------------------------------------------
# Determinism and seeding
# ----------------------------------------------------------------------------------------------

# (randaugment's determinism is checked in its own test.)
RANDOM_SPECS = ["random_resized_crop(16)", "flip_lr", "color_jitter(p=1)", "random_grayscale(p=0.5)",
                "gaussian_blur(p=1)", "solarize(p=0.5)", "random_erasing(p=1)",
                "random_crop(24, padding=2)"]


@pytest.mark.parametrize("spec", RANDOM_SPECS)
def test_random_ops_are_functions_of_the_seed(spec, image):
    outs = many_seeds(spec, image, 8)
    fn = pp.parse(spec)
    for i in range(2):  # eagerly, the same seed gives the same output again
        np.testing.assert_allclose(fn({"image": image}, tf.constant([0, i], tf.int64))["image"], outs[i], atol=1e-6)
    assert len({o.tobytes() for o in outs}) >= 2


def test_appending_an_op_keeps_earlier_randomness(image):
    base = "random_resized_crop(16)|flip_lr|color_jitter(p=1)"
    out = lambda spec: pp.parse(spec)({"image": image}, SEED)["image"].numpy()
    np.testing.assert_array_equal(out(base + "|keep('image')"), out(base))
    np.testing.assert_array_equal(out(base + "|solarize(p=0)|random_grayscale(0)"), out(base))
    assert not np.array_equal(out("flip_lr|" + base), out(base))  # positions matter: an op inserted first shifts them


# ----------------------------------------------------------------------------------------------
# pp string errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("decode|flip_lrr", r"Unknown pp op 'flip_lrr' \(element 1.*Did you mean 'flip_lr'.*Known pp ops: .*central_crop"),
    ("decode||flip_lr", r"Malformed pp string at column 7"),
    ("decode|resize(16", r"Malformed pp string at column 13"),
    ("decode|resize(size)", r"argument 'size' of op 'resize' is not a literal"),
    ("decode|resize(16)[0]", r"is not an op name or op call"),
    ("decode|resize(16, 2, 3)", r"'resize' \(element 1.*too many positional arguments.*signature is resize\(size"),
    ("decode|resize(16, sise=2)", r"unexpected keyword argument 'sise'"),
    ("decode|resize(-3)", r"'resize': size must be a positive int or \(height, width\), got -3"),
    ("decode|flip_lr(p=2)", r"'flip_lr': p must be in \[0, 1\]"),
    ("decode|mixup(0.2)", r"batch pp op 'mixup'.*does not belong here: use it in pp.parse_batch"),
    (["decode"], r"A pp string must be a str"),
])
def test_bad_pp_strings_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        pp.parse(spec)


def test_bad_batch_pp_strings_are_config_errors():
    with pytest.raises(ConfigError, match=r"pp op 'flip_lr'.*use it in pp.parse, per example"):
        pp.parse_batch("flip_lr")
    with pytest.raises(ConfigError, match=r"Unknown batch pp op 'mixupp'.*Did you mean 'mixup'"):
        pp.parse_batch("mixupp")


def test_empty_spec_is_the_identity(image):
    np.testing.assert_array_equal(run_image("  ", image), image)
    assert pp.parse_calls("decode|resize(16, method='bicubic')|value_range") == [
        pp.OpCall("decode", (), {}, 0), pp.OpCall("resize", (16,), {"method": "bicubic"}, 7),
        pp.OpCall("value_range", (), {}, 36)]
