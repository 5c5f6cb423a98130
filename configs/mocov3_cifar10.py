r"""MoCo v3 on CIFAR-10, ResNet-18 with the CIFAR stem, as solo-learn's `scripts/pretrain/cifar/mocov3.yaml`.

    python -m vision_jax.train --config=configs/mocov3_cifar10.py --workdir=/tmp/vj/mocov3_cifar10
    # The 2-core CPU budget (small CNN, ~15 min of training):
    python -m vision_jax.train --config=configs/mocov3_cifar10.py:cpu_budget --workdir=/tmp/vj/mocov3_cifar10_cpu
    python -m vision_jax.train --config=configs/mocov3_cifar10.py:runlocal --workdir=/tmp/vj/smoke

solo-learn's settings: batch 256, 1000 epochs, LARS (lr 0.3, weight decay 1e-6, eta 0.02, biases
and BatchNorm excluded), 10 warmup epochs then cosine, temperature 0.2, momentum from 0.99 to 1 on
a cosine, projector 4096 -> 256 (2 layers, final BatchNorm without affine), predictor 4096 (2
layers), the asymmetric CIFAR views. 45,000 images train; the other 5,000 are held out.
"""
import common
from vision_jax.config import default_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, data_root=common.SHARED_CIFAR_ZIP, runlocal=False, cpu_budget=False, epochs=1000, seed=0)
    c = default_config()
    steps_per_epoch = common.run_length(c, arg, 256, common.CIFAR_TRAIN_EXAMPLES, eval_every_epochs=20)

    common.cifar_resnet18(c)
    common.cifar10(c, arg.data_root, dict(name="byol", crop_scale=(0.08, 1.0), blur_probs=(0.0, 0.0),
                                          solarize_probs=(0.0, 0.2)))
    c.method = dict(name="mocov3", temperature=0.2, base_momentum=0.99, hidden_dim=4096, projection_dim=256)
    c.optimizer.name = "lars"
    c.optimizer.lr = 0.3 * c.batch_size / 256
    c.optimizer.weight_decay = 1e-6
    c.optimizer.trust_coefficient = 0.02
    c.optimizer.warmup_steps = 10 * steps_per_epoch
    c.online_probe = dict(enabled=True, lr=0.3)  # solo-learn's classifier_lr
    c.evaluators.classification = {}  # scores the online probe
    c.checkpoint.every_steps = 1000

    if arg.cpu_budget:
        common.cpu_budget(c, steps=900)
        c.method.update(hidden_dim=512, projection_dim=128)
        c.online_probe.lr = 2e-3
    if arg.runlocal:
        common.runlocal(c)
    return c
