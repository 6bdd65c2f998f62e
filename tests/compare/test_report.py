"""litgpt_mka.compare.report: the committed study reports render again byte for byte from their results.json, and
their loss numbers (means, standard deviations, differences, SEs, verdicts; the t-tests when decided again) are the
ones numpy and scipy compute from the runs saved in it; other schemas are refused; the table's busy cells; the setup
names runs from different machines."""

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

from litgpt_mka.atomic import write_json
from litgpt_mka.compare.layout import REPORT_MD, RESULTS_CSV, RESULTS_JSON
from litgpt_mka.compare.records import MeasureSettings, Results, Settings, to_json
from litgpt_mka.compare.report import PLOT_TITLES, markdown, read_results, setup_lines, table, write_csv
from litgpt_mka.compare.summary import summarize
from tests.compare.helpers import synthetic_run
from tests.compare.recompute import disagreements, final_losses, holm, markdown_table, mean_std, printed_numbers, welch

DOCS = Path(__file__).resolve().parents[2] / "docs"
STUDY = DOCS / "study-pythia-14m"


COMMITTED_PARTS = ["study-pythia-14m/main", "study-pythia-14m/sweeps", "study-pythia-14m-v2/main",
                   "study-pythia-14m-v2/ablation", "study-pythia-14m-v2/lr-0.002", "study-pythia-14m-v2/lr-0.004",
                   "study-pythia-14m-v2/lr-0.008", "study-pythia-14m-v2/lr-0.016", "study-pythia-14m-v2/lr-0.0005"]
# also rendered again byte for byte: study v3's paired parts (the Welch/2-SE checks below are of the parts above)
RENDERED_PARTS = [*COMMITTED_PARTS, "study-pythia-14m-v3/pilot", "study-pythia-14m-v3/tuned"]


@pytest.mark.parametrize("part", RENDERED_PARTS)
def test_committed_study_reports_render_again_byte_for_byte(part, tmp_path):
    """`python -m litgpt_mka.compare.report docs/<study>/<part>/results.json` rewrites the same files (v2's main
    and ablation reports with their quantized-cache tables; each learning rate's as run.sh rendered it)."""
    committed = DOCS / part
    results = read_results(committed / RESULTS_JSON)
    write_json(tmp_path / RESULTS_JSON, to_json(results))
    write_csv(tmp_path / RESULTS_CSV, results)
    figures = [name for name in PLOT_TITLES if (committed / name).is_file()]  # the plots are not redrawn here
    (tmp_path / REPORT_MD).write_text(markdown(results, figures), encoding="utf-8")
    for name in (RESULTS_JSON, RESULTS_CSV, REPORT_MD):
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name


def test_results_of_another_schema_are_refused_naming_it(tmp_path):
    saved = json.loads((STUDY / "main" / RESULTS_JSON).read_text())
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({**saved, "schema": "litgpt-mka.compare/v1"}))
    with pytest.raises(ValueError, match=r"has schema 'litgpt-mka.compare/v1'; this version of litgpt-mka reads"
                                         r" 'litgpt-mka.compare/v2' only"):
        read_results(v1)
    run_v1 = tmp_path / "run_v1.json"
    run_v1.write_text(json.dumps({**saved, "runs": [{**saved["runs"][0], "schema": "litgpt-mka.compare.run/v1"}]}))
    with pytest.raises(ValueError, match=r"run 'pythia-14m-mha-seed1' has schema 'litgpt-mka.compare.run/v1'"):
        read_results(run_v1)
    with pytest.raises(ValueError, match=r"reference='nope' is not one of the variants \['pythia-14m-mha'"):
        read_results(STUDY / "main" / RESULTS_JSON, reference="nope")


def synthetic_results(runs) -> Results:
    settings = Settings(configs=["configs/mha.yaml"], seeds=[1, 2], train_path="train.txt", val_paths=["val.txt"],
                        tokenizer_dir="tokenizer", data_seed=42, measure=MeasureSettings(1, 16, 1, 4, "float32", 8))
    return Results(command="litgpt-mka compare", written="t", environment=runs[0].environment, settings=settings,
                   reference="mha", summary=summarize(runs, "mha"), runs=runs)


