"""The ``backbones`` command line: ``python -m backbones <command>``.

Commands:
    list [PATTERN]    registered backbones, blocks, layers and heads matching a pattern
    plugins           every plugin, its distribution, what it registered, what failed
    info NAME         a backbone's feature levels (module, channels, stride, size), built
                      with any build option (flags made from the option table)
    bench NAME        eager forward (or --train: training step) speed against timm's model
    weights NAME      a backbone's published weights: tags, sources, pre-processing, licence
    convert SRC DST   another library's checkpoint (detectron2 .pkl too) to our key names
    probe PATTERN     build every backbone a pattern names ('timm/*'); table what works

Every error is one line on stderr (``backbones: error: ...``) and a non-zero exit,
never a traceback unless ``--traceback`` asks for it. When the reader of the output
goes away (``python -m backbones list | head -1``) the command stops quietly with
status 141, what a shell reports for a writer killed by SIGPIPE.
"""

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from backbones.bench import AMP_DTYPES, benchmark, startup, train_benchmark
from backbones.catalog import (
    BACKBONES,
    BLOCKS,
    HEADS,
    LAYERS,
    list_backbones,
    list_blocks,
    list_heads,
    list_layers,
    list_namespaces,
    list_plugins,
)
from backbones.factory import create_backbone
from backbones.info import format_table, level_table
from backbones.options import BUILD, option_specs
from backbones.plugin_manager import autoload_disabled
from backbones.weights.convert import OUTPUT_SUFFIXES, convert_checkpoint
from backbones.weights.formats import FORMATS
from backbones.zoo.probe import (
    CHECKS,
    DEFAULT_IMG_SIZE,
    DEFAULT_MAX_PARAMS_M,
    DEFAULT_TIMEOUT_S,
    ProbeRow,
    probe_backbones,
)

__all__ = ["main"]

PREFIX = "backbones: error: "
USAGE_ERROR = 2
"""Exit status for bad input: a usage error, an unknown name, a missing file, a bad value."""
UNEXPECTED_ERROR = 1
INTERRUPTED = 130
"""128 + SIGINT, as shells report a command stopped by Ctrl-C."""
BROKEN_PIPE = 141
"""128 + SIGPIPE, as shells report ``seq 1 100000 | head -1``'s writer."""


