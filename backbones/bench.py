"""Benchmark: eager forward of a backbone against timm's ``features_only`` model.

Both models run in one process, with the same weights, input and thread count,
in interleaved rounds (the order alternates each round), so that drift in the
machine's speed hits both alike. Reported figures are medians over rounds.

This module measures; it asserts nothing about speed.
"""

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from backbones.catalog import backbone_entry
from backbones.factory import create_backbone
from backbones.features import FeatureInfo
from backbones.inference import optimize_for_inference
from backbones.zoo.timm_models import SIZING_ATTEMPTS

__all__ = [
    "BenchResult",
    "StartupResult",
    "TrainBenchResult",
    "benchmark",
    "startup",
    "train_benchmark",
]


OURS = "backbones"
OPTIMIZED = "backbones optimized"
TIMM = "timm features_only"


@dataclass(frozen=True)
class BenchResult:
    """Timings of one benchmark run.

    Attributes:
        name: the backbone.
        batch_size, img_size, threads, rounds: the setting measured.
        seconds: median seconds per forward pass, per contender.
        ratios: per contender, the median over rounds of (timm's time / its time);
            above 1 means faster than timm.
    """

    name: str
    batch_size: int
    img_size: int
    threads: int
    rounds: int
    seconds: dict[str, float]
    ratios: dict[str, float]

    @property
    def ratio_median(self) -> float:
        """Our eager backbone's speed relative to timm's (images/s over images/s)."""
        return self.ratios[OURS]

    def images_per_second(self, contender: str) -> float:
        """Images per second of one contender."""
        return self.batch_size / self.seconds[contender]

    def table(self) -> str:
        """The result as a small text table."""
        lines = [
            f"{self.name}: batch {self.batch_size}, {self.img_size}x{self.img_size}, "
            f"{self.threads} threads, {self.rounds} interleaved rounds, eval, inference_mode",
            f"  {'model':<22}{'ms/batch':>10}{'images/s':>10}{'vs timm':>9}",
        ]
        for contender, seconds in self.seconds.items():
            lines.append(
                f"  {contender:<22}{seconds * 1e3:>10.1f}"
                f"{self.images_per_second(contender):>10.1f}{self.ratios[contender]:>9.3f}"
            )
        lines.append(f"  ratio (backbones / timm images/s): {self.ratio_median:.3f}")
        return "\n".join(lines)


