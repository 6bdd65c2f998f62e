"""The README is a front page linking a docs/ guide: every relative link of the README and the guide resolves, the
front page stays short, no committed document names a path of the machine it was made on, and the numbers the
README's study section quotes are those numpy and scipy compute from the committed results.json."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.compare.recompute import (
    disagreements, final_losses, holm, losses_by_seed, markdown_table, mean_std, paired, variance_removed_by_pairing,
    welch,
)

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
MAX_FRONT_PAGE_LINES = 200
STUDY_V1, STUDY_V2 = ROOT / "docs" / "study-pythia-14m", ROOT / "docs" / "study-pythia-14m-v2"
STUDY_V3 = ROOT / "docs" / "study-pythia-14m-v3"
REFERENCE = "pythia-14m-mha"
BEST_RATE = "lr-0.008"


def relative_links(path: Path) -> list[str]:
    """The targets of the markdown links in `path` that point into the repository (no URL, no bare anchor)."""
    targets = [target.split("#")[0] for target in LINK.findall(path.read_text())]
    return [target for target in targets if target and not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    missing = [target for target in relative_links(path) if not (path.parent / target).exists()]
    assert missing == []


def test_the_readme_is_a_front_page_that_links_every_guide_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= MAX_FRONT_PAGE_LINES
    guide = {p.name for p in (ROOT / "docs").glob("*.md")}
    linked = {Path(target).name for target in relative_links(ROOT / "README.md") if target.startswith("docs/")}
    assert guide <= linked, sorted(guide - linked)
    assert guide - {"README.md"} <= {Path(t).name for t in relative_links(ROOT / "docs" / "README.md")}


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_document_names_a_path_of_the_machine(path):
    assert not re.search(r"(?<![\w.])/(work|home|root|tmp|Users)/", path.read_text())


def study(folder: Path) -> tuple[dict[str, list[float]], dict]:
    """Each variant's final losses on `val` and the saved results.json of a committed study part."""
    saved = json.loads((folder / "results.json").read_text())
    return final_losses(saved, "val"), saved


def welch_against_mha(losses: dict[str, list[float]]) -> tuple[dict, dict[str, float]]:
    """Each variant's Welch test against MHA, and Holm's p over them."""
    tests = {variant: welch(values, losses[REFERENCE]) for variant, values in losses.items() if variant != REFERENCE}
    return tests, holm({variant: test.p for variant, test in tests.items()})


def verdict(test, p_holm: float) -> str:
    return ("worse" if test.difference > 0 else "better") if p_holm < 0.05 else "cannot tell"


def paired_against_mha(losses: dict[str, dict[int, float]]) -> tuple[dict, dict[str, float]]:
    """Each variant's paired t-test against MHA, and Holm's p over them."""
    tests = {variant: paired(values, losses[REFERENCE]) for variant, values in losses.items() if variant != REFERENCE}
    return tests, holm({variant: test.p for variant, test in tests.items()})


def study_v3_tuned() -> tuple[dict, dict[str, dict[int, float]]]:
    """Study v3's saved `run.sh tuned` results.json, and each variant's final val-verdict loss by seed at its rate."""
    saved = json.loads((STUDY_V3 / "tuned" / "results.json").read_text())
    return saved, losses_by_seed(saved, "val-verdict")


def printed_rate(rate: float) -> str:
    return f"{rate:.1e}".replace(".0e", "e").replace("e-0", "e-")  # 0.008 -> 8e-3, 0.016 -> 1.6e-2


