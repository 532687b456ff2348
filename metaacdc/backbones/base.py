"""What every backbone exposes: a feature extractor and a linear head."""

from __future__ import annotations

from torch import Tensor, nn


class Backbone(nn.Module):
    """``features`` (images -> flat vectors of ``feature_dim``) followed by ``head``.

    MAML may adapt everything or, ANIL-style, only ``head``, without special cases.
    """

    conv_label: str = "plain"

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` images -> ``(N, feature_dim)`` features."""
        return self.features(x)

    def forward_head(self, features: Tensor) -> Tensor:
        """``(N, feature_dim)`` -> ``(N, num_classes)`` logits."""
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
