r"""DCGAN on CIFAR-10 at 32 px, from the shared zip (an image folder of the 50,000 training images).

    python -m vision_jax.train --config=configs/dcgan_cifar10.py --workdir=/tmp/vj/dcgan_cifar10
    # The 2-core CPU budget (narrower networks, ~15 min of training):
    python -m vision_jax.train --config=configs/dcgan_cifar10.py:cpu_budget --workdir=/tmp/vj/dcgan_cifar10_cpu
    python -m vision_jax.train --config=configs/dcgan_cifar10.py:runlocal --workdir=/tmp/vj/smoke
    # FID/KID beside the untrained generator and the real-data floor, in the features of a
    # supervised CIFAR-10 classifier (any vision_jax run with 'features'), or of pytorch-fid's
    # Inception-v3 (features=inception:PATH, see README):
    python -m vision_jax.evaluate --config=configs/dcgan_cifar10.py:cpu_budget,fid_features=checkpoint:DIR \
        --workdir=/tmp/vj/dcgan_cifar10_cpu
    python -m vision_jax.sample --workdir=/tmp/vj/dcgan_cifar10_cpu --num=64 --out=/tmp/vj/cifar_grid.png

Networks and optimizer as the PyTorch DCGAN example (github.com/pytorch/examples, dcgan/main.py;
Radford et al. 2016): ngf = ndf = 64, z of 100, BatchNorm, Adam lr 2e-4 with betas (0.5, 0.999)
for each network, batch 128, non-saturating loss, one D update per G update; at 32 px the networks
have one up/downsampling layer fewer than the example's 64 px ones. No augmentation; images in
[-1, 1]. The full recipe trains on all 50,000 images for 100,000 steps and scores 10,000
generated images against 10,000 training images (the protocol of the reference FIDs the issue
cites: mimicry's DCGAN, 28.95 with 10k against 10k). The `cpu_budget` and `runlocal` variants
train on the first 45,000 of the seeded split and score against the other 5,000 (held out).
"""
import common
from vision_jax.config import default_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, data_root=common.SHARED_CIFAR_ZIP, runlocal=False, cpu_budget=False, steps=0,
                    seed=0, fid_features="")  # steps=0: the variant's own length
    c = default_config()
    c.seed = arg.seed
    c.total_steps = arg.steps or 100_000
    c.batch_size = 128
    c.log_every = 500
    c.pictures_every = 5000
    c.checkpoint.every_steps = 5000

    common.dcgan(c, image_size=32, base_width=64)

    c.data.source = dict(name="image_folder", root=arg.data_root)
    c.data.train_split = "train"
    c.data.eval_train_split = f"train[{common.CIFAR_TRAIN_EXAMPLES}:]"  # unused by FID's 'test' split
    c.data.eval_test_split = "train[:10000]"  # FID's real images
    c.data.image_size = 32
    c.data.augment = dict(name="none")  # images in [-1, 1], as the generator's tanh makes them
    c.eval_baselines = ("random_init",)  # the untrained generator
    fid = dict(features=arg.fid_features, num_samples=10_000, real_split="test")

    if arg.cpu_budget:
        c.total_steps = arg.steps or 6000
        c.batch_size = 64
        c.log_every = 100
        c.pictures_every = 500
        c.checkpoint.every_steps = 500
        c.model.base_width = 32
        c.method.generator.base_width = 32
        c.data.train_split = f"train[:{common.CIFAR_TRAIN_EXAMPLES}]"
        c.data.eval_train_split = f"train[:{common.CIFAR_TRAIN_EXAMPLES}]"
        c.data.eval_test_split = f"train[{common.CIFAR_TRAIN_EXAMPLES}:]"  # the 5,000 held out
        fid.update(num_samples=5000, kid_subsets=50)
    if arg.runlocal:
        c.total_steps, c.batch_size, c.log_every, c.pictures_every = 4, 16, 2, 2
        c.checkpoint.every_steps = 2
        c.model.base_width = 8
        c.method.generator.base_width = 8
        c.data.train_split = f"train[:{common.CIFAR_TRAIN_EXAMPLES}]"
        c.data.eval_test_split = f"train[{common.CIFAR_TRAIN_EXAMPLES}:{common.CIFAR_TRAIN_EXAMPLES + 500}]"
        fid.update(num_samples=200, kid_subsets=10, kid_subset_size=200)
    if arg.fid_features:
        c.evaluators.fid = fid
    return c