def _cmd_list(args: argparse.Namespace) -> int:
    for title, names in (
        ("backbones", list_backbones(args.pattern)),
        ("blocks", list_blocks(args.pattern)),
        ("layers", list_layers(args.pattern)),
        ("heads", list_heads(args.pattern)),
    ):
        print(f"{title} ({len(names)}):")
        for name in names:
            print(f"  {name}")
    if "/" not in args.pattern:  # zoos are listed by a pattern that names them
        print("namespaces (list one with PATTERN '<namespace>/*'):")
        for name, doc in list_namespaces().items():
            print(f"  {name}/  {doc}")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
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
        for kind in ("backbone", "block", "layer", "head"):
            names = plugin.registered.get(kind, [])
            if names:
                print(f"  {kind}s: {', '.join(names)}")
        for error in plugin.errors:
            print(f"  error: {error}")
        for conflict in plugin.conflicts:
            print(f"  conflict: {conflict}")
    for registry in (BACKBONES, BLOCKS, LAYERS, HEADS):
        for name, sources in registry.conflicts().items():
            print(f"conflict: {registry.kind} {name!r} from {' and '.join(sources)}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    options = {}
    for spec in option_specs(BUILD):
        value = getattr(args, spec.name, None) if spec.cli else None
        if value is not None:  # one name stands for every stage, as in Python
            options[spec.name] = value[0] if spec.cli == "strs" and len(value) == 1 else value
    if args.img_size <= 0:  # before building: a bad size should not wait for the model
        raise ValueError(f"--img-size must be a positive int, got {args.img_size}")
    model = create_backbone(args.name, **options)
    table = level_table(model, img_size=args.img_size, receptive_field=not args.no_receptive_field)
    _, chans, height, width = table.input_shape
    print(
        f"{args.name}: {table.params / 1e6:.2f} M parameters, input {height}x{width}"
        f"{'' if chans == 3 else f' ({chans} channels)'}"
    )
    print(
        "  measured at batch 1, cumulative up to each level: params, GFLOPs (FLOPs / 1e9, as\n"
        "  torch.utils.flop_counter counts them: 2 per multiply-add), act. MiB (tensors\n"
        "  allocated); RF: measured receptive field of the map's centre ('>=': cut by the border)"
    )
    if args.markdown:
        print()
    print(format_table(table, markdown=args.markdown))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.startup:
        print(startup(args.name, rounds=args.rounds).table())
        return 0
    timing = {
        "batch_size": args.batch_size,
        "img_size": args.img_size,
        "threads": args.threads,
        "rounds": args.rounds,
        "warmup": args.warmup,
    }
    if args.train:
        trained = train_benchmark(
            args.name,
            **timing,
            grad_checkpointing=args.grad_checkpointing,
            amp=args.amp,
            channels_last=args.channels_last,
        )
        print(trained.table())
        return 0
    if args.grad_checkpointing or args.amp != "none" or args.channels_last:
        raise ValueError("--grad-checkpointing, --amp and --channels-last go with --train")
    result = benchmark(args.name, **timing, optimized=args.optimized)
    print(result.table())
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    weights = BACKBONES.get(args.name).weights
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
    counts = convert_checkpoint(args.src, args.dst, format=args.format)
    print(
        f"wrote {args.dst}: {counts['kept']} backbone tensors "
        f"({counts['dropped']} other entries left out)"
    )
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    def progress(done: int, total: int, row: ProbeRow) -> None:
        why = f" ({row.reason})" if row.reason else ""
        print(f"[{done}/{total}] {row.name}: {row.status}{why} {row.seconds:.1f}s", flush=True)

    # The command with every setting spelled out, for the tables' header.
    flags = [
        *(["--out", args.out] if args.out is not None else []),
        *(["--table", args.table] if args.table is not None else []),
        *("--img-size", str(args.img_size), "--max-params", f"{args.max_params:g}"),
        *("--timeout", f"{args.timeout:g}", "--checks", args.checks),
        *("--jobs", str(args.jobs), "--threads", str(args.threads)),
        *(["--resume"] if args.resume else []),
        *(["--fill"] if args.fill else []),
    ]
    command = shlex.join(["python", "-m", "backbones", "probe", *args.patterns, *flags])
    run = probe_backbones(
        args.patterns,
        out=args.out,
        table=args.table,
        img_size=args.img_size,
        max_params_m=args.max_params,
        timeout_s=args.timeout,
        checks=args.checks.split(","),
        jobs=args.jobs,
        threads=args.threads,
        resume=args.resume,
        fill=args.fill,
        command=command,
        progress=progress,
    )
    print(run.summary())
    print(f"wrote {run.csv}, {run.markdown} and {run.meta}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{PREFIX}{message} (see '{self.prog} --help')\n")


def _flag_type(kind: str) -> dict[str, Any]:
    """argparse settings for an option of the table, by its ``cli`` kind."""
    table: dict[str, dict[str, Any]] = {
        "int": {"type": int},
        "float": {"type": float},
        "str": {"type": str},
        "ints": {"type": int, "nargs": "+"},
        "strs": {"type": str, "nargs": "+"},
        "bool": {"type": _yes_no, "metavar": "{true,false}"},
    }
    return table[kind]


def _yes_no(text: str) -> bool:
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value[text.lower()]


def _add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per build option of the table that has a command-line form."""
    for spec in option_specs(BUILD):
        if not spec.cli:
            continue
        parser.add_argument(
            f"--{spec.name.replace('_', '-')}",
            dest=spec.name,
            default=None,
            help=f"{spec.doc.replace('%', '%%').replace('`', '')} (default: {spec.default_text})",
            **_flag_type(spec.cli),
        )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="backbones",
        description="Multi-scale backbones for vision tasks.",
        epilog=(
            f"Errors are one line on stderr, exit status {USAGE_ERROR} ({UNEXPECTED_ERROR} for "
            f"an unexpected one); Ctrl-C exits "
            f"{INTERRUPTED}; output cut short by a closed pipe (| head) exits {BROKEN_PIPE}, "
            f"quietly, as a process killed by SIGPIPE does."
        ),
    )
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, show the full Python traceback instead of one line (for bug reports)",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of (COMMAND --help for more):"
    )

    p_list = sub.add_parser(
        "list",
        help="list registered backbones, blocks and heads",
        description="List registered backbones, blocks and heads whose names match PATTERN.",
    )
    p_list.add_argument(
        "pattern",
        nargs="?",
        default="*",
        help="fnmatch pattern, e.g. 'resnet*' (default: %(default)s, everything)",
    )
    p_list.set_defaults(run=_cmd_list, parser=p_list)

    p_plugins = sub.add_parser(
        "plugins",
        help="list plugins, what they registered, failures and conflicts",
        description="List every plugin, its distribution, what it registered, what failed "
        "and which names are contested. Takes no options.",
    )
    p_plugins.set_defaults(run=_cmd_plugins, parser=p_plugins)

    p_info = sub.add_parser(
        "info",
        help="a backbone's feature levels: shape, params, GFLOPs, memory, receptive field",
        description="Build a backbone with the given options, run it on a --img-size "
        "image and print each level it returns: module, channels, stride, the measured "
        "shape, and the parameters, GFLOPs and activation memory up to it, and its "
        "measured receptive field (rules: the backbones.info module). Every build option "
        "of create_backbone that has a command-line form is a flag.",
    )
    p_info.add_argument("name", help="a registered backbone, e.g. resnet50")
    p_info.add_argument(
        "--img-size", type=int, default=224, help="input height and width (default: %(default)s)"
    )
    p_info.add_argument(
        "--markdown", action="store_true", help="print a Markdown table (default: aligned text)"
    )
    p_info.add_argument(
        "--no-receptive-field",
        action="store_true",
        help="skip the receptive fields (one backward per level) (default: measure them)",
    )
    _add_option_flags(p_info)
    p_info.set_defaults(run=_cmd_info, parser=p_info)

    p_bench = sub.add_parser(
        "bench",
        help="time eager forward against timm's features_only model",
        description="Time the eager forward of a backbone against timm's features_only model "
        "of the same variant, in interleaved rounds.",
    )
    p_bench.add_argument("name", help="a backbone timm also defines, e.g. resnet50")
    p_bench.add_argument(
        "--batch-size", type=int, default=8, help="images per batch (default: %(default)s)"
    )
    p_bench.add_argument(
        "--img-size", type=int, default=224, help="image height and width (default: %(default)s)"
    )
    p_bench.add_argument(
        "--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)"
    )
    p_bench.add_argument(
        "--rounds", type=int, default=20, help="interleaved timed rounds (default: %(default)s)"
    )
    p_bench.add_argument(
        "--warmup", type=int, default=3, help="untimed rounds first (default: %(default)s)"
    )
    p_bench.add_argument(
        "--optimized",
        action="store_true",
        help="also time optimize_for_inference (BatchNorm folded, channels_last) (default: off)",
    )
    p_bench.add_argument(
        "--startup",
        action="store_true",
        help="time instead the first create in fresh processes (after import torch) against "
        "timm's create_model(..., features_only=True), --rounds processes each (default: off)",
    )
    p_bench.add_argument(
        "--train",
        action="store_true",
        help="time training steps (forward, backward, SGD) instead, and each one's step peak "
        "memory in a fresh process (default: off)",
    )
    p_bench.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="with --train: both models recompute activations (default: off)",
    )
    p_bench.add_argument(
        "--amp",
        choices=list(AMP_DTYPES),
        default="none",
        help="with --train: autocast dtype, one of %(choices)s (default: %(default)s)",
    )
    p_bench.add_argument(
        "--channels-last",
        action="store_true",
        help="with --train: channels_last models and input (default: off)",
    )
    p_bench.set_defaults(run=_cmd_bench, parser=p_bench)

    p_weights = sub.add_parser(
        "weights",
        help="a backbone's published weights and their tags",
        description="Show a backbone's published weights: tags, sources, pre-processing, "
        "licence. Takes no options.",
    )
    p_weights.add_argument("name", help="a registered backbone, e.g. resnet50")
    p_weights.set_defaults(run=_cmd_weights, parser=p_weights)

    p_convert = sub.add_parser(
        "convert",
        help="convert a checkpoint (detectron2 .pkl, mmdet, ...) to our key names",
        description="Convert another library's checkpoint to a file of this library's key "
        "names, holding the backbone's tensors only.",
    )
    p_convert.add_argument("src", help="the checkpoint file")
    p_convert.add_argument(
        "dst",
        help=f"the file to write; its suffix picks the format, one of: "
        f"{', '.join(OUTPUT_SUFFIXES)} (.safetensors recommended; the others are torch.save)",
    )
    p_convert.add_argument(
        "--format",
        choices=list(FORMATS),
        default=None,
        help="the source's format, one of: %(choices)s "
        "(default: detected from the checkpoint's keys)",
    )
    p_convert.set_defaults(run=_cmd_convert, parser=p_convert)

    p_probe = sub.add_parser(
        "probe",
        help="build every backbone a pattern names and table what works",
        description="Build every backbone matching PATTERN ('timm/*'), each in a process of "
        "its own with a time limit, at a small input, and write a table (CSV, Markdown with "
        "a summary, JSON with the versions): status, levels, strides, channels, whether "
        "feature_info matched the forward, and whether each option works. The CSV is "
        "rewritten after every model; --resume goes on from it.",
    )
    p_probe.add_argument(
        "patterns",
        nargs="+",
        metavar="PATTERN",
        help="fnmatch patterns as 'list' takes them ('timm/*', 'timm/convnext*') or names",
    )
    p_probe.add_argument(
        "--out",
        default=None,
        help="folder for the CSV, Markdown and JSON (default: for a whole namespace "
        "'NS/*', backbones/zoo/tables and docs/zoo; else the current folder)",
    )
    p_probe.add_argument(
        "--table",
        default=None,
        help="the files' name (default: the namespace for 'NS/*', else from the pattern)",
    )
    p_probe.add_argument(
        "--img-size",
        type=int,
        default=DEFAULT_IMG_SIZE,
        help="input height and width of the checks (default: %(default)s)",
    )
    p_probe.add_argument(
        "--max-params",
        type=float,
        default=DEFAULT_MAX_PARAMS_M,
        help="skip models with more parameters, in millions, estimated without "
        "allocating (default: %(default)s)",
    )
    p_probe.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds a model may take before it is killed and marked failed "
        "(default: %(default)s)",
    )
    p_probe.add_argument(
        "--checks",
        default=",".join(CHECKS),
        help="comma-separated checks to run, of: " + ", ".join(CHECKS) + " (default: all)",
    )
    p_probe.add_argument(
        "--jobs", type=int, default=1, help="models probed at once (default: %(default)s)"
    )
    p_probe.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per model's process (default: %(default)s)",
    )
    p_probe.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows of an existing CSV and probe only the models it lacks "
        "(default: start over)",
    )
    p_probe.add_argument(
        "--fill",
        action="store_true",
        help="as --resume, and run the --checks that kept rows answered 'not run' "
        "(e.g. --checks script,export after a first pass without them) (default: off)",
    )
    p_probe.set_defaults(run=_cmd_probe, parser=p_probe)
    return parser


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    elif type(err) is KeyError and len(err.args) == 1:  # KeyError's str() adds quotes
        text = str(err.args[0])
    else:
        text = str(err) or type(err).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Every failure is one line on stderr, never a traceback (``--traceback`` shows it):
    status 2 for bad input (a usage error, an unknown name, a missing file, any error
    the library raises for a bad value), 1 for an unexpected error, 130 on Ctrl-C and
    141 when a reader closes the pipe early (``| head``), as a command killed by
    SIGPIPE would, with nothing printed.
    """
    args, unknown = _parser().parse_known_args(argv)
    if unknown:  # name the subcommand whose --help lists what it takes
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        status = int(args.run(args))
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at exit
        return status
    except BrokenPipeError:
        # As the Python docs advise: point stdout at devnull so the flush at exit
        # does not raise again ("Exception ignored ... BrokenPipeError").
        with contextlib.suppress(OSError, ValueError):  # stdout is not a file (captured)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except KeyboardInterrupt:
        if args.traceback:
            raise
        print(f"{PREFIX}interrupted", file=sys.stderr)
        return INTERRUPTED
    except (KeyError, ValueError, TypeError, RuntimeError, OSError) as err:
        if args.traceback:
            raise
        print(f"{PREFIX}{_one_line(err)}", file=sys.stderr)
        return USAGE_ERROR
    except Exception as err:  # a bug: still one line, with the way to see more
        if args.traceback:
            raise
        print(
            f"{PREFIX}unexpected {type(err).__name__}: {_one_line(err)} (run with --traceback "
            f"for details, and please report it)",
            file=sys.stderr,
        )
        return UNEXPECTED_ERROR


if __name__ == "__main__":
    sys.exit(main())