def benchmark(
    name: str,
    *,
    out_indices: Sequence[int] | None = None,
    batch_size: int = 8,
    img_size: int = 224,
    threads: int = 2,
    rounds: int = 20,
    warmup: int = 3,
    optimized: bool = False,
) -> BenchResult:
    """Time eager forward of ``create_backbone(name)`` against timm's features_only model.

    Args:
        name: a registered backbone that timm also defines.
        out_indices: levels both models return; None for the network's default.
        batch_size: images per forward pass.
        img_size: square input size in pixels.
        threads: torch intra-op threads for the run (restored afterwards).
        rounds: timed rounds; each times one pass of each model.
        warmup: untimed passes of each model first.
        optimized: also time :func:`backbones.inference.optimize_for_inference`'s copy.

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
    import timm  # here: importing timm is slow, `backbones` is not

    _check_counts(batch_size, img_size, threads, rounds, warmup)
    ours = create_backbone(name, out_indices=out_indices).eval()
    arch = name.removeprefix("timm/")  # a zoo name is timm's own model
    if not timm.is_model(arch):
        raise RuntimeError(f"timm defines no model {arch!r} to compare with")
    levels = tuple(cast(FeatureInfo, ours.feature_info).out_indices)
    reference = None
    for attempt in SIZING_ATTEMPTS:  # as the zoo builds it
        try:
            reference = timm.create_model(arch, features_only=True, out_indices=levels, **attempt)
        except TypeError:
            continue
        break
    if reference is None:
        raise RuntimeError(f"timm cannot build {arch!r} with features_only=True")
    reference.eval()
    target = cast(nn.Module, ours.body) if arch != name else ours
    target.load_state_dict(reference.state_dict())  # same numbers through both
    contenders: dict[str, nn.Module] = {OURS: ours, TIMM: reference}
    if optimized:
        contenders[OPTIMIZED] = optimize_for_inference(ours)
    x = torch.randn(batch_size, 3, img_size, img_size)

    with torch.inference_mode():
        times = _interleaved(contenders, x, threads=threads, rounds=rounds, warmup=warmup)

    return BenchResult(
        name=name,
        batch_size=batch_size,
        img_size=img_size,
        threads=threads,
        rounds=rounds,
        seconds={label: statistics.median(t) for label, t in times.items()},
        ratios={
            label: statistics.median(r / o for o, r in zip(t, times[TIMM], strict=True))
            for label, t in times.items()
        },
    )


def _check_counts(batch_size: int, img_size: int, threads: int, rounds: int, warmup: int) -> None:
    for label, value in (("batch_size", batch_size), ("img_size", img_size), ("threads", threads)):
        if value < 1:
            raise ValueError(f"{label} must be at least 1, got {value}")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got {rounds} and {warmup}")


def _interleaved(
    contenders: Mapping[str, Callable[[torch.Tensor], object]],
    x: torch.Tensor,
    *,
    threads: int,
    rounds: int,
    warmup: int,
) -> dict[str, list[float]]:
    """Seconds per call of each contender on ``x``, ``rounds`` times, the order rotating
    each round (who goes first changes), after ``warmup`` untimed calls of each; with
    ``threads`` torch threads, restored afterwards."""
    times: dict[str, list[float]] = {label: [] for label in contenders}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            for run in contenders.values():
                run(x)
        order = list(contenders)
        for i in range(rounds):
            shift = i % len(order)
            for label in order[shift:] + order[:shift]:
                start = time.perf_counter()
                contenders[label](x)
                times[label].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
    return times


# -- the first create in a fresh process ---------------------------------------------------
_STARTUP_CHILD = """
import json, sys, time
import torch
start = time.perf_counter()
if sys.argv[1] == "timm":
    import timm
    timm.create_model(sys.argv[2], features_only=True)
else:
    import backbones
    backbones.create_backbone(sys.argv[2])
