"""End to end: a learning-rate sweep with held-apart selection is one `litgpt-mka compare` command; rerun with one more
rate, it trains only that rate's run; each run trains at its rate (litgpt's saved hyperparameters and logged learning
rate say so)."""

import csv

import pytest
import yaml

from tests.compare.helpers import VAL_STORIES, compare_args, tiny_yaml, typed_results, write_stories
from tests.conftest import run


def logged_learning_rates(checkpoints) -> list[float]:
    (metrics,) = checkpoints.glob("logs/csv/version_*/metrics.csv")  # one training process, one CSV logger
    with open(metrics, newline="") as f:
        return [float(row["learning_rate"]) for row in csv.DictReader(f) if row["learning_rate"]]


@pytest.mark.slow
def test_a_rate_sweep_is_one_command_that_trains_only_the_rates_added_on_a_rerun(tmp_path, env, shared_data,
                                                                                tokenizer_dir):
    """Three tiny runs (about 60 s on an idle 2-core machine): one rate, then a second added by a rerun, then a
    second seed at the chosen rate only (--selection_seeds), the grid given per config."""
    config = tiny_yaml(tmp_path / "configs", "tiny-mha")
    vals = [write_stories(tmp_path / "val" / "val.txt", shared_data, 0, VAL_STORIES),
            write_stories(tmp_path / "val" / "val-selection.txt", shared_data, VAL_STORIES, 2 * VAL_STORIES)]
    out = tmp_path / "out"
    args = [*compare_args([config], out, shared_data, vals, tokenizer_dir), "--selection_val", "val-selection",
            "--plots", "false", "--learning_rates"]
    run([*args, "0.016"], env)
    (selection,) = typed_results(out).rate_selection
    assert (selection.rates, selection.chosen, selection.at_edge) == ([0.016], 0.016, True)
    assert "best at the grid's edge: widen the grid (0.016 is the only rate" in (out / "report.md").read_text()
    again = run([*args, "0.016", "0.004"], env)
    assert again.stdout.count("finished earlier, skipped") == 1
    assert "tiny-mha-lr0.004-seed1: training (litgpt pretrain)" in again.stdout
    runs = out / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["tiny-mha-lr0.004-seed1", "tiny-mha-lr0.016-seed1"]
    for rate in (0.004, 0.016):
        checkpoints = runs / f"tiny-mha-lr{rate}-seed1" / "checkpoints"
        saved = yaml.safe_load((checkpoints / "final" / "hyperparameters.yaml").read_text())
        assert saved["optimizer"]["init_args"] == {"lr": rate, "weight_decay": 0.01, "betas": [0.9, 0.95]}
        logged = logged_learning_rates(checkpoints)  # warm-up over 2 steps to the peak, then the cosine decay
        assert logged[:3] == [0.0, rate / 2, rate] and max(logged) == rate
    (selection,) = typed_results(out).rate_selection
    assert selection.rates == [0.004, 0.016]
    assert selection.chosen == min(zip(selection.losses, selection.rates), key=lambda p: p[0].mean)[1]
    assert "## Learning-rate selection" in (out / "report.md").read_text()
    # a second seed, at the chosen rate only: the grid's runs (the same specs, the grid now given per config) are
    # skipped, the rate is chosen from seed 1's, and seed 2 trains at it in a second batch of the same command
    chosen = selection.chosen
    confirm = run([*args[:-1], "--config_learning_rates", '{"tiny-mha": [0.016, 0.004]}', "--seeds", "1", "2",
                   "--selection_seeds", "1"], env)
    assert confirm.stdout.count("finished earlier, skipped") == 2
    assert f"tiny-mha-lr{chosen}-seed2: training (litgpt pretrain)" in confirm.stdout
    assert sorted(p.name for p in runs.iterdir()) == sorted(["tiny-mha-lr0.004-seed1", "tiny-mha-lr0.016-seed1",
                                                             f"tiny-mha-lr{chosen}-seed2"])
    results = typed_results(out)
    (selection,) = results.rate_selection
    assert (selection.chosen, [loss.n for loss in selection.losses]) == (chosen, [1, 1])
    assert (results.settings.selection_seeds, results.settings.rate_grids) == ([1], {"tiny-mha": [0.016, 0.004]})
    (row,) = results.summary
    assert row.val_loss["val"].n == 2  # both seeds at the chosen rate
