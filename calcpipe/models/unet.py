"""The paper's 2-D U-Net, configurable in width, depth, convolutions per block and the
number of neighbouring slices given as input channels (2.5-D context).

Singh et al. 2021: encoder blocks of (conv, batch norm, ReLU, max-pool) starting at 16
filters and doubling; four decoder blocks of (transposed conv, concatenation with the
encoder features, conv, batch norm, ReLU); a final 1x1 convolution to n+1 classes
(softmax in the loss); He-uniform initialisation. ``UNetConfig()`` with ``base=16``,
``depth=4``, ``convs_per_block=1``, ``context=0`` is that network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    n_classes: int = 8  # background + the seven canonical labels
    base: int = 16
    depth: int = 4
    convs_per_block: int = 1
    context: int = 0  # neighbouring slices on each side: in_channels = 2 * context + 1

    @property
    def in_channels(self) -> int:
        return 2 * self.context + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _block(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3,
                             padding=1, bias=False),
                   nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Input (N, 2*context+1, H, W) with H and W multiples of 2**depth; output logits
    (N, n_classes, H, W)."""

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.config = config
        widths = [config.base * 2**i for i in range(config.depth + 1)]
        self.encoders = nn.ModuleList()
        previous = config.in_channels
        for width in widths[:-1]:
            self.encoders.append(_block(previous, width, config.convs_per_block))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _block(widths[-2], widths[-1], config.convs_per_block)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.ups.append(nn.ConvTranspose2d(width * 2, width, 2, stride=2))
            self.decoders.append(_block(width * 2, width, config.convs_per_block))
        self.head = nn.Conv2d(widths[0], config.n_classes, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")  # He uniform
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            if isinstance(decoder, nn.Sequential) and isinstance(decoder[0], SkipConv):
                x = decoder((up(x), skip))
            else:
                x = decoder(torch.cat([up(x), skip], dim=1))
        out: torch.Tensor = self.head(x)
        return out


def fold_batch_norm(model: UNet) -> UNet:
    """Fold each eval-mode batch norm into the convolution before it, in place: inference
    then runs one operation where it ran two (the same logits to float rounding). For
    inference only: the folded network no longer trains as the paper's."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fold_batch_norm needs a model in eval mode")
    for block in model.modules():
        if not isinstance(block, nn.Sequential):
            continue
        for i in range(len(block) - 1):
            conv, norm = block[i], block[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                block[i] = fuse_conv_bn_eval(conv, norm)
                block[i + 1] = nn.Identity()
    return model


class SkipConv(nn.Module):
    """A decoder block's first convolution, over the upsampled features and the encoder's
    skip features, as two convolutions summed: the same as convolving their concatenation
    (the convolution is linear in its input channels), without copying both into one
    tensor. On the CPU that copy took about a quarter of the network's time in a profile;
    splitting saved 8 % of fp32 segmentation there, nothing measurable in bf16."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        upsampled = conv.in_channels // 2  # UNet concatenates [upsampled, skip]
        self.upsampled = _conv_part(conv, slice(0, upsampled), bias=True)
        self.skip = _conv_part(conv, slice(upsampled, conv.in_channels), bias=False)

    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        upsampled, skip = pair
        out: torch.Tensor = self.upsampled(upsampled).add_(self.skip(skip))
        return out


def _conv_part(conv: nn.Conv2d, channels: slice, bias: bool) -> nn.Conv2d:
    part = nn.Conv2d(channels.stop - channels.start, conv.out_channels,
                     cast(tuple[int, int], conv.kernel_size),
                     padding=cast(tuple[int, int], conv.padding), bias=False)
    part.weight.data = conv.weight.data[:, channels].clone()
    if bias and conv.bias is not None:
        part.bias = nn.Parameter(conv.bias.detach().clone())
    return part


def prepare_for_inference(model: UNet) -> UNet:
    """The eval-mode network rearranged for inference, in place, with the same logits to
    float rounding: batch norm folded into the convolutions (:func:`fold_batch_norm`) and
    each decoder's convolution over the concatenated features split (:class:`SkipConv`).
    The prepared network no longer trains as the paper's."""
    fold_batch_norm(model)
    for decoder in model.decoders:
        if isinstance(decoder, nn.Sequential) and isinstance(decoder[0], nn.Conv2d):
            decoder[0] = SkipConv(decoder[0])
    return model
