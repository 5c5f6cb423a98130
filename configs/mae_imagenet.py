r"""MAE ViT-B/16 on ImageNet-1k, the published pretraining recipe (He et al. 2022, "Masked
Autoencoders Are Scalable Vision Learners", appendix A.1 / Table 8, and facebookresearch/mae
PRETRAIN.md): batch 4096, AdamW with betas (0.9, 0.95), weight decay 0.05, lr = blr x batch / 256
with blr 1.5e-4, 40 warmup epochs then a cosine to 0, 800 epochs (the paper also trains 1600:
`epochs=1600`), mask ratio 0.75, normalized-pixel targets, a decoder 512 wide, 8 deep, 16 heads,
fixed 2-D sin-cos position embeddings, RandomResizedCrop of scale (0.2, 1) (bicubic) and flip
only, ImageNet-standardized pixels. Needs a prepared tfds imagenet2012 and accelerators:

    python -m vision_jax.train --config=configs/mae_imagenet.py:data_dir=/data/tfds --workdir=gs://bucket/mae
    python -m vision_jax.train --config=configs/mae_imagenet.py:data_dir=/data/tfds,epochs=1600 --workdir=gs://bucket/mae1600

The paper reports, for ViT-B after 1600 epochs, 68.0% linear-probe and 83.6% fine-tuning top-1;
MAE is meant to be fine-tuned (the kNN and linear-probe evaluators here track the frozen features).
"""
import common
from vision_jax.config import default_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, data_dir="", epochs=800, batch_size=4096, blr=1.5e-4, seed=0)
    c = default_config()
    steps_per_epoch = common.run_length(c, arg, arg.batch_size, common.IMAGENET_TRAIN_EXAMPLES)

    c.model = dict(name="vit", variant="B", patch_size=16, image_size=224, pool="cls", posemb="sincos2d")
    common.imagenet(c, dict(name="mae", size=224, crop_scale=(0.2, 1.0)), arg.data_dir)
    c.method = dict(name="mae", mask_ratio=0.75, norm_pix_loss=True, decoder_width=512, decoder_depth=8,
                    decoder_heads=16)
    c.optimizer.name = "adamw"
    c.optimizer.betas = (0.9, 0.95)
    c.optimizer.lr = arg.blr * c.batch_size / 256
    c.optimizer.weight_decay = 0.05
    c.optimizer.warmup_steps = 40 * steps_per_epoch
    c.sharding = "fsdp"
    return c
