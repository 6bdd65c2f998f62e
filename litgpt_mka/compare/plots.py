"""PNG plots of a comparison (matplotlib, the optional extra ``litgpt-mka[plots]``).

* ``loss_vs_tokens.png``: exact validation loss of every checkpoint against training tokens, one colour
  per variant, one line per seed.
* ``loss_vs_kv_cache.png``: final validation loss (mean, error bar = std over seeds) against KV-cache
  bytes per token (log scale): the quality/memory trade-off.
* ``throughput.png``: training and decode tokens/s per variant (mean, error bar = std over seeds).

Without matplotlib, :func:`write_plots` warns and writes nothing; the tables are written regardless.
Figures are built with ``matplotlib.figure.Figure`` (no pyplot state) and saved atomically.
"""

import warnings
from pathlib import Path

from litgpt_mka.compare.atomic import write_atomically


def _figure(width: float = 7.0, height: float = 4.5):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(figure, path: Path) -> None:
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))


def _colours(summary: list[dict]) -> dict[str, str]:
    return {row["variant"]: f"C{i % 10}" for i, row in enumerate(summary)}


def loss_vs_tokens(path: Path, results: list[dict], summary: list[dict]) -> None:
    figure, colours = _figure(), _colours(summary)
    ax = figure.add_subplot()
    labelled = set()
    for result in (r for r in results if r["status"] == "ok"):
        curve = result["curve"]
        label = None if result["variant"] in labelled else result["variant"]
        labelled.add(result["variant"])
        ax.plot([p["tokens"] for p in curve], [p["val_loss"] for p in curve], marker="o", markersize=3,
                color=colours[result["variant"]], label=label, alpha=0.85)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Validation loss (whole validation set) during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(figure, path)


def _with_values(summary: list[dict], *keys: str) -> list[dict]:
    return [row for row in summary if all(row["metrics"][k]["mean"] is not None for k in keys)]


def loss_vs_kv_cache(path: Path, summary: list[dict]) -> None:
    figure, colours = _figure(), _colours(summary)
    ax = figure.add_subplot()
    for row in _with_values(summary, "kv_bytes_per_token", "val_loss"):
        x, loss = row["metrics"]["kv_bytes_per_token"]["mean"], row["metrics"]["val_loss"]
        yerr = None if loss["std"] is None else [loss["std"]]
        ax.errorbar([x], [loss["mean"]], yerr=yerr, fmt="o", capsize=3, color=colours[row["variant"]])
        ax.annotate(row["variant"], (x, loss["mean"]), textcoords="offset points", xytext=(5, 5), fontsize="small")
    ax.set_xscale("log")
    ax.set_xlabel("KV-cache bytes per token (all layers, log scale)")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title("Quality against KV-cache memory")
    ax.grid(alpha=0.3, which="both")
    _save(figure, path)


def throughput(path: Path, summary: list[dict]) -> None:
    figure, colours = _figure(9.0, 4.0), _colours(summary)
    for position, (key, title) in enumerate((("train_tokens_per_s", "training tokens/s"),
                                             ("decode_tokens_per_s", "decode tokens/s")), start=1):
        ax = figure.add_subplot(1, 2, position)
        rows = _with_values(summary, key)
        names = [row["variant"] for row in rows]
        stds = [row["metrics"][key]["std"] for row in rows]
        ax.barh(names, [row["metrics"][key]["mean"] for row in rows], color=[colours[n] for n in names], capsize=3,
                xerr=[s or 0.0 for s in stds] if any(s is not None for s in stds) else None)
        ax.invert_yaxis()
        ax.set_xlabel(title)
        ax.grid(alpha=0.3, axis="x")
    _save(figure, path)


def write_plots(out_dir: Path, results: list[dict], summary: list[dict]) -> list[str]:
    """Writes the three PNGs into `out_dir` when there is something to plot; returns the names written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warnings.warn("matplotlib is not installed, so no plots were written; pip install 'litgpt-mka[plots]'")
        return []
    if not any(r["status"] == "ok" for r in results):
        return []
    loss_vs_tokens(out_dir / "loss_vs_tokens.png", results, summary)
    loss_vs_kv_cache(out_dir / "loss_vs_kv_cache.png", summary)
    throughput(out_dir / "throughput.png", summary)
    return ["loss_vs_tokens.png", "loss_vs_kv_cache.png", "throughput.png"]
