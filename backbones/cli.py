"""The ``backbones`` command line: ``python -m backbones <command>``.

Commands:
    list [PATTERN]    registered backbones, blocks and heads matching an fnmatch pattern
    plugins           every plugin, its distribution, what it registered, what failed
    bench NAME        eager forward speed against timm's features_only model
    weights NAME      a backbone's published weights: tags, sources, pre-processing, licence
    convert SRC DST   another library's checkpoint (detectron2 .pkl too) to safetensors
"""

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_list(args: argparse.Namespace) -> int:
    from backbones.registry import list_backbones, list_blocks, list_heads

    for title, names in (
        ("backbones", list_backbones(args.pattern)),
        ("blocks", list_blocks(args.pattern)),
        ("heads", list_heads(args.pattern)),
    ):
        print(f"{title} ({len(names)}):")
        for name in names:
            print(f"  {name}")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from backbones.plugin_manager import autoload_disabled, list_plugins
    from backbones.registry import BACKBONES, BLOCKS, HEADS

    plugins = list_plugins()
    if autoload_disabled():
        print("entry-point autoload is disabled (BACKBONES_DISABLE_PLUGIN_AUTOLOAD)")
    for plugin in plugins:
        status = (
            "FAILED"
            if not plugin.loaded
            else (
                "loaded, with errors"
                if plugin.failed
                else ("loaded, with conflicts" if plugin.conflicts else "loaded")
            )
        )
        origin = f"{plugin.distribution} {plugin.version}" if plugin.distribution else "backbones"
        print(f"{plugin.name} [{status}] {origin}: {plugin.module}")
        for kind in ("backbone", "block", "head"):
            names = plugin.registered.get(kind, [])
            if names:
                print(f"  {kind}s: {', '.join(names)}")
        for error in plugin.errors:
            print(f"  error: {error}")
        for conflict in plugin.conflicts:
            print(f"  conflict: {conflict}")
    for registry in (BACKBONES, BLOCKS, HEADS):
        for name, sources in registry.conflicts().items():
            print(f"conflict: {registry.kind} {name!r} from {' and '.join(sources)}")
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


def _cmd_weights(args: argparse.Namespace) -> int:
    from backbones.registry import BACKBONES

    weights = getattr(BACKBONES.get(args.name), "weights", ())
    if not weights:
        print(f"{args.name}: no published weights; use pretrained=<file, URL or hf-hub:...>")
        return 0
    print(f"{args.name}: pretrained=True loads {weights[0].tag!r}; a tag picks a row")
    for cfg in weights:
        size = "x".join(str(s) for s in cfg.input_size[1:])
        print(
            f"  {cfg.tag:<10} {cfg.source}\n"
            f"  {'':<10} {cfg.origin}, {cfg.license}; {size} {cfg.interpolation}, "
            f"crop {cfg.crop_pct:.3f}, mean {cfg.mean}, std {cfg.std}"
        )
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from backbones.weights.convert import convert_checkpoint

    counts = convert_checkpoint(args.src, args.dst, format=args.format)
    print(
        f"wrote {args.dst}: {counts['kept']} backbone tensors "
        f"({counts['dropped']} other entries left out)"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backbones", description="Multi-scale backbones for vision tasks."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_list = sub.add_parser("list", help="list registered backbones, blocks and heads")
    p_list.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'resnet*'")
    p_list.set_defaults(run=_cmd_list)

    p_plugins = sub.add_parser("plugins", help="list plugins, what they registered and failures")
    p_plugins.set_defaults(run=_cmd_plugins)

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

    p_weights = sub.add_parser("weights", help="a backbone's published weights and their tags")
    p_weights.add_argument("name", help="a registered backbone, e.g. resnet50")
    p_weights.set_defaults(run=_cmd_weights)

    p_convert = sub.add_parser(
        "convert", help="convert a checkpoint (detectron2 .pkl, mmdet, ...) to safetensors"
    )
    p_convert.add_argument("src", help="the checkpoint file")
    p_convert.add_argument("dst", help="the .safetensors file to write")
    p_convert.add_argument("--format", default=None, help="override format detection")
    p_convert.set_defaults(run=_cmd_convert)
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
