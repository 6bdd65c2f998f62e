"""Evaluates every checkpoint of run.sh on the whole validation text and writes results.json, results.csv, tables.md.

    python docs/convert-pythia-14m/collect.py --runs RUNS --out docs/convert-pythia-14m

Validation loss: litgpt_mka.compare.heldout's exact held-out evaluation (every validation token scored
once, windows of the source's max_seq_length, float32), with the windows the source run defines.
"""

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import torch

from litgpt_mka.checkpoint import load_config, load_model
from litgpt_mka.compare.heldout import heldout_data, heldout_loss
from litgpt_mka.measure.kv_cache_size import kv_cache_bytes_per_token

UPTRAINED = ("mha", "gqa2", "mqa", "mla16", "mla32", "mla64")
ABLATIONS = ("mla128", "mla32-rope-mean", "mla32-norm-ones", "mla32-sampled-calibration", "mla32-randomized-svd")


def evaluate(checkpoint_dir: Path, data, cache: dict) -> float | None:
    """Held-out loss of a checkpoint folder (None when it does not exist); cached by path and file mtime."""
    weights = checkpoint_dir / "lit_model.pth"
    if not weights.is_file():
        return None
    key = f"{weights.resolve()}@{weights.stat().st_mtime_ns}"
    if key not in cache:
        cache[key] = heldout_loss(load_model(checkpoint_dir, torch.device("cpu")), data, batch_size=4).loss
    return cache[key]


