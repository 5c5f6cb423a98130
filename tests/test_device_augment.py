"""On-device (JAX) augmentation against the host tf.data ops of the same names.

The two sides use different random number generators, so they cannot agree pixel for pixel.
Each op is run on the same 256 real images on both sides and a per-image statistic that the op
moves (fraction flipped, brightness factor, crop area, ...) is compared: fractions within 4
binomial standard errors of each other and of p; continuous statistics by a two-sample KS test
at level ALPHA (the seeds are fixed, so the outcome is deterministic; the level says how much
margin it has). Where the randomness can be made to coincide (the same crop box, an example
both sides greyed) the pixels are compared directly.
"""
from __future__ import annotations

import functools
import io
import os
import subprocess
import sys
import textwrap
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from helpers import REPO
from PIL import Image
from scipy import stats

from vision_jax.data import device_augment as da
from vision_jax.data import pp
from vision_jax.data.device_augment import DEVICE_AUGMENTATIONS
from vision_jax.errors import ConfigError, DataError

CIFAR_ZIP = REPO.parent / "shared" / "data" / "cifar10" / "cifar10_train_jpeg.zip"
NUM_IMAGES = 256
SIDE = 32
ALPHA = 1e-3  # KS level: a real difference of the size we care about gives p far below this
LUMA = np.array([0.2989, 0.5870, 0.1140])


