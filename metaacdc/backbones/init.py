"""Weight-initialisation schemes of a built backbone: the scale its convolution kernels
start at.

Every convolution of the backbones is followed by a batch norm, so a kernel's scale does not
change what the network computes, but it sets how far a gradient step moves it: an SGD step
changes a kernel by ``lr * grad`` with ``grad ~ 1 / |K|``, hence relatively by
``lr / |K|^2``. The scale is therefore part of MAML's effective inner learning rate, and it
decides how fast meta-training learns (docs/results/learning-speed.md: at lr 0.1, Conv4 on
Omniglot learns about three times as fast per meta-update from PyTorch's scale as from
CloserLook's).

- ``closerlook``: what the conv kinds build, ``Var(K) = 2 / (k*k*c_out)`` (Kaiming fan-out,
  design §4, CloserLook's code); the paper protocol (``configs/closerlook.yaml``).
- ``pytorch``: ``nn.Conv2d``'s own default, ``K ~ U(±1/sqrt(fan_in))``, i.e.
  ``Var(K) = 1 / (3 * fan_in)`` with ``fan_in = c_in/groups * k*k``; ACDC layers scale their
  atoms so that the reconstructed kernel has that variance (per group of a grouped layout),
  anchored kernels are drawn once per shared tensor. Biases of ACDC and anchored layers
  stay zero (a bias before a batch norm does not change its output).

The linear head is PyTorch's default with a zero bias in both schemes.
"""

from __future__ import annotations

import math

from torch import nn

from metaacdc.acdc.layer import ACDCConv2d
from metaacdc.convs.kernel_sharing import SharedKernelConv2d
from metaacdc.errors import check_choice

#: initialisation schemes, default first (see :func:`initialise`)
INITS: tuple[str, ...] = ("pytorch", "closerlook")


def initialise(model: nn.Module, scheme: str) -> nn.Module:
    """Draw the convolution kernels of ``model`` at the scale of ``scheme`` (in place).

    ``closerlook`` leaves the model as the conv kinds built it; ``pytorch`` draws every
    kernel again at PyTorch's default scale (module docstring). Other modules (batch norms,
    the head) are left as they are.

    Raises:
        ConfigError: an unknown scheme.
    """
    check_choice("init", scheme, INITS)
    if scheme == "closerlook":
        return model
    drawn: set[int] = set()  # shared tensors are drawn once
    for module in model.modules():
        if isinstance(module, ACDCConv2d):
            kh, kw = module.kernel_size
            fan_in = module.unit_shape[1] * kh * kw  # a grouped layout: a group's inputs
            module.reset_atoms(kernel_variance=1.0 / (3.0 * fan_in))
        elif isinstance(module, SharedKernelConv2d):
            if id(module.weight) not in drawn:
                drawn.add(id(module.weight))
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        elif isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return model
