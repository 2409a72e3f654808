"""The frame shared by the image classifiers of Parts II and III: stem, a body of blocks, pooling and a head."""

from __future__ import annotations

from torch import Tensor, nn


class ImageClassifier(nn.Module):
    """``x -> head(pool(body(stem(x))))``.

    The stem is a 3x3 convolution from ``in_channels`` to ``width`` channels; ``body`` maps
    ``(B, width, H, W)`` to ``(B, width, H, W)`` (a stack of residual blocks, an ODE block, ...); the
    head is global average pooling followed by a linear layer to ``num_classes`` logits. Every
    architecture in the comparison tables shares this frame, so they differ only in the body.
    """

    def __init__(self, body: nn.Module, in_channels: int, width: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.body = body
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"expected images of shape (batch, channels, height, width), got {tuple(x.shape)}")
        h = self.body(self.stem(x))
        return self.head(h.mean(dim=(2, 3)))
