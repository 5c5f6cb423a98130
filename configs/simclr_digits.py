r"""SimCLR on scikit-learn's digits with the small CNN: the main job, no download, ~4 min on 2 CPU cores.

    python -m vision_jax.train --config=configs/simclr_digits.py --workdir=/tmp/vj/simclr_digits
    python -m vision_jax.train --config=configs/simclr_digits.py:runlocal --workdir=/tmp/vj/smoke

Pretrains on 80% of the 1,797 digits (seeded split), then a kNN and a linear probe on the frozen
features score the held-out 20%, beside random-init features and raw pixels.
"""
from vision_jax.config import default_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, on_device=False, runlocal=False, steps=800, seed=0)
    c = default_config()
    c.seed = arg.seed
    c.total_steps = arg.steps
    c.batch_size = 256
    c.log_every = 50

    c.model.name = "cnn"
    c.model.widths = (16, 32, 64, 128)
    c.method.name = "simclr"
    c.method.temperature = 0.2
    c.method.projection_hidden_dim = 512
    c.method.projection_dim = 64

    c.optimizer.name = "adamw"
    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_steps = 30

    c.data.source.name = "digits"
    c.data.train_split = "train[:80%]"
    c.data.eval_train_split = "train[:80%]"
    c.data.eval_test_split = "train[80%:]"
    c.data.image_size = 16  # the 8x8 digits, upsampled
    c.data.augment.name = "simclr"
    c.data.augment.crop_scale = (0.3, 1.0)
    c.data.augment.flip = False  # a mirrored digit is often another digit (or none)
    c.data.augment.jitter_strength = 0.5

    if arg.on_device:  # the same views, made by jitted JAX ops on the accelerators (data/device_augment.py)
        c.data.device_augment = dict(c.data.augment, name="simclr")
        c.data.augment = dict(name="none")

    c.evaluators.knn = dict(k=20, temperature=0.07)
    c.evaluators.linear_probe = dict(epochs=30, batch_size=256, lr=0.01, weight_decay=1e-4)
    c.checkpoint.every_steps = 200

    if arg.runlocal:  # a smoke test of the whole path in seconds
        c.total_steps = 10
        c.batch_size = 32
        c.log_every = 5
        c.checkpoint.every_steps = 5
        c.evaluators.linear_probe.epochs = 5
    return c
