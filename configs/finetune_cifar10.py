r"""Evaluation and fine-tuning protocols on CIFAR-10, starting from another run (`config.init`).

    # Linear evaluation (SimCLR/MoCo) of the SimCLR cpu_budget run's encoder:
    python -m vision_jax.train --config=configs/finetune_cifar10.py:protocol=linear,cpu_budget \
        --config.init.source=/tmp/vj/simclr_cifar10_cpu --workdir=/tmp/vj/simclr_linear
    # Fine-tuning on 10% of the labels (4,500 images, 450 per class), and the same from random init:
    python -m vision_jax.train --config=configs/finetune_cifar10.py:labels=0.1,cpu_budget \
        --config.init.source=/tmp/vj/simclr_cifar10_cpu --workdir=/tmp/vj/simclr_ft10
    python -m vision_jax.train --config=configs/finetune_cifar10.py:labels=0.1,cpu_budget --workdir=/tmp/vj/scratch_ft10
    # A DINO/BYOL/MoCo run's EMA teacher instead of its online encoder:
    ... --config.init.network=teacher_encoder   (target_encoder for BYOL, momentum_encoder for MoCo v3)
    # Transfer as the seeds do it: a timm/torchvision ResNet-18's new head alone, then everything:
    python -m vision_jax.train --config=configs/finetune_cifar10.py:protocol=transfer,model=resnet18_imagenet \
        --config.init.source=model.safetensors --workdir=/tmp/vj/transfer
    # Smoke test of any variant: add `runlocal`.

Protocols (`protocol=`), each only settings of the supervised method and the optimizer:
- `linear`: SimCLR's linear evaluation (Chen et al. 2020, appendix B.6; MoCo's): the encoder frozen
  with BatchNorm in inference mode, a linear head trained with crop and flip by SGD with Nesterov
  momentum 0.9, lr 0.1 x batch/256, no weight decay, cosine.
- `mae_linear`: MAE's linear probing (He et al. 2022, appendix A.3): a parameter-free BatchNorm
  before the head, LARS, lr 0.1 x batch/256, no weight decay, 10 warmup epochs, cosine.
- `finetune`: full fine-tuning with the MAE/BEiT ingredients sized for CNNs: AdamW, layer-wise lr
  decay 0.75 per stage, label smoothing 0.1, 5 warmup epochs then cosine, crop and flip.
- `mae_finetune`: MAE's published end-to-end fine-tuning (appendix A.1, ViT): AdamW lr 5e-4 x
  batch/256 (blr), weight decay 0.05, layer decay 0.65, drop path 0.1, label smoothing 0.1, mixup
  0.8 (MAE switches between mixup 0.8 and cutmix 1.0; here mixup alone), RandAugment (2, 9),
  random erasing 0.25, head trunc_normal(2e-5), 5 warmup epochs, cosine.
- `transfer`: the seeds' transfer learning: the new head trains alone for `head_epochs` (the
  encoder group frozen, `frozen_steps`), then everything trains, the encoder at 0.1 x the lr, in
  one run that resumes across the boundary.

`labels=0.1` / `labels=0.01` train on a class-balanced seeded subset of the 45,000 training
images (SimCLR's semi-supervised protocol); the epochs count passes over that subset. The model
must be the source's: `model=cpu_budget` (the small CNN of the SSL `cpu_budget` recipes),
`mae_cpu_budget` (the ViT-Ti/4 of `mae_cifar10.py:cpu_budget`),
`resnet18` (CIFAR stem, the full SSL recipes), `resnet18_imagenet` (torchvision/timm layout).
Scores: the classifier's top-1, top-5 and per-class accuracy on the 5,000 held-out images.
"""
import common
from vision_jax.config import default_config, parse_arg
from vision_jax.errors import ConfigError

PROTOCOLS = ("linear", "mae_linear", "finetune", "mae_finetune", "transfer")
MODELS = {"cpu_budget": dict(name="cnn", widths=(16, 32, 64, 128)),
          "mae_cpu_budget": common.MAE_CPU_BUDGET_VIT,
          "resnet18": dict(name="resnet", depth=18, stem="cifar"),
          "resnet18_imagenet": dict(name="resnet", depth=18, stem="imagenet")}
