r"""MAE on CIFAR-10 with a ViT on 4x4 patches, as solo-learn's `scripts/pretrain/cifar/mae.yaml`.

    python -m vision_jax.train --config=configs/mae_cifar10.py --workdir=/tmp/vj/mae_cifar10
    # The 2-core CPU budget (a 4-block ViT-Ti/4, ~15 min of training):
    python -m vision_jax.train --config=configs/mae_cifar10.py:cpu_budget --workdir=/tmp/vj/mae_cifar10_cpu
    python -m vision_jax.train --config=configs/mae_cifar10.py:runlocal --workdir=/tmp/vj/smoke

solo-learn's settings: ViT-S (384 wide, 12 blocks) on 32 px images in 4x4 patches (64 patches, 16
visible), cls-token features; mask ratio 0.75, normalized-pixel targets; a decoder 512 wide, 8
deep, 16 heads; AdamW (lr 2e-4 at batch 256, betas (0.9, 0.95), weight decay 0.05), 10 warmup
epochs then cosine, 1000 epochs; random resized crops of scale (0.08, 1) and flip, nothing else.
solo-learn's ViT-S has 12 heads of 32; this one has DeiT's 6 heads of 64 (the same parameters).
45,000 images train; the other 5,000 are held out for the scores.
"""
import common
from vision_jax.config import default_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, data_root=common.SHARED_CIFAR_ZIP, runlocal=False, cpu_budget=False, epochs=1000, seed=0)
    c = default_config()
    steps_per_epoch = common.run_length(c, arg, 256, common.CIFAR_TRAIN_EXAMPLES, eval_every_epochs=20)

    c.model = dict(name="vit", variant="S", patch_size=4, image_size=32, pool="cls", posemb="sincos2d")
    common.cifar10(c, arg.data_root, dict(name="mae", crop_scale=(0.08, 1.0)))
    c.method = dict(name="mae", mask_ratio=0.75, norm_pix_loss=True, decoder_width=512, decoder_depth=8,
                    decoder_heads=16)
    c.optimizer.name = "adamw"
    c.optimizer.betas = (0.9, 0.95)
    c.optimizer.lr = 2e-4 * c.batch_size / 256
    c.optimizer.weight_decay = 0.05
    c.optimizer.warmup_steps = 10 * steps_per_epoch
    c.online_probe = dict(enabled=True, lr=2e-4)  # solo-learn's classifier_lr
    c.evaluators.classification = {}  # scores the online probe
    c.checkpoint.every_steps = 1000

    if arg.cpu_budget:
        # A ViT costs far more per image on a CPU than the small CNN: a 4-block ViT-Ti/4 with a
        # 64-wide, 1-block decoder (He et al. 2022, Table 1a-b: fine-tuning barely depends on
        # the decoder's size) at batch 128. It trains at ~170 images/s on the 2 cores, so 1,200
        # steps (3.4 epochs) fill the SSL recipes' ~15 minutes.
        common.cpu_budget(c, steps=1200)
        c.batch_size = 128
        c.model = dict(common.MAE_CPU_BUDGET_VIT)
        c.method.update(decoder_width=64, decoder_depth=1, decoder_heads=2)
        c.optimizer.update(betas=(0.9, 0.95), lr=1e-3, weight_decay=0.05, warmup_steps=50)
        c.online_probe.lr = 2e-3
    if arg.runlocal:
        common.runlocal(c)
        c.model.update(variant="Ti", depth=2)  # a ViT-S and its 8-block decoder take minutes to compile on CPU
        c.method.update(decoder_width=64, decoder_depth=1, decoder_heads=2)
    return c
