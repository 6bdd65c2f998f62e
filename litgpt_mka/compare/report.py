"""The report of a comparison: ``results.json``, ``results.csv``, ``report.md`` and the plots.

Everything is read back from the runs' own ``result.json`` files, never from memory, so a rerun that
trains nothing rewrites the same report. ``report.md`` holds no timestamps and is byte-identical
for the same command and results; ``results.json`` adds the time it was written and the
environment of the invocation (each run also records its own).

Aggregation over seeds: per variant (config file stem), mean and sample standard deviation (n - 1)
of each metric over the runs that finished; a run whose metric is missing (e.g. too few iterations
to time) is left out of that metric, and the count shown says so.
"""

import csv
import io
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from litgpt_mka.compare import plots
from litgpt_mka.compare.atomic import read_json, write_json, write_text
from litgpt_mka.compare.environment import environment, machine_summary, utc_now

SCHEMA = "litgpt-mka.compare/v1"

# metric key -> (getter from a finished run's result.json, description)
METRICS: dict[str, tuple[Callable[[dict], Any], str]] = {
    "val_loss": (lambda r: r["validation"]["loss"], "validation cross-entropy, nats/token, whole validation text"),
    "val_ppl": (lambda r: r["validation"]["perplexity"], "exp(validation loss)"),
    "params_total": (lambda r: r["parameters"]["total"], "all parameters"),
    "params_attention": (lambda r: r["parameters"]["attention"], "parameters of the attention modules"),
    "train_tokens": (lambda r: r["training"]["tokens"], "training tokens"),
    "train_tokens_per_s": (lambda r: r["training"]["tokens_per_s"], "steady-state training tokens/s"),
    "train_wall_time_s": (lambda r: r["training"]["wall_time_s"], "training process wall time, s"),
    "train_peak_memory_bytes": (lambda r: r["training"]["peak_memory"]["bytes"], "peak memory of the training process"),
    "kv_bytes_per_token": (lambda r: r["kv_cache"]["bytes_per_token"], "KV-cache bytes per token, all layers"),
    "kv_bytes_at_context": (lambda r: r["kv_cache"]["bytes_at_context"], "KV-cache bytes allocated at batch x context"),
    "decode_tokens_per_s": (lambda r: r["decode"]["tokens_per_s"], "greedy cached decode tokens/s"),
}


# ------------------------------------------------------------------------------------------ collection
def run_results(comparison) -> list[dict]:
    """Every run's result.json in plan order; runs without one as ``{"status": "pending"}``."""
    results = []
    for run in comparison.runs:
        path = run.run_dir / "result.json"
        result = read_json(path) if path.is_file() else None
        if result is None or result.get("spec_sha256") != run.spec_sha256():
            result = {"name": run.name, "variant": run.variant, "seed": run.seed, "status": "pending"}
        results.append(result)
    return results


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None below two values) and count."""
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def aggregate(results: list[dict]) -> list[dict]:
    """Per variant, in first-seen order: run counts and mean/std of every metric over its finished runs."""
    variants: dict[str, list[dict]] = {}
    for result in results:
        variants.setdefault(result["variant"], []).append(result)
    summary = []
    for variant, runs in variants.items():
        ok = [r for r in runs if r["status"] == "ok"]
        metrics = {}
        for key, (get, _) in METRICS.items():
            metrics[key] = mean_std([v for v in map(get, ok) if v is not None])
        summary.append({"variant": variant, "runs": len(runs), "runs_ok": len(ok), "metrics": metrics})
    return summary


def flat_row(result: dict) -> dict[str, Any]:
    """One results.csv row: identity, status and every metric (empty when missing)."""
    row = {k: result.get(k) for k in ("variant", "seed", "status", "name", "config_path", "config_sha256")}
    for key, (get, _) in METRICS.items():
        try:
            row[key] = get(result) if result["status"] == "ok" else None
        except (KeyError, TypeError):
            row[key] = None
    row["error"] = result.get("error") if result["status"] == "failed" else None
    return row


def settings_of(comparison) -> dict[str, Any]:
    shared, options = comparison.shared, comparison.options
    return {
        "configs": [str(run.config_path) for run in comparison.runs[:: len(options.seeds)]],
        "seeds": list(options.seeds),
        "train_path": str(shared.train_path),
        "val_path": str(shared.val_path),
        "tokenizer_dir": str(shared.tokenizer_dir),
        "data_seed": shared.data_seed,
        "measure": comparison.runs[0].measure,
    }


# --------------------------------------------------------------------------------------------- writing
def write_csv(path: Path, results: list[dict]) -> None:
    rows = [flat_row(r) for r in results]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_report(comparison) -> None:
    """Writes results.json, results.csv, the plots and report.md into the comparison's folder."""
    out_dir = comparison.out_dir
    results = run_results(comparison)
    summary = aggregate(results)
    write_json(out_dir / "results.json", {
        "schema": SCHEMA,
        "command": comparison.command,
        "written": utc_now(),
        "environment": environment(),
        "settings": settings_of(comparison),
        "summary": summary,
        "runs": results,
    })
    write_csv(out_dir / "results.csv", results)
    figures = plots.write_plots(out_dir, results, summary) if comparison.options.plots else []
    write_text(out_dir / "report.md", markdown(comparison, results, summary, figures))


