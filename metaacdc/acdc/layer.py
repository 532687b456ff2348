"""The atom-coefficient decomposed convolution layer (ACDC, papers 000 §2 and 001 §3).

A kernel ``K[o, i] = sum_k A[o, i, k] * D[k]`` is built from coefficients ``A`` (possibly
shared with other layers) and this layer's own atoms ``D``. The layer never stores a dense
kernel, so every parameter it holds takes part in the forward graph (MAML needs that).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from metaacdc.acdc.grouping import GroupLayout, channel_shuffle
from metaacdc.acdc.masks import supplied_mask
from metaacdc.acdc.slicing import NestedSlices
from metaacdc.errors import ConfigError, check_choice, check_positive_int, check_probability

Path = Literal["auto", "kernel", "atoms"]
PATHS: tuple[str, ...] = ("auto", "kernel", "atoms")
PADDING_MODES: tuple[str, ...] = ("zeros", "reflect", "replicate", "circular")


class ACDCConv2d(nn.Module):
    """Drop-in replacement for ``nn.Conv2d`` whose kernel is coefficients x atoms.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode: as ``nn.Conv2d``.
        atoms: number of atoms ``m`` per layer (per unit when grouped).
        atom_drop: probability of zeroing each atom in training mode; survivors are scaled
            by ``1 / (1 - atom_drop)`` so the expected kernel is unchanged. Off in eval mode.
        group_size: ``None`` for the plain decomposition. An int ``s`` splits the channels
            into groups of ``s`` (``ACDC-g-*``): every ``s x s`` unit of the kernel has its own
            atoms and all units share one ``s x s x m`` coefficient tensor; outputs are mixed
            by a channel shuffle. See :class:`~metaacdc.acdc.grouping.GroupLayout` for layers
            whose input and output widths differ.
        path: ``"kernel"`` reconstructs ``K`` and runs one convolution; ``"atoms"`` runs the
            atom sub-layer (each input channel with each atom) then the 1x1 coefficient
            sub-layer; ``"auto"`` picks the cheaper one for the input shape at hand.

    Shapes:
        coefficients: ``(c_alloc, c'_alloc, m)`` with ``c_alloc >= out_channels`` and
        ``c'_alloc >= in_channels / groups`` (a shared tensor is allocated at the widest layer
        of its scope and sliced, paper 000 §2.3); ``(s, s, m)`` when grouped.
        atoms: ``(m, kh, kw)``; ``(units, m, kh, kw)`` when grouped.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        atoms: int = 8,
        atom_drop: float = 0.1,
        group_size: int | None = None,
        path: Path = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("atoms", atoms)
        check_probability("atom_drop", atom_drop)
        check_choice("path", path, PATHS)
        check_choice("padding_mode", padding_mode, PADDING_MODES)
        check_positive_int("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ConfigError(
                f"groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding: tuple[int, int] | str = (
            padding if isinstance(padding, str) else _pair(padding)
        )
        self.dilation = _pair(dilation)
        self.groups = groups
        self.padding_mode = padding_mode
        self.num_atoms = atoms
        self.atom_drop = atom_drop
        self.path: Path = path
        self.layout = (
            None if group_size is None else GroupLayout(in_channels, out_channels, group_size)
        )
        if self.layout is not None and groups != 1:
            raise ConfigError(
                f"group_size={group_size} cannot be combined with a grouped convolution "
                f"(groups={groups}); use group_size=None for this layer"
            )
        factory = {"device": device, "dtype": dtype}
        kh, kw = self.kernel_size
        if self.layout is None:
            coef_shape: tuple[int, ...] = (out_channels, in_channels // groups, atoms)
            atom_shape: tuple[int, ...] = (atoms, kh, kw)
        else:
            s = self.layout.group_size
            coef_shape = (s, s, atoms)
            atom_shape = (self.layout.units, atoms, kh, kw)
        self.coefficients = nn.Parameter(torch.empty(coef_shape, **factory))  # type: ignore[arg-type]
        self.atoms = nn.Parameter(torch.empty(atom_shape, **factory))  # type: ignore[arg-type]
        self.bias = (
            nn.Parameter(torch.zeros(out_channels, **factory))  # type: ignore[arg-type]
            if bias
            else None
        )
        self.slices: NestedSlices | None = None
        init_coefficients(self.coefficients)
        self.reset_atoms()

    # ----------------------------------------------------------------- sharing
    @property
    def unit_shape(self) -> tuple[int, int]:
        """(rows, columns) of the coefficient slice this layer reads."""
        if self.layout is None:
            return self.out_channels, self.in_channels // self.groups
        return self.layout.group_size, self.layout.group_size

    def share_coefficients(
        self, coefficients: nn.Parameter, slices: NestedSlices | None = None
    ) -> None:
        """Read the kernel's coefficients from ``coefficients`` (shared with other layers).

        The tensor must be at least as large as this layer's slice (``slices``, shared by the
        scope's layers, cuts it efficiently); the atoms are re-scaled
        so the reconstructed kernel keeps the variance of a Kaiming-initialised conv.
        """
        rows, cols = self.unit_shape
        if (
            coefficients.dim() != 3
            or coefficients.shape[0] < rows
            or coefficients.shape[1] < cols
            or coefficients.shape[2] != self.num_atoms
        ):
            raise ConfigError(
                f"coefficients of shape {tuple(coefficients.shape)} cannot serve a layer that "
                f"needs at least ({rows}, {cols}, {self.num_atoms})"
            )
        self.coefficients = coefficients
        self.slices = slices
        self.reset_atoms()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_atoms(self, kernel_variance: float | None = None) -> None:
        """Orthogonal atoms, scaled so that ``Var(K)`` equals ``kernel_variance``, by default
        ``2 / (kh*kw*out_channels)``: the variance of a plain conv under Kaiming fan-out init
        (design §4), given the current coefficients' Kaiming variance ``2 / (rows * m)`` of
        their own shape."""
        kh, kw = self.kernel_size
        flat = self.atoms.view(-1, self.num_atoms, kh * kw)
        for unit in flat:
            nn.init.orthogonal_(unit)
        coef_var = 2.0 / (self.coefficients.shape[0] * self.num_atoms)
        atom_energy = min(self.num_atoms, kh * kw)  # ||D||_F^2 of an orthogonal D
        target_var = (
            2.0 / (kh * kw * self.out_channels) if kernel_variance is None else kernel_variance
        )
        # Var(K) averaged over positions = Var(A) * ||D||_F^2 / (kh*kw) * gain^2
        gain = math.sqrt(target_var * kh * kw / (coef_var * atom_energy))
        self.atoms.mul_(gain)

    # --------------------------------------------------------------- forward
    def _effective_atoms(self) -> Tensor:
        if not (self.training and self.atom_drop > 0):
            return self.atoms
        keep = 1.0 - self.atom_drop
        mask_shape = (*self.atoms.shape[:-2], 1, 1)
        mask = supplied_mask(self, mask_shape)  # an engine's own draw (metaacdc.acdc.masks)
        if mask is None:
            mask = torch.rand(mask_shape, device=self.atoms.device) < keep
        return self.atoms * (mask.to(self.atoms.dtype) / keep)

    def _coefficient_slice(self) -> Tensor:
        """``A[:rows, :cols]``; the whole tensor when it fits exactly (no slice in the graph)."""
        rows, cols = self.unit_shape
        coef = self.coefficients
        if coef.shape[0] == rows and coef.shape[1] == cols:
            return coef
        if self.slices is not None:
            return self.slices.get(coef, rows, cols)
        return coef[:rows, :cols]

    def _unit_kernels(self, atoms: Tensor) -> Tensor:
        """``A[:rows, :cols] x D``: ``(out, in/groups, kh, kw)``, or per unit when grouped."""
        rows, cols = self.unit_shape
        coef = self._coefficient_slice()
        kh, kw = self.kernel_size
        if self.layout is None:
            flat_atoms = atoms.reshape(-1, kh * kw)
            if coef.is_contiguous():
                kernel = coef.reshape(rows * cols, self.num_atoms) @ flat_atoms
            else:  # a slice of a shared tensor: one product per row, without copying it
                kernel = torch.bmm(coef, flat_atoms.expand(rows, -1, -1))
            return kernel.view(rows, cols, kh, kw)
        return torch.einsum("oim,umk->uoik", coef, atoms.flatten(2)).reshape(
            self.layout.units, rows, cols, kh, kw
        )

    def weight_for_conv(self, atoms: Tensor | None = None) -> Tensor:
        """The kernel ``F.conv2d`` is called with (grouped layout before the shuffle)."""
        units = self._unit_kernels(self.atoms if atoms is None else atoms)
        return units if self.layout is None else self.layout.assemble(units)

    @property
    def conv_groups(self) -> int:
        """The ``groups`` argument of the underlying ``F.conv2d``."""
        return self.groups if self.layout is None else self.layout.conv_groups

    def forward(self, x: Tensor) -> Tensor:
        atoms = self._effective_atoms()
        x, padding = self._pad(x)
        use_atoms = self.path == "atoms" or (self.path == "auto" and self._atom_path_is_cheaper(x))
        if use_atoms:
            y = self._forward_atoms(x, atoms, padding)
        else:
            y = F.conv2d(
                x,
                self.weight_for_conv(atoms),
                None,
                self.stride,
                padding,
                self.dilation,
                self.conv_groups,
            )
        if self.layout is not None:
            y = channel_shuffle(y, self.layout.conv_groups)
        if self.bias is not None:
            # in the output's dtype: under autocast the bias (float32) would otherwise
            # promote the bfloat16 convolution back to float32, and every layer after it
            y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        return y

    def _explicit_padding(self) -> list[int]:
        """``F.pad`` amounts (left, right, top, bottom) of the layer's padding spec."""
        pads: list[int] = []
        for k, d, p in zip(
            reversed(self.kernel_size), reversed(self.dilation), reversed(self._int_padding())
        ):
            if p < 0:  # 'same': total d*(k-1), left half first
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            else:
                pads += [p, p]
        return pads

    def _pad(self, x: Tensor) -> tuple[Tensor, tuple[int, int] | str]:
        """Apply a non-zero padding mode explicitly, as ``nn.Conv2d`` does."""
        if self.padding_mode == "zeros":
            return x, self.padding
        return F.pad(x, self._explicit_padding(), mode=self.padding_mode), (0, 0)

    def _int_padding(self) -> tuple[int, int]:
        if self.padding == "valid":
            return (0, 0)
        if self.padding == "same":
            return (-1, -1)
        assert isinstance(self.padding, tuple)
        return self.padding

    def _atom_path_is_cheaper(self, x: Tensor) -> bool:
        """Cost of both paths for this input: multiply-adds plus, weighted by
        ``MEMORY_WEIGHT``, the floats each path moves besides the convolution itself.

        The kernel path rebuilds ``K`` and its gradient (about six passes over an array of
        ``K``'s size); the atom path unfolds the input and writes an ``m``-times wider
        intermediate. So the atom path wins where feature maps are small and kernels large
        (deep layers, small batches), the kernel path everywhere else.
        """
        kh, kw = self.kernel_size
        taps, m = kh * kw, self.num_atoms
        positions = (
            x.shape[0]
            * _out_size(x.shape[-2], kh, self.stride[0])
            * _out_size(x.shape[-1], kw, self.stride[1])
        )
        c_in, c_out = self.in_channels, self.out_channels
        per_group_in = c_in // self.conv_groups
        conv = positions * c_out * per_group_in * taps
        if self.layout is not None:  # grouped: multiply-adds only, atom path must win by 2x
            layout = self.layout
            s = layout.group_size
            kernel_cost = layout.units * s * s * m * taps + conv
            atom_cost = positions * (
                c_in * layout.out_repeat * m * taps + layout.mixing_groups * s * s * m
            )
            return 2 * atom_cost < kernel_cost
        kernel_cost = (
            conv
            + c_out * per_group_in * m * taps
            + MEMORY_WEIGHT * 6 * c_out * per_group_in * max(m, taps)
        )
        atom_cost = positions * c_in * m * (
            taps + c_out // self.conv_groups
        ) + MEMORY_WEIGHT * 6 * positions * c_in * (taps + m)
        return atom_cost < kernel_cost

    def _forward_atoms(self, x: Tensor, atoms: Tensor, padding: tuple[int, int] | str) -> Tensor:
        """Atom sub-layer (every input channel with every atom) then the coefficient
        sub-layer (a 1x1 convolution mixing channels and atoms)."""
        kh, kw = self.kernel_size
        m = self.num_atoms
        rows, cols = self.unit_shape
        coef = self._coefficient_slice().reshape(rows, cols * m)
        if self.layout is None:
            return self._forward_atoms_unfolded(x, atoms, coef, padding)
        layout = self.layout
        depthwise = layout.depthwise_atoms(atoms).view(-1, 1, kh, kw)
        z = F.conv2d(x, depthwise, None, self.stride, padding, self.dilation, self.in_channels)
        z = layout.order_for_mixing(z, m)
        mixing = layout.mixing_weight(coef)
        return F.conv2d(z, mixing, None, 1, 0, 1, layout.mixing_groups)

    def _forward_atoms_unfolded(
        self, x: Tensor, atoms: Tensor, coef: Tensor, padding: tuple[int, int] | str
    ) -> Tensor:
        """The two sub-layers as two matrix products over the unfolded input, which avoids
        a depthwise convolution with ``c_in * m`` outputs (slow on CPU)."""
        if isinstance(padding, str):
            x, padding = F.pad(x, self._explicit_padding()), (0, 0)
        n, c_in = x.shape[:2]
        kh, kw = self.kernel_size
        g, m = self.groups, self.num_atoms
        columns = F.unfold(x, (kh, kw), self.dilation, padding, self.stride)
        length = columns.shape[-1]
        taps = columns.view(n, c_in, kh * kw, length)
        z = torch.einsum("mt,nctl->ncml", atoms.reshape(m, kh * kw), taps)
        y = torch.einsum(
            "gok,ngkl->ngol",
            coef.view(g, self.out_channels // g, -1),
            z.reshape(n, g, -1, length),
        )
        height = _out_size(x.shape[-2], kh, self.stride[0], padding[0], self.dilation[0])
        return y.reshape(n, self.out_channels, height, length // height)

    # ----------------------------------------------------------------- tests
    @torch.no_grad()
    def dense_kernel(self) -> Tensor:
        """The equivalent ``(out_channels, in_channels, kh, kw)`` kernel of a ``groups=1`` conv
        (atom-drop off), shuffle and block structure included. For checks and analysis."""
        weight = self.weight_for_conv()
        dense = _block_diagonal(weight, self.conv_groups, self.in_channels)
        if self.layout is not None:
            dense = channel_shuffle(dense.unsqueeze(0), self.layout.conv_groups).squeeze(0)
        return dense

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, atoms={self.num_atoms}, "
            f"atom_drop={self.atom_drop}, coefficients={tuple(self.coefficients.shape)}"
        )
        if self.layout is not None:
            text += f", group_size={self.layout.group_size}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text


#: Multiply-adds one moved float is worth in the path choice (a CPU-calibrated heuristic).
MEMORY_WEIGHT = 8


def _out_size(size: int, kernel: int, stride: int, padding: int = -1, dilation: int = 1) -> int:
    """Output length of a convolution; ``padding=-1`` assumes "same"-like padding."""
    if padding < 0:
        return max(1, (size + stride - 1) // stride)
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def init_coefficients(coefficients: Tensor) -> Tensor:
    """Kaiming-normal init of a ``(rows, cols, m)`` coefficient tensor: ``Var = 2/(rows*m)``."""
    with torch.no_grad():
        return coefficients.normal_(
            0.0, math.sqrt(2.0 / (coefficients.shape[0] * coefficients.shape[2]))
        )


def _block_diagonal(weight: Tensor, groups: int, in_channels: int) -> Tensor:
    """Expand a grouped-conv kernel ``(out, in/groups, kh, kw)`` to its ``groups=1`` form."""
    if groups == 1:
        return weight
    out = weight.shape[0]
    dense = weight.new_zeros(out, in_channels, *weight.shape[2:])
    per_out, per_in = out // groups, in_channels // groups
    for g in range(groups):
        dense[g * per_out : (g + 1) * per_out, g * per_in : (g + 1) * per_in] = weight[
            g * per_out : (g + 1) * per_out
        ]
    return dense
