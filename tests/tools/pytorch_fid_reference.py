"""pytorch-fid's side of tests/test_fid_inception.py: run with a python that has torch, torchvision
and pytorch-fid (not the project's venv), as `python tests/tools/pytorch_fid_reference.py OUT_DIR`.

Builds pytorch-fid's `InceptionV3([3], resize_input=True, normalize_input=False)` with random
weights instead of the published ones (its constructor downloads them with
`load_state_dict_from_url`, replaced here by a random state dict of the same names), then writes to
OUT_DIR:
- weights.pth: the state dict of the Inception it built, in the layout of the published .pth;
- reference.npz: random images and the pool3 features pytorch-fid computes for them, plus
  F.interpolate's bilinear resizes to 299x299 of images larger and smaller than that.

BatchNorm statistics are those of a batch of random images (so that activations keep a sane scale
through the ~94 layers) and the BatchNorm affines are randomized, so that every tensor matters.
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pytorch_fid import inception as pytorch_fid_inception


def random_state_dict() -> dict:
    """Torchvision's Inception-v3 with the FID network's classifier has the FID network's parameter
    names and shapes (pytorch-fid's FID blocks subclass torchvision's and change only forward).
    PyTorch's default initialization (init_weights=False; torchvision's truncated normal took 5-8 s
    more on the 2-core machine): the BatchNorm statistics set afterwards normalize its scale."""
    return torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None,
                                           init_weights=False).state_dict()


def build_random_fid_inception():
    """(pytorch-fid's InceptionV3 wrapper, the Inception3 inside it whose state dict is the .pth's)."""
    built = {}
    build_fid_inception = pytorch_fid_inception.fid_inception_v3

    def build_and_keep():
        built["inception"] = build_fid_inception()
        return built["inception"]

    pytorch_fid_inception.load_state_dict_from_url = lambda *args, **kwargs: random_state_dict()
    pytorch_fid_inception.fid_inception_v3 = build_and_keep
    model = pytorch_fid_inception.InceptionV3([3], resize_input=True, normalize_input=False)
    return model, built["inception"]


def random_images(generator: torch.Generator, n: int, height: int, width: int) -> torch.Tensor:
    """NCHW in [-1, 1]: independent pixels (at 299 px) or, once resized, smooth images (at 32 px)."""
    return 2 * torch.rand(n, 3, height, width, generator=generator) - 1


def randomize_batch_norms(model, generator: torch.Generator) -> None:
    """Random affines, then running statistics = those of a batch of one noise image and one smooth
    one, the two kinds of test images (set after the affines, so that each layer's output is
    normalized in eval mode as it was in that batch and the features stay of order 1)."""
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in batch_norms:
            n = bn.num_features
            bn.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
            bn.bias.copy_(0.1 * torch.randn(n, generator=generator))
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average: after one batch, that batch's statistics
        model.train()
        smooth = F.interpolate(random_images(generator, 1, 32, 32), size=(299, 299), mode="bilinear",
                               align_corners=False)
        model(torch.cat([random_images(generator, 1, 299, 299), smooth]))
    model.eval()


def main(out_dir: str) -> None:
    # One thread: with two, a machine shared with other jobs made torch's threads wait for each
    # other at every operation (this script took 44 s to 13 min on 2 busy cores).
    torch.set_num_threads(1)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model, inception = build_random_fid_inception()
    randomize_batch_norms(model, generator)
    torch.save(inception.state_dict(), f"{out_dir}/weights.pth")

    def nhwc(x: torch.Tensor) -> np.ndarray:
        return x.permute(0, 2, 3, 1).numpy()

    small, full = random_images(generator, 2, 32, 32), random_images(generator, 1, 299, 299)
    large, oblong = random_images(generator, 1, 400, 400), random_images(generator, 1, 24, 40)
    with torch.no_grad():
        features_small, features_full = model(small)[0].flatten(1), model(full)[0].flatten(1)
        resized = {f"resized_{name}": nhwc(F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False))
                   for name, x in (("large", large), ("oblong", oblong))}
    np.savez(f"{out_dir}/reference.npz", small=nhwc(small), full=nhwc(full), large=nhwc(large),
             oblong=nhwc(oblong), features_small=features_small.numpy(), features_full=features_full.numpy(),
             **resized)


if __name__ == "__main__":
    main(sys.argv[1])
