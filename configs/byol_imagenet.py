r"""BYOL ResNet-50 on ImageNet-1k, the paper's recipe (Grill et al. 2020, section 3.2 and appendix
C: batch 4096, LARS with lr 0.2 x batch/256, weight decay 1.5e-6, biases and BatchNorm excluded
from both, 10 warmup epochs then cosine, tau from 0.996 to 1, projector and predictor 4096 -> 256,
the asymmetric views of Table 6). Needs a prepared tfds imagenet2012 and accelerators:

    python -m vision_jax.train --config=configs/byol_imagenet.py:data_dir=/data/tfds --workdir=gs://bucket/byol

The paper reports 74.3% linear-probe top-1 after 1000 epochs.
"""
import common
from vision_jax.config import default_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, data_dir="", epochs=1000, batch_size=4096, seed=0)
    c = default_config()
    steps_per_epoch = common.run_length(c, arg, arg.batch_size, common.IMAGENET_TRAIN_EXAMPLES)

    c.model = dict(name="resnet", depth=50, stem="imagenet")
    common.imagenet(c, dict(name="byol", size=224, crop_scale=(0.08, 1.0)), arg.data_dir)
    c.method = dict(name="byol", base_momentum=0.996, projection_hidden_dim=4096, projection_dim=256,
                    prediction_hidden_dim=4096)
    c.optimizer.name = "lars"
    c.optimizer.lr = 0.2 * c.batch_size / 256
    c.optimizer.weight_decay = 1.5e-6
    c.optimizer.warmup_steps = 10 * steps_per_epoch
    c.online_probe = dict(enabled=True, lr=0.1)
    c.evaluators.classification = {}
    return c
