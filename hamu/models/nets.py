"""The model architectures: MLP, a small CNN, CIFAR ResNet-20, and a text classifier.

All take a float image tensor ``(n, C, H, W)`` or, for the text model, int64 token IDs ``(n, L)``, and
return logits ``(n, num_classes)``; ``model(inputs)`` is all the unlearning loop needs. Each has several
parameter tensors, so HAMU's layer-wise (per-tensor) blocks are meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Flatten, then ``hidden`` ReLU layers: the paper's CPU reproduction uses 64→128→128→10 on digits."""

    def __init__(
        self, in_features: int = 64, hidden: Sequence[int] = (128, 128), num_classes: int = 10
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3×3 conv + ReLU + 2×2 max-pool stages, then a hidden linear layer: ~0.1M parameters, 6 tensors.

    Sized for Fashion-MNIST on a 2-core CPU (channels 8/16 keep an epoch of 12k images near one second of
    compute); the hidden layer gives it enough capacity to carry a measurable membership signal.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = (8, 16),
        hidden: int = 128,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        c1, c2 = (int(c) for c in channels)
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        side = image_size // 4
        self.fc1 = nn.Linear(c2 * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            # Projection shortcut (1×1 conv + BN), as in the HF ResNetModel the paper uses.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20: 3×3 stem (no max-pool), 3 stages × 3 basic blocks of widths 16/32/64, BN, GAP, linear.

    About 0.27M parameters. The GPU preset; on a CPU an epoch of CIFAR-10 takes minutes.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        depth: int = 3,
    ) -> None:
        super().__init__()
        w0 = int(widths[0])
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w0, 3, padding=1, bias=False), nn.BatchNorm2d(w0), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        in_planes = w0
        for stage, width in enumerate(int(w) for w in widths):
            for b in range(depth):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(_BasicBlock(in_planes, width, stride))
                in_planes = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TextClassifier(nn.Module):
    """Mean of token embeddings (``EmbeddingBag``, padding ignored), one hidden ReLU layer, linear head.

    Trained from scratch on a vocabulary fitted to its own training data; a tweet is encoded in
    microseconds, so an epoch over ~30k tweets takes about a second on 2 cores.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden: int = 64, num_classes: int = 3) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (padding and unknown), got {vocab_size}")
        self.embedding = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=0)
        self.fc1 = nn.Linear(embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dtype != torch.int64:
            tokens = tokens.long()
        return self.fc2(F.relu(self.fc1(self.embedding(tokens))))
