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
