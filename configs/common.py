"""Pieces the recipes share: CIFAR-10 from ../shared, ImageNet from tfds, the 2-core CPU budget,
and the `runlocal` shrink to a smoke test. Recipes import it as `import common`."""
import os

SHARED_CIFAR_ZIP = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10",
                                                 "cifar10_train_jpeg.zip"))
CIFAR_TRAIN_EXAMPLES = 45_000  # of the 50,000 training images; the other 5,000 are the held-out split
IMAGENET_TRAIN_EXAMPLES = 1_281_167


def run_length(c, arg, batch_size: int, train_examples: int, eval_every_epochs: int = 0) -> int:
    """Seed, batch and a run of `arg.epochs` epochs (evaluated every `eval_every_epochs`, 0: at the
    end only); returns the steps per epoch, which warmups and schedules count in."""
    c.seed = arg.seed
    c.batch_size = batch_size
    steps_per_epoch = train_examples // batch_size
    c.total_steps = arg.epochs * steps_per_epoch
    c.log_every = 100
    c.eval_every = eval_every_epochs * steps_per_epoch
    return steps_per_epoch


def cifar10(c, data_root: str, augment: dict) -> None:
    """CIFAR-10 as an image folder (or its zip, read in place): the first 45,000 of a seeded
    permutation train and fit the probes; the other 5,000 are held out for the scores."""
    c.data.source = dict(name="image_folder", root=data_root)
    c.data.train_split = f"train[:{CIFAR_TRAIN_EXAMPLES}]"
    c.data.eval_train_split = f"train[:{CIFAR_TRAIN_EXAMPLES}]"
    c.data.eval_test_split = f"train[{CIFAR_TRAIN_EXAMPLES}:]"
    c.data.image_size = 32
    c.data.augment = augment
    c.evaluators.knn = dict(k=200, temperature=0.1)
    c.evaluators.linear_probe = dict(epochs=30, batch_size=256, lr=0.01, weight_decay=1e-4)


def cifar_resnet18(c) -> None:
    """ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), the encoder of the CIFAR SSL recipes."""
    c.model = dict(name="resnet", depth=18, stem="cifar")


# The encoder of configs/mae_cifar10.py:cpu_budget (a 4-block ViT-Ti on 4x4 patches), which
# configs/finetune_cifar10.py:model=mae_cpu_budget fine-tunes.
MAE_CPU_BUDGET_VIT = dict(name="vit", variant="Ti", depth=4, patch_size=4, image_size=32, pool="cls",
                          posemb="sincos2d")


def dcgan(c, image_size: int, base_width: int) -> None:
    """Radford et al. 2016 as the PyTorch DCGAN example trains it: z of 100, one non-saturating D
    update per G update, Adam lr 2e-4 with betas (0.5, 0.999), no weight decay, a constant rate."""
    c.model = dict(name="dcgan_discriminator", image_size=image_size, base_width=base_width)
    c.method = dict(name="dcgan", generator=dict(latent_dim=100, base_width=base_width), loss="non_saturating",
                    n_disc=1, label_smoothing=0.0)
    c.optimizer.name = "adamw"
    c.optimizer.lr = 2e-4
    c.optimizer.betas = (0.5, 0.999)
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"


def imagenet(c, augment: dict, data_dir: str = "") -> None:
    """ImageNet-1k from a prepared tfds `imagenet2012` (train for pretraining and probe fitting,
    validation for the scores), standardized with the ImageNet mean and std."""
    c.data.source = dict(name="tfds", dataset="imagenet2012", **({"data_dir": data_dir} if data_dir else {}))
    c.data.train_split = "train"
    c.data.eval_train_split = "train"
    c.data.eval_test_split = "validation"
    c.data.image_size = 0  # views crop from the full image
    c.data.augment = dict(augment, normalize=True)
    c.data.eval_augment = dict(name="pp", spec="decode|resize_small(256)|central_crop(224)|normalize")
    c.data.eval_batch_size = 1024
    c.evaluators.knn = dict(k=20, temperature=0.07)  # DINO's eval_knn.py
    c.evaluators.linear_probe = dict(epochs=30, batch_size=1024, lr=0.01, weight_decay=1e-4)
    c.checkpoint.every_steps = 5000


def cpu_budget(c, steps: int) -> None:
    """The 2-core CPU budget shared by the SSL methods: the small CNN (16-128 wide), batch 256,
    AdamW with a short warmup, one final evaluation. Methods set `steps` so that training takes
    about 15 minutes on 2 idle cores."""
    c.model = dict(name="cnn", widths=(16, 32, 64, 128))
    c.batch_size = 256
    c.total_steps = steps
    c.eval_every = 0
    c.log_every = 50
    c.checkpoint.every_steps = 250
    c.optimizer.name = "adamw"
    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_steps = 50
    c.optimizer.weight_decay_end = None


def runlocal(c, first_test_example: int = CIFAR_TRAIN_EXAMPLES) -> None:
    """The same path shrunk to a smoke test of seconds: a few steps, small evaluation splits."""
    c.total_steps, c.batch_size, c.log_every, c.eval_every = 4, 16, 2, 0
    c.checkpoint.every_steps = 2
    c.data.eval_train_split = "train[:1000]"  # ResNet-18 features of 50,000 images take long on CPU
    c.data.eval_test_split = f"train[{first_test_example}:{first_test_example + 500}]"
    c.evaluators.linear_probe.epochs = 2