# -------------------------------------------------------------------------------------------- markdown
def _si(value: float) -> str:
    for factor, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " K")):
        if abs(value) >= factor:
            return f"{value / factor:.2f}{suffix}"
    return f"{value:.0f}"


def _bytes(value: float) -> str:
    for factor, suffix in ((2**30, " GiB"), (2**20, " MiB"), (2**10, " KiB")):
        if abs(value) >= factor:
            return f"{value / factor:.2f}{suffix}"
    return f"{value:.0f} B"


def _cell(stats: dict, fmt: Callable[[float], str], constant: bool) -> str:
    """``mean ± std`` (std with two or more values; for `constant` columns only when nonzero); ``—`` when empty."""
    if stats["mean"] is None:
        return "—"
    text = fmt(stats["mean"])
    if stats["std"] is None or (constant and stats["std"] == 0):
        return text
    return f"{text} ± {fmt(stats['std'])}"


COLUMNS: list[tuple[str, str, Callable[[float], str], bool]] = [
    # (header, metric key, format, constant across seeds by construction)
    ("val loss", "val_loss", lambda v: f"{v:.4f}", False),
    ("val ppl", "val_ppl", lambda v: f"{v:.2f}", False),
    ("params (attention)", "params_attention", _si, True),
    ("params (total)", "params_total", _si, True),
    ("train tok/s", "train_tokens_per_s", lambda v: f"{v:,.0f}", False),
    ("train wall time", "train_wall_time_s", lambda v: f"{v:,.0f} s", False),
    ("peak memory (train)", "train_peak_memory_bytes", _bytes, False),
    ("KV cache / token", "kv_bytes_per_token", lambda v: f"{v:,.0f} B", True),  # exact: allocation / (B x ctx)
    ("KV cache @ context", "kv_bytes_at_context", _bytes, True),
    ("decode tok/s", "decode_tokens_per_s", lambda v: f"{v:,.1f}", False),
]


