"""Study v3's scripts: split_val.py's halves of val.txt (the story counts its README states) and seeds_needed.py's
reading of a tuned comparison (each variant at its chosen rate), no_leak.py's checks (they fail on a planted leak)."""

import pytest

from tests.conftest import PROJECT_ROOT
from tests.helpers import load_script

STUDY = PROJECT_ROOT / "docs" / "study-pythia-14m-v3"


def test_split_val_alternates_whole_stories_into_halves_of_116_and_115(tmp_path, shared_data, monkeypatch, capsys):
    split_val = load_script(STUDY / "split_val.py", "study_v3_split_val")
    assert split_val.stories("a\n<|endoftext|>\n\n<|endoftext|>\nb\nc\n<|endoftext|>\n") == ["a", "b\nc"]
    monkeypatch.setattr("sys.argv", ["split_val.py", str(shared_data / "val.txt"), str(tmp_path)])
    split_val.main()
    everything = split_val.stories((shared_data / "val.txt").read_text(encoding="utf-8"))
    verdict, selection = (split_val.stories((tmp_path / f"{name}.txt").read_text(encoding="utf-8"))
                          for name in ("val-verdict", "val-selection"))
    assert (len(verdict), len(selection)) == (116, 115)
    assert verdict == everything[0::2] and selection == everything[1::2]
    assert "val-verdict: 116 stories" in capsys.readouterr().out


def test_seeds_needed_reads_each_variant_at_its_chosen_rate():
    seeds_needed = load_script(STUDY / "seeds_needed.py", "study_v3_seeds_needed")

    def run(variant, seed, rate, loss):
        return {"variant": variant, "seed": seed, "learning_rate": rate, "status": "ok",
                "evaluation": {"validation": [{"name": "val-verdict", "loss": loss}]}}

    saved = {"runs": [run("mka", 1, 0.004, 3.6), run("mka", 1, 0.008, 3.5), run("mka", 1, 0.016, 3.7),
                      run("mka", 2, 0.008, 3.4), run("mha", 1, 0.008, 3.61)],
             "rate_selection": [{"variant": "mka", "chosen": 0.008}, {"variant": "mha", "chosen": 0.008},
                                {"variant": "mqa", "chosen": None}]}
    assert seeds_needed.final_losses(saved, "mka", "val-verdict") == {1: 3.5, 2: 3.4}
    with pytest.raises(SystemExit, match="mqa: no learning rate chosen yet"):
        seeds_needed.final_losses(saved, "mqa", "val-verdict")
    untuned = {"runs": [{**run("mha", 1, None, 3.6), "learning_rate": None}]}  # no rate axis (the pilot, v2)
    assert seeds_needed.final_losses(untuned, "mha", "val-verdict") == {1: 3.6}


@pytest.mark.parametrize("variant", ["mka", "fmka"])
def test_no_leak_passes_a_causal_model_and_fails_a_planted_leak(variant, monkeypatch):
    """no_leak.py's checks hold for the variants (random weights), and fail when MKA's running sums see the whole
    sequence (a leak of later tokens) or when a row's memory mixes in the batch's other rows."""
    import torch

    from litgpt_mka.attention import mka
    from tests.helpers import random_gpt, tiny_config, tokens

    no_leak = load_script(STUDY / "no_leak.py", "study_v3_no_leak")
    model, ids = random_gpt(tiny_config(variant), std=0.3), tokens(3, 32)
    no_leak.assert_no_leak(model, ids, kept=12)
    running_sums = mka.running_sums

    def whole_sequence(src, prefix=None):
        positions = torch.arange(1, src.size(1) + 1).view(1, -1, 1)  # (1, T, 1)
        return src.float().mean(dim=1, keepdim=True) * positions

    def across_rows(src, prefix=None):
        return running_sums(src + src.mean(dim=0, keepdim=True), prefix)

    for leak in (whole_sequence, across_rows):
        monkeypatch.setattr(mka, "running_sums", leak)
        with pytest.raises(AssertionError, match="Tensor-likes are not close"):
            no_leak.assert_no_leak(model, ids, kept=12)
