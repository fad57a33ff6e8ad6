"""Quickstart: build resnet50 as a feature extractor and look at what it returns.

Run with `make demo` (or `python examples/quickstart.py` inside the venv).
"""

import time

import torch

from backbones import create_backbone, list_backbones


def main() -> None:
    print(f"registered backbones: {', '.join(list_backbones())}\n")

    backbone = create_backbone("resnet50", out_indices=(0, 1, 2, 3, 4)).eval()
    info = backbone.feature_info
    image = torch.randn(1, 3, 512, 512)

    with torch.inference_mode():
        backbone(image)  # warm-up
        start = time.perf_counter()
        features = backbone(image)
        elapsed = time.perf_counter() - start

    print("resnet50 features for a 1x3x512x512 input")
    print(f"{'index':>5}  {'module':<8}{'channels':>9}{'stride':>8}  shape")
    for index, module, channels, stride, feature in zip(
        info.out_indices,
        info.module_name(),
        info.channels(),
        info.reduction(),
        features,
        strict=True,
    ):
        print(f"{index:>5}  {module:<8}{channels:>9}{stride:>8}  {tuple(feature.shape)}")
    print(
        f"\nforward pass: {elapsed * 1e3:.1f} ms on {torch.get_num_threads()} CPU threads "
        f"(eval, inference_mode)"
    )


if __name__ == "__main__":
    main()
