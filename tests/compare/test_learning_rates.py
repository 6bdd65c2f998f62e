"""compare --learning_rates and --selection_val: run names and specs, the optimizer each run gets, the held-apart
choice of each variant's rate, the verdicts at the chosen rates, and the report's sections."""

import dataclasses
import inspect
import json
import math

import pytest
import yaml

from litgpt_mka.compare.learning_rates import optimizer_with_rate, rate_label, run_name, select_rate, summarize_rates
from litgpt_mka.compare.options import CompareOptions, validate
from litgpt_mka.compare.records import MeasureSettings, Results, Settings, Validation, to_json
from tests.compare.helpers import synthetic_run, tiny_yaml


def rated(variant: str, seed: int, rate: float, loss: float, selection_loss: float):
    """A finished run at `rate` with validation loss `loss` (text "val") and `selection_loss` (text "sel")."""
    run = synthetic_run(variant, seed, loss)
    selection = Validation("sel", "sel.txt", selection_loss, math.exp(selection_loss), 999, 3, 32)
    evaluation = dataclasses.replace(run.evaluation, validation=[*run.evaluation.validation, selection])
    return dataclasses.replace(run, name=run_name(variant, seed, rate), learning_rate=rate, evaluation=evaluation)


# mha's selection losses are lowest at 0.008 (inside the grid), mla's at 0.016 (its edge); the verdicts' losses ("val")
# at the rates not chosen are far lower, so any of them leaking into a verdict would show
SWEEP = [
    rated("mha", 1, 0.004, 1.00, 3.00), rated("mha", 2, 0.004, 1.00, 3.10),
    rated("mha", 1, 0.008, 2.50, 2.80), rated("mha", 2, 0.008, 2.60, 2.90),
    rated("mha", 1, 0.016, 1.00, 2.95), rated("mha", 2, 0.016, 1.00, 3.00),
    rated("mla", 1, 0.004, 1.00, 3.20), rated("mla", 2, 0.004, 1.00, 3.30),
    rated("mla", 1, 0.008, 1.00, 3.00), rated("mla", 2, 0.008, 1.00, 3.10),
    rated("mla", 1, 0.016, 2.55, 2.90), rated("mla", 2, 0.016, 2.66, 2.95),
]
RATES = [0.004, 0.008, 0.016]


def test_a_rate_is_spelled_one_way_in_run_names():
    assert [rate_label(r) for r in (4e-3, 0.008, 1.6e-2, 5e-4, 1e-5, 1)] == ["0.004", "0.008", "0.016", "0.0005",
                                                                          "1e-05", "1.0"]
    assert run_name("pythia-14m-mha", 3, 8e-3) == "pythia-14m-mha-lr0.008-seed3"
    assert run_name("pythia-14m-mha", 3, None) == "pythia-14m-mha-seed3"  # no rate: the names of before


def test_the_rate_replaces_only_the_optimizers_lr(tmp_path):
    config = yaml.safe_load(tiny_yaml(tmp_path, "a").read_text())
    optimizer = optimizer_with_rate(config, 0.016)
    assert optimizer == {**config["optimizer"], "init_args": {**config["optimizer"]["init_args"], "lr": 0.016}}
    assert config["optimizer"]["init_args"]["lr"] == 0.001  # the YAML's own is not touched
    assert optimizer_with_rate({"optimizer": "SGD"}, 0.1) == {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}
    assert optimizer_with_rate({}, 0.1) == {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.1}}
    with pytest.raises(ValueError, match=r"optimizer=\{'lr': 0.1\}: --learning_rates replaces the lr of an optimizer"):
        optimizer_with_rate({"optimizer": {"lr": 0.1}}, 0.2)


def test_litgpt_defaults_that_compare_restates_are_litgpts():
    from litgpt.pretrain import setup

    from litgpt_mka.compare.learning_rates import LITGPT_DEFAULT_OPTIMIZER
    from litgpt_mka.compare.plan import LITGPT_DEFAULT_LOGGER

    parameters = inspect.signature(setup).parameters
    assert (parameters["optimizer"].default, parameters["logger_name"].default) == (LITGPT_DEFAULT_OPTIMIZER,
                                                                                    LITGPT_DEFAULT_LOGGER)


