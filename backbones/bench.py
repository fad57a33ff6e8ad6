"""Benchmark: eager forward of a backbone against timm's ``features_only`` model.

Both models run in one process, with the same weights, input and thread count,
in interleaved rounds (the order alternates each round), so that drift in the
machine's speed hits both alike. Reported figures are medians over rounds.

This module measures; it asserts nothing about speed.
"""

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["BenchResult", "benchmark"]


@dataclass(frozen=True)
class BenchResult:
    """Timings of one benchmark run.

    Attributes:
        name: the backbone.
        batch_size, img_size, threads, rounds: the setting measured.
        ours_s, timm_s: median seconds per forward pass.
        ratio_median: median over rounds of (timm time / our time); above 1 means we are faster.
    """

    name: str
    batch_size: int
    img_size: int
    threads: int
    rounds: int
    ours_s: float
    timm_s: float
    ratio_median: float

    @property
    def ours_ips(self) -> float:
        """Our images per second."""
        return self.batch_size / self.ours_s

    @property
    def timm_ips(self) -> float:
        """timm's images per second."""
        return self.batch_size / self.timm_s

    def table(self) -> str:
        """The result as a small text table."""
        return "\n".join(
            [
                f"{self.name}: batch {self.batch_size}, {self.img_size}x{self.img_size}, "
                f"{self.threads} threads, {self.rounds} interleaved rounds, eval, inference_mode",
                f"  {'model':<22}{'ms/batch':>10}{'images/s':>10}",
                f"  {'backbones':<22}{self.ours_s * 1e3:>10.1f}{self.ours_ips:>10.1f}",
                f"  {'timm features_only':<22}{self.timm_s * 1e3:>10.1f}{self.timm_ips:>10.1f}",
                f"  ratio (backbones / timm images/s): {self.ratio_median:.3f}",
            ]
        )


def benchmark(
    name: str,
    *,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    batch_size: int = 8,
    img_size: int = 224,
    threads: int = 2,
    rounds: int = 20,
    warmup: int = 3,
) -> BenchResult:
    """Time eager forward of ``create_backbone(name)`` against timm's features_only model.

    Args:
        name: a registered backbone that timm also defines.
        out_indices: levels both models return.
        batch_size: images per forward pass.
        img_size: square input size in pixels.
        threads: torch intra-op threads for the run (restored afterwards).
        rounds: timed rounds; each times one pass of each model.
        warmup: untimed passes of each model first.

    Returns:
        A :class:`BenchResult`.

    Raises:
        ValueError: a count is not positive.
        UnknownNameError: ``name`` is not a registered backbone.
        RuntimeError: timm has no model called ``name``.

    Example:
        >>> result = benchmark("resnet18", batch_size=1, img_size=64, rounds=2)  # doctest: +SKIP
        >>> print(result.table())  # doctest: +SKIP
    """
    import timm

    from backbones.registry import create_backbone

    for label, value in (("batch_size", batch_size), ("img_size", img_size), ("threads", threads)):
        if value < 1:
            raise ValueError(f"{label} must be at least 1, got {value}")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got {rounds} and {warmup}")
    ours = create_backbone(name, out_indices=out_indices).eval()
    if not timm.is_model(name):
        raise RuntimeError(f"timm defines no model {name!r} to compare with")
    reference = timm.create_model(name, features_only=True, out_indices=tuple(out_indices)).eval()
    ours.load_state_dict(reference.state_dict())  # same numbers through both
    x = torch.randn(batch_size, 3, img_size, img_size)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                ours(x)
                reference(x)
            ours_t, ref_t = [], []
            for i in range(rounds):
                pair = [(ours, ours_t), (reference, ref_t)]
                for model, sink in pair if i % 2 == 0 else reversed(pair):
                    sink.append(_time_once(model, x))
    finally:
        torch.set_num_threads(previous_threads)

    return BenchResult(
        name=name,
        batch_size=batch_size,
        img_size=img_size,
        threads=threads,
        rounds=rounds,
        ours_s=statistics.median(ours_t),
        timm_s=statistics.median(ref_t),
        ratio_median=statistics.median(r / o for o, r in zip(ours_t, ref_t, strict=True)),
    )


def _time_once(model: Callable[[torch.Tensor], object] | nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start
