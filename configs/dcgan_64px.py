r"""DCGAN at 64 px on an image folder or a tfds dataset (CelebA, LSUN), for accelerators: the PyTorch
DCGAN example's own setting (github.com/pytorch/examples, dcgan/main.py; Radford et al. 2016).

    # An image folder laid out as root/train/<any class folder>/*.jpg (or a .zip of it): for
    # CelebA, img_align_celeba/ moved under root/train/, as torchvision's ImageFolder also needs.
    python -m vision_jax.train --config=configs/dcgan_64px.py:root=/data/celeba --workdir=/tmp/vj/dcgan_celeba
    # A prepared tfds dataset (file_format='array_record'), e.g. LSUN bedrooms:
    python -m vision_jax.train --config=configs/dcgan_64px.py:tfds=lsun/bedroom,label_key=image \
        --workdir=/tmp/vj/dcgan_lsun
    # The same path on the shared CIFAR-10 zip, upsampled to 64 px, in seconds:
    python -m vision_jax.train --config=configs/dcgan_64px.py:runlocal --workdir=/tmp/vj/smoke

As the example: images resized to 64 on the shorter side and centre-cropped, in [-1, 1]; ngf = ndf =
64, z of 100; Adam lr 2e-4, betas (0.5, 0.999); batch 128; non-saturating loss, one D update per
G update; the example's 25 epochs are `epochs`. FID (`fid_features=`) compares 10,000 samples with
the first 10,000 training images. tfds datasets without an integer label name any key as
`label_key` (labels are not used). Not run on CelebA or LSUN here (neither is on this machine).
"""
import common
from vision_jax.config import default_config, parse_arg
from vision_jax.errors import ConfigError

EXAMPLE_EPOCHS = 25  # dcgan/main.py's --niter


def get_config(arg=None):
    arg = parse_arg(arg, root="", tfds="", data_dir="", label_key="label", train_examples=0,
                    epochs=EXAMPLE_EPOCHS, runlocal=False, seed=0, fid_features="")
    c = default_config()
    if arg.root and arg.tfds:
        raise ConfigError("dcgan_64px.py: give root=FOLDER or tfds=NAME, not both.")
    if arg.tfds:
        c.data.source = dict(name="tfds", dataset=arg.tfds, label_key=arg.label_key,
                             **({"data_dir": arg.data_dir} if arg.data_dir else {}))
    elif arg.root or arg.runlocal:
        c.data.source = dict(name="image_folder", root=arg.root or common.SHARED_CIFAR_ZIP)
    else:
        raise ConfigError("dcgan_64px.py needs data: configs/dcgan_64px.py:root=/path/to/folder, "
                          "or :tfds=NAME for a prepared tfds dataset (or :runlocal for a smoke test on CIFAR-10).")
    c.seed = arg.seed
    c.batch_size = 128
    # Steps per epoch need the dataset's size, known once the source is read: CelebA has 202,599 images.
    c.total_steps = max(arg.epochs * (arg.train_examples or 202_599) // c.batch_size, 1)
    c.log_every = 500
    c.pictures_every = 2000
    c.checkpoint.every_steps = 5000

    common.dcgan(c, image_size=64, base_width=64)

    c.data.train_split = "train"
    c.data.eval_train_split = "train[:10000]"
    c.data.eval_test_split = "train[:10000]"  # FID's real images
    c.data.image_size = 0  # the images keep their size until the crop below
    crop = "decode|resize_small(64)|central_crop(64)|value_range(-1, 1)"
    c.data.augment = dict(name="pp", spec=crop)
    c.data.eval_augment = dict(name="pp", spec=crop)
    c.eval_baselines = ("random_init",)  # the untrained generator
    if arg.fid_features:
        c.evaluators.fid = dict(features=arg.fid_features, num_samples=10_000, real_split="test")

    if arg.runlocal:
        c.total_steps, c.batch_size, c.log_every, c.pictures_every = 4, 16, 2, 2
        c.checkpoint.every_steps = 2
        c.model.base_width = 8
        c.method.generator.base_width = 8
        c.data.eval_test_split = "train[:200]"
        if arg.fid_features:
            c.evaluators.fid.update(num_samples=200, kid_subsets=10, kid_subset_size=200)
    return c
