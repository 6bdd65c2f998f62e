"""The README is a front page linking a docs/ guide: every relative link of the README and the guide resolves, the
front page stays short, no committed document names a path of the machine it was made on, and the numbers the
README's study section quotes are those numpy and scipy compute from the committed results.json."""

import json
import re
from pathlib import Path

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


def test_the_readme_study_table_quotes_the_committed_runs():
    """The README's study v2 table, row by row: KV bytes/token (measured), val loss at 1e-3 (mean ± std), Welch's
    difference, 95% interval, p and Holm's p against MHA with the verdict (or the smallest detectable difference),
    and at the best rate MHA's loss and the others' Welch differences, intervals and verdicts."""
    losses, saved = study(STUDY_V2 / "main")
    best, _ = study(STUDY_V2 / BEST_RATE)
    tests, adjusted = welch_against_mha(losses)
    best_tests, best_adjusted = welch_against_mha(best)
    rows = markdown_table((ROOT / "README.md").read_text(), "| variant | KV cache / token")
    wrong = []
    for label, row in rows.items():
        variant = f"pythia-14m-{label.split()[0].lower()}"
        kv_bytes = {run["measure"]["kv_cache"]["bytes_per_token"] for run in saved["runs"] if run["variant"] == variant}
        wrong += disagreements(f"{label} KV", row["KV cache / token (fp32)"], [*kv_bytes])
        wrong += disagreements(f"{label} loss", row["val loss at 1e-3 (mean ± std)"], mean_std(losses[variant]))
        best_cell = row["each at its best rate (8e-3): vs MHA, 95% interval"]
        if variant == REFERENCE:
            wrong += [] if row["vs MHA at 1e-3: 95% interval (p, Holm)"] == "reference" else [f"{label}: not the reference"]
            wrong += disagreements(f"{label} at the best rate", best_cell, [mean_std(best[variant])[0]])
            continue
        test = tests[variant]
        numbers = [test.difference, test.low, test.high, test.p, adjusted[variant]]
        wrong += disagreements(f"{label} vs MHA", row["vs MHA at 1e-3: 95% interval (p, Holm)"], numbers)
        decided = verdict(test, adjusted[variant])
        expected = [] if decided != "cannot tell" else [test.half_width]
        if not row["at 1e-3"].startswith(decided):
            wrong.append(f"{label} verdict: printed {row['at 1e-3']!r}, computed {decided!r}")
        wrong += disagreements(f"{label} detectable", row["at 1e-3"], expected)
        if variant not in best:
            wrong += [] if best_cell == "not swept" else [f"{label}: {best_cell!r}, but {variant} is not in {BEST_RATE}"]
            continue
        test = best_tests[variant]
        interval, _, decided = best_cell.partition(": ")
        wrong += disagreements(f"{label} at the best rate", interval, [test.difference, test.low, test.high])
        if decided != verdict(test, best_adjusted[variant]):
            wrong.append(f"{label} best-rate verdict: printed {decided!r}, computed {verdict(test, best_adjusted[variant])!r}")
    assert len(rows) == len(losses)
    assert not wrong, "\n" + "\n".join(wrong)


def test_the_readmes_best_rate_is_where_each_swept_variant_ends_lowest():
    """"MHA, MLA and FMKA all end lowest at 8e-3": of the learning-rate runs and the main study (1e-3)."""
    rates = {folder.name: study(folder)[0] for folder in STUDY_V2.glob("lr-*")}
    rates["main (1e-3)"] = study(STUDY_V2 / "main")[0]
    for variant in ("pythia-14m-mha", "pythia-14m-mla", "pythia-14m-fmka"):
        means = {rate: mean_std(losses[variant])[0] for rate, losses in rates.items()}
        assert min(means, key=means.get) == BEST_RATE, (variant, means)


def test_the_readmes_study_prose_quotes_the_committed_runs():
    """The numbers the README's study prose quotes: MLA at 1.6e-2 (Welch), MLA with a full-rank query (the ablation's
    SE), v1's MLA and FMKA gaps and v1's MKA p."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    number = r"([-+]?\d+\.\d+)"
    quotes = {
        "MLA at 1.6e-2": rf"MLA's 2-seed {number} at 1\.6e-2 \(\[{number}, {number}\], p {number}\)",
        "MLA full-rank query": rf"full-rank query MLA is still worse than MHA, {number} \(SE {number}\)",
        "v1 MLA and FMKA": rf"\(v1 {number} and {number}:",
        "v1 MKA p": rf"MKA's \"worse\" \(v1 p {number};",
    }
    found = {name: re.search(pattern, readme) for name, pattern in quotes.items()}
    assert all(found.values()), [name for name, match in found.items() if match is None]
    steep, _ = study(STUDY_V2 / "lr-0.016")
    ablation, _ = study(STUDY_V2 / "ablation")
    v1, _ = study(STUDY_V1 / "main")
    mla = welch(steep["pythia-14m-mla"], steep[REFERENCE])
    fullq = welch(ablation["pythia-14m-mla-fullq"], ablation[REFERENCE])
    v1_tests = {variant: welch(v1[variant], v1[REFERENCE]) for variant in ("pythia-14m-mla", "pythia-14m-fmka", "pythia-14m-mka")}
    computed = {
        "MLA at 1.6e-2": [mla.difference, mla.low, mla.high, mla.p],
        "MLA full-rank query": [fullq.difference, fullq.se],
        "v1 MLA and FMKA": [v1_tests["pythia-14m-mla"].difference, v1_tests["pythia-14m-fmka"].difference],
        "v1 MKA p": [v1_tests["pythia-14m-mka"].p],
    }
    wrong = [line for name in quotes for line in disagreements(name, " ".join(found[name].groups()), computed[name])]
    assert not wrong, "\n" + "\n".join(wrong)


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
    losses = losses_by_seed(json.loads((STUDY_V3 / "tuned" / "results.json").read_text()), "val-verdict")
    mka, mha = ({seed: losses[variant][seed] for seed in (1, 2)} for variant in ("pythia-14m-mka", REFERENCE))
    prose = " ".join((ROOT / "docs" / "comparing.md").read_text().split())
    found = re.search(r"study v3's MKA - MHA at two seeds, which moved apart: ±([\d.]+) paired, ±([\d.]+) by Welch", prose)
    half_widths = [paired(mka, mha).half_width, welch(list(mka.values()), list(mha.values())).half_width]
    assert disagreements("MKA - MHA", " ".join(found.groups()), half_widths) == []
