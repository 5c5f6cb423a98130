"""Converts pytorch-fid's Inception weights (.pth) into the .npz that `load_fid_inception` reads.

    python -m vision_jax.convert_fid_inception --pth=pt_inception-2015-12-05-6726825d.pth --out=fid_inception.npz

Download the .pth once from pytorch-fid's release (models/inception.py: FID_WEIGHTS_URL). Reading it
needs PyTorch, once: a .pth is a pickle of torch tensors in one of the two layouts torch has
written (a zip since torch 1.6, an older sequence of pickles before), and `torch.load` reads both
safely (weights_only=True), where a reader of our own would have to follow torch's formats. The .npz holds
the same names and arrays as the .pth (numpy, float32); `load_fid_inception` maps them onto the
network and says what is wrong with a file of another network.

This module imports neither JAX nor Flax (vision_jax/__init__.py imports nothing), so it also runs
in an environment that has only torch and numpy, with this checkout on PYTHONPATH.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys

import numpy as np

# models/inception.py's FID_WEIGHTS_URL, repeated: that module imports Flax, which this one must not.
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")


def state_dict_as_numpy(pth: str) -> dict[str, np.ndarray]:
    """The .pth's tensors as numpy arrays, by name; exits with a message if torch is missing."""
    if not os.path.exists(pth):
        sys.exit(f"error: no file at {pth!r}; download pytorch-fid's FID_WEIGHTS_URL, {FID_WEIGHTS_URL}")
    try:
        import torch
    except ImportError:
        sys.exit("error: reading a .pth needs PyTorch once: pip install torch --index-url "
                 "https://download.pytorch.org/whl/cpu (or run this command where torch is installed).")
    try:
        state_dict = torch.load(pth, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
        # torch's own message suggests weights_only=False, which would run any code in the pickle.
        sys.exit(f"error: {pth!r} is not a state dict that torch.load can read safely ({type(error).__name__}); "
                 f"download pytorch-fid's weights again: {FID_WEIGHTS_URL}")
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        sys.exit(f"error: {pth!r} is not a state dict (a mapping of names to tensors).")
    return {name: tensor.detach().numpy() for name, tensor in state_dict.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pth", required=True, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--out", required=True, help="the .npz to write, e.g. fid_inception.npz")
    args = parser.parse_args(argv)
    weights = state_dict_as_numpy(args.pth)
    with open(args.out, "wb") as out:  # a file object: np.savez would add .npz to another suffix
        np.savez(out, **weights)
    print(f"Wrote {len(weights)} arrays to {args.out}; use it with load_fid_inception or the FID "
          f"evaluator's features='inception:{args.out}'.")


if __name__ == "__main__":
    main()