def test_timings_measured_on_a_busy_machine_read_busy_and_the_others_their_numbers():
    runs = [synthetic_run("mha", 1, 2.0), synthetic_run("mha", 2, 2.2), synthetic_run("mqa", 1, 2.1, train_load=2.75)]
    mha_row, mqa_row = table(summarize(runs, "mha"), ["val"])[2:]
    # columns: ... train tok/s, train wall time, peak memory, KV / token, KV @ context, decode tok/s
    assert mqa_row.split(" | ")[-6:] == ["busy", "busy", "1.00 GiB", "1,024 B", "16.00 KiB", "51.0 |"]
    assert mha_row.split(" | ")[-6:-4] == ["502 ± 1", "102 s ± 1 s"]  # means of 501, 502 and 101, 102


def test_runs_from_different_machines_are_named_in_the_setup():
    """A comparison resumed on another machine: the report says which runs ran where (timings compare machines)."""
    runs = [synthetic_run("mha", 1, 2.0), synthetic_run("mha", 2, 2.2), synthetic_run("mqa", 1, 2.1)]
    assert not any("different machines" in line for line in setup_lines(synthetic_results(runs)))
    moved = [replace(run, environment=replace(run.environment, cpu="Another CPU")) if run.variant == "mqa" else run
             for run in runs]
    lines = setup_lines(synthetic_results(moved))
    line = next(line for line in lines if "different machines" in line)
    assert line.endswith("cpu (2 CPUs, 2 torch threads), no GPU: mha-seed1, mha-seed2;"
                         " Another CPU (2 CPUs, 2 torch threads), no GPU: mqa-seed1")
    machines = lines.index("- Machines:")  # one sub-item each: a machine's summary holds commas and semicolons
    assert lines[machines + 1].startswith("  - cpu (2 CPUs, 2 torch threads), no GPU; ")
    assert lines[machines + 2].startswith("  - Another CPU (2 CPUs, 2 torch threads), no GPU; ")
    assert lines[machines + 3].startswith("- Data: ")


def test_a_paired_comparison_states_its_design_and_its_rule():
    runs = [synthetic_run(variant, seed, loss) for variant, losses in (("mha", [3.60, 3.70, 3.80]), ("mla", [3.63, 3.72, 3.84]))
            for seed, loss in enumerate(losses, start=1)]
    results = synthetic_results(runs)
    results = replace(results, settings=replace(results.settings, paired_init=True, verdict_rule="t-test"),
                      summary=summarize(runs, "mha", paired=True))
    text = markdown(results, [])
    assert "**Paired design**" in text and "Holm's method" in text and "cannot tell (± the smallest detectable" in text
    assert "| mla | +0.0300 | [+0.0052, +0.0548] | paired (2.0) | 0.035 | 0.035 | 3, 3 (3 paired) | worse |" in text
    unpaired = replace(results, settings=replace(results.settings, paired_init=False), summary=summarize(runs, "mha"))
    text = markdown(unpaired, [])
    assert "**Unpaired design**" in text and "| mla | +0.0300 | [-0.2031, +0.2631] | Welch (4.0) |" in text
    assert "| 3, 3 | cannot tell (±0.2331) |" in text


def test_old_results_keep_the_rule_they_were_written_with_and_can_be_decided_again_by_t_tests():
    """Study v1 wrote "MKA worse (2.8 SE)" by the screening rule; Welch's t-test says p = 0.069, cannot tell."""
    written = read_results(STUDY / "main" / RESULTS_JSON)
    mka = next(row.difference for row in written.summary if row.variant == "pythia-14m-mka")
    assert written.settings.verdict_rule is None and mka.verdict == "worse" and mka.p_value is None
    again = read_results(STUDY / "main" / RESULTS_JSON, rule="t-test")
    mka = next(row.difference for row in again.summary if row.variant == "pythia-14m-mka")
    assert (mka.verdict, mka.t_test, mka.holm_comparisons) == ("cannot tell", "Welch", 5)
    assert mka.p_value == pytest.approx(0.069, abs=5e-4)
    assert to_json(again)["settings"]["verdict_rule"] == "t-test" and "verdict_rule" not in to_json(written)["settings"]
    with pytest.raises(ValueError, match=r"rule='3 SE' is not one of \('t-test', '2-SE screening'\)"):
        read_results(STUDY / "main" / RESULTS_JSON, rule="3 SE")


