"""litgpt_mka.compare.plan: the fairness check, the decode-fits check, litgpt's checkpoint schedule, the reference."""

import pytest
import yaml

from litgpt_mka.compare.options import CompareOptions
from litgpt_mka.compare.plan import check_identical_training_settings
from tests.compare.helpers import SEQ, tiny_yaml
from tests.conftest import CONFIG_HUB


def test_configs_with_different_training_settings_are_refused(tmp_path):
    a = tiny_yaml(tmp_path, "a")
    b_config = yaml.safe_load(tiny_yaml(tmp_path, "b").read_text())
    b_config["train"]["lr_warmup_steps"] = 7
    b_config["optimizer"]["init_args"]["lr"] = 0.5
    yamls = {a: yaml.safe_load(a.read_text()), tmp_path / "b.yaml": b_config}
    expected = r"optimizer\.init_args\.lr \(a\.yaml: 0\.001, b\.yaml: 0\.5\); train\.lr_warmup_steps \(a\.yaml: 2, b\.yaml: 7\)"
    with pytest.raises(ValueError, match=expected):
        check_identical_training_settings(yamls, CompareOptions(configs=[a]))
    # a shared override makes the values irrelevant; the model may differ
    b_config = yaml.safe_load(a.read_text())
    b_config["train"]["max_tokens"], b_config["model_config"]["n_layer"] = 999, 5
    check_identical_training_settings({a: yaml.safe_load(a.read_text()), tmp_path / "b.yaml": b_config},
                                      CompareOptions(configs=[a], max_tokens=100))


def test_decode_measurement_longer_than_block_size_is_refused_before_training(tmp_path):
    """pythia-14m's block_size is 512: a 512-token decode context cannot fit, and nothing may train first."""
    from litgpt_mka.compare.plan import check_decode_fits_block_size

    config = tiny_yaml(tmp_path, "a")
    yamls = {config: yaml.safe_load(config.read_text())}
    block_size = yamls[config]["model_config"]["block_size"]
    check_decode_fits_block_size(yamls, CompareOptions(configs=[config], context_length=block_size - 34))
    with pytest.raises(ValueError, match=rf"context_length={block_size} \+ decode_new_tokens=32 \+ 2 warm-up tokens = {block_size + 34} exceeds block_size={block_size} of a.yaml; use at most context_length={block_size - 34}"):
        check_decode_fits_block_size(yamls, CompareOptions(configs=[config], context_length=block_size))


def test_expected_curve_points_follow_litgpts_schedule(tmp_path):
    from litgpt_mka.compare.plan import expected_curve_points

    config = yaml.safe_load(tiny_yaml(tmp_path, "a").read_text())  # 8 iterations of 4 x 32, 1 step each
    assert expected_curve_points(config, CompareOptions(configs=[])) == (2, 8)
    assert expected_curve_points(config, CompareOptions(configs=[], eval_interval=1, devices=1)) == (8, 8)
    # global batch 8 = 2 micro-batches per step; 9 iterations = 4 steps (+1 iteration); checkpoints at steps 2, 4 + final
    config["train"]["global_batch_size"] = 8
    assert expected_curve_points(config, CompareOptions(configs=[], max_tokens=9 * 4 * SEQ, eval_interval=2, devices=1)) == (3, 4)


def test_the_reference_is_the_mha_config_unless_one_is_named():
    from litgpt_mka.compare.plan import is_mha, reference_variant
    from litgpt_mka.presets import load_pretrain_yaml

    yamls = {CONFIG_HUB / f"pythia-14m-{v}.yaml": load_pretrain_yaml(CONFIG_HUB / f"pythia-14m-{v}.yaml")
             for v in ("gqa", "mqa", "mla", "mka", "fmka", "mha")}
    assert [path.stem for path, config in yamls.items() if is_mha(config)] == ["pythia-14m-mha"]
    assert reference_variant(yamls, CompareOptions(configs=list(yamls))) == "pythia-14m-mha"
    assert reference_variant(yamls, CompareOptions(configs=list(yamls), reference="pythia-14m-mqa")) == "pythia-14m-mqa"
    without_mha = {p: c for p, c in yamls.items() if p.stem != "pythia-14m-mha"}
    assert reference_variant(without_mha, CompareOptions(configs=list(without_mha))) is None


def test_decode_warmup_is_the_decode_measurements_own():
    import inspect

    from litgpt_mka.compare.plan import DECODE_WARMUP_TOKENS
    from litgpt_mka.measure.decode_speed import measure_decode_tokens_per_second

    assert DECODE_WARMUP_TOKENS == inspect.signature(measure_decode_tokens_per_second).parameters["warmup_tokens"].default


def test_gradient_accumulation_is_warned_about_for_the_throughput_it_reads(tmp_path):
    from litgpt_mka.compare.options import CompareOptions
    from litgpt_mka.compare.plan import warn_accumulated_throughput

    config = {"train": {"micro_batch_size": 4, "global_batch_size": 16}, "devices": 1}
    with pytest.warns(UserWarning, match=r"a\.yaml accumulates gradients over 4 iterations per optimizer step"):
        assert warn_accumulated_throughput(config, tmp_path / "a.yaml", CompareOptions())
    config["train"]["global_batch_size"] = 4
    assert warn_accumulated_throughput(config, tmp_path / "a.yaml", CompareOptions()) is None
