"""View recipes (data/views.py): shapes, determinism, tf.data, and each paper's parameters, measured."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from helpers import REPO
from PIL import Image

from vision_jax.data import ops, pipeline, show_views
from vision_jax.data.sources import SOURCES
from vision_jax.data.views import AUGMENTATIONS
from vision_jax.errors import ConfigError

NUM_SEEDS = 200  # for the measured probabilities: binomial std <= 0.035 (tolerance 0.08; seeds are fixed)


@pytest.fixture(scope="module")
def digits():
    return SOURCES.build("digits", {}, split="train[:64]", image_size=16)


def outputs_over_seeds(augment, images: list[np.ndarray], n: int = NUM_SEEDS) -> list[dict[str, np.ndarray]]:
    """For each image, its augmentations under seeds (0, 0) .. (0, n-1), all in one tf.data pass."""
    repeated = np.repeat(np.stack(images), n, axis=0)
    seeds = np.stack([np.zeros(len(repeated), np.int64), np.tile(np.arange(n), len(images))], -1)
    fn = tf.autograph.experimental.do_not_convert(augment)
    out = next(tf.data.Dataset.from_tensor_slices((repeated, seeds)).map(fn).batch(len(repeated)).as_numpy_iterator())
    return [{k: v[i * n:(i + 1) * n] for k, v in out.items()} for i in range(len(images))]


# ----------------------------------------------------------------------------------------------
# Every recipe: shapes, range, determinism, inside the training pipeline on digits
# ----------------------------------------------------------------------------------------------

RECIPES = [
    ("none", {}, {"image": (16, 16, 3)}),
    ("none", {"size": 8}, {"image": (8, 8, 3)}),
    ("crop_flip", {}, {"image": (16, 16, 3)}),
    ("pp", {"spec": "decode|randaugment(2, 9)|value_range(-1, 1)"}, {"image": (16, 16, 3)}),
    ("simclr", {"num_views": 3, "size": 12, "blur_prob": 0.5}, {"views": (3, 12, 12, 3)}),
    ("byol", {}, {"views": (2, 16, 16, 3)}),
    ("dino", {"global_size": 16, "local_size": 8, "num_local": 3}, {"global_views": (2, 16, 16, 3),
                                                                    "local_views": (3, 8, 8, 3)}),
    ("mae", {}, {"image": (16, 16, 3)}),
]


@pytest.mark.parametrize("name, options, shapes", RECIPES, ids=[f"{r[0]}-{i}" for i, r in enumerate(RECIPES)])
def test_recipe_in_the_training_pipeline(digits, name, options, shapes):
    augment = AUGMENTATIONS.build(name, options)
    batch = next(pipeline.train_batches(digits, augment, global_batch=4, seed=0, start_step=0))
    assert set(batch) == {*shapes, "label"}
    for key, shape in shapes.items():
        assert batch[key].shape == (4, *shape) and batch[key].dtype == np.float32
        assert -1 <= batch[key].min() and batch[key].max() <= 1
        assert np.ptp(batch[key]) > 0.5  # not collapsed to a constant
    assert batch["label"].shape == (4,)
    # The same seed reproduces the output, another seed changes it (eagerly; the pipeline's own
    # determinism is tested in test_data.py).
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    first, again = (augment(image, tf.constant([5, 6], tf.int64)) for _ in range(2))
    other = augment(image, tf.constant([5, 7], tf.int64))
    for key in shapes:
        np.testing.assert_array_equal(again[key].numpy(), first[key].numpy())
        assert (name == "none") == np.array_equal(other[key].numpy(), first[key].numpy())  # only 'none' is fixed


def test_views_of_one_image_differ():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    seed = tf.constant([1, 2], tf.int64)
    for name, key in (("simclr", "views"), ("byol", "views"), ("dino", "local_views")):
        options = {"global_size": 16, "local_size": 8, "num_local": 2} if name == "dino" else {}
        views = AUGMENTATIONS.build(name, options)(tf.constant(image), seed)[key].numpy()
        assert not np.array_equal(views[0], views[1]), name


def test_dino_without_local_crops():
    out = AUGMENTATIONS.build("dino", {"global_size": 16, "num_local": 0, "local_size": 8})(
        tf.zeros([16, 16, 3], tf.uint8), tf.constant([0, 1], tf.int64))
    assert out["global_views"].shape == (2, 16, 16, 3) and out["local_views"].shape == (0, 8, 8, 3)


def test_normalize_option_gives_imagenet_standardized_output():
    colour = np.array([200, 60, 120], np.uint8)
    image = np.broadcast_to(colour, (16, 16, 3)).copy()
    out = AUGMENTATIONS.build("mae", {"normalize": True})(tf.constant(image), tf.constant([0, 1], tf.int64))["image"]
    expected = (colour / 255 - np.array(ops.IMAGENET_MEAN)) / np.array(ops.IMAGENET_STD)
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(expected, (16, 16, 3)), atol=1e-5)


def test_bad_recipe_options_fail_at_build_time():
    with pytest.raises(ConfigError, match="Unknown pp op 'decodee'"):
        AUGMENTATIONS.build("pp", {"spec": "decodee|value_range"})
    with pytest.raises(ConfigError, match=r"'random_resized_crop': scale must be \(min, max\)"):
        AUGMENTATIONS.build("simclr", {"crop_scale": (0.5, 0.1)})
    with pytest.raises(ConfigError, match="num_local must be >= 0"):
        AUGMENTATIONS.build("dino", {"num_local": -1})


# ----------------------------------------------------------------------------------------------
# The papers' parameters, measured over many seeds
# ----------------------------------------------------------------------------------------------

WHITE = np.full((16, 16, 3), 255, np.uint8)


def solarized(views: np.ndarray) -> np.ndarray:
    """Which views of the all-white image were solarized. Crops, flips, contrast, saturation, hue,
    grayscale and blur leave a white image one grey level c; brightness keeps c >= 0.6, and
    solarizing maps it to 1 - c <= 0.4. So in [-1, 1]: solarized iff below 0."""
    level = views.mean(axis=(-3, -2, -1))
    assert np.allclose(views, level[..., None, None, None], atol=1e-4)  # still one flat grey
    return level < 0


def pattern() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grey 16x16 image: a left/right step plus a fine checkerboard, in [0.05, 0.25] so that no
    jitter clips it and no solarize touches it. Brightness and contrast scale both components
    alike; a blur shrinks the checkerboard far more than the step."""
    y, x = np.mgrid[:16, :16]
    step = np.where(x < 8, -1.0, 1.0)
    checker = np.where((x + y) % 2, -1.0, 1.0)
    image = 0.15 + 0.05 * step + 0.05 * checker
    return np.round(np.repeat(image[..., None], 3, -1) * 255).astype(np.uint8), step, checker


