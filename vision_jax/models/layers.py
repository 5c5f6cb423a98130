"""Layer constructors shared by the convolutional models, so every model initializes alike."""
from functools import partial

from flax import nnx

# He (fan-out) init, as torchvision and the SimCLR reference use for convolutions.
conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(cin: int, cout: int, kernel: int, stride: int = 1, *, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride), padding=kernel // 2,
                    use_bias=False, kernel_init=conv_init, rngs=rngs)


# PyTorch-style BatchNorm constants (momentum 0.1 there is 0.9 here), which the recipes assume.
batch_norm = partial(nnx.BatchNorm, momentum=0.9, epsilon=1e-5)