def test_the_report_command_decides_saved_results_again_by_the_rule_asked_for(tmp_path):
    from litgpt_mka.compare.report import main

    (tmp_path / RESULTS_JSON).write_bytes((STUDY / "main" / RESULTS_JSON).read_bytes())
    main([str(tmp_path / RESULTS_JSON), "--verdict_rule", "t-test", "--no_plots"])
    report = (tmp_path / REPORT_MD).read_text()
    assert "**Unpaired design**" in report and "| pythia-14m-mka | +0.0070 | [-0.0010, +0.0150] | Welch (2.9) |" in report
    assert json.loads((tmp_path / RESULTS_JSON).read_text())["settings"]["verdict_rule"] == "t-test"


def test_the_report_command_writes_into_out_dir_and_leaves_the_saved_files_as_they_were(tmp_path):
    from litgpt_mka.compare.report import main

    saved = tmp_path / "saved"
    saved.mkdir()
    for name in (RESULTS_JSON, REPORT_MD):
        (saved / name).write_bytes((STUDY / "main" / name).read_bytes())
    main([str(saved / RESULTS_JSON), "--verdict_rule", "t-test", "--no_plots", "--out_dir", str(tmp_path / "again")])
    assert "| pythia-14m-mka | +0.0070 | [-0.0010, +0.0150] | Welch (2.9) |" in (tmp_path / "again" / REPORT_MD).read_text()
    for name in (RESULTS_JSON, REPORT_MD):
        assert (saved / name).read_bytes() == (STUDY / "main" / name).read_bytes(), name


def committed(part: str) -> tuple[dict, str]:
    """The saved results.json (as JSON, not read through litgpt_mka) and report.md of a committed study part."""
    return json.loads((DOCS / part / RESULTS_JSON).read_text()), (DOCS / part / REPORT_MD).read_text()


@pytest.mark.parametrize("part", COMMITTED_PARTS)
def test_committed_reports_print_the_mean_and_std_of_each_variants_losses_over_its_seeds(part):
    """Results table: runs ok, val loss per text (mean ± std over seeds), val ppl (exp of each run's loss, then
    mean ± std), against numpy on the runs of results.json."""
    saved, report = committed(part)
    rows = markdown_table(report, "| variant | runs ok |")
    texts = [entry["name"] for entry in saved["runs"][0]["evaluation"]["validation"]]
    losses = {text: final_losses(saved, text) for text in texts}
    assert sorted(rows) == sorted(losses[texts[0]]) and len(rows) > 1
    wrong = []
    for variant, row in rows.items():
        runs = [run for run in saved["runs"] if run["variant"] == variant]
        if row["runs ok"] != f"{len(losses[texts[0]][variant])}/{len(runs)}":
            wrong.append(f"{variant} runs ok: printed {row['runs ok']!r}")
        for text in texts:
            wrong += disagreements(f"{variant} val loss ({text})", row[f"val loss ({text})"], mean_std(losses[text][variant]))
        perplexities = [math.exp(loss) for loss in losses[texts[0]][variant]]
        wrong += disagreements(f"{variant} val ppl ({texts[0]})", row[f"val ppl ({texts[0]})"], mean_std(perplexities))
    assert not wrong, "\n" + "\n".join(wrong)


