r"""DINO ViT-S/16 on ImageNet-1k, the README's 300-epoch recipe (facebookresearch/dino:
`main_dino.py --arch vit_small --epochs 300 --teacher_temp 0.07 --warmup_teacher_temp_epochs 30
--norm_last_layer false`, on 16 GPUs x 64 images). The other settings are main_dino.py's defaults:
AdamW, lr 0.0005 x batch/256 after 10 warmup epochs, cosine to 1e-6; weight decay on a cosine from
0.04 to 0.4; per-parameter gradient clipping at 3.0; teacher momentum from 0.996 to 1; student
temperature 0.1; 65,536 prototypes; the last layer frozen in epoch 1; drop path 0.1; 2 global crops
of 224 px (scale 0.4-1) and 8 local crops of 96 px (scale 0.05-0.4). Needs a prepared tfds
imagenet2012 and accelerators:

    python -m vision_jax.train --config=configs/dino_imagenet.py:data_dir=/data/tfds --workdir=gs://bucket/dino

The README reports 73.3% kNN and 76.0% linear top-1 for this run; the teacher is evaluated.
"""
import common
from vision_jax.config import default_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, data_dir="", epochs=300, batch_size=1024, seed=0)
    c = default_config()
    steps_per_epoch = common.run_length(c, arg, arg.batch_size, common.IMAGENET_TRAIN_EXAMPLES)

    c.model = dict(name="vit", variant="S", patch_size=16, image_size=224, pool="cls", drop_path_rate=0.1)
    common.imagenet(c, dict(name="dino", global_size=224, global_scale=(0.4, 1.0), num_local=8, local_size=96,
                            local_scale=(0.05, 0.4)), arg.data_dir)
    c.method = dict(name="dino", out_dim=65536, hidden_dim=2048, bottleneck_dim=256, norm_last_layer=False,
                    base_momentum=0.996, student_temp=0.1, warmup_teacher_temp=0.04, teacher_temp=0.07,
                    warmup_teacher_temp_epochs=30, freeze_last_layer_epochs=1.0)
    c.optimizer.name = "adamw"
    c.optimizer.lr = 0.0005 * c.batch_size / 256
    c.optimizer.end_lr = 1e-6
    c.optimizer.weight_decay = 0.04
    c.optimizer.weight_decay_end = 0.4
    c.optimizer.warmup_steps = 10 * steps_per_epoch
    c.optimizer.grad_clip_norm = 3.0
    c.optimizer.grad_clip_mode = "per_parameter"
    c.online_probe = dict(enabled=True, lr=1e-3)
    c.evaluators.classification = {}
    return c