EPOCHS = {"linear": 100, "mae_linear": 90, "finetune": 100, "mae_finetune": 100, "transfer": 30}


def get_config(arg=None):
    arg = parse_arg(arg, protocol="finetune", labels=1.0, model="cpu_budget", epochs=0, head_epochs=5,
                    batch_size=256, data_root=common.SHARED_CIFAR_ZIP, cpu_budget=False, runlocal=False, seed=0)
    if arg.protocol not in PROTOCOLS:
        raise ConfigError(f"finetune_cifar10: protocol={arg.protocol!r} is not one of {', '.join(PROTOCOLS)}.")
    if arg.model not in MODELS:
        raise ConfigError(f"finetune_cifar10: model={arg.model!r} is not one of {', '.join(MODELS)}.")
    c = default_config()
    arg.epochs = arg.epochs or EPOCHS[arg.protocol]
    steps_per_epoch = common.run_length(c, arg, arg.batch_size, round(common.CIFAR_TRAIN_EXAMPLES * arg.labels))
    common.cifar10(c, arg.data_root, dict(name="crop_flip", padding=4))
    c.data.label_fraction = arg.labels
    c.model = dict(MODELS[arg.model])
    c.eval_baselines = ()  # the baseline of a fine-tune is the same recipe without --config.init.source
    c.checkpoint.every_steps = 1000
    c.method = dict(name="supervised")
    scaled_lr = lambda base: base * arg.batch_size / 256  # noqa: E731 - the linear scaling rule

    if arg.protocol == "linear":
        c.method.frozen_encoder = True
        c.optimizer.update(name="sgd", nesterov=True, momentum=0.9, lr=scaled_lr(0.1), weight_decay=0.0)
    elif arg.protocol == "mae_linear":
        c.method.update(frozen_encoder=True, head_norm=True)
        c.optimizer.update(name="lars", momentum=0.9, lr=scaled_lr(0.1), weight_decay=0.0,
                           warmup_steps=10 * steps_per_epoch)
    elif arg.protocol == "finetune":
        c.method.label_smoothing = 0.1
        c.optimizer.update(name="adamw", lr=scaled_lr(1e-3), weight_decay=0.05, layer_decay=0.75,
                           warmup_steps=5 * steps_per_epoch)
    elif arg.protocol == "mae_finetune":
        c.method.update(label_smoothing=0.1, head_init="trunc_normal")
        c.optimizer.update(name="adamw", lr=scaled_lr(5e-4), weight_decay=0.05, layer_decay=0.65,
                           warmup_steps=5 * steps_per_epoch)
        c.data.augment = dict(name="pp", spec="decode|random_crop((32, 32), padding=4)|flip_lr|randaugment(2, 9)"
                                               "|value_range(-1, 1)|random_erasing(0.25)")
        c.data.batch_pp = "mixup(0.8)"
        if c.model.name == "vit":
            c.model.drop_path_rate = 0.1
    else:  # transfer
        c.optimizer.update(name="adamw", lr=scaled_lr(1e-3), weight_decay=1e-4, warmup_steps=steps_per_epoch)
        c.optimizer.groups.encoder = dict(pattern="^encoder/", lr_scale=0.1,
                                          frozen_steps=arg.head_epochs * steps_per_epoch)

    if arg.cpu_budget:  # the 2-core budget of the SSL cpu_budget sources: fixed steps, one final evaluation
        c.total_steps, c.log_every = 900, 50
        # Warmup epochs count passes over the labeled images: with all 45,000, 5 epochs would be 879
        # of the 900 steps. At most a tenth of the run.
        c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, c.total_steps // 10)
        if arg.protocol == "transfer":
            c.optimizer.groups.encoder.frozen_steps = 150
    if arg.runlocal:
        common.runlocal(c)
        if arg.protocol == "transfer":
            c.optimizer.groups.encoder.frozen_steps = 2
    c.evaluators = dict(classification=dict(per_class=True))  # scores the fine-tuned classifier itself
    return c
