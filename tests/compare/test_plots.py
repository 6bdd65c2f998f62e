"""litgpt_mka.compare.plots: the Pareto plot's names never print on top of each other."""

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
