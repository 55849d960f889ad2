"""``hf-recycle merge``: merge checkpoints into a new checkpoint folder."""

from __future__ import annotations

import argparse

from hf_recycle._merge.methods.registry import METHOD_NAMES
from hf_recycle.commands import options

EXAMPLES = """\
examples:
  hf-recycle merge runs/ckpt-1000 runs/ckpt-2000 runs/ckpt-3000 --output merged
  hf-recycle merge a b --weights 0.7,0.3 --dtype bfloat16 --output merged
  hf-recycle merge ft-math ft-code --base base --method ties --density 0.5 --output merged
  hf-recycle merge ft-math ft-code --base base --method dare_ties --density 0.3 --seed 1 --output merged
  hf-recycle merge lora-a lora-b full-ft --base base --weights 0.4,0.4,0.2 --output merged
  hf-recycle merge lora-a lora-b --base base --output-format lora --lora-rank 16 --output merged-lora
  hf-recycle merge 'org/run@step-*' --base org/run@base --method ties --output merged
  hf-recycle merge org/run@step-1 org/run@step-2 --endpoint http://127.0.0.1:8090 --output merged

Hub specs (org/name@rev:sub/folder, globs, @history) are pinned to commit shas and
written to DIR/checkpoints.lock.json. --endpoint (default: HF_ENDPOINT, else
huggingface.co) picks the Hub; the token comes from HF_TOKEN or `hf auth login`.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``merge`` and its options."""
    parser = options.add_command(
        subparsers,
        "merge",
        help="merge checkpoints (linear, task arithmetic, TIES, DARE) into a new folder",
        description=(
            "Merge checkpoints (local folders or Hub specs) tensor by tensor, streaming from disk, into a new "
            "checkpoint folder (safetensors shards, config, tokenizer, merge_config.json, "
            "checkpoints.lock.json). The folder is written into a temporary sibling and renamed into place "
            "only when the merge succeeded."
        ),
        epilog=EXAMPLES,
    )
    parser.add_argument(
        "checkpoints", nargs="+", metavar="SPEC", help="checkpoints to merge: local folders or Hub specs"
    )
    options.add_output(parser, required=True, help="folder to create")
    parser.add_argument(
        "--method", default="linear", choices=METHOD_NAMES, help="merge method (default: linear)"
    )
    parser.add_argument("--weights", metavar="W1,W2,...", help="one weight per checkpoint (default: uniform)")
    parser.add_argument("--base", metavar="SPEC", help="base checkpoint (needed by the task-vector methods)")
    parser.add_argument(
        "--density",
        type=float,
        metavar="D",
        help="fraction of task-vector entries kept, in (0, 1] (ties, dare_*; default 1)",
    )
    parser.add_argument(
        "--lambda",
        dest="lambda_",
        type=float,
        default=1.0,
        metavar="L",
        help="scale of the merged task vector (default 1)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the DARE masks (default 0)")
    parser.add_argument(
        "--normalize", action=argparse.BooleanOptionalAction, default=None,
        help="divide by the sum of weights (default: on for linear and ties, off otherwise)",
    )  # fmt: skip
    options.add_dtype(parser, help="output dtype (default: that of the inputs)")
    options.add_device(parser, default="auto", help="where to compute (default: CUDA when present)")
    parser.add_argument(
        "--max-shard-size", default="5GB", metavar="SIZE", help="cap on one output shard (default 5GB)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace DIR if it exists (once the merge succeeded)"
    )
    parser.add_argument(
        "--output-format",
        default="full",
        choices=("full", "lora"),
        help="full: a checkpoint (default); lora: one PEFT adapter, when every input is a LoRA adapter "
        "over one base (linear or task_arithmetic)",
    )
    parser.add_argument(
        "--lora-rank",
        default="exact",
        metavar="exact|R",
        help="rank of --output-format lora: exact (concatenated factors, rank = sum of ranks; default) "
        "or R (per-module SVD truncation; errors recorded in merge_config.json)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept pytorch_model.bin inputs (loaded with weights_only=True)",
    )
    options.add_endpoint(parser)
    parser.set_defaults(func=run)


def parse_weights(text: str | None) -> list[float] | None:
    """``"0.5,0.3,0.2"`` -> ``[0.5, 0.3, 0.2]``."""
    from hf_recycle.errors import MergeConfigError

    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise MergeConfigError(
            f"--weights '{text}' is not a comma-separated list of numbers, like 0.5,0.3,0.2"
        ) from None


def run(args: argparse.Namespace) -> int:
    """Run the merge described by ``args``."""
    from hf_recycle._merge.engine import merge
    from hf_recycle.units import parse_size

    parse_size(args.max_shard_size, "--max-shard-size")  # before any resolve or download
    result = merge(
        args.checkpoints,
        args.output,
        method=args.method,
        weights=parse_weights(args.weights),
        base=args.base,
        density=args.density,
        lambda_=args.lambda_,
        seed=args.seed,
        normalize=args.normalize,
        dtype=args.dtype,
        device=args.device,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        allow_pickle=args.allow_pickle,
        endpoint=args.endpoint,
        output_format=args.output_format,
        lora_rank=args.lora_rank,
    )
    print(result.output)
    return 0
