r"""BYOL on CIFAR-10, ResNet-18 with the CIFAR stem, as solo-learn's `scripts/pretrain/cifar/byol.yaml`.

    python -m vision_jax.train --config=configs/byol_cifar10.py --workdir=/tmp/vj/byol_cifar10
    # The 2-core CPU budget (small CNN, ~15 min of training):
    python -m vision_jax.train --config=configs/byol_cifar10.py:cpu_budget --workdir=/tmp/vj/byol_cifar10_cpu
    python -m vision_jax.train --config=configs/byol_cifar10.py:runlocal --workdir=/tmp/vj/smoke

solo-learn's settings: batch 256, 1000 epochs, LARS (lr 1.0, weight decay 1e-5, eta 0.02, biases
and BatchNorm excluded), 10 warmup epochs then cosine, tau from 0.99 to 1 on a cosine, projector
4096 -> 256, predictor 4096, the asymmetric CIFAR views (no blur; solarize 0.2 on view 2).
solo-learn also clips LARS's local rate at the base rate (`clip_lr`); optax's LARS does not.
45,000 images train; the other 5,000 are held out for the scores.
"""
import common
from vision_jax.config import default_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, on_device=False, data_root=common.SHARED_CIFAR_ZIP, runlocal=False, cpu_budget=False,
                    epochs=1000, seed=0)
    c = default_config()
    steps_per_epoch = common.run_length(c, arg, 256, common.CIFAR_TRAIN_EXAMPLES, eval_every_epochs=20)

    common.cifar_resnet18(c)
    common.cifar10(c, arg.data_root, dict(name="byol", crop_scale=(0.08, 1.0), blur_probs=(0.0, 0.0),
                                          solarize_probs=(0.0, 0.2)))
    c.method = dict(name="byol", base_momentum=0.99, projection_hidden_dim=4096, projection_dim=256,
                    prediction_hidden_dim=4096)
    c.optimizer.name = "lars"
    c.optimizer.lr = 1.0 * c.batch_size / 256
    c.optimizer.weight_decay = 1e-5
    c.optimizer.trust_coefficient = 0.02
    c.optimizer.warmup_steps = 10 * steps_per_epoch
    c.online_probe = dict(enabled=True, lr=0.1)  # solo-learn's classifier_lr
    c.evaluators.classification = {}  # scores the online probe
    c.checkpoint.every_steps = 1000

    if arg.on_device:  # the same views, made by jitted JAX ops on the accelerators
        c.data.device_augment = dict(c.data.augment, name="byol")
        c.data.augment = dict(name="none")
    if arg.cpu_budget:
        common.cpu_budget(c, steps=900)
        c.method.update(projection_hidden_dim=512, projection_dim=128, prediction_hidden_dim=512)
        c.optimizer.lr = 4e-3  # tuned on the held-out 5,000 over 2e-3 / 4e-3
        c.online_probe.lr = 2e-3
    if arg.runlocal:
        common.runlocal(c)
    return c
