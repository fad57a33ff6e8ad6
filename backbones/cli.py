"""The ``backbones`` command line: ``python -m backbones <command>``.

Commands:
    list [PATTERN]    registered backbones and blocks matching an fnmatch pattern
    bench NAME        eager forward speed against timm's features_only model
"""

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_list(args: argparse.Namespace) -> int:
    from backbones.registry import list_backbones, list_blocks

    for title, names in (
        ("backbones", list_backbones(args.pattern)),
        ("blocks", list_blocks(args.pattern)),
    ):
        print(f"{title} ({len(names)}):")
        for name in names:
            print(f"  {name}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from backbones.bench import benchmark

    result = benchmark(
        args.name,
        batch_size=args.batch_size,
        img_size=args.img_size,
        threads=args.threads,
        rounds=args.rounds,
        warmup=args.warmup,
        optimized=args.optimized,
    )
    print(result.table())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backbones", description="Multi-scale backbones for vision tasks."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_list = sub.add_parser("list", help="list registered backbones and blocks")
    p_list.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'resnet*'")
    p_list.set_defaults(run=_cmd_list)

    p_bench = sub.add_parser("bench", help="time eager forward against timm's features_only model")
    p_bench.add_argument("name", help="a backbone timm also defines, e.g. resnet50")
    p_bench.add_argument("--batch-size", type=int, default=8)
    p_bench.add_argument("--img-size", type=int, default=224)
    p_bench.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p_bench.add_argument("--rounds", type=int, default=20, help="interleaved timed rounds")
    p_bench.add_argument("--warmup", type=int, default=3)
    p_bench.add_argument(
        "--optimized",
        action="store_true",
        help="also time optimize_for_inference (BatchNorm folded, channels_last)",
    )
    p_bench.set_defaults(run=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (KeyError, ValueError, RuntimeError) as err:
        print(f"backbones: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
