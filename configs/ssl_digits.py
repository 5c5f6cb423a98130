r"""BYOL, MoCo v3, DINO or MAE on scikit-learn's digits: the teacher-student methods with the small
CNN, MAE with a small ViT, on the main job's data, optimizer and evaluation
(configs/simclr_digits.py), in a few minutes on 2 CPU cores.

    python -m vision_jax.train --config=configs/ssl_digits.py:method=byol --workdir=/tmp/vj/byol_digits
    python -m vision_jax.train --config=configs/ssl_digits.py:method=dino,runlocal --workdir=/tmp/vj/smoke
    python -m vision_jax.train --config=configs/ssl_digits.py:method=mae,runlocal --workdir=/tmp/vj/smoke_mae

Heads are small (512 hidden), the EMA momentum starts at 0.99 (runs of hundreds of steps), and
the views are SimCLR's digit views (no flip), two per image; DINO adds 4 local crops of 8 px.
MAE trains a 4-block ViT-Ti on 4x4 patches of the 16 px digits (16 patches, 4 visible) with a
128-wide, 2-block decoder, on crops without flip, AdamW with MAE's betas (0.9, 0.95) and weight
decay 0.05; its reconstructions are drawn in WORKDIR/pictures/. An online linear probe trains
beside each method.
"""
import simclr_digits
from vision_jax.config import parse_arg
from vision_jax.errors import ConfigError

METHODS = {
    "byol": dict(name="byol", base_momentum=0.99, projection_hidden_dim=512, projection_dim=64,
                 prediction_hidden_dim=512),
    "mocov3": dict(name="mocov3", temperature=0.2, base_momentum=0.99, hidden_dim=512, projection_dim=64),
    "dino": dict(name="dino", out_dim=1024, hidden_dim=512, bottleneck_dim=64, base_momentum=0.99,
                 warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=5),
    "mae": dict(name="mae", mask_ratio=0.75, norm_pix_loss=False, decoder_width=128, decoder_depth=2,
                decoder_heads=4),
}


def get_config(arg=None):
    arg = parse_arg(arg, method="byol", runlocal=False, steps=800, seed=0)
    if arg.method not in METHODS:
        raise ConfigError(f"ssl_digits: method={arg.method!r} is not one of {', '.join(METHODS)} "
                          f"(SimCLR's recipe is configs/simclr_digits.py).")
    c = simclr_digits.get_config(f"runlocal={arg.runlocal},steps={arg.steps},seed={arg.seed}")
    c.method = METHODS[arg.method]
    views = dict(crop_scale=(0.3, 1.0), flip=False, jitter_strength=0.5)
    if arg.method == "mae":  # a 4-block ViT-Ti on 4x4 patches of the 16 px digits (16 patches, 4 visible)
        c.model = dict(name="vit", variant="Ti", depth=4, patch_size=4, image_size=16, posemb="sincos2d")
        c.data.augment = dict(name="mae", crop_scale=(0.3, 1.0), flip=False)
        c.optimizer.update(betas=(0.9, 0.95), weight_decay=0.05)
    elif arg.method == "dino":
        c.data.augment = dict(name="dino", global_size=16, global_scale=(0.3, 1.0), num_local=4, local_size=8,
                              local_scale=(0.1, 0.3), flip=False)
    else:
        c.data.augment = dict(name="simclr", **views)
    c.online_probe = dict(enabled=True, lr=2e-3)
    c.evaluators.classification = {}  # scores the online probe
    return c
