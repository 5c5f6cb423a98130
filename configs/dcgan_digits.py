r"""DCGAN on scikit-learn's digits (no download): the quick GAN, a few minutes on 2 CPU cores.

    python -m vision_jax.train --config=configs/dcgan_digits.py --workdir=/tmp/vj/dcgan_digits
    python -m vision_jax.train --config=configs/dcgan_digits.py:runlocal --workdir=/tmp/vj/smoke
    # FID/KID in the features of a supervised digits classifier (train it first), beside an
    # untrained generator and the real-data floor:
    python -m vision_jax.train --config=configs/supervised_digits.py --workdir=/tmp/vj/supervised_digits
    python -m vision_jax.evaluate --config=configs/dcgan_digits.py:fid_features=checkpoint:/tmp/vj/supervised_digits \
        --workdir=/tmp/vj/dcgan_digits
    python -m vision_jax.sample --workdir=/tmp/vj/dcgan_digits --num=64 --out=/tmp/vj/digits_grid.png

The digits are 8x8 grey, upsampled to 16x16 (the generator needs 4 * 2^n pixels; 16 gives it two
upsampling layers). Settings as Radford et al. 2016 and the PyTorch DCGAN example: Adam lr 2e-4,
betas (0.5, 0.999), no weight decay, constant rate, non-saturating loss, one D update per G
update; the networks are narrower (base width 32) and z has 100 dimensions. Samples from fixed
noise go to WORKDIR/pictures every 100 steps.
"""
import common
from vision_jax.config import default_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, steps=1500, seed=0, fid_features="")
    c = default_config()
    c.seed = arg.seed
    c.total_steps = arg.steps
    c.batch_size = 128
    c.log_every = 100
    c.pictures_every = 100

    common.dcgan(c, image_size=16, base_width=32)

    c.data.source.name = "digits"
    c.data.train_split = "train[:80%]"
    c.data.eval_train_split = "train[:80%]"
    c.data.eval_test_split = "train[80%:]"  # the 360 held-out digits: FID's real images
    c.data.image_size = 16
    c.data.augment.name = "none"  # images in [-1, 1], as the generator's tanh makes them
    c.eval_baselines = ("random_init",)  # the untrained generator
    if arg.fid_features:
        c.evaluators.fid = dict(features=arg.fid_features, num_samples=2000, real_split="test",
                                kid_subsets=100, kid_subset_size=360)
    c.checkpoint.every_steps = 500

    if arg.runlocal:  # a smoke test of the whole path in seconds
        c.total_steps, c.batch_size, c.log_every, c.pictures_every = 4, 16, 2, 2
        c.checkpoint.every_steps = 2
        c.model.base_width = 8
        c.method.generator.base_width = 8
        if arg.fid_features:
            c.evaluators.fid.update(num_samples=100, kid_subsets=10)
    return c
