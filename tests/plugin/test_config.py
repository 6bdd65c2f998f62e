"""litgpt's Config with our fields: defaults, validation errors, YAML round trip, the config hub."""

import math
from dataclasses import asdict

import lightning as L
import pytest
import torch
import yaml

from litgpt.config import Config
from litgpt.model import GPT
from litgpt.utils import save_config
from litgpt_mka.attention import registry
from litgpt_mka.presets import load_pretrain_yaml, model_config_from_yaml
from tests.conftest import CONFIG_HUB

HUB_FILES = sorted(CONFIG_HUB.glob("*.yaml"))
# sizes whose presets are built and run on the CPU in tests; the larger ones (410m, 1b, 1.4b) are built on the
# meta device (benchmarks/preset_step.py runs a real 410m training step of every variant)
CPU_SIZES = {"14m", "70m", "160m"}
# keys by which the variants of one size may differ
ATTENTION_KEYS = {"name", "n_query_groups", "attention_class_name", *registry.config_fields()}


def test_defaults_keep_litgpt_configs_unchanged():
    config = Config.from_name("pythia-14m")
    assert config.attention_class_name == "CausalSelfAttention"
    assert config.memorized_key_attention is None
    from litgpt.model import CausalSelfAttention

    assert config.attention_class is CausalSelfAttention


def test_model_config_yaml_round_trips(tmp_path):
    config = Config.from_name("pythia-14m", n_query_groups=2, attention_class_name="CausalSelfAttention")
    save_config(config, tmp_path)
    saved = yaml.safe_load((tmp_path / "model_config.yaml").read_text())
    assert "attention_class_name" not in saved and "memorized_key_attention" not in saved  # defaults: left out
    assert asdict(Config.from_file(tmp_path / "model_config.yaml")) == asdict(config)
    mka = Config.from_name("pythia-14m", attention_class_name="MemorizedKeyAttention")
    save_config(mka, tmp_path)
    saved = yaml.safe_load((tmp_path / "model_config.yaml").read_text())
    assert saved["attention_class_name"] == "MemorizedKeyAttention" and saved["memorized_key_attention"]
    assert asdict(Config.from_file(tmp_path / "model_config.yaml")) == asdict(mka)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(attention_class_name="FlashAttention"), r"attention_class_name='FlashAttention' is not a known attention class; choose one of \['CausalSelfAttention', 'GroupedQueryAttention', 'LitgptMultiheadLatentAttention', 'MemorizedKeyAttention', 'MultiheadLatentAttention'\]"),
        (dict(n_query_groups=3), r"n_head=4 must be divisible by n_query_groups=3 \(1 = MQA, n_head = MHA"),
        (dict(n_query_groups=0), r"n_query_groups=0 must be a positive integer"),
        (dict(n_head=0), r"n_head=0 must be a positive integer"),
        (dict(n_embd=130), r"n_embd=130 must be divisible by n_head=4 \(or set head_size explicitly\)"),
        (dict(head_size=-1), r"head_size=-1 must be a positive integer"),
        (dict(latent_attention=[1, 2]), r"latent_attention=\[1, 2\] must be a dict or null"),
        (dict(memorized_key_attention={"routing": "keys"}), r"memorized_key_attention is set, but attention_class_name='CausalSelfAttention'; memorized_key_attention is only read by \['MemorizedKeyAttention'\]"),
        (dict(attention_class_name="MultiheadLatentAttention"), r"attention_class_name='MultiheadLatentAttention' needs the latent_attention dict"),
        (dict(attention_class_name="MemorizedKeyAttention", memorized_key_attention="keys"), r"memorized_key_attention='keys' must be a dict or null"),
        (
            dict(attention_class_name="MemorizedKeyAttention", latent_attention={"kv_lora_rank": 8}),
            r"latent_attention is set, but attention_class_name='MemorizedKeyAttention'; latent_attention is only read by \['LitgptMultiheadLatentAttention', 'MultiheadLatentAttention'\]",
        ),
    ],
)
def test_invalid_values_raise_value_errors_naming_field_and_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        Config.from_name("pythia-14m", **overrides)


