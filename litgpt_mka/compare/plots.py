"""PNG plots of a comparison (matplotlib, the optional extra ``litgpt-mka[plots]``).

* ``loss_vs_tokens.png``: exact validation loss (primary text) of every checkpoint against training tokens,
  one colour per variant, one line per seed.
* ``loss_vs_kv_cache.png``: the Pareto plot: final validation loss (primary text; mean over seeds, error bar
  = sample std over seeds) against KV-cache bytes per token (log scale), every variant a point; the
  frontier (:func:`litgpt_mka.compare.summary.pareto_front` of the means: no other point has a cache and a loss
  at most its own, one of them smaller) is ringed and joined by a dashed staircase. With ``--kv_cache_quantizations``, each
  variant's quantized caches are points too (hollow, in the variant's colour, one marker per quantization, joined
  to the variant's own point by a thin line; loss = cached decoding through that cache), on the same frontier;
  only the variants' own points carry a name (moved down where names would overlap: configurations with the
  same cache bytes and close losses), and a legend beside the axes names the markers.
* ``routing.png`` (MKA/FMKA variants only): one panel per variant, layers on x, one bar per memory (local,
  session, long-term): mean routing weight over seeds, error bar = std.
* ``differences.png`` (t-tested comparisons only): each variant's primary validation loss minus the reference's,
  one row per variant: the difference (diamond), its 95% interval (bar), the verdict beside it and, for paired
  runs, each seed's own difference (dots, the pairs the paired t-test reads); a line at 0.
* ``throughput.png``: training and decode tokens/s per variant (mean, error bar = std over seeds); a variant
  timed on a busy machine has no bar and reads "busy".

Without matplotlib, :func:`write_plots` warns and writes nothing; the tables are written regardless.
Figures are built with ``matplotlib.figure.Figure`` (no pyplot state) and saved atomically.
"""

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from litgpt_mka.atomic import write_atomically
from litgpt_mka.compare.records import Results, Stat, VariantSummary
from litgpt_mka.compare.summary import pareto_front


def _figure(width: float = 7.0, height: float = 4.5):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(figure, path: Path) -> None:
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))


def variant_colours(summary: list[VariantSummary]) -> dict[str, str]:
    """Each row's colour, by its place in ``summary``: the colours of every plot drawn from that summary."""
    return {row.variant: f"C{i % 10}" for i, row in enumerate(summary)}


