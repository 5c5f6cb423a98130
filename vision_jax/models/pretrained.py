"""Start from published weights: timm (or torchvision) ResNets and ViTs, read from .safetensors.

`config.pretrained = "path/model.safetensors"` makes the trainer fill the encoder with these
weights before step 0 (fine-tuning or linear evaluation of a published model). The file is the
Hugging Face hub's `model.safetensors` of a timm model (e.g. timm/resnet50.a1_in1k,
timm/vit_base_patch16_224.augreg_in21k); its classifier is dropped when the encoder has none.
PyTorch pickles are not read (that needs torch); convert one once with
`safetensors.torch.save_file(torch.load(path, map_location="cpu"), "model.safetensors")`.
"""
from __future__ import annotations

import os

from flax import nnx

from vision_jax.errors import ConfigError, MissingDataError
from vision_jax.models.resnet import ResNet
from vision_jax.models.timm_resnet import resnet_params_from_timm
from vision_jax.models.timm_vit import vit_params_from_timm
from vision_jax.models.vit import VisionTransformer

CONVERTERS = {ResNet: resnet_params_from_timm, VisionTransformer: vit_params_from_timm}


def load_timm_weights(path: str | os.PathLike, encoder: nnx.Module) -> None:
    """Overwrites every variable of `encoder` (a ResNet or ViT, possibly from nnx.eval_shape) in place."""
    path = os.fspath(path)
    converter = next((fn for cls, fn in CONVERTERS.items() if isinstance(encoder, cls)), None)
    if converter is None:
        raise ConfigError(f"No timm weight converter for {type(encoder).__name__}; pretrained weights load into "
                          f"{', '.join(c.__name__ for c in CONVERTERS)} encoders.")
    if not path.endswith(".safetensors"):
        raise ConfigError(f"{path!r} is not a .safetensors file. Convert a PyTorch checkpoint with "
                          f"safetensors.torch.save_file(torch.load(path, map_location='cpu'), "
                          f"'model.safetensors'), or download the hub's model.safetensors.")
    if not os.path.exists(path):
        raise MissingDataError(f"No pretrained weights at {path!r} (config.init.source).")
    try:
        from safetensors.numpy import load_file
    except ImportError as e:
        raise ImportError("Loading timm weights needs the 'safetensors' package: pip install safetensors") from e
    converter(load_file(path), encoder)