@pytest.mark.parametrize("path", HUB_FILES, ids=lambda p: p.stem)
def test_every_hub_config_parses_builds_and_runs_forward(path):
    config = model_config_from_yaml(path)
    assert config.name == path.stem
    expected_class = {
        "gqa": "GroupedQueryAttention",
        "mqa": "GroupedQueryAttention",
        "mla": "MultiheadLatentAttention",
        "mka": "MemorizedKeyAttention",
        "fmka": "MemorizedKeyAttention",
    }
    assert config.attention_class_name == expected_class.get(path.stem.split("-")[-1], "CausalSelfAttention")
    on_cpu = path.stem.split("-")[1] in CPU_SIZES
    if not on_cpu:  # every block at full depth on the meta device (no memory); the forward below runs one block
        with torch.device("meta"):
            assert all(type(block.attn) is config.attention_class for block in GPT(config).transformer.h)
        config = model_config_from_yaml(path, n_layer=1)
    torch.manual_seed(0)
    with torch.device("cpu" if on_cpu else "meta"):
        model = GPT(config).eval()
        idx = torch.randint(0, config.vocab_size, (1, 8))
    assert all(type(block.attn) is config.attention_class for block in model.transformer.h)
    with torch.no_grad():
        logits = model(idx)
    assert logits.shape == (1, 8, config.padded_vocab_size)
    assert logits.is_meta or torch.isfinite(logits).all()


@pytest.mark.parametrize("size", sorted({p.stem.split("-")[1] for p in HUB_FILES}))
def test_variants_of_one_size_differ_only_in_attention(size):
    files = sorted(CONFIG_HUB.glob(f"pythia-{size}-*.yaml"))
    assert {f.stem.split("-")[-1] for f in files} >= {"mha", "gqa", "mqa"}
    reference = load_pretrain_yaml(files[0])
    for path in files[1:]:
        other = load_pretrain_yaml(path)
        assert reference.keys() == other.keys()
        for key in reference:
            if key == "model_config":
                shared = reference[key].keys() - ATTENTION_KEYS
                assert {k: reference[key].get(k) for k in shared} == {k: other[key].get(k) for k in shared}, path.name
            elif key != "out_dir":
                assert reference[key] == other[key], f"{path.name}: {key}"


@pytest.mark.parametrize("path", sorted(CONFIG_HUB.glob("pythia-14m-*.yaml")), ids=lambda p: p.stem)
def test_pretrain_init_scales_every_attention_output_projection(path):
    """litgpt's GPT-NeoX init gives CausalSelfAttention.proj std 1/(sqrt(C) n_layer); every variant gets it."""
    from litgpt import pretrain

    config = model_config_from_yaml(path)
    torch.manual_seed(0)
    model = GPT(config)
    pretrain.initialize_weights(L.Fabric(accelerator="cpu", devices=1), model, n_layer=config.n_layer, n_embd=config.n_embd)
    scaled, default = 1 / math.sqrt(config.n_embd) / config.n_layer, math.sqrt(2.0 / 5 / config.n_embd)
    for block in model.transformer.h:
        assert block.attn.proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
        assert block.mlp.fc.weight.std().item() == pytest.approx(default, rel=0.05)


PYTHIA_PEAK_LR = {"14m": 1e-3, "70m": 1e-3, "160m": 6e-4, "410m": 3e-4, "1b": 3e-4, "1.4b": 2e-4}  # Pythia, Table 1


@pytest.mark.parametrize("path", HUB_FILES, ids=lambda p: p.stem)
def test_every_preset_follows_the_rule_table(path):
    """The rules of docs/variants.md ("Presets and the rules that derive them"), preset by preset."""
    size, variant = path.stem.split("-")[1], path.stem.split("-")[-1]
    hparams, config = load_pretrain_yaml(path), model_config_from_yaml(path)
    pythia = Config.from_name(f"pythia-{size}")
    architecture = ("n_layer", "n_embd", "n_head", "head_size", "intermediate_size", "block_size", "padded_vocab_size")
    assert {k: getattr(config, k) for k in architecture} == {k: getattr(pythia, k) for k in architecture}
    assert hparams["optimizer"]["init_args"]["lr"] == PYTHIA_PEAK_LR[size]
    assert hparams["train"]["min_lr"] == pytest.approx(PYTHIA_PEAK_LR[size] / 10)
    C, nh, hs = config.n_embd, config.n_head, config.head_size
    groups = {"mha": nh, "gqa": 2 if nh == 4 else nh // 4, "mqa": 1, "mla": nh, "mka": nh, "fmka": nh}
    assert config.n_query_groups == groups[variant]
    if variant == "mla":
        R = int(config.rotary_percentage * hs)
        expected = dict(kv_lora_rank=C // 4, qk_rope_head_dim=R, qk_nope_head_dim=hs - R, v_head_dim=hs, q_lora_rank=C // 2)
        assert {k: config.latent_attention[k] for k in expected} == expected
    if variant in ("mka", "fmka"):
        routing = {"mka": "keys", "fmka": "keys_values"}[variant]
        assert config.memorized_key_attention == dict(routing=routing, router_hidden=C // 8, sum_window=16)