@torch.no_grad()
def closeness(source, checkpoint_dir: Path, data, cache: dict, windows: int = 32) -> dict | None:
    """KL(source || converted) in nats/token and top-1 agreement on the first `windows` validation windows."""
    weights = checkpoint_dir / "lit_model.pth"
    key = f"kl:{weights.resolve()}@{weights.stat().st_mtime_ns}:{windows}"
    if key not in cache:
        model = load_model(checkpoint_dir, torch.device("cpu"))
        kl, agree, count = 0.0, 0, 0
        for start in range(0, windows, 4):
            batch = data.windows[start : min(start + 4, windows), :-1]  # (b, L)
            p = source(batch).float().log_softmax(-1)  # (b, L, V)
            q = model(batch).float().log_softmax(-1)
            kl += float((p.exp() * (p - q)).sum())
            agree += int((p.argmax(-1) == q.argmax(-1)).sum())
            count += batch.numel()
        cache[key] = {"kl": kl / count, "top1_agreement": agree / count, "tokens": count}
    return cache[key]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def under_runs(path: Path, runs: Path) -> str:
    """`path` written as ``$RUNS/...``: the checkpoints' folder is the runner's choice, not part of the results."""
    return f"$RUNS/{path.relative_to(runs).as_posix()}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    source_dir = args.runs / "source" / "final"
    data = heldout_data(source_dir)
    source_config = load_config(source_dir)
    started = time.perf_counter()
    cache_file = args.runs / "evaluations.json"  # reruns evaluate only new checkpoints
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    source_loss = evaluate(source_dir, data, cache)
    print(f"source: {source_loss:.4f}", flush=True)
    source_model = load_model(source_dir, torch.device("cpu"))
    no_attention = load_model(source_dir, torch.device("cpu"))
    with torch.no_grad():
        for block in no_attention.transformer.h:
            block.attn.proj.weight.zero_()  # every attention output becomes its bias: what attention is worth
    no_attention_loss = heldout_loss(no_attention, data, batch_size=4).loss
    print(f"source without attention: {no_attention_loss:.4f}", flush=True)
    rows = [{
        "variant": "source (MHA)", "converted_dir": None, "kv_lora_rank": None, "n_query_groups": source_config.n_query_groups,
        "kv_bytes_per_token_fp32": kv_cache_bytes_per_token(source_config, torch.float32),
        "kv_bytes_per_token_bf16": kv_cache_bytes_per_token(source_config, torch.bfloat16),
        "val_loss_source": source_loss, "val_loss_converted": source_loss, "val_loss_uptrained": None,
        "val_loss_scratch": None, "kl_to_source": 0.0, "top1_agreement_with_source": 1.0,
        "calibration_loss_source": None, "calibration_loss_converted": None,
        "mean_k_or_kv_rel_error": None, "mean_v_rel_error": None, "mean_rope_rel_error": None,
        "mean_kv_act_rel_error": None, "layers": None, "settings": None,
    }]
    for name in UPTRAINED + ABLATIONS:
        converted = args.runs / name
        report = json.loads((converted / "conversion.json").read_text())
        config = load_config(converted)
        layers = report["layers"]
        is_mla = report["to"] == "mla"
        row = {
            "variant": name, "converted_dir": under_runs(converted, args.runs),
            "kv_lora_rank": config.kv_lora_rank if is_mla else None,
            "n_query_groups": config.n_query_groups,
            "kv_bytes_per_token_fp32": kv_cache_bytes_per_token(config, torch.float32),
            "kv_bytes_per_token_bf16": kv_cache_bytes_per_token(config, torch.bfloat16),
            "val_loss_source": source_loss,
            "val_loss_converted": evaluate(converted, data, cache),
            "val_loss_uptrained": evaluate(args.runs / f"{name}-uptrained" / "final", data, cache),
            "val_loss_scratch": evaluate(args.runs / f"{name}-scratch" / "final", data, cache),
            "kl_to_source": closeness(source_model, converted, data, cache)["kl"],
            "top1_agreement_with_source": closeness(source_model, converted, data, cache)["top1_agreement"],
            "calibration_loss_source": report["calibration_loss"]["source"],
            "calibration_loss_converted": report["calibration_loss"]["converted"],
            "mean_k_or_kv_rel_error": mean([l["kv_rel_error" if is_mla else "k_rel_error"] for l in layers]),
            "mean_v_rel_error": None if is_mla else mean([l["v_rel_error"] for l in layers]),
            "mean_rope_rel_error": mean([l["rope_rel_error"] for l in layers]) if is_mla else None,
            "mean_kv_act_rel_error": mean([l["kv_act_rel_error"] for l in layers]) if is_mla else None,
            "layers": layers, "settings": {**report["settings"], "calibration": report["calibration"]},
        }
        rows.append(row)
        cache_file.write_text(json.dumps(cache, indent=1) + "\n", encoding="utf-8")
        print(f"{name}: converted {row['val_loss_converted']:.4f}, uptrained {row['val_loss_uptrained']},"
              f" scratch {row['val_loss_scratch']}", flush=True)
    results = {
        "source": under_runs(source_dir, args.runs), "source_without_attention_val_loss": no_attention_loss, "validation_text": str(data.val_path), "validation_targets": data.num_tokens - 1,
        "max_seq_length": data.max_seq_length, "rows": rows,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "machine": platform.processor() or platform.machine(), "evaluation_seconds": round(time.perf_counter() - started),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    columns = [c for c in rows[0] if c not in ("layers", "settings", "converted_dir")]
    with open(args.out / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "tables.md").write_text(
        tables(rows) + f"\nSource with every attention output replaced by its bias (proj.weight = 0): val loss"
        f" {no_attention_loss:.4f}\n", encoding="utf-8"
    )


def fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def tables(rows: list[dict]) -> str:
    lines = [
        "| variant | KV bytes/token (fp32) | vs MHA | val loss: source | after conversion | after uptraining (5%) | from scratch (same tokens) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    mha = rows[0]["kv_bytes_per_token_fp32"]
    for row in rows:
        if row["variant"] in ABLATIONS:
            continue
        lines.append(
            f"| {row['variant']} | {row['kv_bytes_per_token_fp32']:,} | {mha / row['kv_bytes_per_token_fp32']:.1f}x"
            f" | {fmt(row['val_loss_source'])} | {fmt(row['val_loss_converted'])} | {fmt(row['val_loss_uptrained'])}"
            f" | {fmt(row['val_loss_scratch'])} |"
        )
    lines += ["", "| conversion | KV bytes/token (fp32) | val loss after conversion | KL(source ‖ converted) | top-1 agreement |"
              " calibration loss (source -> converted) | mean k / kv_rel_error | mean rope_rel_error | mean kv_act_rel_error |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows[1:]:
        lines.append(
            f"| {row['variant']} | {row['kv_bytes_per_token_fp32']:,} | {fmt(row['val_loss_converted'])}"
            f" | {fmt(row['kl_to_source'], 5)} | {row['top1_agreement_with_source']:.3f}"
            f" | {fmt(row['calibration_loss_source'])} -> {fmt(row['calibration_loss_converted'])}"
            f" | {fmt(row['mean_k_or_kv_rel_error'], 3)} | {fmt(row['mean_rope_rel_error'], 3)} | {fmt(row['mean_kv_act_rel_error'], 3)} |"
        )
    lines += ["", "Per-layer relative Frobenius errors (layer 1 .. n):", ""]
    lines += ["| conversion | error | " + " | ".join(f"layer {i + 1}" for i in range(len(rows[1]["layers"]))) + " |",
              "|---|---|" + "---:|" * len(rows[1]["layers"])]
    for row in rows[1:]:
        for key in row["layers"][0]:
            lines.append(f"| {row['variant']} | {key} | " + " | ".join(f"{layer[key]:.3f}" for layer in row["layers"]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
