"""Train a segmenter on synthetic shapes with DistributedDataParallel, through torchrun.

One process per device (CPU processes with the gloo backend, or GPUs with nccl), each
with its share of the data (``DistributedSampler``). The model is
``create_model(<backbone>, "semantic_fpn")`` with the library's training helpers:
``frozen_stages`` (frozen parameters are frozen before DDP wraps the model, so it needs
no ``find_unused_parameters``), ``--sync-bn`` (``convert_norm(model, "syncbatchnorm")``,
frozen stages stay frozen and in eval; GPUs only, as torch's SyncBatchNorm),
``--grad-checkpointing``, ``--layer-decay``
(``param_groups``), ``--amp`` (autocast in bf16 or fp16). Rank 0 shows a progress bar,
saves a checkpoint (model, optimizer, step; written to a temporary file, then renamed)
every ``--save-every`` steps and at the end, and ``--resume`` goes on from it.

    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py --backbone resnet50 \\
        --sync-bn --grad-checkpointing

``--fsdp`` shards the model with FSDP2 (``fully_shard``: each backbone stage a unit, its
frozen parameters sharded like the others) instead of replicating it.

``--dump DIR`` writes each rank's final ``state_dict`` (``rank<r>.pt``) and rank 0's
initial one (``initial.pt``), and rank 0 a ``report.json``: what the tests check
(parameters equal across ranks, frozen tensors unchanged, the step resumed from).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import CLASSES, ShapesDataset, masks_to_semantic

from backbones import convert_norm, create_model, param_groups
from backbones.training import model_stages

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _semantic_batch(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, Tensor]:
    images = torch.stack([image for image, _ in batch])
    labels = torch.stack([masks_to_semantic(t["masks"], t["labels"]) for _, t in batch])
    return images, labels


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--backbone", default="resnet18", help="a registered backbone name")
    parser.add_argument("--head", default="semantic_fpn", help="a segmentation head")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps in all")
    parser.add_argument("--batch-size", type=int, default=4, help="images per step per process")
    parser.add_argument("--image-size", type=int, default=64, help="square image side")
    parser.add_argument("--lr", type=float, default=1e-3, help="the head's AdamW rate")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--layer-decay", type=float, default=None, help="per-stage lr factor")
    parser.add_argument("--frozen-stages", type=int, default=1, help="-1 freezes nothing")
    parser.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across ranks")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default="none", help="autocast")
    parser.add_argument(
        "--fsdp", action="store_true", help="FSDP2 (fully_shard per stage) instead of DDP"
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="where to save")
    parser.add_argument("--save-every", type=int, default=0, help="0: only at the end")
    parser.add_argument("--resume", action="store_true", help="go on from --checkpoint")
    parser.add_argument("--dump", type=Path, default=None, help="folder for the test's files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")
    if args.resume and args.checkpoint is None:
        parser.error("--resume needs --checkpoint")
    if args.fsdp and (args.checkpoint is not None or args.sync_bn):
        parser.error("--fsdp runs without --checkpoint and --sync-bn in this example")
    return args


def _setup() -> tuple[int, int, torch.device]:
    """Join the group torchrun describes (one process without torchrun)."""
    if "RANK" not in os.environ:  # plain python: a group of one, for trying the script
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _fully_shard(model: nn.Module) -> nn.Module:
    """FSDP2: each backbone stage its own unit (its parameters, frozen ones too, sharded
    across the ranks), then the rest of the model."""
    from torch.distributed.fsdp import fully_shard

    modules = dict(model.named_modules())
    for stage, names in model_stages(model):
        owner = _common_module(names)
        if stage not in ("stem", "head") and owner in modules and owner:
            fully_shard(modules[owner])
    fully_shard(model)
    return model


def _common_module(names: list[str]) -> str:
    """The deepest module holding every parameter of ``names`` ("" for the model)."""
    common: list[str] = []
    for parts in zip(*(n.split(".")[:-1] for n in names), strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _full_state(model: nn.Module) -> dict[str, Tensor]:
    """The whole state_dict on every rank, sharded parameters gathered."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def _sharded_frozen(model: nn.Module) -> int:
    """Frozen parameters stored as shards (a local piece smaller than the whole)."""
    count = 0
    for param in model.parameters():
        local = getattr(param, "to_local", None)
        if not param.requires_grad and local is not None and local().numel() < param.numel():
            count += 1
    return count


def _save(path: Path, state: dict[str, Any]) -> None:
    """Write, then rename: an interrupted save leaves the previous checkpoint whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    rank, world, device = _setup()
    try:
        return _train(args, rank, world, device)
    finally:
        dist.destroy_process_group()


def _train(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = create_model(
        args.backbone,
        args.head,
        backbone_kwargs={
            "frozen_stages": args.frozen_stages,
            "grad_checkpointing": args.grad_checkpointing,
        },
        num_classes=len(CLASSES),
    )
    if args.sync_bn:
        if device.type != "cuda":  # torch's SyncBatchNorm reduces with CUDA kernels only
            raise SystemExit("--sync-bn needs GPUs: torch's SyncBatchNorm runs on CUDA only")
        model = convert_norm(model, "syncbatchnorm")
    model.to(device)
    if args.dump is not None and rank == 0:
        args.dump.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.dump / "initial.pt")
    start, state = 0, None
    if args.resume:
        state = torch.load(args.checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        start = int(state["step"])
    if args.fsdp:
        ddp = _fully_shard(model)
    else:
        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids)
    # after wrapping: FSDP2 replaces the parameters with sharded ones
    groups = param_groups(
        model, lr=args.lr, weight_decay=args.weight_decay, layer_decay=args.layer_decay
    )
    optimizer = torch.optim.AdamW(groups)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])

    data = ShapesDataset(
        length=args.steps * args.batch_size * world, image_size=args.image_size, seed=args.seed
    )
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(
        data, batch_size=args.batch_size, sampler=sampler, collate_fn=_semantic_batch
    )
    dtype = AMP_DTYPES[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    losses: list[float] = []
    started = time.perf_counter()
    ddp.train()
    batches = iter(loader)
    progress = tqdm(range(start, args.steps), desc="ddp", disable=args.quiet or rank != 0)
    for step in progress:
        images, labels = next(batches)
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(ddp(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}")
        done = step + 1
        saving = args.checkpoint is not None and (
            done == args.steps or (args.save_every and done % args.save_every == 0)
        )
        if saving and rank == 0:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": done}
            _save(args.checkpoint, state)
    dist.barrier()
    result = {
        "rank": rank,
        "world_size": world,
        "start_step": start,
        "steps": args.steps,
        "losses": losses,
        "seconds": time.perf_counter() - started,
    }
    if args.fsdp:
        result["sharded_frozen"] = _sharded_frozen(model)
    if args.dump is not None:
        state = _full_state(model) if args.fsdp else model.state_dict()
        torch.save(state, args.dump / f"rank{rank}.pt")
        if rank == 0:
            (args.dump / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    if rank == 0:
        print(
            f"{world} processes, steps {start + 1}..{args.steps}: loss {losses[0]:.3f} -> "
            f"{losses[-1]:.3f} in {result['seconds']:.1f} s"
        )
    return result


if __name__ == "__main__":
    main()