print(json.dumps(time.perf_counter() - start))
"""


@dataclass(frozen=True)
class StartupResult:
    """Seconds from after ``import torch`` to a built model, in fresh processes.

    Attributes:
        name: the backbone; ``arch`` timm's model of it.
        rounds: fresh processes per contender, alternating.
        seconds: per contender, the median.
        ratio: the median over rounds of (our seconds / timm's seconds); below 1.10
            means within 10% of timm.
    """

    name: str
    arch: str
    rounds: int
    seconds: dict[str, float]
    ratio: float

    def table(self) -> str:
        """The result as a small text table."""
        rows = {
            f"backbones.create_backbone({self.name!r})": self.seconds[OURS],
            f"timm.create_model({self.arch!r}, features_only=True)": self.seconds[TIMM],
        }
        width = max(len(label) for label in rows) + 2
        return "\n".join(
            [
                f"{self.name}: first create in a fresh process (after import torch), "
                f"{self.rounds} alternating rounds",
                f"  {'contender':<{width}}{'seconds':>9}",
                *(f"  {label:<{width}}{seconds:>9.3f}" for label, seconds in rows.items()),
                f"  ratio (backbones / timm seconds): {self.ratio:.3f}",
            ]
        )


def startup(name: str, *, rounds: int = 5) -> StartupResult:
    """Time the first ``create_backbone(name)`` in a fresh process against timm's first
    ``create_model(..., features_only=True)``, each from after ``import torch``.

    Args:
        name: a ``timm/`` name, or a backbone timm also defines.
        rounds: fresh processes per contender; they alternate, and the order flips.

    Raises:
        ValueError: ``rounds`` is not positive.
        UnknownNameError: ``name`` is not a backbone.
        RuntimeError: timm has no model of that name, or a child process failed (its
            error output is in the message).
    """
    import timm

    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    backbone_entry(name)  # an unknown name: the lookup's error, with suggestions
    arch = name.removeprefix("timm/")
    if not timm.is_model(arch):
        raise RuntimeError(f"timm defines no model {arch!r} to compare with")
    runs: dict[str, list[float]] = {OURS: [], TIMM: []}
    for i in range(rounds):
        order = [(OURS, name), (TIMM, arch)]
        for label, model in order if i % 2 == 0 else order[::-1]:
            child = subprocess.run(
                [sys.executable, "-c", _STARTUP_CHILD, "timm" if label == TIMM else "ours", model],
                capture_output=True,
                text=True,
                check=False,
            )
            if child.returncode != 0:
                raise RuntimeError(f"the {label} process failed: {child.stderr.strip()[-2000:]}")
            runs[label].append(float(json.loads(child.stdout.strip().splitlines()[-1])))
    return StartupResult(
        name=name,
        arch=arch,
        rounds=rounds,
        seconds={label: statistics.median(t) for label, t in runs.items()},
        ratio=statistics.median(o / t for o, t in zip(runs[OURS], runs[TIMM], strict=True)),
    )


# -- training steps -------------------------------------------------------------------------
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

_TRAIN_CHILD = """
import json, resource, sys
import torch
from backbones.bench import _train_contenders
config = json.loads(sys.argv[1])
torch.set_num_threads(config.pop("threads"))
label = config.pop("label")
steps, x = _train_contenders(**config)
step = steps[label]
step(x)  # optimizer state and allocator caches exist from here on
with open("/proc/self/statm") as f:
    before = int(f.read().split()[1]) * resource.getpagesize()
step(x)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps((peak - before) / 2**20))
"""


@dataclass(frozen=True)
class TrainBenchResult:
    """Timings and memory of training steps (forward, backward, SGD step).

    Attributes:
        name: the backbone.
        batch_size, img_size, threads, rounds: the setting measured.
        grad_checkpointing, amp, channels_last: how both contenders trained.
        seconds: median seconds per step, per contender.
        ratio: the median over rounds of (timm's time / ours); above 1 is faster.
        peak_mb: per contender, how far a step raises the process's peak resident memory
            above what it holds before the step (a fresh process each, second step: the
            activations and their gradients); None when not measured.
    """

    name: str
    batch_size: int
    img_size: int
    threads: int
    rounds: int
    grad_checkpointing: bool
    amp: str
    channels_last: bool
    seconds: dict[str, float]
    ratio: float
    peak_mb: dict[str, float | None]

    def table(self) -> str:
        """The result as a small text table."""
        setting = [f"amp {self.amp}"]
        if self.grad_checkpointing:
            setting.append("gradient checkpointing")
        if self.channels_last:
            setting.append("channels_last")
        lines = [
            f"{self.name}: training step (forward, backward, SGD), batch {self.batch_size}, "
            f"{self.img_size}x{self.img_size}, {self.threads} threads, {self.rounds} interleaved "
            f"rounds, {', '.join(setting)}",
            f"  {'model':<22}{'s/step':>9}{'images/s':>10}{'step peak MB':>14}",
        ]
        for contender, seconds in self.seconds.items():
            peak = self.peak_mb[contender]
            lines.append(
                f"  {contender:<22}{seconds:>9.3f}{self.batch_size / seconds:>10.1f}"
                f"{'-' if peak is None else f'{peak:.0f}':>14}"
            )
        lines.append(f"  ratio (backbones / timm images/s): {self.ratio:.3f}")
        return "\n".join(lines)


def train_benchmark(
    name: str,
    *,
    batch_size: int = 8,
    img_size: int = 224,
    threads: int = 2,
    rounds: int = 5,
    warmup: int = 1,
    grad_checkpointing: bool = False,
    amp: str = "none",
    channels_last: bool = False,
    memory: bool = True,
) -> TrainBenchResult:
    """Time training steps of ``create_backbone(name)`` against timm's ``features_only``
    model of the same variant (same weights, input and settings; timm's own gradient
    checkpointing when ``grad_checkpointing``), in interleaved rounds; with ``memory``,
    also each one's step peak memory, in a fresh process each.

    The loss is the mean square of every returned map, so the whole network trains.

    Raises:
        ValueError: a count is not positive, or ``amp`` is not one of ``none``, ``bf16``,
            ``fp16``.
        RuntimeError: timm has no model of that name, or a memory process failed.
    """
    _check_counts(batch_size, img_size, threads, rounds, warmup)
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp={amp!r} is not accepted; accepted: {', '.join(AMP_DTYPES)}")
    config = {
        "name": name,
        "batch_size": batch_size,
        "img_size": img_size,
        "grad_checkpointing": grad_checkpointing,
        "amp": amp,
        "channels_last": channels_last,
    }
    steps, x = _train_contenders(**config)  # type: ignore[arg-type]
    times = _interleaved(steps, x, threads=threads, rounds=rounds, warmup=warmup)
    peaks: dict[str, float | None] = dict.fromkeys(steps)
    if memory:
        for label in steps:
            peaks[label] = _step_peak_mb({**config, "label": label, "threads": threads})
    return TrainBenchResult(
        name=name,
        batch_size=batch_size,
        img_size=img_size,
        threads=threads,
        rounds=rounds,
        grad_checkpointing=grad_checkpointing,
        amp=amp,
        channels_last=channels_last,
        seconds={label: statistics.median(t) for label, t in times.items()},
        ratio=statistics.median(t / o for o, t in zip(times[OURS], times[TIMM], strict=True)),
        peak_mb=peaks,
    )


def _train_contenders(
    name: str,
    batch_size: int,
    img_size: int,
    grad_checkpointing: bool,
    amp: str,
    channels_last: bool,
) -> tuple[dict[str, Callable[[torch.Tensor], None]], torch.Tensor]:
    """A training step of ours and of timm's model (same weights), and the input."""
    import timm

    arch = name.removeprefix("timm/")
    if not timm.is_model(arch):
        raise RuntimeError(f"timm defines no model {arch!r} to compare with")
    ours = create_backbone(name, grad_checkpointing=grad_checkpointing)
    levels = tuple(cast(FeatureInfo, ours.feature_info).out_indices)
    reference = timm.create_model(arch, features_only=True, out_indices=levels)
    target = cast(nn.Module, ours.body) if arch != name else ours
    target.load_state_dict(reference.state_dict())
    if grad_checkpointing:
        cast(Any, reference).set_grad_checkpointing(True)
    x = torch.randn(batch_size, 3, img_size, img_size)
    contenders: dict[str, nn.Module] = {OURS: ours, TIMM: reference}
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        for model in contenders.values():
            model.to(memory_format=torch.channels_last)
    dtype = AMP_DTYPES[amp]
    return {label: _train_step(model, dtype) for label, model in contenders.items()}, x


def _train_step(model: nn.Module, dtype: torch.dtype | None) -> Callable[[torch.Tensor], None]:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step(x: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x)
        maps = list(out.values()) if isinstance(out, dict) else list(out)
        loss = sum(m.float().square().mean() for m in maps)
        optimizer.zero_grad(set_to_none=True)
        cast(torch.Tensor, loss).backward()
        optimizer.step()

    return step


def _step_peak_mb(config: dict[str, object]) -> float:
    child = subprocess.run(
        [sys.executable, "-c", _TRAIN_CHILD, json.dumps(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode != 0:
        raise RuntimeError(f"the memory process failed: {child.stderr.strip()[-2000:]}")
    return float(json.loads(child.stdout.strip().splitlines()[-1]))