def blurred(views: np.ndarray) -> np.ndarray:
    """Which views of `pattern()` were blurred: the checkerboard lost over half its amplitude
    relative to the step. With the 3x3 kernel of a 16 px image, that is sigma > ~0.45, i.e. a
    fraction (2 - 0.45) / 1.9 ~ 0.82 of blurred views (sigma ~ U(0.1, 2))."""
    _, step, checker = pattern()
    grey = views.mean(-1)
    step_amp = np.abs((grey * step).mean(axis=(-2, -1)))  # abs: a flip negates both projections
    checker_amp = np.abs((grey * checker).mean(axis=(-2, -1)))
    return checker_amp / step_amp < 0.5


BLUR_DETECTED = 0.82  # fraction of blurred views that `blurred` sees (sigma > ~0.45)


def assert_fraction(flags: np.ndarray, expected: float, what: str, tolerance: float = 0.08) -> None:
    fraction = float(np.mean(flags))
    assert abs(fraction - expected) <= tolerance, f"{what}: measured {fraction:.3f}, expected ~{expected:.3f}"


def test_pattern_detectors_see_what_they_claim():
    image, _, _ = pattern()
    unit = image / 255.0
    assert not blurred(unit * 2 - 1).any()
    strong = ops.OPS.build("gaussian_blur", {"p": 1, "sigma": (1.0, 1.0)})({"image": tf.constant(unit, tf.float32)},
                                                                             tf.constant([0, 0], tf.int64))
    assert blurred(strong["image"].numpy() * 2 - 1)
    weak = ops.OPS.build("gaussian_blur", {"p": 1, "sigma": (0.2, 0.2)})({"image": tf.constant(unit, tf.float32)},
                                                                          tf.constant([0, 0], tf.int64))
    assert not blurred(weak["image"].numpy() * 2 - 1)


