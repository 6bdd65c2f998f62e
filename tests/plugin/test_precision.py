"""The machine-aware default precision (litgpt_mka/precision.py), with the CPU detection mocked both ways."""

import types
import warnings

import pytest
import torch
import yaml

from litgpt_mka import precision
from tests.conftest import CONFIG_HUB

AMD_ZEN3_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2 sha_ni
"""
XEON_SPR_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""
GRAVITON3_CPUINFO = """processor\t: 0
Features\t: fp asimd evtstrm aes sha2 bf16 i8mm sve
"""


def litgpt_default(training: bool) -> str:  # litgpt 0.5.13's answer without CUDA
    return "bf16-mixed" if training else "bf16-true"


@pytest.mark.parametrize(
    "cpuinfo, native", [(AMD_ZEN3_CPUINFO, False), (XEON_SPR_CPUINFO, True), (GRAVITON3_CPUINFO, True)]
)
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    assert precision.has_native_bf16(precision.parse_cpuinfo_flags(cpuinfo)) is native


@pytest.mark.parametrize("training, expected", [(True, "32-true"), (False, "32-true")])
def test_a_cpu_that_emulates_bf16_defaults_to_float32(training, expected):
    got = precision.default_precision(training, litgpt_default, accelerator="cpu", native_bf16=False)
    assert got == expected


@pytest.mark.parametrize("accelerator, native", [("cpu", True), ("cuda", False), ("mps", False)])
@pytest.mark.parametrize("training", [True, False])
def test_litgpt_choice_stays_where_bf16_is_native_or_on_accelerators(accelerator, native, training):
    got = precision.default_precision(training, litgpt_default, accelerator=accelerator, native_bf16=native)
    assert got == litgpt_default(training)


@pytest.fixture
def cpu_machine(monkeypatch):
    """Makes this process believe it runs on a CPU-only machine whose flags are `set_flags(...)`'s."""
    monkeypatch.setattr(precision, "available_accelerator", lambda: "cpu")

    def set_flags(cpuinfo: str) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda: precision.parse_cpuinfo_flags(cpuinfo))
        precision._say_once.cache_clear()

    return set_flags


@pytest.mark.parametrize("cpuinfo, expected", [(AMD_ZEN3_CPUINFO, "32-true"), (XEON_SPR_CPUINFO, "bf16-mixed")])
def test_presets_resolve_to_float32_on_a_cpu_without_native_bf16(cpu_machine, cpuinfo, expected, tmp_path, capsys):
    """`litgpt pretrain --config <preset>` (precision: null) builds its Fabric with the machine's precision."""
    import litgpt.pretrain
    from litgpt.config import Config

    cpu_machine(cpuinfo)
    preset = yaml.safe_load((CONFIG_HUB / "pythia-14m-mqa.yaml").read_text())
    assert preset["precision"] is None
    built = {}

    class FabricBuilt(Exception):
        pass

    def record_fabric(**kwargs):
        built.update(kwargs)
        raise FabricBuilt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(litgpt.pretrain.L, "Fabric", record_fabric)
        with pytest.raises(FabricBuilt):
            litgpt.pretrain.setup(
                model_name=preset["model_name"],
                model_config=Config(**preset["model_config"]),
                precision=preset["precision"],
                out_dir=tmp_path / "out",
                logger_name="csv",
                devices=1,
            )
    assert built["precision"] == expected
    said = capsys.readouterr().err
    if expected == "32-true":
        assert "no native bfloat16" in said and "--precision bf16-mixed" in said
    else:
        assert "litgpt-mka" not in said


def test_every_litgpt_command_sees_the_machine_default(cpu_machine):
    import litgpt.chat.base
    import litgpt.finetune.lora
    import litgpt.generate.base
    import litgpt.pretrain
    import litgpt.utils

    cpu_machine(AMD_ZEN3_CPUINFO)
    for module in (litgpt.utils, litgpt.pretrain, litgpt.finetune.lora, litgpt.generate.base, litgpt.chat.base):
        assert module.get_default_supported_precision(training=True) == "32-true", module.__name__
        assert module.get_default_supported_precision(training=False) == "32-true", module.__name__
    cpu_machine(XEON_SPR_CPUINFO)
    assert litgpt.generate.base.get_default_supported_precision(training=False) == "bf16-true"