def loss_vs_tokens(path: Path, results: Results, primary: str) -> None:
    figure, colours = _figure(), variant_colours(results.summary)
    ax = figure.add_subplot()
    labelled = set()
    for run in (r for r in results.runs if r.ok):
        curve = run.evaluation.curve
        label = None if run.variant in labelled else run.variant
        labelled.add(run.variant)
        ax.plot([p.tokens for p in curve], [p.val_loss for p in curve], marker="o", markersize=3,
                color=colours[run.variant], label=label, alpha=0.85)
    ax.set_xlabel("training tokens")
    ax.set_ylabel(f"validation loss on {primary} (nats/token)")
    ax.set_title("Validation loss (whole validation text) during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(figure, path)


@dataclass(frozen=True)
class ParetoPoint:
    """A point of the Pareto plot: a variant with its own cache, or decoded through a quantized one."""

    variant: str
    cache: str | None  # None: the variant's own cache; else the kv_cache_quantization name
    kv_bytes_per_token: float
    loss: Stat


def pareto_points(summary: list[VariantSummary], primary: str) -> list[ParetoPoint]:
    """Every variant that has a loss and cache bytes, then its quantized caches (cached decoding's loss)."""
    points = []
    for row in summary:
        loss = row.val_loss.get(primary)
        if loss is not None and loss.mean is not None and row.kv_bytes_per_token.mean is not None:
            points.append(ParetoPoint(row.variant, None, row.kv_bytes_per_token.mean, loss))
        points += [ParetoPoint(row.variant, cache.quantization, cache.kv_bytes_per_token.mean, cache.loss)
                   for cache in row.quantized_caches if cache.loss.mean is not None]
    return points


_CACHE_MARKERS = {"int8": "s", "int4": "v", "float8_e4m3fn": "D"}


def _marker(cache: str | None) -> str:
    """A point's marker: a disc for the variant's own cache, one shape per quantization ("P" for others)."""
    return "o" if cache is None else _CACHE_MARKERS.get(cache, "P")


def loss_vs_kv_cache(path: Path, summary: list[VariantSummary], primary: str, max_loss: float | None = None,
                     colours: dict[str, str] | None = None) -> None:
    """Final loss against KV-cache bytes per token, with the Pareto frontier. ``max_loss`` tops the loss axis: a
    point above it (a badly tuned configuration, say) is drawn at that edge as a triangle, its loss in its name, so
    that it does not squeeze the others into a sliver of the plot. ``colours``: each row's colour (default: one per
    row, :func:`variant_colours`)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure, colours = _figure(9.0, 5.0), colours or variant_colours(summary)
    ax = figure.add_subplot()
    points = pareto_points(summary, primary)
    min_bytes = min((p.kv_bytes_per_token for p in points), default=1.0)
    max_bytes = max((p.kv_bytes_per_token for p in points), default=1.0)

    def off_scale(point: ParetoPoint) -> bool:
        return max_loss is not None and point.loss.mean > max_loss

    def drawn_loss(point: ParetoPoint) -> float:
        return max_loss if off_scale(point) else point.loss.mean

    for variant in dict.fromkeys(p.variant for p in points):  # a thin line through each variant's caches
        own = sorted((p for p in points if p.variant == variant), key=lambda p: p.kv_bytes_per_token)
        if len(own) > 1:
            ax.plot([p.kv_bytes_per_token for p in own], [drawn_loss(p) for p in own], color=colours[variant],
                    linewidth=0.8, alpha=0.4, zorder=1)
    names = []
    for point in points:
        x, y, std = point.kv_bytes_per_token, drawn_loss(point), point.loss.std
        ax.errorbar([x], [y], yerr=None if std is None or off_scale(point) else [std], capsize=3, zorder=2,
                    fmt="^" if off_scale(point) else _marker(point.cache), color=colours[point.variant],
                    markerfacecolor=None if point.cache is None else "none")
        if point.cache is None:  # its name above it, on the side away from the plot's edge
            left = math.log(x / min_bytes) > 0.2 * math.log(max_bytes / min_bytes)  # not at the left edge
            name = f"{point.variant}: {point.loss.mean:.3f}, off the scale" if off_scale(point) else point.variant
            names.append(ax.annotate(name, (x, y), textcoords="offset points", ha="right" if left else "left",
                                     xytext=(-4 if left else 4, 6), fontsize="small", color=colours[point.variant]))
    handles = []
    front = pareto_front([(p.kv_bytes_per_token, p.loss.mean) for p in points])
    if front:
        xs, ys = [points[i].kv_bytes_per_token for i in front], [drawn_loss(points[i]) for i in front]
        # the staircase: each frontier point holds its loss until a larger cache buys a lower one
        ax.plot(xs, ys, drawstyle="steps-post", color="black", alpha=0.5, linestyle="--", zorder=0)
        handles.append(ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="black", linewidths=1.0,
                                  label="Pareto frontier: no other\nconfig matches or beats it\non cache and loss both"))
    caches = list(dict.fromkeys(p.cache for p in points if p.cache is not None))
    if caches:
        handles += [Line2D([], [], linestyle="none", marker=_marker(None), color="grey",
                           label="own cache (unquantized)")]
        handles += [Line2D([], [], linestyle="none", marker=_marker(cache), color="grey", markerfacecolor="none",
                           label=f"{cache} cache") for cache in caches]
    if handles:
        ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 100, 200, 500, 1,000, ... written out
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.05, y=0.08)  # room above the top names
    ax.set_xlabel("KV-cache bytes per token (all layers, log scale)")
    ax.set_ylabel(f"final validation loss on {primary} (nats/token)")
    ax.set_title("Quality against KV-cache memory (mean ± std over seeds)")
    ax.grid(alpha=0.3, which="both")
    _separate(figure, names)
    _save(figure, path)


def _separate(figure, names) -> None:
    """Moves each name that overlaps one above it down, just below it, top to bottom, so that no two overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)  # the constrained layout places the axes, and with them the names
    pixels_per_point = figure.dpi / 72
    placed = []
    for name in sorted(names, key=lambda n: -n.get_window_extent(renderer).y1):
        box = name.get_window_extent(renderer)
        while above := next((other for other in placed if box.overlaps(other)), None):
            dx, dy = name.xyann
            name.xyann = (dx, dy - (box.y1 - above.y0) / pixels_per_point - 1)  # 1 point of space
            box = name.get_window_extent(renderer)
        placed.append(box)


def routing(path: Path, summary: list[VariantSummary], sources: list[str]) -> None:
    rows = [row for row in summary if row.routing is not None]
    figure = _figure(4.5 * len(rows) + 1.0, 4.0)
    width = 0.8 / len(sources)
    for position, row in enumerate(rows, start=1):
        ax = figure.add_subplot(1, len(rows), position)
        layers = range(len(row.routing))
        for i, source in enumerate(sources):
            stats = [row.routing[layer][i] for layer in layers]
            stds = [s.std for s in stats]
            ax.bar([layer + (i - (len(sources) - 1) / 2) * width for layer in layers], [s.mean for s in stats],
                   width=width, label=source, color=f"C{i}", capsize=2,
                   yerr=[s or 0.0 for s in stds] if any(s is not None for s in stds) else None)
        ax.set_xticks(list(layers))
        ax.set_xlabel("layer")
        ax.set_ylabel("mean routing weight (lambda)")
        ax.set_ylim(0, 1)
        ax.set_title(row.variant)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small")
    figure.suptitle("Mean routing weight per layer on the primary validation text (error bars: std over seeds)",
                    fontsize="medium")
    _save(figure, path)


