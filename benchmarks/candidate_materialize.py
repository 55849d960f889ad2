"""Time to materialize one search candidate (one set of merge weights) as a live model.

Compares, on K random fine-tunes of one Llama-shaped model:

- resident: :class:`hf_recycle._search.resident.ResidentModel.set_weights` (checkpoints
  resident in memory, weighted sum written into the live model in place);
- (a) disk: the streaming merge written to disk, then ``from_pretrained`` (what
  mergekit-evolve does by default);
- (b) floor: the memory-bandwidth floor, one read of the K resident copies plus one
  write of the model, at the bandwidth of a large ``copy_`` on this device.

Writes ``candidate_materialize.json`` next to this file and prints a markdown table.
Targets: resident at least 10x faster than (a), within 2x of (b).

    python benchmarks/candidate_materialize.py [--quick] [--device cpu|cuda] [--k 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(nbytes: int, device: str) -> float:
    """Bytes per second moved (read + write) by a large tensor copy."""
    import torch

    n = max(nbytes // 4, 1 << 20)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = _median_time(lambda: dst.copy_(src), 5, device)
    return 2 * n * 4 / seconds


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from hf_recycle._merge.engine import merge
    from hf_recycle._merge.sources import SafetensorsSource
    from hf_recycle._search.resident import ResidentModel
    from hf_recycle.testing.models import build_model, perturb, save_checkpoint, tiny_llama_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller model (for CI)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--k", type=int, default=4, help="number of checkpoints")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    size = (
        dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, vocab_size=4096)
        if args.quick
        else dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, vocab_size=16384)
    )
    config = tiny_llama_config(num_attention_heads=8, num_key_value_heads=4, **size)
    with tempfile.TemporaryDirectory(prefix="hfr-bench-") as tmp:
        root = Path(tmp)
        model = build_model(config, seed=0)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        ckpts = []
        for i in range(args.k):
            model.load_state_dict(state)
            perturb(model, 0.01, seed=i)
            ckpts.append(save_checkpoint(model, root / f"ckpt-{i}"))
        del model, state
        sources = [SafetensorsSource(p) for p in ckpts]
        resident = ResidentModel(sources, device=args.device)
        rng = np.random.default_rng(0)
        weights = [rng.dirichlet(np.ones(args.k)) for _ in range(8)]
        it = iter(weights * 10)
        resident.set_weights(next(it))  # warm-up
        t_resident = _median_time(lambda: resident.set_weights(next(it)), 7, args.device)

        def via_disk() -> None:
            merge(
                [str(p) for p in ckpts],
                root / "cand",
                weights=list(next(it)),
                device=args.device,
                overwrite=True,
            )
            AutoModelForCausalLM.from_pretrained(root / "cand").to(args.device)

        t_disk = _median_time(via_disk, 3, args.device)
        model_bytes = resident.live_bytes
        moved = resident.resident_bytes + model_bytes
        bandwidth = copy_bandwidth(min(moved, 1 << 30), args.device)
        t_floor = moved / bandwidth

    result = {
        "device": args.device,
        "checkpoints": args.k,
        "parameters": model_bytes // 4,
        "model_mb": model_bytes / 1e6,
        "bytes_moved_mb": moved / 1e6,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "resident_s": t_resident,
        "disk_roundtrip_s": t_disk,
        "bandwidth_floor_s": t_floor,
        "speedup_vs_disk": t_disk / t_resident,
        "ratio_to_floor": t_resident / t_floor,
        "targets": {"speedup_vs_disk >=": 10, "ratio_to_floor <=": 2},
    }
    (HERE / "candidate_materialize.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"candidate materialization: {args.k} checkpoints x {model_bytes / 1e6:.0f} MB model on {args.device}"
    )
    print("| path | seconds | vs resident |")
    print("|---|---|---|")
    print(f"| resident (in place) | {t_resident:.4f} | 1.0x |")
    print(f"| (a) merge to disk + from_pretrained | {t_disk:.3f} | {t_disk / t_resident:.1f}x slower |")
    print(
        f"| (b) bandwidth floor ({bandwidth / 1e9:.1f} GB/s copy) | {t_floor:.4f} | resident is {t_resident / t_floor:.2f}x the floor |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