@pytest.mark.parametrize("page", [ROOT / "README.md", STUDY_V3 / "README.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_study_v3_table_quotes_the_committed_runs(page):
    """Study v3's table, on the front page and in the study's README, row by row: KV bytes/token (measured), the
    chosen rate, val-verdict loss at it (mean ± std, seeds), the paired difference to MHA with its 95% interval, p
    and Holm's p, the verdict (Holm's p < 0.05; else "cannot tell" with the 95% half-width), and the same test on
    the seeds that did not choose the rates (3-6) alone."""
    saved, losses = study_v3_tuned()
    choosing = set(saved["settings"]["selection_seeds"])  # seeds 1 and 2 chose the rates; the later ones never did
    later = {variant: {s: x for s, x in values.items() if s not in choosing} for variant, values in losses.items()}
    chosen = {entry["variant"]: entry["chosen"] for entry in saved["rate_selection"]}
    given = {entry["variant"] for entry in saved["rate_selection"] if len(entry["rates"]) == 1}
    tests, adjusted = paired_against_mha(losses)
    later_tests, later_adjusted = paired_against_mha(later)
    rows = markdown_table(page.read_text(), "| variant | KV cache / token")
    wrong = []
    for label, row in rows.items():
        variant = f"pythia-14m-{label.split()[0].lower()}"
        kv_bytes = {run["measure"]["kv_cache"]["bytes_per_token"] for run in saved["runs"]
                    if run["variant"] == variant and run["status"] == "ok"}
        wrong += disagreements(f"{label} KV", row["KV cache / token (fp32)"], [*kv_bytes])
        rate = printed_rate(chosen[variant]) + (" (given)" if variant in given else "")
        wrong += [] if row["rate"] == rate else [f"{label} rate: printed {row['rate']!r}, chosen {rate!r}"]
        seeds = list(losses[variant].values())
        wrong += disagreements(f"{label} loss", row["val-verdict loss (mean ± std, seeds)"],
                               [*mean_std(seeds), len(seeds)])
        later_cell = row[f"seeds {min(later[variant])}-{max(later[variant])} alone: 95% interval (Holm p)"]
        if variant == REFERENCE:
            cells = (row["vs MHA: paired 95% interval (p, Holm)"], row["verdict"], later_cell)
            wrong += [] if cells == ("reference", "", "") else [f"{label}: not the reference, {cells}"]
            continue
        test = tests[variant]
        wrong += disagreements(f"{label} vs MHA", row["vs MHA: paired 95% interval (p, Holm)"],
                               [test.difference, test.low, test.high, test.p, adjusted[variant]])
        decided = verdict(test, adjusted[variant])
        if not re.fullmatch(rf"{decided}( \(±{N}\))?", row["verdict"]):
            wrong.append(f"{label} verdict: printed {row['verdict']!r}, computed {decided!r}")
        unresolved = [test.half_width] if decided == "cannot tell" else []
        wrong += disagreements(f"{label} unresolved", row["verdict"], unresolved)
        test, cell = later_tests[variant], later_cell
        interval, _, decided = cell.partition(": ")
        wrong += disagreements(f"{label} seeds 3-6", interval,
                               [test.difference, test.low, test.high, later_adjusted[variant]])
        if decided != (computed := verdict(test, later_adjusted[variant])):
            wrong.append(f"{label} seeds 3-6 verdict: printed {decided!r}, computed {computed!r}")
    assert len(rows) == len(losses) == 6
    assert {len(seeds) for seeds in losses.values()} == {6}
    assert not wrong, "\n" + "\n".join(wrong)


def test_the_readmes_study_v3_summary_quotes_the_committed_runs():
    """The README's "What it says" on study v3: MKA's paired difference to MHA (below it on every seed), its cache
    against MHA's, and the range of the 95% half-widths of the variants that cannot be told from MHA."""
    saved, losses = study_v3_tuned()
    tests, adjusted = paired_against_mha(losses)
    mka, mha = losses["pythia-14m-mka"], losses[REFERENCE]
    kv_bytes = {run["variant"]: run["measure"]["kv_cache"]["bytes_per_token"] for run in saved["runs"]
                if run["status"] == "ok"}
    verdicts = {variant: verdict(test, adjusted[variant]) for variant, test in tests.items()}
    unresolved = [tests[variant].half_width for variant, said in verdicts.items() if said == "cannot tell"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    quotes = {
        "MKA": rf"MKA is the one gap six seeds resolve: at its tuned rate it ends {N} nats below MHA, lower on every"
               r" seed",
        "MKA's cache": rf"its cache is {N}% larger than MHA's",
        "unresolved": rf"GQA, MQA, MLA and FMKA cannot be told from MHA at ±{N} to ±{N} nats",
    }
    computed = {"MKA": [-tests["pythia-14m-mka"].difference],
                "MKA's cache": [100 * (kv_bytes["pythia-14m-mka"] / kv_bytes[REFERENCE] - 1)],
                "unresolved": [min(unresolved), max(unresolved)]}
    assert quoted_numbers(readme, quotes, computed) == []
    assert verdicts["pythia-14m-mka"] == "better" and list(verdicts.values()).count("cannot tell") == 4
    assert all(mka[seed] < mha[seed] for seed in mha) and len(mha) == 6


def test_the_readmes_best_rate_is_where_each_swept_variant_ends_lowest():
    """"MHA, MLA and FMKA all end lowest at 8e-3": of the learning-rate runs and the main study (1e-3)."""
    rates = {folder.name: study(folder)[0] for folder in STUDY_V2.glob("lr-*")}
    rates["main (1e-3)"] = study(STUDY_V2 / "main")[0]
    for variant in ("pythia-14m-mha", "pythia-14m-mla", "pythia-14m-fmka"):
        means = {rate: mean_std(losses[variant])[0] for rate, losses in rates.items()}
        assert min(means, key=means.get) == BEST_RATE, (variant, means)


def test_the_readmes_study_v2_summary_quotes_the_committed_runs():
    """The README's lines on study v2: MLA's and FMKA's Welch differences to MHA at 1e-3 and their Holm p."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    number = r"([-+]?\d+\.\d+)"
    found = re.search(rf"MLA worse than MHA by {number} nats and FMKA by {number} at the presets' rate 1e-3 "
                      rf"\(Welch, Holm p {number} and {number}\)", readme)
    assert found, "the README's study v2 summary is not found"
    tests, adjusted = welch_against_mha(study(STUDY_V2 / "main")[0])
    mla, fmka = "pythia-14m-mla", "pythia-14m-fmka"
    computed = [tests[mla].difference, tests[fmka].difference, adjusted[mla], adjusted[fmka]]
    assert disagreements("study v2 at 1e-3", " ".join(found.groups()), computed) == []


def blockquote_text(path: Path) -> str:
    """The ``> `` quoted lines of a markdown page, as one line of single spaces."""
    quoted = [line[1:] for line in path.read_text().splitlines() if line.startswith(">")]
    return " ".join(" ".join(quoted).split())


def quoted_numbers(text: str, quotes: dict[str, str], computed: dict[str, list[float]]) -> list[str]:
    """What disagrees between each quote's numbers (regex groups; a missing quote says so) and its computed ones."""
    wrong = []
    for name, pattern in quotes.items():
        found = re.search(pattern, text)
        wrong += [f"{name}: not found"] if found is None else disagreements(name, " ".join(found.groups()), computed[name])
    return wrong


N = r"([-+]?\d+(?:\.\d+)?)"  # a quoted number


def test_study_v2s_reading_by_t_tests_quotes_the_committed_runs():
    """docs/study-pythia-14m-v2/README.md, "Read again by t-tests": Welch intervals, p and Holm's p (one family per
    column, as answers-t-test.md) computed again with scipy from the committed results.json."""
    main, _ = study(STUDY_V2 / "main")
    tests, adjusted = welch_against_mha(main)
    rates = {folder.name: welch_against_mha(study(folder)[0])[0] for folder in STUDY_V2.glob("lr-*")}
    below = [rates[rate][variant] for rate in ("lr-0.0005", "lr-0.002", "lr-0.004")
             for variant in ("pythia-14m-mla", "pythia-14m-fmka")]
    tuned = [rates[rate][variant] for rate in ("lr-0.004", BEST_RATE) for variant in ("pythia-14m-mla", "pythia-14m-fmka")]
    ablation, _ = study(STUDY_V2 / "ablation")
    fullq = welch(ablation["pythia-14m-mla-fullq"], ablation[REFERENCE])
    query = welch(ablation["pythia-14m-mla"], ablation["pythia-14m-mla-fullq"])
    mla, fmka, steep, best = tests["pythia-14m-mla"], tests["pythia-14m-fmka"], rates["lr-0.016"], rates[BEST_RATE]
    quotes = {
        "1e-3 worse": rf"At 1e-3 \*\*MLA and FMKA are worse\*\*, as written: {N} \[{N}, {N}\] and {N} \[{N}, {N}\]"
                      rf" \(Holm p {N} and {N}\)",
        "1e-3 upper ends": rf"their intervals reach {N}, {N} and {N},",
        "below 8e-3 p": rf"every cell cannot tell \(unadjusted p {N} to {N}\)",
        "below 8e-3 estimates": rf"six point estimates are all positive \({N} to {N}\)",
        "1.6e-2": rf"At 1\.6e-2 MLA is better\*\*\" \({N}\): \[{N}, {N}\], unadjusted p {N}: cannot tell",
        "8e-3": rf"at 8e-3, MLA {N} \[{N}, {N}\] and FMKA {N} \[{N}, {N}\]",
        "4e-3 and 8e-3 estimates": rf"point estimates at 4e-3 and 8e-3 \({N} to {N}\)",
        "ablation": rf"still worse than MHA, {N} \[{N}, {N}\] \(p {N}\), but the query bottleneck's own cost, {N}"
                    rf" \[{N}, {N}\] \(p {N}\), lies anywhere from {N}% to {N}% of MLA's {N}:",
    }
    computed = {
        "1e-3 worse": [mla.difference, mla.low, mla.high, fmka.difference, fmka.low, fmka.high,
                       adjusted["pythia-14m-mla"], adjusted["pythia-14m-fmka"]],
        "1e-3 upper ends": [tests[f"pythia-14m-{v}"].high for v in ("gqa", "mqa", "mka")],
        "below 8e-3 p": [min(t.p for t in below), max(t.p for t in below)],
        "below 8e-3 estimates": [min(t.difference for t in below), max(t.difference for t in below)],
        "1.6e-2": [steep["pythia-14m-mla"].difference, steep["pythia-14m-mla"].low, steep["pythia-14m-mla"].high,
                   steep["pythia-14m-mla"].p],
        "8e-3": [x for v in ("pythia-14m-mla", "pythia-14m-fmka") for x in (best[v].difference, best[v].low, best[v].high)],
        "4e-3 and 8e-3 estimates": [min(t.difference for t in tuned), max(t.difference for t in tuned)],
        "ablation": [fullq.difference, fullq.low, fullq.high, fullq.p, query.difference, query.low, query.high, query.p,
                     100 * query.low / mla.difference, 100 * query.high / mla.difference, mla.difference],
    }
    below_holm = [p for rate in ("lr-0.0005", "lr-0.002", "lr-0.004") for p in holm({v: t.p for v, t in rates[rate].items()}).values()]
    assert min(below_holm) >= 0.05 and steep["pythia-14m-mla"].p >= 0.05  # "cannot tell", as quoted
    wrong = quoted_numbers(blockquote_text(STUDY_V2 / "README.md"), quotes, computed)
    assert not wrong, "\n" + "\n".join(wrong)


def test_study_v1s_reading_by_t_tests_quotes_the_committed_runs():
    """docs/study-pythia-14m/README.md, "Read again by t-tests": the main study's and the sweeps' Welch intervals,
    p and Holm's p over each table's configs, computed again with scipy."""
    main, _ = study(STUDY_V1 / "main")
    tests, adjusted = welch_against_mha(main)
    sweeps, _ = study(STUDY_V1 / "sweeps")
    sweep_tests, sweep_adjusted = welch_against_mha(sweeps)
    mla, fmka, mka, gqa, mqa = (tests[f"pythia-14m-{v}"] for v in ("mla", "fmka", "mka", "gqa", "mqa"))
    latents = ("pythia-14m-mla-kv8", "pythia-14m-mla-kv16", "pythia-14m-mla")
    quotes = {
        "worse": rf"\*\*MLA and FMKA are worse\*\*, as written: {N} \[{N}, {N}\] and {N} \[{N}, {N}\]"
                 rf" \(Holm p {N} and {N}\)",
        "MKA": rf"MKA's \"worse \(2\.8 SE\)\"\*\*: {N} \[{N}, {N}\], p {N} \(Holm {N}\): cannot tell",
        "GQA and MQA": rf"GQA {N} \[{N}, {N}\] and MQA {N} \[{N}, {N}\] cannot be told from MHA: a cost up to {N} nats"
                       rf" \(GQA\) or {N} \(MQA",
        "sweeps p": rf"have p {N}, {N} and {N}, Holm {N}, {N} and {N} over the six configs: cannot tell",
        "sweeps trend": rf"lowers the point estimates steadily \({N}, {N}, {N}, {N}\)",
    }
    computed = {
        "worse": [mla.difference, mla.low, mla.high, fmka.difference, fmka.low, fmka.high,
                  adjusted["pythia-14m-mla"], adjusted["pythia-14m-fmka"]],
        "MKA": [mka.difference, mka.low, mka.high, mka.p, adjusted["pythia-14m-mka"]],
        "GQA and MQA": [gqa.difference, gqa.low, gqa.high, mqa.difference, mqa.low, mqa.high, gqa.high, mqa.high],
        "sweeps p": [*(sweep_tests[v].p for v in latents), *(sweep_adjusted[v] for v in latents)],
        "sweeps trend": [sweep_tests[v].difference for v in (*latents, "pythia-14m-mla-kv64")],
    }
    assert max(sweep_adjusted.values()) == 1.0 and min(sweep_adjusted.values()) >= 0.05  # "no verdict survives"
    assert adjusted["pythia-14m-mka"] >= 0.05
    wrong = quoted_numbers(blockquote_text(STUDY_V1 / "README.md"), quotes, computed)
    assert not wrong, "\n" + "\n".join(wrong)


# ------------------------------------------------------------------------------------------- docs/design.md
DESIGN = ROOT / "docs" / "design.md"
DESCRIPTION_COLUMN = 20  # the tree's descriptions start further right than any name


def section(text: str, heading: str) -> str:
    """The text of the ``## heading`` section of a markdown page, up to the next ``## `` heading."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : None if end < 0 else end]


def design_tree_paths() -> set[str]:
    """The files of the package tree in design.md's "The package" (its first code block), by path."""
    block = section(DESIGN.read_text(), "The package").split("```")[1]
    folders, paths = [], set()
    for line in block.splitlines():
        name, indent = line.strip().split("  ")[0], len(line) - len(line.lstrip())
        if not name or indent >= DESCRIPTION_COLUMN:  # a description's second line
            continue
        folders = folders[: indent // 2]  # two spaces per level, the root folder at 0
        if name.endswith("/"):
            folders.append(name)
        else:
            paths.add("".join(folders) + name)
    return paths


def test_the_design_doc_lists_every_module_of_the_package():
    package = ROOT / "litgpt_mka"
    files = {str(p.relative_to(ROOT)) for p in package.rglob("*") if p.suffix in (".py", ".pth")}
    assert design_tree_paths() == files


def test_every_function_the_design_doc_walks_through_exists():
    """Each ``name()`` or ``Class.name()`` of "From a YAML key to the code that reads it" is defined in the package."""
    walk = section(DESIGN.read_text(), "From a YAML key to the code that reads it")
    source = "\n".join(p.read_text() for p in (ROOT / "litgpt_mka").rglob("*.py"))
    named = set(re.findall(r"`([\w.]+)\(\)`", walk))
    assert len(named) > 20  # the walk-through was read
    missing = [name for name in sorted(named) if not all(
        re.search(rf"^\s*(def|class) {part}\b", source, flags=re.MULTILINE) for part in name.split(".")
    )]
    assert missing == []


def test_study_v3s_pilot_answer_quotes_its_paired_runs():
    """docs/study-pythia-14m-v3/README.md, "The pilot's answer": the per-seed table, the paired interval and the
    implied correlation, computed again (paired t-test) from pilot/results.json."""
    saved = json.loads((STUDY_V3 / "pilot" / "results.json").read_text())
    verdict, selection = (losses_by_seed(saved, text) for text in ("val-verdict", "val-selection"))
    mha, mla = verdict[REFERENCE], verdict["pythia-14m-mla"]
    text = (STUDY_V3 / "README.md").read_text()
    rows = markdown_table(text, "| | seed 1 |")
    differences = {seed: mla[seed] - mha[seed] for seed in mha}
    wrong = []
    for label, losses in (("MHA", mha), ("MLA", mla), ("MLA - MHA (paired)", differences)):
        printed = " ".join(rows[label][column] for column in ("seed 1", "seed 2", "std"))
        wrong += disagreements(label, printed, [losses[1], losses[2], mean_std(list(losses.values()))[1]])
    test = paired(mla, mha)
    found = re.search(r"MLA - MHA = ([-+][\d.]+), paired 95% interval ±([\d.]+) \(df (\d+), p ([\d.]+)\)", text)
    wrong += disagreements("interval", " ".join(found.groups()), [test.difference, test.half_width, test.df, test.p])
    prose = " ".join(text.split())
    found = re.search(r"Pairing removed (\d+)% of the variance .* \((\d+)% on `val-selection`\)", prose)
    removed = [100 * variance_removed_by_pairing(mla, mha),
               100 * variance_removed_by_pairing(selection["pythia-14m-mla"], selection[REFERENCE])]
    wrong += disagreements("pairing removed", " ".join(found.groups()), removed)
    s_v, s_r = mean_std(list(mla.values()))[1], mean_std(list(mha.values()))[1]
    found = re.search(r"pairing removes at most 2 s_v s_r / \(s_v² \+ s_r²\) of the variance, (\d+)% here", prose)
    wrong += disagreements("pairing's limit", found.group(1), [100 * 2 * s_v * s_r / (s_v**2 + s_r**2)])
    assert wrong == []


def test_study_v3s_seed_counts_are_those_of_the_pilots_spreads():
    """docs/study-pythia-14m-v3/README.md: 19-24 paired seeds (31-33 by Welch) for ±0.02 at the pilot's spreads on
    the two texts, 6 to over 10,000 over the 95% interval of a one-df spread, and v2's ~40 a side by Welch."""
    from scipy import stats

    def seeds_for(spread: float, per_side_terms: int = 1) -> int | None:
        n = 2
        while stats.t.ppf(0.975, n - 1) * spread * (per_side_terms / n) ** 0.5 > 0.02:
            n += 1
            if n > 10_000:
                return None
        return n

    def counts(saved: dict, text: str, reference: str = REFERENCE) -> tuple[int, int | None, int | None, int]:
        """(paired, lowest and highest over s_d's 95% interval, Welch per side) for MLA - MHA on `text`."""
        losses = losses_by_seed(saved, text)
        mla, mha = losses["pythia-14m-mla"], losses[reference]
        seeds = sorted(set(mla) & set(mha))
        s_d = mean_std([mla[s] - mha[s] for s in seeds])[1]
        s_v, s_r = mean_std([mla[s] for s in seeds])[1], mean_std([mha[s] for s in seeds])[1]
        df = len(seeds) - 1
        low, high = (s_d * (df / stats.chi2.ppf(q, df)) ** 0.5 for q in (0.975, 0.025))
        return (seeds_for(s_d), seeds_for(low), seeds_for(high),
                seeds_for(((s_v**2 + s_r**2) / 2) ** 0.5, per_side_terms=2))

    pilot = json.loads((STUDY_V3 / "pilot" / "results.json").read_text())
    (paired_a, low_a, high_a, welch_a), (paired_b, low_b, high_b, welch_b) = (
        counts(pilot, text) for text in ("val-verdict", "val-selection"))
    prose = " ".join((STUDY_V3 / "README.md").read_text().split())
    assert (f"needs about **{min(paired_a, paired_b)}-{max(paired_a, paired_b)} paired seeds** (Welch at the same"
            f" spreads: {min(welch_a, welch_b)}-{max(welch_a, welch_b)} a side)") in prose
    assert (high_a, high_b) == (None, None)
    assert f"anywhere from {min(low_a, low_b)} to over 10,000 seeds" in prose
    v2 = json.loads((STUDY_V2 / BEST_RATE / "results.json").read_text())
    welch_v2 = counts(v2, "val")[3]
    assert round(welch_v2, -1) == 40 and "about 40 seeds a side for MLA - MHA" in prose


def test_study_v3s_retrained_runs_equal_the_pilots_bit_for_bit():
    """docs/study-pythia-14m-v3/README.md: `tuned`'s MHA and MLA seeds 1 and 2 end with the pilot's losses on every
    text and the same validation curve, to the last digit of the float; the digits it quotes are theirs."""
    pilot = json.loads((STUDY_V3 / "pilot" / "results.json").read_text())
    tuned = json.loads((STUDY_V3 / "tuned" / "results.json").read_text())

    def run(saved: dict, variant: str, seed: int) -> dict:
        (found,) = [r for r in saved["runs"] if r["variant"] == variant and r["seed"] == seed
                    and r.get("learning_rate") in (None, 0.008) and r["status"] == "ok"]
        return found

    readme = " ".join((STUDY_V3 / "README.md").read_text().split())
    for variant in (REFERENCE, "pythia-14m-mla"):
        for seed in (1, 2):
            ours, theirs = run(tuned, variant, seed)["evaluation"], run(pilot, variant, seed)["evaluation"]
            assert [v["loss"] for v in ours["validation"]] == [v["loss"] for v in theirs["validation"]], (variant, seed)
            assert [c["val_loss"] for c in ours["curve"]] == [c["val_loss"] for c in theirs["curve"]], (variant, seed)
            assert repr(ours["validation"][0]["loss"]) in readme, (variant, seed)


def test_comparing_mds_example_of_pairing_widening_an_interval_is_study_v3s():
    """docs/comparing.md: "study v3's MKA - MHA at two seeds, which moved apart: ±0.67 paired, ±0.33 by Welch"."""
    losses = study_v3_tuned()[1]
    mka, mha = ({seed: losses[variant][seed] for seed in (1, 2)} for variant in ("pythia-14m-mka", REFERENCE))
    prose = " ".join((ROOT / "docs" / "comparing.md").read_text().split())
    found = re.search(r"study v3's MKA - MHA at two seeds, which moved apart: ±([\d.]+) paired, ±([\d.]+) by Welch", prose)
    half_widths = [paired(mka, mha).half_width, welch(list(mka.values()), list(mha.values())).half_width]
    assert disagreements("MKA - MHA", " ".join(found.groups()), half_widths) == []


def test_study_v3s_answer_quotes_its_paired_runs():
    """docs/study-pythia-14m-v3/README.md, "The answer": MKA's paired difference to MHA (lower on every seed, on both
    halves of val.txt), the range of the paired half-widths, and for each variant the share of an unpaired
    difference's variance that pairing removed and Pearson's r of its runs with MHA's."""
    saved, losses = study_v3_tuned()
    labels = {"GQA": "pythia-14m-gqa", "MQA": "pythia-14m-mqa", "MLA": "pythia-14m-mla", "MKA": "pythia-14m-mka",
              "FMKA": "pythia-14m-fmka"}
    tests, adjusted = paired_against_mha(losses)
    half_widths = {label: tests[variant].half_width for label, variant in labels.items()}
    narrowest, widest = min(half_widths, key=half_widths.get), max(half_widths, key=half_widths.get)
    removed, correlation = [], []
    for variant in labels.values():
        seeds = sorted(losses[variant])
        removed.append(100 * variance_removed_by_pairing(losses[variant], losses[REFERENCE]))
        pairs = [(losses[variant][s], losses[REFERENCE][s]) for s in seeds]
        correlation.append(np.corrcoef(np.transpose(pairs))[0, 1])
    prose = " ".join(section((STUDY_V3 / "README.md").read_text(), "The answer").split())
    mka, mka_holm = tests["pythia-14m-mka"], adjusted["pythia-14m-mka"]
    quotes = {
        "MKA": rf"\*\*MKA ends lower than MHA\*\*, by {N} nats on `val-verdict` "
               rf"\(95% interval \[{N}, {N}\], Holm p {N}\)",
        "half-widths": rf"half-widths run from ±{N} \({narrowest}\) to ±{N} \({widest}\)",
        "removed": r"removed " + ", ".join(rf"{N}% \({label}\)" for label in labels),
        "correlation": r"Pearson's r of paired runs " + ", ".join([N] * len(labels)),
    }
    computed = {"MKA": [-mka.difference, mka.low, mka.high, mka_holm],
                "half-widths": [half_widths[narrowest], half_widths[widest]], "removed": removed,
                "correlation": correlation}
    assert quoted_numbers(prose, quotes, computed) == []
    for text in ("val-verdict", "val-selection"):  # "lower on every one of the six seeds, on `val-selection` too"
        by_seed = losses_by_seed(saved, text)
        assert all(by_seed["pythia-14m-mka"][seed] < by_seed[REFERENCE][seed] for seed in range(1, 7)), text