def test_byol_view_1_always_blurred_never_solarized_view_2_the_reverse():
    # crop_scale (1, 1): the whole image, so that the measurements see the other ops only.
    byol = AUGMENTATIONS.build("byol", {"crop_scale": (1.0, 1.0)})
    white, patterned = outputs_over_seeds(byol, [WHITE, pattern()[0]])
    solar = solarized(white["views"])
    assert not solar[:, 0].any()
    assert_fraction(solar[:, 1], 0.2, "BYOL view 2 solarize")
    blur = blurred(patterned["views"])
    assert_fraction(blur[:, 0], 1.0 * BLUR_DETECTED, "BYOL view 1 blur")
    assert_fraction(blur[:, 1], 0.1 * BLUR_DETECTED, "BYOL view 2 blur")


def test_dino_global_and_local_crops():
    dino = AUGMENTATIONS.build("dino", {"global_size": 16, "global_scale": (1.0, 1.0), "num_local": 1,
                                        "local_size": 16, "local_scale": (1.0, 1.0)})
    white, patterned = outputs_over_seeds(dino, [WHITE, pattern()[0]])
    assert not solarized(white["global_views"][:, 0]).any()
    assert_fraction(solarized(white["global_views"][:, 1]), 0.2, "DINO global 2 solarize")
    assert not solarized(white["local_views"]).any()
    assert_fraction(blurred(patterned["global_views"][:, 0]), 1.0 * BLUR_DETECTED, "DINO global 1 blur")
    assert_fraction(blurred(patterned["global_views"][:, 1]), 0.1 * BLUR_DETECTED, "DINO global 2 blur")
    assert_fraction(blurred(patterned["local_views"]), 0.5 * BLUR_DETECTED, "DINO local blur")


def test_simclr_jitter_and_grayscale_probabilities():
    colour = np.broadcast_to(np.array([200, 60, 120], np.uint8), (16, 16, 3)).copy()
    simclr = AUGMENTATIONS.build("simclr", {"num_views": 1})
    views = outputs_over_seeds(simclr, [colour])[0]["views"][:, 0]
    grey = np.abs(views[..., 0] - views[..., 1]).max(axis=(1, 2)) < 1e-5
    unchanged = np.abs(views - (colour / 127.5 - 1)).max(axis=(1, 2, 3)) < 1e-4
    assert_fraction(grey, 0.2, "SimCLR grayscale")
    assert_fraction(unchanged, 0.2 * 0.8, "SimCLR neither jitter (p=0.8) nor grayscale (p=0.2)")


def test_mae_changes_no_colour():
    colour = np.broadcast_to(np.array([200, 60, 120], np.uint8), (16, 16, 3)).copy()
    views = outputs_over_seeds(AUGMENTATIONS.build("mae"), [colour], 50)[0]["image"]
    np.testing.assert_allclose(views, np.broadcast_to(colour / 127.5 - 1, views.shape), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The picture tool
# ----------------------------------------------------------------------------------------------


def test_show_views_writes_a_grid(tmp_path):
    out = tmp_path / "views.png"
    show_views.main([f"--config={REPO / 'configs' / 'simclr_digits.py'}", f"--out={out}", "--num_images=3",
                     "--cell_height=32", "--config.data.augment.jitter_strength=1.0"])
    picture = np.asarray(Image.open(out))
    gap, cell = show_views.GAP, 32
    assert picture.shape == (gap + 3 * (cell + gap), gap + 3 * (cell + gap), 3)  # original + 2 views per row
    cells = [[picture[gap + r * (cell + gap):][:cell, gap + c * (cell + gap):][:, :cell] for c in range(3)]
             for r in range(3)]
    for row in cells:
        assert np.ptp(row[0]) > 100  # the original digit is visible
        for view in row[1:]:
            assert not np.array_equal(view, row[0])


def test_show_views_rejects_unknown_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        show_views.main([f"--config={REPO / 'configs' / 'simclr_digits.py'}", f"--out={tmp_path / 'x.png'}", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
