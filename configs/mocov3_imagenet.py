r"""MoCo v3 ViT-B/16 on ImageNet-1k, the paper's 300-epoch recipe (Chen, Xie, He 2021, Table 7 and
facebookresearch/moco-v3 CONFIG.md: `main_moco.py -a vit_base --optimizer=adamw --lr=1.5e-4
--weight-decay=.1 --epochs=300 --warmup-epochs=40 --stop-grad-conv1 --moco-m-cos --moco-t=.2`,
batch 4096). Needs a prepared tfds imagenet2012 and accelerators:

    python -m vision_jax.train --config=configs/mocov3_imagenet.py:data_dir=/data/tfds --workdir=gs://bucket/mocov3

The ViT uses fixed 2-D sin-cos position embeddings and a frozen random patch projection; the
views are BYOL's asymmetric ones (blur 1.0 / 0.1, solarize 0 / 0.2), crops from 8%. The paper
reports 76.7% linear-probe top-1 for this setting.
"""
import common
from vision_jax.config import default_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, data_dir="", epochs=300, batch_size=4096, seed=0)
    c = default_config()
    steps_per_epoch = common.run_length(c, arg, arg.batch_size, common.IMAGENET_TRAIN_EXAMPLES)

    c.model = dict(name="vit", variant="B", patch_size=16, image_size=224, pool="cls", posemb="sincos2d")
    common.imagenet(c, dict(name="byol", size=224, crop_scale=(0.08, 1.0)), arg.data_dir)
    c.method = dict(name="mocov3", temperature=0.2, base_momentum=0.99, hidden_dim=4096, projection_dim=256,
                    freeze_patch_embedding=True)
    c.optimizer.name = "adamw"
    c.optimizer.lr = 1.5e-4 * c.batch_size / 256
    c.optimizer.weight_decay = 0.1
    c.optimizer.warmup_steps = 40 * steps_per_epoch
    c.online_probe = dict(enabled=True, lr=1e-3)
    c.evaluators.classification = {}
    c.sharding = "fsdp"
    return c