def per_seed_differences(results: Results, variant: str) -> list[float]:
    """The primary validation loss of each seed of `variant` minus the reference's at the same seed (finished runs,
    the seeds both sides have, in seed order): the pairs of a paired t-test."""
    def by_seed(name: str) -> dict[int, float]:
        return {run.seed: run.evaluation.primary.loss for run in results.runs if run.ok and run.variant == name}

    ours, theirs = by_seed(variant), by_seed(results.reference)
    return [ours[seed] - theirs[seed] for seed in sorted(ours.keys() & theirs.keys())]


def differences(path: Path, results: Results, primary: str) -> bool:
    """The differences to the reference with their 95% intervals (module docstring); False, and nothing written,
    where no difference has an interval (the screening rule, or fewer than two seeds)."""
    rows = [row for row in results.summary if row.difference is not None and row.difference.ci95_low is not None]
    if not rows:
        return False
    figure, colours = _figure(7.0, 1.2 + 0.55 * len(rows)), variant_colours(results.summary)
    ax = figure.add_subplot()
    for i, row in enumerate(rows):
        d, colour = row.difference, colours[row.variant]
        if d.t_test == "paired":
            seeds = per_seed_differences(results, row.variant)
            ax.scatter(seeds, [i + 0.22] * len(seeds), s=14, color=colour, alpha=0.6, linewidths=0)
        ax.plot([d.ci95_low, d.ci95_high], [i, i], color=colour, linewidth=2.5, solid_capstyle="butt")
        ax.plot([d.difference], [i], marker="D", color=colour)
        ax.annotate(f" {d.verdict}", (d.ci95_high, i), va="center", fontsize="small")
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [row.variant for row in rows])
    ax.set_ylim(len(rows) - 0.5, -0.6)
    ax.set_xlabel(f"validation loss on {primary} minus {results.reference}'s (nats/token)")
    ax.set_title("Differences to the reference: mean (diamond), 95% interval (bar), seeds (dots, paired)",
                 fontsize="medium")
    ax.grid(alpha=0.3, axis="x")
    _save(figure, path)
    return True


def throughput(path: Path, summary: list[VariantSummary]) -> None:
    figure, colours = _figure(9.0, 4.0), variant_colours(summary)
    for position, (key, busy_key, title) in enumerate((("train_tokens_per_s", "train_busy", "training tokens/s"),
                                                       ("decode_tokens_per_s", "decode_busy", "decode tokens/s")),
                                                      start=1):
        ax = figure.add_subplot(1, 2, position)
        rows = [row for row in summary if getattr(row, key).mean is not None]
        names = [row.variant for row in rows]
        quiet = [not getattr(row, busy_key) for row in rows]
        means = [getattr(row, key).mean if q else 0.0 for row, q in zip(rows, quiet)]
        stds = [(getattr(row, key).std or 0.0) if q else 0.0 for row, q in zip(rows, quiet)]
        ax.barh(names, means, color=[colours[n] for n in names], capsize=3, xerr=stds)
        for i, q in enumerate(quiet):
            if not q:
                ax.text(0, i, " busy", va="center", fontsize="small")
        ax.invert_yaxis()
        ax.set_xlabel(title)
        ax.grid(alpha=0.3, axis="x")
    _save(figure, path)


def write_plots(out_dir: Path, results: Results) -> list[str]:
    """Writes the PNGs into `out_dir` when there is something to plot; returns the names written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warnings.warn("matplotlib is not installed, so no plots were written; pip install 'litgpt-mka[plots]'")
        return []
    ok = [r for r in results.runs if r.ok]
    if not ok:
        return []
    primary = Path(results.settings.val_paths[0]).stem
    loss_vs_tokens(out_dir / "loss_vs_tokens.png", results, primary)
    loss_vs_kv_cache(out_dir / "loss_vs_kv_cache.png", results.summary, primary)
    written = ["loss_vs_tokens.png", "loss_vs_kv_cache.png"]
    if differences(out_dir / "differences.png", results, primary):
        written.append("differences.png")
    with_routing = [r for r in ok if r.evaluation.routing is not None]
    if with_routing:
        routing(out_dir / "routing.png", results.summary, with_routing[0].evaluation.routing.sources)
        written.append("routing.png")
    throughput(out_dir / "throughput.png", results.summary)
    return written + ["throughput.png"]
