"""Parameter counts split into ACDC coefficients, atoms and everything else."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from metaacdc.acdc.layer import ACDCConv2d


@dataclass(frozen=True)
class ParameterCounts:
    """Numbers of scalar parameters; a tensor shared by several layers counts once."""

    coefficients: int
    atoms: int
    other: int

    @property
    def total(self) -> int:
        return self.coefficients + self.atoms + self.other


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Count ``model``'s parameters by role (coefficients, atoms, other), each tensor once."""
    seen: set[int] = set()
    counts = {"coefficients": 0, "atoms": 0, "other": 0}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            role = name if isinstance(module, ACDCConv2d) and name in counts else "other"
            counts[role] += param.numel()
    return ParameterCounts(**counts)
