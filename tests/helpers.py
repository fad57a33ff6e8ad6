"""Shared test utilities: deterministic weights and numeric comparisons."""

from torch import Tensor

from backbones.testing import randomize_batchnorm_stats

# The older name, kept for the tests that use it; the public helper covers frozen
# BatchNorms too (torchvision's FrozenBatchNorm2d), with the same draws for the others.
randomize_norm_stats = randomize_batchnorm_stats


def max_abs_diff(a: list[Tensor], b: list[Tensor]) -> float:
    """Largest absolute difference over two equally long lists of tensors."""
    assert len(a) == len(b), f"{len(a)} tensors vs {len(b)}"
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape, f"shape {tuple(x.shape)} vs {tuple(y.shape)}"
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