def table(summary: list[dict]) -> list[str]:
    lines = ["| variant | runs ok | " + " | ".join(column[0] for column in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for row in summary:
        cells = [_cell(row["metrics"][key], fmt, constant) for _, key, fmt, constant in COLUMNS]
        lines.append(f"| {row['variant']} | {row['runs_ok']}/{row['runs']} | " + " | ".join(cells) + " |")
    return lines


def _code(text: str) -> str:
    """`text` as inline code inside a table cell."""
    return "`" + text.replace("|", "/").replace("`", "'") + "`"


def _unique(values: list[Any]) -> str:
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    return ", ".join(str(v) for v in distinct) if distinct else "—"


def setup_lines(comparison, results: list[dict]) -> list[str]:
    ok = [r for r in results if r["status"] == "ok"]
    measure, shared = comparison.runs[0].measure, comparison.shared
    machines = _unique([machine_summary(r["environment"]) for r in ok])
    resumed = [r["name"] for r in ok if r["training"]["resumed_from_step"] is not None]
    val_tokens = _unique([r["validation"]["tokens"] for r in ok])
    lines = [
        f"- Machine: {machines}",
        f"- Data: `{shared.train_path.name}` for training, the whole `{shared.val_path.name}` ({val_tokens} target tokens)"
        f" for validation (`{shared.val_path.parent}`), tokenizer `{shared.tokenizer_dir.name}`,"
        f" data-order seed {shared.data_seed}",
        f"- Training (litgpt pretrain): {_unique([r['training']['tokens'] for r in ok])} tokens per run"
        f" ({_unique([r['training']['iterations'] for r in ok])} iterations), max_seq_length"
        f" {_unique([r['validation']['max_seq_length'] for r in ok])},"
        f" precision {_unique([r['training']['precision'] for r in ok])},"
        f" seeds {', '.join(map(str, comparison.options.seeds))} (model initialisation)",
        f"- Decode and KV cache: batch {measure['decode_batch_size']}, context {measure['context_length']} tokens,"
        f" {measure['decode_new_tokens']} timed tokens, {measure['decode_dtype']}"
        f" on {_unique([r['decode']['device'] for r in ok])}",
        f"- Throughput skips the first {measure['throughput_skip_iters']} iterations of every training process",
    ]
    if resumed:
        lines.append(f"- Resumed after an interruption (wall time covers the last attempt only): {', '.join(resumed)}")
    mismatched = [r["name"] for r in ok if not r["kv_cache"].get("formula_matches", True)]
    if mismatched:
        lines.append(f"- **KV accounting mismatch**: `litgpt_mka.measure.kv_cache_size` disagrees with the bytes `set_kv_cache`"
                     f" allocates for {', '.join(mismatched)}; the table shows the allocation (results.json has both)")
    busy = busy_machine_note(ok)
    return lines + ([busy] if busy else [])


BUSY_LOAD_PER_CPU = 1.5  # the run's own threads count toward the load average


def busy_machine_note(ok: list[dict]) -> str | None:
    """A warning line when, at the end of a run's training or decoding, the 1-minute load average exceeded
    BUSY_LOAD_PER_CPU x the CPU count: other processes then competed for the CPUs."""
    worst = None  # (load, cpus)
    for result in ok:
        cpus = result["environment"]["cpu_count"] or 1
        for load in (result["training"].get("load_average_1min"), result["evaluation"].get("load_average_1min")):
            if load is not None and load > BUSY_LOAD_PER_CPU * cpus and (worst is None or load / cpus > worst[0] / worst[1]):
                worst = (load, cpus)
    if worst is None:
        return None
    return (
        f"- **Busy machine**: the 1-minute load average reached {worst[0]:.1f} on {worst[1]} CPUs during these runs;"
        " other processes competed for the CPUs, so the timings (tok/s, wall time) are unreliable"
    )


DEFINITIONS = [
    "val loss: mean cross-entropy (nats/token, float32) of the final checkpoint over every token of the validation"
    " text exactly once (windows of max_seq_length + 1 tokens, stride max_seq_length, the tail scored once); no"
    " padding; val ppl = exp(val loss) per run",
    "train tok/s: timed iterations x tokens per iteration / sum of litgpt's per-iteration `iter_time` (metrics.csv)",
    "train wall time: the `litgpt pretrain` call in the training process (litgpt's imports, data, model,"
    " compilation, training, checkpoint saves)",
    "peak memory (train): of the training process only; CUDA max allocated on GPU, peak RSS on CPU",
    "KV cache @ context: bytes of the buffers that `set_kv_cache` allocates for the stated batch and context,"
    " in the decode dtype, all layers; / token: that divided by batch x context",
    "decode tok/s: greedy cached decoding after a prompt of the stated context, batch / median step time",
    "mean ± sample std over seeds where there are several; `runs ok` counts finished runs",
]

PLOT_TITLES = {
    "loss_vs_tokens.png": "Validation loss against training tokens",
    "loss_vs_kv_cache.png": "Validation loss against KV-cache bytes per token",
    "throughput.png": "Training and decode throughput",
}


def markdown(comparison, results: list[dict], summary: list[dict], figures: list[str]) -> str:
    lines = ["# Attention variants compared", "", "```", comparison.command, "```", ""]
    lines += setup_lines(comparison, results) + [""]
    lines += table(summary) + [""]
    lines += ["Definitions:", ""] + [f"- {d}" for d in DEFINITIONS] + [""]
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        lines += ["## Failed runs", "", "| run | phase | reason | error |", "|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['phase']} | {r['reason']} | {_code(r['error'])} |" for r in failed]
        lines += ["", "Full logs: `runs/<run>/run.log`.", ""]
    pending = [r["name"] for r in results if r["status"] == "pending"]
    if pending:
        lines += ["## Not run yet", "", ", ".join(pending), ""]
    for name in figures:
        lines += [f"## {PLOT_TITLES[name]}", "", f"![{PLOT_TITLES[name]}]({name})", ""]
    return "\n".join(lines)