@pytest.mark.parametrize("part", COMMITTED_PARTS)
def test_committed_reports_differences_are_welch_standard_errors_decided_by_the_2_se_rule_they_state(part):
    """Every committed study was decided by the screening rule its report states (Welch SE, unpaired; better or
    worse when |d| >= 2 SE): the differences, SEs, seeds, verdicts and "by x SE" computed again."""
    saved, report = committed(part)
    assert "(Welch, unpaired:" in report and "Better or worse when |d| >= 2 SE" in report
    assert not saved["settings"].get("paired_init") and not saved["settings"].get("verdict_rule")
    primary = saved["runs"][0]["evaluation"]["validation"][0]["name"]
    losses, reference = final_losses(saved, primary), saved["reference"]
    rows = markdown_table(report, "| variant | difference | SE |")
    assert sorted(rows) == sorted(set(losses) - {reference})
    wrong = []
    for variant, row in rows.items():
        test = welch(losses[variant], losses[reference])
        wrong += disagreements(f"{variant} difference", row["difference"], [test.difference])
        wrong += disagreements(f"{variant} SE", row["SE"], [test.se])
        wrong += disagreements(f"{variant} seeds", row["seeds (variant, reference)"], [len(losses[variant]), len(losses[reference])])
        verdict = "tied within noise" if abs(test.difference) < 2 * test.se else ("worse" if test.difference > 0 else "better")
        if row["verdict"] != verdict:
            wrong.append(f"{variant} verdict: printed {row['verdict']!r}, computed {verdict!r}")
        sentence = next(line for line in report.splitlines() if line.startswith(f"- {variant}: "))
        if verdict != "tied within noise":
            (by,) = re.findall(r"by (\d+\.\d) SE\)", sentence)
            wrong += disagreements(f"{variant} sentence", by, [abs(test.difference) / test.se])
    assert not wrong, "\n" + "\n".join(wrong)


@pytest.mark.parametrize("part", COMMITTED_PARTS)
def test_committed_results_decided_again_by_t_tests_print_scipys_welch_intervals_p_and_holm(part):
    """`report --verdict_rule t-test` on a committed study (unpaired: Welch): the difference, its 95% interval, df,
    p, Holm's p over the variants and the verdict, against scipy's Welch t-test of the saved losses."""
    saved = json.loads((DOCS / part / RESULTS_JSON).read_text())
    text = markdown(read_results(DOCS / part / RESULTS_JSON, rule="t-test"), [])
    assert "**Unpaired design**" in text and "Welch t-test" in text
    primary = saved["runs"][0]["evaluation"]["validation"][0]["name"]
    losses, reference = final_losses(saved, primary), saved["reference"]
    tests = {variant: welch(values, losses[reference]) for variant, values in losses.items() if variant != reference}
    adjusted = holm({variant: test.p for variant, test in tests.items()})
    rows = markdown_table(text, "| variant | difference | 95% interval |")
    assert sorted(rows) == sorted(tests)
    wrong = []
    for variant, row in rows.items():
        test = tests[variant]
        wrong += disagreements(f"{variant} difference", row["difference"], [test.difference])
        wrong += disagreements(f"{variant} interval", row["95% interval"], [test.low, test.high])
        wrong += disagreements(f"{variant} df", row["test (df)"], [test.df])
        wrong += p_disagreements(f"{variant} p", row["p"], test.p) + p_disagreements(f"{variant} Holm", row["p (Holm)"], adjusted[variant])
        decided = ("worse" if test.difference > 0 else "better") if adjusted[variant] < 0.05 else "cannot tell"
        if not row["verdict"].startswith(decided):
            wrong.append(f"{variant} verdict: printed {row['verdict']!r}, computed {decided!r}")
        if decided == "cannot tell":
            wrong += disagreements(f"{variant} smallest detectable", row["verdict"], [test.half_width])
    assert row["test (df)"].startswith("Welch (")
    assert not wrong, "\n" + "\n".join(wrong)


def p_disagreements(where: str, cell: str, p: float) -> list[str]:
    """A p-value cell: three decimals, or "< 0.001"."""
    if cell.startswith("<"):
        return [] if p < float(printed_numbers(cell)[0]) else [f"{where}: printed {cell!r}, computed {p:.6f}"]
    return disagreements(where, cell, [p])