def test_invalid_rates_and_selection_texts_are_refused(tmp_path):
    config = tiny_yaml(tmp_path, "a")
    val, sel = (tmp_path / "val.txt", tmp_path / "sel.txt")
    val.write_text("x"), sel.write_text("y")

    def options(**given):
        return CompareOptions(configs=[config], val_path=[val, sel], **given)

    validate(options(learning_rates=[0.004, 0.008], selection_val="sel"))
    for given, message in [
        (dict(learning_rates=[]), r"learning_rates=\[\] is empty"),
        (dict(learning_rates=[0.004, -0.1]), r"learning_rates: -0.1 is not a positive number"),
        (dict(learning_rates=[0.004, float("nan")]), r"learning_rates: nan is not a positive number"),
        (dict(learning_rates=[0.004, 4e-3]), r"learning_rates=\[0.004, 0.004\] repeat a rate"),
        (dict(selection_val="sel"), r"selection_val='sel' picks a learning rate, but no --learning_rates are given"),
        (dict(learning_rates=[0.004], selection_val="val"),
         r"selection_val='val' is not one of \['sel'\]: 'val', the first --val_path, is the verdicts' text; the"
         r" selection text must be another --val_path, named by its file stem"),
        (dict(learning_rates=[0.004], selection_val="nope"), r"selection_val='nope' is not one of \['sel'\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            validate(options(**given))
    with pytest.raises(ValueError, match=r"selection_val='sel' is not one of \[\]: no --val_path is given"):
        validate(CompareOptions(configs=[config], learning_rates=[0.004], selection_val="sel"))


@pytest.mark.filterwarnings("ignore:each run's validation curve")
def test_every_config_rate_and_seed_is_a_run_whose_spec_holds_its_rate(tmp_path, shared_data, tokenizer_dir):
    from litgpt_mka.compare.layout import spec_sha256
    from litgpt_mka.compare.plan import plan_runs

    configs = [tiny_yaml(tmp_path, "a"), tiny_yaml(tmp_path, "b", n_query_groups=1)]
    common = dict(configs=configs, seeds=[1, 2], train_path=shared_data / "train.txt", tokenizer_dir=tokenizer_dir,
                  val_path=[shared_data / "val.txt"], out_dir=tmp_path / "out", context_length=16, decode_new_tokens=4)

    def plan(**given):
        return plan_runs(CompareOptions(**common, **given), "float32")[1]

    runs = plan(learning_rates=[0.016, 0.004])
    assert [run.name for run in runs] == [f"{c}-lr{r}-seed{s}" for c in "ab" for r in ("0.016", "0.004") for s in (1, 2)]
    assert [run.spec.learning_rate for run in runs[:4]] == [0.016, 0.016, 0.004, 0.004]
    inline = json.loads(runs[0].spec.pretrain_args[-1])  # the last argument: the optimizer, after --pretrain_args
    assert runs[0].spec.pretrain_args[-2] == "--config"
    assert inline == {"optimizer": {"class_path": "torch.optim.AdamW",
                                    "init_args": {"lr": 0.016, "weight_decay": 0.01, "betas": [0.9, 0.95]}}}
    # adding a rate leaves the other runs' specs as they were: a rerun trains only the new rate's runs
    more = {run.name: run.spec for run in plan(learning_rates=[0.016, 0.004, 0.008])}
    assert all(more[run.name] == run.spec for run in runs)
    assert spec_sha256(more["a-lr0.008-seed1"]) != spec_sha256(more["a-lr0.004-seed1"])
    # without rates: the names and specs of before (no learning_rate in spec.json, so its sha256 is unchanged)
    plain = plan()
    assert [run.name for run in plain] == ["a-seed1", "a-seed2", "b-seed1", "b-seed2"]
    assert "learning_rate" not in to_json(plain[0].spec) and "--config" not in plain[0].spec.pretrain_args[2:]
    # the YAMLs' own rates may differ once --learning_rates replaces them
    differing = yaml.safe_load(configs[1].read_text())
    differing["optimizer"]["init_args"]["lr"] = 0.5
    configs[1].write_text(yaml.safe_dump(differing))
    assert len(plan(learning_rates=[0.004])) == 4
    with pytest.raises(ValueError, match=r"optimizer\.init_args\.lr \(a\.yaml: 0\.001, b\.yaml: 0\.5\)"):
        plan_runs(CompareOptions(**common), "float32")


def test_each_variants_rate_is_chosen_on_the_selection_text_and_flagged_at_the_grids_edge():
    mha, mla = select_rate("mha", SWEEP, "sel"), select_rate("mla", SWEEP, "sel")
    assert (mha.rates, mha.chosen, mha.at_edge) == (RATES, 0.008, False)
    assert [s.mean for s in mha.losses] == pytest.approx([3.05, 2.85, 2.975])
    assert [s.n for s in mha.losses] == [2, 2, 2]
    assert (mla.chosen, mla.at_edge) == (0.016, True)
    # a rate without a finished run is no candidate; a variant without any has no rate
    failed = dataclasses.replace(SWEEP[2], status="failed", evaluation=None)
    assert select_rate("mha", [failed, *SWEEP[3:6]], "sel").losses[0].n == 1
    assert select_rate("gqa", SWEEP, "sel") == select_rate("gqa", [], "sel")
    assert select_rate("gqa", [], "sel").chosen is None


def test_verdicts_compare_each_variant_at_its_chosen_rate_seed_by_seed():
    """mla at 0.016 minus mha at 0.008, paired by seed: differences 0.05 and 0.06, d = 0.055, SE = 0.005, df 1."""
    from litgpt_mka.compare.statistics import two_sided_p

    summary, by_rate, selection = summarize_rates(SWEEP, "mha", RATES, "sel", paired=True, rule="t-test")
    assert [choice.chosen for choice in selection] == [0.008, 0.016]
    assert [row.variant for row in summary] == ["mha", "mla"] and summary[0].val_loss["val"].mean == pytest.approx(2.55)
    d = summary[1].difference
    assert (d.t_test, d.pairs, d.t_df) == ("paired", 2, pytest.approx(1.0))
    assert (d.difference, d.se) == (pytest.approx(0.055), pytest.approx(0.005))
    assert d.p_value == pytest.approx(two_sided_p(11.0, 1.0)) and d.verdict == "cannot tell"
    # each rate's own comparison is kept; unpaired, Welch decides
    assert [rate.learning_rate for rate in by_rate] == RATES
    assert by_rate[1].summary[1].difference.difference == pytest.approx(1.0 - 2.55)
    assert summarize_rates(SWEEP, "mha", RATES, "sel", paired=False, rule="t-test")[0][1].difference.t_test == "Welch"
    # without a selection text no rate is chosen and there is no summary across rates
    assert summarize_rates(SWEEP, "mha", RATES, None, paired=True, rule="t-test")[::2] == ([], [])


def sweep_results(selection_val: str | None) -> Results:
    from litgpt_mka.compare.report import results_of

    settings = Settings(configs=["configs/mha.yaml", "configs/mla.yaml"], seeds=[1, 2], train_path="train.txt",
                        val_paths=["val.txt", "sel.txt"], tokenizer_dir="tokenizer", data_seed=42,
                        measure=MeasureSettings(1, 16, 1, 4, "float32", 8), paired_init=True, verdict_rule="t-test",
                        learning_rates=RATES, selection_val=selection_val)
    return results_of("litgpt-mka compare", "t", SWEEP[0].environment, settings, "mha", SWEEP)


def test_the_report_shows_the_selection_its_bias_and_the_verdicts_at_the_chosen_rates(tmp_path):
    from litgpt_mka.compare.report import EDGE_FLAG, markdown, read_results, write_outputs

    results = sweep_results("sel")
    text = markdown(results, [])
    assert "- Learning rates: 0.004, 0.008, 0.016 (the peak `lr` of the YAMLs' optimizer" in text
    assert "## Learning-rate selection" in text and "the chosen rate's own loss in this table is that lowest one, so it is optimistic" in text
    assert "| variant | lr 0.004 | lr 0.008 | lr 0.016 | chosen rate |" in text
    assert "| mha | 3.0500 ± 0.0707 (2) | **2.8500 ± 0.0707 (2)** | 2.9750 ± 0.0354 (2) | 0.008 |" in text
    assert f"| mla | 3.2500 ± 0.0707 (2) | 3.0500 ± 0.0707 (2) | **2.9250 ± 0.0354 (2)** | 0.016 ({EDGE_FLAG}) |" in text
    assert f"- **mla**: {EDGE_FLAG} (0.016 is the largest rate with a finished run" in text
    assert "## Differences to the reference (each variant at its chosen rate)" in text
    assert "| mla | +0.0550 |" in text and "2, 2 (2 paired)" in text
    # results.json keeps the selection; read back, the same report
    write_outputs(tmp_path, results, with_plots=False)
    assert markdown(read_results(tmp_path / "results.json"), []) == text
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert header.startswith("variant,seed,learning_rate,status,name,") and "val_loss_sel" in header


def test_without_a_selection_text_each_rate_is_reported_on_its_own():
    from litgpt_mka.compare.report import markdown

    text = markdown(sweep_results(None), [])
    assert "No rate was selected (no `--selection_val`)" in text and "## Learning-rate selection" not in text
    assert [line for line in text.splitlines() if line.startswith("## Results")] == [
        "## Results at learning rate 0.004", "## Results at learning rate 0.008", "## Results at learning rate 0.016"]
    assert "## Differences to the reference at learning rate 0.016" in text


def test_per_config_grids_and_selection_seeds_are_checked(tmp_path):
    configs = [tiny_yaml(tmp_path, "a"), tiny_yaml(tmp_path, "b")]
    val, sel = (tmp_path / "val.txt", tmp_path / "sel.txt")
    val.write_text("x"), sel.write_text("y")

    def options(**given):
        return CompareOptions(configs=configs, val_path=[val, sel], seeds=[1, 2, 3], **given)

    validate(options(learning_rates=[0.004, 0.008], config_learning_rates={"a": [0.008]}, selection_val="sel",
                     selection_seeds=[1, 2]))
    validate(options(config_learning_rates={"a": [0.008], "b": [0.004, 0.016]}, selection_val="sel"))
    for given, message in [
        (dict(config_learning_rates={}), r"config_learning_rates=\{\} is empty"),
        (dict(learning_rates=[0.004], config_learning_rates={"c": [0.1]}),
         r"config_learning_rates: 'c' is not one of the configs' file stems \['a', 'b'\]"),
        (dict(learning_rates=[0.004], config_learning_rates={"a": []}), r"config_learning_rates\['a'\]=\[\] is empty"),
        (dict(learning_rates=[0.004], config_learning_rates={"a": [0.0]}),
         r"config_learning_rates\['a'\]: 0.0 is not a positive number"),
        (dict(config_learning_rates={"a": [0.008]}), r"config_learning_rates names no grid for \['b'\]; give"
                                                     r" --learning_rates for them, or name every config"),
        (dict(learning_rates=[0.004], selection_seeds=[1]),
         r"selection_seeds=\[1\] choose each variant's rate on --selection_val, which is not given"),
        (dict(learning_rates=[0.004], selection_val="sel", selection_seeds=[]), r"selection_seeds=\[\] is empty"),
        (dict(learning_rates=[0.004], selection_val="sel", selection_seeds=[1, 1]), r"selection_seeds=\[1, 1\] repeat"),
        (dict(learning_rates=[0.004], selection_val="sel", selection_seeds=[1, 7]),
         r"selection_seeds: \[7\] are not among seeds=\[1, 2, 3\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            validate(options(**given))


@pytest.mark.filterwarnings("ignore:each run's validation curve")
def test_selection_seeds_run_the_grid_and_the_other_seeds_only_the_chosen_rate(tmp_path, shared_data, tokenizer_dir):
    """a: a grid of two rates; b: one given rate. Seed 1 selects; seeds 2 and 3 follow, seed by seed across the
    configs, at each variant's chosen rate, and only for a variant whose rate is chosen."""
    from litgpt_mka.compare.plan import plan_runs, waiting_runs

    configs = [tiny_yaml(tmp_path, "a"), tiny_yaml(tmp_path, "b", n_query_groups=1)]
    options = CompareOptions(
        configs=configs, seeds=[1, 2, 3], selection_seeds=[1], learning_rates=[0.004, 0.016],
        config_learning_rates={"b": [0.008]}, selection_val="train", train_path=shared_data / "train.txt",
        tokenizer_dir=tokenizer_dir, val_path=[shared_data / "val.txt", shared_data / "train.txt"],
        out_dir=tmp_path / "out", context_length=16, decode_new_tokens=4,
    )  # selection_val: the second --val_path's stem
    grid = ["a-lr0.004-seed1", "a-lr0.016-seed1", "b-lr0.008-seed1"]
    assert [run.name for run in plan_runs(options, "float32")[1]] == grid
    assert waiting_runs(options, {}) == [("a", 2), ("b", 2), ("a", 3), ("b", 3)]
    runs = plan_runs(options, "float32", {"a": 0.016, "b": 0.008})[1]
    assert [run.name for run in runs] == grid + ["a-lr0.016-seed2", "b-lr0.008-seed2", "a-lr0.016-seed3",
                                                 "b-lr0.008-seed3"]
    assert [run.index for run in runs] == list(range(1, 8))
    assert [run.spec.learning_rate for run in runs[3:5]] == [0.016, 0.008]
    assert [run.name for run in plan_runs(options, "float32", {"b": 0.008})[1][3:]] == ["b-lr0.008-seed2",
                                                                                         "b-lr0.008-seed3"]
    assert waiting_runs(options, {"b": 0.008}) == [("a", 2), ("a", 3)]
    # without selection seeds every seed runs over the grid, as before
    every = plan_runs(dataclasses.replace(options, selection_seeds=None), "float32")[1]
    assert [run.name for run in every][:3] == ["a-lr0.004-seed1", "a-lr0.004-seed2", "a-lr0.004-seed3"]
    assert len(every) == 9 and waiting_runs(dataclasses.replace(options, selection_seeds=None), {}) == []


def test_a_rate_is_chosen_once_every_selection_run_finished_and_only_from_the_selection_seeds():
    from litgpt_mka.compare.learning_rates import chosen_rates

    grids = {"mha": RATES, "mla": RATES}
    assert chosen_rates(SWEEP, grids, "sel", [1, 2]) == {"mha": 0.008, "mla": 0.016}
    assert chosen_rates(SWEEP, grids, "sel", [1]) == {"mha": 0.008, "mla": 0.016}
    failed = dataclasses.replace(SWEEP[7], status="failed", evaluation=None)  # mla at 0.004, seed 2
    assert chosen_rates([*SWEEP[:7], failed, *SWEEP[8:]], grids, "sel", [1, 2]) == {"mha": 0.008}
    assert chosen_rates(SWEEP[:-1], grids, "sel", [1, 2]) == {"mha": 0.008}  # mla's last run not finished
    # a later seed's run at a rate not chosen (its selection loss the lowest of all) does not move the choice
    stray = rated("mha", 3, 0.004, 1.00, 0.10)
    assert chosen_rates([*SWEEP, stray], grids, "sel", [1, 2])["mha"] == 0.008
    assert select_rate("mha", [*SWEEP, stray], "sel").chosen == 0.004  # it would, were every seed choosing


def test_verdicts_use_every_seed_at_the_chosen_rate_and_a_given_rate_is_not_flagged():
    """mla at 0.016 minus mha at 0.008, three paired seeds: differences 0.05, 0.06, 0.07 (d 0.06, SE 0.00577)."""
    later = [rated("mha", 3, 0.008, 2.70, 9.0), rated("mla", 3, 0.016, 2.77, 9.0)]
    summary, by_rate, selection = summarize_rates([*SWEEP, *later], "mha", RATES, "sel", paired=True, rule="t-test",
                                                  selection_seeds=[1, 2])
    assert [choice.chosen for choice in selection] == [0.008, 0.016]
    assert [s.n for s in selection[0].losses] == [2, 2, 2]  # seed 3 did not choose
    d = summary[1].difference
    assert (d.pairs, d.difference, d.se) == (3, pytest.approx(0.06), pytest.approx(0.01 / math.sqrt(3)))
    assert all(row.val_loss["val"].n == 2 for rate in by_rate for row in rate.summary)  # each rate: selection seeds
    # a one-rate grid is given, not chosen: never flagged at the grid's edge
    only = [run for run in SWEEP if run.variant == "mha" or run.learning_rate == 0.016]
    grids = {"mha": RATES, "mla": [0.016]}
    selection = summarize_rates(only, "mha", RATES, "sel", paired=True, rule="t-test", grids=grids)[2]
    assert [(choice.chosen, choice.at_edge) for choice in selection] == [(0.008, False), (0.016, False)]
    assert select_rate("mla", only, "sel").at_edge  # the same runs with the grid unknown: flagged


def test_the_report_states_the_selection_seeds_and_the_given_rates():
    from litgpt_mka.compare.report import EDGE_FLAG, markdown, results_of

    later = [rated("mha", 3, 0.008, 2.70, 9.0), rated("mla", 3, 0.016, 2.77, 9.0)]
    settings = dataclasses.replace(sweep_results("sel").settings, seeds=[1, 2, 3], selection_seeds=[1, 2],
                                   rate_grids={"mha": RATES, "mla": [0.016]})
    runs = [run for run in [*SWEEP, *later] if run.variant == "mha" or run.learning_rate == 0.016]
    text = markdown(results_of("litgpt-mka compare", "t", SWEEP[0].environment, settings, "mha", runs), [])
    assert ("(the peak `lr` of the YAMLs' optimizer, nothing else of it changed; seeds 1, 2 run at every rate of their"
            " variant's grid and choose its rate; every other seed runs at the chosen rate only)") in text
    assert "  - mha: 0.004, 0.008, 0.016\n  - mla: 0.016 (given, not chosen: a rate chosen elsewhere)" in text
    assert "over its finished selection seeds (1, 2);" in text
    assert "| mla | — | — | **2.9250 ± 0.0354 (2)** | 0.016 (given) |" in text and EDGE_FLAG not in text
    assert "3 paired" in text


def test_a_choice_over_rates_with_unequal_seeds_is_marked_as_one_that_may_move():
    """Without --selection_seeds the report chooses on whatever finished: mha's 0.008 has one seed of two here."""
    from litgpt_mka.compare.report import UNEQUAL_SEEDS, markdown, results_of

    unfinished = dataclasses.replace(SWEEP[3], status="pending", evaluation=None)  # mha at 0.008, seed 2
    runs = [*SWEEP[:3], unfinished, *SWEEP[4:]]
    text = markdown(results_of("litgpt-mka compare", "t", SWEEP[0].environment, sweep_results("sel").settings, "mha",
                               runs), [])
    assert f"| mha | 3.0500 ± 0.0707 (2) | **2.8000 (1)** | 2.9750 ± 0.0354 (2) | 0.008 ({UNEQUAL_SEEDS}) |" in text
    assert UNEQUAL_SEEDS not in markdown(sweep_results("sel"), [])  # every rate over both seeds


def test_the_report_checks_the_verdicts_on_the_seeds_that_did_not_choose_the_rates():
    """With --selection_seeds, a second table decides on the later seeds' runs alone (scipy's paired t-test on them,
    not on the choosing seeds'); it is absent until a later seed finished, and without selection seeds."""
    from scipy import stats

    from litgpt_mka.compare.report import markdown, results_of

    settings = dataclasses.replace(sweep_results("sel").settings, seeds=[1, 2, 3, 4], selection_seeds=[1, 2])
    mha, mla = [2.70, 2.80], [2.77, 2.90]  # at mha's chosen 0.008 and mla's chosen 0.016
    later = [rated("mha", seed, 0.008, loss, 9.0) for seed, loss in zip((3, 4), mha)]
    later += [rated("mla", seed, 0.016, loss, 9.0) for seed, loss in zip((3, 4), mla)]
    text = markdown(results_of("litgpt-mka compare", "t", SWEEP[0].environment, settings, "mha", [*SWEEP, *later]), [])
    check = text.split("## Check: the seeds that did not choose the rates")[1].split("\n## ")[0]
    assert "Seeds 1, 2 chose each rate that was not given; seeds 3, 4 trained at the chosen rates only" in check
    differences = [b - a for a, b in zip(mha, mla)]
    d, se = sum(differences) / 2, stats.tstd(differences) / 2 ** 0.5
    half_width, p = stats.t.ppf(0.975, 1) * se, stats.ttest_rel(mla, mha).pvalue
    row = (f"| mla | {d:+.4f} | [{d - half_width:+.4f}, {d + half_width:+.4f}] | paired (1.0) | {p:.3f} | {p:.3f} |"
           f" 2, 2 (2 paired) | cannot tell (±{half_width:.4f}) |")
    assert row in check.splitlines()
    assert "| mla | +0.0700 |" in text  # the verdicts: every seed at the chosen rates (+0.055 on 1, 2; +0.085 on 3, 4)
    assert "## Check" not in markdown(results_of("litgpt-mka compare", "t", SWEEP[0].environment, settings, "mha",
                                                  SWEEP), [])
    assert "## Check" not in markdown(sweep_results("sel"), [])  # every seed chose: nothing left to check on
    assert "`--selection_seeds` would leave the other seeds out of it" in markdown(sweep_results("sel"), [])


def test_a_rate_is_chosen_only_from_a_complete_grid_and_never_for_a_nan_or_a_missing_selection_loss():
    """The report decides as the runner does: with selection seeds, a variant whose grid x selection seeds has not all
    finished has no chosen rate (and no verdict row mixing rates); a NaN mean never wins; no selection loss, no rate."""
    from litgpt_mka.compare.learning_rates import chosen_rates
    from litgpt_mka.compare.report import markdown, results_of

    unfinished = dataclasses.replace(SWEEP[11], status="pending", evaluation=None)  # mla at 0.016, seed 2
    runs = [*SWEEP[:11], unfinished]
    summary, _, selection = summarize_rates(runs, "mha", RATES, "sel", paired=True, rule="t-test",
                                            selection_seeds=[1, 2])
    assert [(choice.chosen, choice.at_edge) for choice in selection] == [(0.008, False), (None, False)]
    assert summary[1].runs_ok == 0  # none of mla's finished runs (at three rates) stands for it
    settings = dataclasses.replace(sweep_results("sel").settings, selection_seeds=[1, 2])
    text = markdown(results_of("litgpt-mka compare", "t", SWEEP[0].environment, settings, "mha", runs), [])
    assert "| — (not yet: a selection run has not finished) |" in text
    nan = [rated("mha", 1, 0.004, 1.0, math.nan), rated("mha", 1, 0.008, 1.0, 2.9)]
    assert select_rate("mha", nan, "sel").chosen == 0.008
    other_text = [dataclasses.replace(run, evaluation=dataclasses.replace(
        run.evaluation, validation=run.evaluation.validation[:1])) for run in SWEEP[:6]]  # no "sel" loss
    assert chosen_rates(other_text, {"mha": RATES}, "sel", [1, 2]) == {}


def test_the_selection_text_is_named_as_the_runs_name_it_the_file_a_link_points_to(tmp_path):
    config = tiny_yaml(tmp_path, "a")
    val, target = tmp_path / "val.txt", tmp_path / "heldout-b.txt"
    val.write_text("x"), target.write_text("y")
    link = tmp_path / "sel.txt"
    link.symlink_to(target)
    options = CompareOptions(configs=[config], val_path=[val, link], learning_rates=[0.004])
    validate(dataclasses.replace(options, selection_val="heldout-b"))
    with pytest.raises(ValueError, match=r"selection_val='sel' is not one of \['heldout-b'\]"):
        validate(dataclasses.replace(options, selection_val="sel"))
