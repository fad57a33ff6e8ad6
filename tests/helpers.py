"""Shared test utilities: deterministic weights and numeric comparisons."""

import torch
from torch import Tensor, nn


def randomize_norm_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine weights and running statistics.

    Fresh BatchNorms are nearly identity in eval mode, which would hide a wrong
    key mapping between two networks; random statistics expose it.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def max_abs_diff(a: list[Tensor], b: list[Tensor]) -> float:
    """Largest absolute difference over two equally long lists of tensors."""
    assert len(a) == len(b), f"{len(a)} tensors vs {len(b)}"
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape, f"shape {tuple(x.shape)} vs {tuple(y.shape)}"
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
