"""litgpt_mka.compare.plots: the Pareto plot's names never print on top of each other; a point above its loss
limit is drawn at the edge, with its loss in its name."""

import pytest

pytest.importorskip("matplotlib")


def test_names_of_points_with_the_same_cache_and_loss_are_moved_apart():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from litgpt_mka.compare.plots import _separate

    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.add_subplot()
    ax.plot([960, 6144], [4.22, 4.19], "o")
    same_point = [ax.annotate(f"pythia-14m-mla{suffix}", (960, 4.22), textcoords="offset points", xytext=(4, 6))
                  for suffix in ("", "-fullq", " (lr 5e-4)")]
    elsewhere = ax.annotate("pythia-14m-mha", (6144, 4.19), textcoords="offset points", xytext=(4, 6))

    _separate(figure, [*same_point, elsewhere])

    renderer = FigureCanvasAgg(figure).get_renderer()
    boxes = [name.get_window_extent(renderer) for name in same_point]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert same_point[0].xyann == (4, 6)  # the first of the three stays on top, where it was
    assert elsewhere.xyann == (4, 6)  # a name that overlaps nothing is not moved


def test_a_point_above_the_loss_limit_is_drawn_at_the_edge_with_its_loss(tmp_path, monkeypatch):
    from litgpt_mka.compare import plots
    from litgpt_mka.compare.summary import summarize
    from tests.compare.helpers import synthetic_run

    runs = [synthetic_run("mha", seed, loss, kv=6144) for seed, loss in ((1, 4.19), (2, 4.20))]
    runs += [synthetic_run("mla", seed, loss, kv=960) for seed, loss in ((1, 4.22), (2, 4.23))]
    runs += [synthetic_run("mha (lr 5e-4)", seed, loss, kv=6144) for seed, loss in ((1, 4.57), (2, 4.58))]
    saved = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: saved.append(figure))

    plots.loss_vs_kv_cache(tmp_path / "pareto.png", summarize(runs, "mha"), "val", max_loss=4.28)

    ax = saved[0].axes[0]
    assert 4.28 <= ax.get_ylim()[1] < 4.30  # the axis ends at the limit (plus its margin), not at 4.575
    names = {text.get_text(): text.xy for text in ax.texts}
    assert names["mha (lr 5e-4): 4.575, off the scale"] == (6144, 4.28)
    assert names["mla"] == (960, pytest.approx(4.225)) and names["mha"] == (6144, pytest.approx(4.195))


def test_the_differences_plot_draws_each_interval_its_verdict_and_the_pairs_the_test_reads(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from litgpt_mka.compare import plots
    from litgpt_mka.compare.summary import SCREENING, summarize
    from tests.compare.helpers import synthetic_run

    runs = [synthetic_run("mha", seed, loss) for seed, loss in ((1, 3.60), (2, 3.70), (3, 3.80))]
    runs += [synthetic_run("mla", seed, loss) for seed, loss in ((1, 3.630), (2, 3.731), (3, 3.829))]
    runs += [synthetic_run("gqa", seed, loss) for seed, loss in ((1, 3.61), (3, 3.79))]  # seed 2 did not finish
    saved = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: saved.append(figure))
    paired = SimpleNamespace(summary=summarize(runs, "mha", paired=True), runs=runs, reference="mha")

    assert plots.differences(tmp_path / "differences.png", paired, "val")

    ax = saved[0].axes[0]
    assert [label.get_text() for label in ax.get_yticklabels()] == ["mla", "gqa"]  # the summary's order
    rows = {row.variant: row.difference for row in paired.summary if row.variant != "mha"}
    dots = [tuple(collection.get_offsets()[:, 0]) for collection in ax.collections]
    assert dots == [pytest.approx((0.030, 0.031, 0.029)), pytest.approx((0.01, -0.01))]  # mla's three pairs, gqa's two
    horizontal = [line for line in ax.lines if len(line.get_ydata()) == 2 and line.get_ydata()[0] == line.get_ydata()[1]]
    bars = [tuple(line.get_xdata()) for line in horizontal]
    assert bars == [(rows["mla"].ci95_low, rows["mla"].ci95_high), (rows["gqa"].ci95_low, rows["gqa"].ci95_high)]
    assert [text.get_text() for text in ax.texts] == [" worse", " cannot tell"]
    # the screening rule has no intervals: nothing is drawn
    screened = SimpleNamespace(summary=summarize(runs, "mha", rule=SCREENING), runs=runs, reference="mha")
    assert not plots.differences(tmp_path / "screened.png", screened, "val") and len(saved) == 1