# ----------------------------------------------------------------------------------------------
# Data and runners
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """256 real images, uint8 [256, 32, 32, 3]: CIFAR-10 JPEGs spread over the classes when
    ../shared is present, else sklearn digits upsampled to 32 px (nearest) and tinted so channels differ."""
    if CIFAR_ZIP.is_file():
        with zipfile.ZipFile(CIFAR_ZIP) as archive:
            names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
            chosen = names[:: len(names) // NUM_IMAGES][:NUM_IMAGES]
            return np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB")) for n in chosen])
    from sklearn.datasets import load_digits

    digits = load_digits().images[:NUM_IMAGES] / 16.0  # [256, 8, 8] in [0, 1]
    # Nearest-neighbour upsampling keeps sharp strokes: the blur tests need high-frequency detail
    # to remove, which bilinear upsampling had already smoothed away (they failed without ../shared).
    ink = tf.image.resize(digits[..., None], (SIDE, SIDE), method="nearest").numpy()
    rng = np.random.default_rng(0)
    paper, pen = rng.uniform(0, 1, (2, NUM_IMAGES, 1, 1, 3))
    return np.round(255 * (paper + (pen - paper) * np.clip(ink, 0, 1))).astype(np.uint8)


def position_coded_image() -> np.ndarray:
    """uint8 [32, 32, 3] whose red is 8 x + 4 and green 8 y + 4 (pixel centres, exact in uint8),
    so the input coordinates an output pixel was sampled from can be read back."""
    ramp = 8 * np.arange(SIDE) + 4
    return np.stack([np.broadcast_to(ramp[None, :], (SIDE, SIDE)), np.broadcast_to(ramp[:, None], (SIDE, SIDE)),
                     np.zeros((SIDE, SIDE))], axis=-1).astype(np.uint8)


def host(spec: str, images_uint8: np.ndarray, seed: int = 0) -> np.ndarray:
    """The host pp string on every image, example i with seed (seed, i), inside tf.data."""
    fn = pp.parse(spec)
    dataset = (tf.data.Dataset.from_tensor_slices({"image": images_uint8}).enumerate()
               .map(lambda i, data: fn(data, tf.stack([tf.constant(seed, tf.int64), i]))["image"])
               .batch(len(images_uint8)))
    return next(iter(dataset)).numpy()


def device(op, images_uint8: np.ndarray, seed: int = 0, **options) -> np.ndarray:
    """The jitted device op on the whole batch, in [0, 1] as the host's 'decode' gives."""
    fn = jax.jit(functools.partial(op, **options))
    # Scaled by numpy as the host does (XLA would multiply by 1/255: a different last bit).
    return np.asarray(fn(unit(images_uint8), jax.random.key(seed)))


def unit(images_uint8: np.ndarray) -> np.ndarray:
    return images_uint8.astype(np.float32) / 255.0


def assert_fraction(name: str, host_flags: np.ndarray, device_flags: np.ndarray, p: float) -> None:
    n = len(host_flags)
    tolerance = 4 * np.sqrt(p * (1 - p) / n)  # 4 binomial standard errors
    host_fraction, device_fraction = host_flags.mean(), device_flags.mean()
    assert abs(host_fraction - p) < tolerance, f"host {name}: {host_fraction:.3f} vs p={p}"
    assert abs(device_fraction - p) < tolerance, f"device {name}: {device_fraction:.3f} vs p={p}"
    assert abs(host_fraction - device_fraction) < np.sqrt(2) * tolerance, (name, host_fraction, device_fraction)


def assert_same_distribution(name: str, host_values: np.ndarray, device_values: np.ndarray) -> None:
    result = stats.ks_2samp(host_values, device_values)
    assert result.pvalue > ALPHA, (
        f"{name}: host and device differ (KS D={result.statistic:.3f}, p={result.pvalue:.1e}); host mean "
        f"{host_values.mean():.4f} std {host_values.std():.4f}, device mean {device_values.mean():.4f} "
        f"std {device_values.std():.4f}")


def changed(out: np.ndarray, images_unit: np.ndarray) -> np.ndarray:
    return np.abs(out - images_unit).max(axis=(1, 2, 3)) > 1e-6


# ----------------------------------------------------------------------------------------------
# Flip, grayscale, solarize: how often, and the same pixels when applied
# ----------------------------------------------------------------------------------------------


def test_flip_lr_flips_half_the_examples_like_the_host(images):
    x = unit(images)
    mirrored = x[:, :, ::-1]
    flags = {}
    for side, out in (("host", host("decode|flip_lr(p=0.5)", images)), ("device", device(da.flip_lr, images, p=0.5))):
        flipped = np.abs(out - mirrored).max(axis=(1, 2, 3)) < 1e-6
        kept = np.abs(out - x).max(axis=(1, 2, 3)) < 1e-6
        assert np.all(flipped ^ kept), f"{side}: every output is the image or its mirror, never both or neither"
        flags[side] = flipped
    assert_fraction("fraction flipped", flags["host"], flags["device"], 0.5)


def test_random_grayscale_greys_p_of_the_examples_with_the_host_luma(images):
    x = unit(images)
    host_out = host("decode|random_grayscale(p=0.2)", images)
    device_out = device(da.random_grayscale, images, p=0.2)
    colourful = np.ptp(x, axis=-1).max(axis=(1, 2)) > 0.05  # greying them is visible
    grey = {side: (np.ptp(out, axis=-1).max(axis=(1, 2)) < 1e-6) & colourful
            for side, out in (("host", host_out), ("device", device_out))}
    assert_fraction("fraction grey", grey["host"][colourful], grey["device"][colourful], 0.2)
    both = grey["host"] & grey["device"]
    assert both.sum() >= 3
    np.testing.assert_allclose(device_out[both], host_out[both], atol=2e-6)
    np.testing.assert_allclose(device_out[both][..., 0], x[both] @ LUMA, atol=2e-6)


def test_solarize_inverts_bright_pixels_of_p_of_the_examples_as_the_host(images):
    x = unit(images)
    host_out = host("decode|solarize(p=0.2, threshold=0.5)", images)
    device_out = device(da.solarize, images, p=0.2, threshold=0.5)
    assert_fraction("fraction solarized", changed(host_out, x), changed(device_out, x), 0.2)
    both = changed(host_out, x) & changed(device_out, x)
    assert both.sum() >= 3
    np.testing.assert_array_equal(device_out[both], host_out[both])
    np.testing.assert_array_equal(device_out[both], np.where(x[both] >= 0.5, 1 - x[both], x[both]))


# ----------------------------------------------------------------------------------------------
# Colour jitter: the distribution of each factor, one component at a time, then all four
# ----------------------------------------------------------------------------------------------


def _luma(images_unit):
    return images_unit @ LUMA


def _chroma(images_unit):
    return np.sqrt(((images_unit - _luma(images_unit)[..., None]) ** 2).sum(axis=(1, 2, 3)))


def _hue_shift(out, images_unit):
    """Saturation-weighted circular mean of the per-pixel hue change, in turns."""
    hsv_in, hsv_out = tf.image.rgb_to_hsv(images_unit).numpy(), tf.image.rgb_to_hsv(out).numpy()
    shift = (hsv_out[..., 0] - hsv_in[..., 0] + 0.5) % 1.0 - 0.5
    weight = hsv_in[..., 1] * hsv_in[..., 2] + 1e-12  # grey images: the plain mean, ~0
    return (shift * weight).sum(axis=(1, 2)) / weight.sum(axis=(1, 2))


# name -> (jitter strengths, per-image statistic that estimates the factor, std of the factor)
JITTER_COMPONENTS = {
    "brightness": ((0.4, 0, 0, 0), lambda out, x: out.mean(axis=(1, 2, 3)) / x.mean(axis=(1, 2, 3)), 0.8 / np.sqrt(12)),
    "contrast": ((0, 0.4, 0, 0), lambda out, x: _luma(out).std(axis=(1, 2)) / _luma(x).std(axis=(1, 2)),
                 0.8 / np.sqrt(12)),
    "saturation": ((0, 0, 0.4, 0), lambda out, x: _chroma(out) / _chroma(x), 0.8 / np.sqrt(12)),
    "hue": ((0, 0, 0, 0.1), _hue_shift, 0.2 / np.sqrt(12)),
}


@pytest.mark.parametrize("component", list(JITTER_COMPONENTS))
def test_color_jitter_component_factor_has_the_host_distribution(images, component):
    strengths, statistic, factor_std = JITTER_COMPONENTS[component]
    x = unit(images)
    brightness, contrast, saturation, hue = strengths
    host_out = host(f"decode|color_jitter({brightness}, {contrast}, {saturation}, {hue}, p=1.0)", images)
    device_out = device(da.color_jitter, images, brightness=brightness, contrast=contrast,
                        saturation=saturation, hue=hue, p=1.0)
    # Images with (almost) no colour or no contrast have no measurable factor.
    usable = (_chroma(x) > 1.0) & (_luma(x).std(axis=(1, 2)) > 0.02)
    assert usable.sum() > 0.8 * NUM_IMAGES
    host_values, device_values = statistic(host_out, x)[usable], statistic(device_out, x)[usable]
    assert device_values.std() > 0.5 * factor_std, f"device {component} barely moves: std {device_values.std()}"
    assert_same_distribution(f"color_jitter {component}", host_values, device_values)


def test_color_jitter_all_components_random_order_with_probability_like_the_host(images):
    x = unit(images)
    host_out = host("decode|color_jitter(0.4, 0.4, 0.2, 0.1, p=0.8)", images)
    device_out = device(da.color_jitter, images, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.8)
    assert_fraction("fraction jittered", changed(host_out, x), changed(device_out, x), 0.8)
    for name, statistic in (("mean change", lambda out: np.abs(out - x).mean(axis=(1, 2, 3))),
                            ("hue shift", lambda out: _hue_shift(out, x))):
        assert_same_distribution(f"color_jitter {name}", statistic(host_out), statistic(device_out))


# ----------------------------------------------------------------------------------------------
# Gaussian blur
# ----------------------------------------------------------------------------------------------


def _high_frequency_energy(images_unit):
    dx = np.diff(images_unit, axis=2) ** 2
    dy = np.diff(images_unit, axis=1) ** 2
    return dx.sum(axis=(1, 2, 3)) + dy.sum(axis=(1, 2, 3))


def test_gaussian_blur_removes_the_host_distribution_of_high_frequency_energy(images):
    x = unit(images)
    host_out = host("decode|gaussian_blur(p=1.0, sigma=(0.1, 2.0))", images)
    device_out = device(da.gaussian_blur, images, p=1.0, sigma=(0.1, 2.0))
    reduction = {side: _high_frequency_energy(out) / _high_frequency_energy(x)
                 for side, out in (("host", host_out), ("device", device_out))}
    # sigma ~ U(0.1, 2): from untouched (sigma 0.1) to most detail gone.
    assert reduction["device"].max() > 0.95 and reduction["device"].min() < 0.3
    assert_same_distribution("blur energy kept", reduction["host"], reduction["device"])


# ----------------------------------------------------------------------------------------------
# Random resized crop: box distribution (read back from a position-coded image) and pixels
# ----------------------------------------------------------------------------------------------


def read_boxes(coded_outputs: np.ndarray) -> np.ndarray:
    """(top, left, height, width) of the box each output [N, S, S, 3] of `position_coded_image`
    was resized from. Output pixel u samples input coordinate x0 - 0.5 + (u + 0.5) w / S, exactly
    where the kernel lies inside the box (the middle columns give the slope w / S); near the
    edges the truncated kernel biases it inwards symmetrically, so the mean over all columns is
    still the box centre x0 - 0.5 + w / 2."""
    size = coded_outputs.shape[1]
    coordinates = (coded_outputs.astype(np.float64) * 255.0 - 4.0) / 8.0
    columns = coordinates[..., 0].mean(axis=1)  # red encodes x: [N, S] over output columns
    rows = coordinates[..., 1].mean(axis=2)  # green encodes y
    middle = np.arange(3 * size // 8, 5 * size // 8)
    boxes = []
    for along in (rows, columns):
        step = np.polyfit(middle, along[:, middle].T, 1)[0]
        extent = step * size
        start = along.mean(axis=1) + 0.5 - extent / 2
        boxes.append((start, extent))
    (top, height), (left, width) = boxes
    return np.round(np.stack([top, left, height, width], axis=1)).astype(np.int64)


@functools.partial(jax.jit, static_argnums=1)
def _device_crop_boxes(key, count: int):
    uniforms = da.example_uniforms(key, count, da.CROP_BOX_UNIFORMS + 1)[:, 1:]  # uniform 0: the coin
    return jax.vmap(lambda u: da.sample_crop_box(u, SIDE, SIDE))(uniforms)


def device_crop_boxes(seed: int, count: int) -> np.ndarray:
    """The boxes `da.random_resized_crop` draws for examples 0..count-1 with key(seed)."""
    return np.asarray(_device_crop_boxes(jax.random.key(seed), count))


def torchvision_crop_boxes(count: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision.transforms.RandomResizedCrop.get_params, transcribed loop for loop."""
    boxes = []
    for _ in range(count):
        for _ in range(10):
            area = SIDE * SIDE * rng.uniform(*scale)
            aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
            w, h = round(float(np.sqrt(area * aspect))), round(float(np.sqrt(area / aspect)))
            if 0 < w <= SIDE and 0 < h <= SIDE:
                boxes.append((rng.integers(0, SIDE - h + 1), rng.integers(0, SIDE - w + 1), h, w))
                break
        else:
            boxes.append((0, 0, SIDE, SIDE))  # square input: the central crop is the whole image
    return np.array(boxes)


def _area_and_aspect(boxes):
    return boxes[:, 2] * boxes[:, 3] / SIDE**2, boxes[:, 3] / boxes[:, 2]


@pytest.fixture(scope="module")
def coded_batch():
    return np.repeat(position_coded_image()[None], NUM_IMAGES, axis=0)


def test_crop_boxes_can_be_read_back_from_the_position_coded_image(coded_batch):
    out = device(da.random_resized_crop, coded_batch, seed=3, size=SIDE)
    np.testing.assert_array_equal(read_boxes(out), device_crop_boxes(3, NUM_IMAGES))


def test_device_crop_boxes_follow_torchvision_sampling():
    count = 2048
    device_area, device_aspect = _area_and_aspect(device_crop_boxes(0, count))
    torch_area, torch_aspect = _area_and_aspect(torchvision_crop_boxes(count, np.random.default_rng(0)))
    assert_same_distribution("crop area fraction", torch_area, device_area)
    assert_same_distribution("crop aspect ratio", torch_aspect, device_aspect)
    assert device_area.min() >= 0.06 and device_area.max() <= 1.0  # 0.08 of 1024 px, rounded


def test_crop_box_distribution_matches_the_host(coded_batch):
    host_area, host_aspect = _area_and_aspect(read_boxes(host(f"decode|random_resized_crop({SIDE})", coded_batch)))
    device_area, device_aspect = _area_and_aspect(read_boxes(device(da.random_resized_crop, coded_batch, size=SIDE)))
    assert_same_distribution("crop area fraction", host_area, device_area)
    assert_same_distribution("crop aspect ratio", host_aspect, device_aspect)


def test_crop_pixels_equal_the_host_crop_of_the_same_box(images, coded_batch):
    # The host draws a box from (seed, shape) only, so the coded image shows the box it cut
    # from each real image. Both sides resample with Keys' cubic (a = -0.5), antialiased, over
    # the box's pixels only, so they agree to float rounding (not just the ~1e-2 that a
    # different kernel, or jax.image.scale_and_translate's bleeding across the box edge, give).
    spec = f"decode|random_resized_crop({SIDE})"
    host_out = host(spec, images, seed=7)
    boxes = read_boxes(host(spec, coded_batch, seed=7))
    resized = jax.jit(jax.vmap(lambda image, box: da.crop_and_resize(image, box, SIDE)))(unit(images), boxes)
    np.testing.assert_allclose(np.clip(np.asarray(resized), 0, 1), host_out, atol=1e-4)
    assert len(np.unique(boxes, axis=0)) > NUM_IMAGES // 2  # the boxes vary: not one lucky box


# ----------------------------------------------------------------------------------------------
# Recipes: shapes, ranges, determinism, per-example randomness, sharding invariance
# ----------------------------------------------------------------------------------------------


def recipe_batch(images_uint8: np.ndarray) -> dict:
    return {"image": jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0,
            "label": jnp.arange(len(images_uint8), dtype=jnp.int32)}


@pytest.fixture(scope="module")
def simclr():
    """One compiled program for the recipe tests below: same shapes, first_index always passed
    (jit caches on the call's structure) and traced."""
    compiled = jax.jit(DEVICE_AUGMENTATIONS.build("simclr", {"size": 16}))
    return lambda batch, key, first_index=0: compiled(batch, key, first_index)


def test_simclr_recipe_shapes_ranges_and_determinism(images, simclr):
    batch = recipe_batch(images[:16])
    out = simclr(batch, jax.random.key(0))
    assert set(out) == {"views", "label"}
    assert out["views"].shape == (16, 2, 16, 16, 3) and out["views"].dtype == jnp.float32
    assert -1.0 <= float(out["views"].min()) and float(out["views"].max()) <= 1.0
    np.testing.assert_array_equal(out["label"], batch["label"])
    again = simclr(batch, jax.random.key(0))
    np.testing.assert_array_equal(out["views"], again["views"])
    other = simclr(batch, jax.random.key(1))
    assert not np.allclose(out["views"], other["views"])


def test_every_example_and_view_gets_its_own_randomness(images, simclr):
    same_image = np.repeat(images[:1], 16, axis=0)
    views = np.asarray(simclr(recipe_batch(same_image), jax.random.key(0))["views"]).reshape(32, -1)
    distances = np.abs(views[:, None] - views[None]).max(axis=-1)
    assert np.all(distances[~np.eye(32, dtype=bool)] > 1e-3)


def test_result_does_not_depend_on_how_the_batch_is_split(images, simclr):
    # What a process holding examples 8..15 of the global batch computes for them, with
    # first_index=8, is what the whole batch gives them. (Rows 8.. of the rolled batch stand for
    # examples 16..23: they only keep the shapes, and so the compiled program, the same.)
    batch = recipe_batch(images[:16])
    whole = np.asarray(simclr(batch, jax.random.key(5))["views"])
    rolled = {k: jnp.roll(v, -8, axis=0) for k, v in batch.items()}
    second_half = np.asarray(simclr(rolled, jax.random.key(5), first_index=8)["views"])
    np.testing.assert_allclose(second_half[:8], whole[8:], atol=1e-6)
    assert not np.allclose(second_half[8:], whole[:8])  # other indices, other randomness


def test_byol_recipe_makes_two_asymmetric_views(images):
    byol = jax.jit(DEVICE_AUGMENTATIONS.build("byol", {}))
    views = np.asarray(byol(recipe_batch(images[:64]), jax.random.key(0))["views"])
    assert views.shape == (64, 2, SIDE, SIDE, 3) and -1 <= views.min() and views.max() <= 1
    energy = [_high_frequency_energy((views[:, v] + 1) / 2) for v in (0, 1)]
    # View 1 is always blurred, view 2 only with probability 0.1: it keeps more detail.
    assert np.median(energy[0]) < 0.8 * np.median(energy[1])


def test_crop_flip_recipe_takes_windows_of_the_reflect_padded_image(images):
    crop_flip = jax.jit(DEVICE_AUGMENTATIONS.build("crop_flip", {}))
    batch = recipe_batch(images[:64])
    out = np.asarray(crop_flip(batch, jax.random.key(0))["image"])
    padded = np.pad(np.asarray(batch["image"]), ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    offsets, flips = [], []
    for i in range(64):
        windows = {(top, left): padded[i, top:top + SIDE, left:left + SIDE] for top in range(9) for left in range(9)}
        matches = [(offset, flip) for offset, window in windows.items() for flip in (False, True)
                   if np.array_equal(window[:, ::-1] if flip else window, out[i])]
        assert matches, f"example {i} is not a (flipped) window of its padded image"
        offsets.append(matches[0][0])
        flips.append(matches[0][1])
    assert len(set(offsets)) > 20 and 0.25 < np.mean(flips) < 0.75


def test_jitted_recipe_on_eight_sharded_devices_equals_one_device(images, simclr, tmp_path):
    # Both kinds of mesh axes: Auto (what vision_jax.parallel builds; XLA partitions the vmapped
    # ops) and Explicit (shardings are part of the array types). The one-device reference is
    # this process's `simclr` program.
    batch = recipe_batch(images[:16])
    np.save(tmp_path / "image.npy", np.asarray(batch["image"]))
    script = textwrap.dedent(f"""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
        from vision_jax.data.device_augment import DEVICE_AUGMENTATIONS
        assert jax.device_count() == 8
        fn = jax.jit(DEVICE_AUGMENTATIONS.build("simclr", {{"size": 16}}))
        image = np.load("{tmp_path}/image.npy")
        for axis_type in (AxisType.Auto, AxisType.Explicit):
            mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
            with jax.set_mesh(mesh):
                sharded = jax.device_put(image, NamedSharding(mesh, P("data")))
                views = fn({{"image": sharded}}, jax.random.key(1))["views"]
            assert views.sharding.spec[0] == "data" and len(views.sharding.device_set) == 8, views.sharding
            np.save(f"{tmp_path}/{{axis_type.name}}.npy", np.asarray(views))
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    one_device = np.asarray(simclr(batch, jax.random.key(1))["views"])
    for axis_type in ("Auto", "Explicit"):
        # Partitioned programs fuse differently: float rounding, no more.
        np.testing.assert_allclose(np.load(tmp_path / f"{axis_type}.npy"), one_device, atol=1e-5, err_msg=axis_type)


# ----------------------------------------------------------------------------------------------
# Mistakes
# ----------------------------------------------------------------------------------------------


def test_bad_options_and_batches_are_clear_errors():
    with pytest.raises(ConfigError, match=r"jitter_prob must be a probability in \[0, 1\]; got 1.5"):
        DEVICE_AUGMENTATIONS.build("simclr", {"jitter_prob": 1.5})
    with pytest.raises(ConfigError, match="has no option 'blur'.*Did you mean 'blur_probs'"):
        DEVICE_AUGMENTATIONS.build("byol", {"blur": 0.5})
    with pytest.raises(ConfigError, match="crop_scale must be"):
        DEVICE_AUGMENTATIONS.build("simclr", {"crop_scale": (0.5, 0.1)})
    with pytest.raises(ConfigError, match=r"hue must be in \[0, 0.5\]"):
        da.color_jitter(jnp.zeros((1, 8, 8, 3)), jax.random.key(0), hue=0.7)
    with pytest.raises(DataError, match=r"needs batch\['image'\].*\['views'\]"):
        DEVICE_AUGMENTATIONS.build("crop_flip", {})({"views": jnp.zeros((2, 8, 8, 3))}, jax.random.key(0))
    with pytest.raises(DataError, match=r"images \[batch, height, width, 3\]; got shape \(8, 8, 3\)"):
        da.flip_lr(jnp.zeros((8, 8, 3)), jax.random.key(0))


def test_host_and_device_recipes_of_one_name_take_the_same_options():
    # A recipe moved between host and device (the recipes' `on_device` argument) keeps its options.
    import inspect

    from vision_jax.data.views import AUGMENTATIONS

    shared = set(AUGMENTATIONS.names()) & set(DEVICE_AUGMENTATIONS.names())
    assert {"simclr", "byol", "crop_flip"} <= shared
    for name in shared:
        host = inspect.signature(AUGMENTATIONS.get(name)).parameters
        device = inspect.signature(DEVICE_AUGMENTATIONS.get(name)).parameters
        assert {k: p.default for k, p in host.items()} == {k: p.default for k, p in device.items()}, name
