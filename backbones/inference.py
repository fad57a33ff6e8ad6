"""Inference-only speed-ups for a built backbone: BatchNorm folding and channels_last.

The result computes the same function as the backbone in eval mode (up to
float rounding) with fewer passes over memory. It is for deployment and
benchmarks, not training: its BatchNorms are gone.
"""

import copy

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from backbones.contract import feature_info_of

__all__ = ["optimize_for_inference"]


def optimize_for_inference(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """A copy of ``model`` tuned for eval-mode inference on the CPU.

    Every convolution followed by a BatchNorm is folded into one convolution
    (torch.fx's conv-bn fusion), and with ``channels_last`` the weights are
    stored NHWC, which oneDNN convolves faster; the returned feature maps are
    then channels_last tensors too (call ``.contiguous()`` where a consumer
    needs NCHW). The input model is left untouched.

    Args:
        model: a backbone from :func:`backbones.create_backbone`.
        channels_last: store weights (and so produce features) in channels_last layout.

    Returns:
        An eval-mode ``nn.Module`` with the same forward contract and ``feature_info``.

    Raises:
        TypeError: ``model`` has no ``feature_info`` (it is not a backbone).
        RuntimeError: torch.fx cannot trace the backbone (a plugin block with
            data-dependent control flow); the message says why.

    Example:
        >>> fast = optimize_for_inference(create_backbone("resnet50"))  # doctest: +SKIP
        >>> with torch.inference_mode():  # doctest: +SKIP
        ...     feats = fast(images)
    """
    feature_info = feature_info_of(model, "optimize_for_inference")
    try:
        fused = fuse(copy.deepcopy(model).eval(), inplace=True)
    except Exception as err:  # torch.fx cannot trace some third-party modules
        raise RuntimeError(
            f"optimize_for_inference could not trace {type(model).__name__} with torch.fx "
            f"({type(err).__name__}: {err}); a block with data-dependent control flow must "
            f"wrap that part with torch.fx.wrap"
        ) from err
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    fused.feature_info = feature_info  # type: ignore[assignment]  # nn.Module attribute
    return fused.eval()
