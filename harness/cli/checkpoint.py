"""``mali-hil checkpoint make|check``: write seeded test checkpoints, and validate any checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mali_hil.harness.checkpoints import (
    FILL_DTYPES,
    FILL_KINDS,
    MODELS,
    Checkpoint,
    CheckpointError,
    check_checkpoint,
    make_checkpoint,
)
from mali_hil.harness.cli.args import whole_number

# The largest real models have ~130 layers. The checkpoint's size is checked against the free disk before its
# tensors are listed (400 digits of layers grew that list to 7.1 GB before anything was refused); the bound keeps
# the list of a checkpoint that does fit (900,000 tensors at most) within memory.
MAX_LAYERS = 100_000
MAX_SHARDS = 10_000  # a file each


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "checkpoint",
        help="make and check safetensors checkpoints",
        description="Make seeded safetensors checkpoints shaped like real models, and validate checkpoints.",
    )
    actions = parser.add_subparsers(dest="checkpoint_action", required=True, metavar="ACTION")

    make = actions.add_parser(
        "make",
        help="write a checkpoint shaped like a model",
        description="Write a checkpoint with a model's Hugging Face tensor names and shapes and seeded values.",
    )
    make.add_argument("--model", required=True, help=f"model shape: {', '.join(MODELS)}")
    make.add_argument(
        "--scale",
        type=_scale,
        default=1.0,
        metavar="S",
        help="keep the fraction S of each dimension (hidden, intermediate, head dim, vocab): 0 < S <= 1, as a "
        "decimal or a fraction, e.g. 0.1 or 1/64; bytes shrink with about S squared (default 1: the real size)",
    )
    make.add_argument("--seed", type=whole_number(0, 2**63 - 1), default=0, help="seed of the values (default 0)")
    make.add_argument("--shards", type=whole_number(1, MAX_SHARDS), default=1, help="number of shard files (default 1)")
    make.add_argument("--dtype", choices=FILL_DTYPES, default="BF16", help="tensor dtype (default BF16)")
    make.add_argument("--fill", choices=FILL_KINDS, default="normal", help="values (default normal)")
    make.add_argument("--layers", type=whole_number(1, MAX_LAYERS), default=None,
                      help=f"override the layer count (at most {MAX_LAYERS})")  # fmt: skip
    make.add_argument(
        "--align",
        type=int,
        choices=(16, 8),
        default=None,
        help="where each file's data section starts: at a multiple of 16 bytes, or 8 bytes past one (tinygrad "
        "copies a source that is not 16-byte aligned through host memory); default: as the header falls",
    )
    make.add_argument("out", metavar="OUT", type=Path, help=".safetensors file, or a folder when --shards > 1")
    make.set_defaults(func=_make)

    check = actions.add_parser(
        "check",
        help="validate a checkpoint",
        description="Validate a .safetensors file, a *.safetensors.index.json with its shards, or a folder "
        "holding one. Prints 'ok: ...' (exit 0) or 'invalid: <Error>: ...' (exit 1).",
    )
    check.add_argument("file", metavar="FILE", type=Path)
    check.set_defaults(func=_check)


def _make(args: argparse.Namespace) -> int:
    checkpoint = make_checkpoint(
        args.model,
        args.out,
        scale=args.scale,
        seed=args.seed,
        shards=args.shards,
        dtype=args.dtype,
        fill=args.fill,
        layers=args.layers,
        aligned=None if args.align is None else args.align == 16,
    )
    where = checkpoint.index or checkpoint.files[0]
    print(f"wrote {_summary(checkpoint)}: {where}")
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        checkpoint = check_checkpoint(args.file)
    except CheckpointError as exc:
        print(f"invalid: {type(exc).__name__}: {exc}")
        return 1
    print(f"ok: {_summary(checkpoint)}")
    return 0


def _summary(checkpoint: Checkpoint) -> str:
    files = len(checkpoint.files)
    return f"{len(checkpoint.tensors)} tensors, {checkpoint.total_bytes} bytes, {files} file(s)"


def _scale(text: str) -> float:
    """``0.1`` or ``1/64``: the fraction of each dimension to keep. Above 1 is refused rather than grown: "scale 64"
    meant to shrink would otherwise write a checkpoint 4096 times too large."""
    numerator, slash, denominator = text.partition("/")
    try:
        value = float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction such as 1/64") from None
    if not 0 < value <= 1:
        hint = f"; to shrink by {text}, write --scale 1/{text}" if value > 1 else ""
        raise argparse.ArgumentTypeError(f"{text!r} must be a fraction in (0, 1]{hint}")
    return value

