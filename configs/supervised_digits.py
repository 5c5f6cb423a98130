r"""Supervised small CNN on scikit-learn's digits: the supervised path, with its own classifier's
held-out accuracy beside kNN and linear-probe scores.

    python -m vision_jax.train --config=configs/supervised_digits.py --workdir=/tmp/vj/supervised_digits
    python -m vision_jax.train --config=configs/supervised_digits.py:runlocal --workdir=/tmp/vj/smoke
    # A ViT-Ti with 4x4 patches instead of the CNN, tensor parallel over 2 of 8 (fake) devices:
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m vision_jax.train \
        --config=configs/supervised_digits.py:vit,runlocal --workdir=/tmp/vj/vit --config.mesh.model=2 \
        --config.sharding=tensor_parallel
"""
from vision_jax.config import default_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, vit=False, steps=300, seed=0)
    c = default_config()
    c.seed = arg.seed
    c.total_steps = arg.steps
    c.batch_size = 128
    c.log_every = 50
    c.model.name = "cnn"
    c.model.widths = (16, 32, 64, 128)
    if arg.vit:  # 16 tokens of 4x4 pixels; drop path as DeiT regularizes small-data ViTs
        c.model = dict(name="vit", variant="Ti", patch_size=4, image_size=16, pool="gap", drop_path_rate=0.1)
    c.method.name = "supervised"
    c.optimizer.name = "adamw"
    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_steps = 20
    c.data.source.name = "digits"
    c.data.image_size = 16
    c.data.augment.name = "crop_flip"
    c.data.augment.padding = 2
    c.data.augment.flip = False
    c.evaluators.classification = dict()
    c.evaluators.knn = dict(k=20, temperature=0.07)
    c.evaluators.linear_probe = dict(epochs=30)
    c.checkpoint.every_steps = 100
    if arg.runlocal:
        c.total_steps, c.batch_size, c.log_every = 6, 32, 3
        c.checkpoint.every_steps = 3
        c.evaluators.linear_probe.epochs = 5
    return c