@pytest.mark.parametrize(
    "requested, device, cpuinfo, warns",
    [
        ("bf16-mixed", "cpu", AMD_ZEN3_CPUINFO, True),
        ("bf16-true", "cpu", AMD_ZEN3_CPUINFO, True),
        ("bf16-mixed", "cpu", XEON_SPR_CPUINFO, False),
        ("32-true", "cpu", AMD_ZEN3_CPUINFO, False),
        ("bf16-mixed", "cuda", AMD_ZEN3_CPUINFO, False),
    ],
)
def test_explicit_bf16_on_an_emulating_cpu_warns(requested, device, cpuinfo, warns):
    flags = precision.parse_cpuinfo_flags(cpuinfo)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert precision.warn_if_emulated_bf16(requested, device, flags) is warns
    messages = [str(w.message) for w in caught]
    if warns:
        assert len(messages) == 1 and "--precision 32-true" in messages[0] and "slower" in messages[0]
    else:
        assert messages == []


def fake_fabric(device: str, requested: str):
    return types.SimpleNamespace(
        device=torch.device(device),
        strategy=types.SimpleNamespace(precision=types.SimpleNamespace(precision=requested)),
        print=lambda *args, **kwargs: None,
    )


@pytest.mark.parametrize("env, compiled", [(None, False), ("1", True)])
def test_pretrain_main_runs_eagerly_on_the_cpu(monkeypatch, env, compiled):
    import torch._dynamo

    from litgpt_mka.plugin.litgpt_internals.pretrain import CPU_COMPILE_ENV_VAR, _run_on_the_machine

    if env is None:
        monkeypatch.delenv(CPU_COMPILE_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(CPU_COMPILE_ENV_VAR, env)
    seen = {}

    def litgpt_main(fabric, value):
        seen["dynamo_disabled"] = torch._dynamo.config.disable
        return value

    main = _run_on_the_machine(litgpt_main, skip_cpu_compile=True)
    before = torch._dynamo.config.disable
    assert main(fake_fabric("cpu", "32-true"), 7) == 7
    assert seen["dynamo_disabled"] is (not compiled)
    assert torch._dynamo.config.disable is before  # restored after the run


def test_pretrain_main_warns_for_explicit_bf16_on_an_emulating_cpu(monkeypatch):
    from litgpt_mka.plugin.litgpt_internals.pretrain import _run_on_the_machine

    monkeypatch.setattr(precision, "cpu_flags", lambda: precision.parse_cpuinfo_flags(AMD_ZEN3_CPUINFO))
    main = _run_on_the_machine(lambda fabric: "trained", skip_cpu_compile=True)
    with pytest.warns(UserWarning, match="emulates it"):
        assert main(fake_fabric("cpu", "bf16-mixed")) == "trained"


def test_litgpt_pretrain_and_finetune_mains_are_wrapped():
    import litgpt.finetune.full
    import litgpt.finetune.lora
    import litgpt.pretrain

    for module in (litgpt.pretrain, litgpt.finetune.full, litgpt.finetune.lora):
        assert module.main.__wrapped__.__module__ == module.__name__


@pytest.mark.parametrize("cpuinfo, training, decode", [(AMD_ZEN3_CPUINFO, "32-true", "float32"),
                                                       (XEON_SPR_CPUINFO, "bf16-mixed", "bfloat16")])
def test_compare_defaults_follow_the_machine(cpu_machine, tmp_path, cpuinfo, training, decode):
    from litgpt_mka.compare.measurements import default_decode_dtype
    from litgpt_mka.compare.worker import effective_precision

    cpu_machine(cpuinfo)
    (tmp_path / "hyperparameters.yaml").write_text("precision: null\n")
    assert effective_precision(tmp_path) == training
    assert default_decode_dtype() == decode
