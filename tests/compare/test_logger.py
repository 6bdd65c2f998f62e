"""compare keeps the YAML's logger: the run's `--logger_name` is the YAML's, and litgpt's metrics reach a CSV file
beside it (the plugin's LITGPT_MKA_METRICS_CSV), which is what compare reads."""

import csv
import inspect
import sys

import pytest
import yaml
from lightning.fabric.loggers import CSVLogger, Logger

from litgpt_mka.compare.options import CompareOptions
from tests.compare.helpers import tiny_yaml


class Recording(Logger):
    """A logger of the user's kind (TensorBoard, W&B, ...): records what it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics, self.hyperparameters = [], []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.hyperparameters.append(params)


def test_metrics_reach_a_csv_file_beside_the_runs_own_logger(tmp_path, monkeypatch):
    from litgpt_mka.compare.worker import METRICS_CSV_ENV_VAR
    from litgpt_mka.plugin.litgpt_internals import pretrain

    assert METRICS_CSV_ENV_VAR == pretrain.METRICS_CSV_ENV_VAR
    users = Recording()
    monkeypatch.delenv(METRICS_CSV_ENV_VAR, raising=False)
    assert pretrain._fabric(accelerator="cpu", devices=1, loggers=[users]).loggers == [users]  # plain litgpt pretrain
    monkeypatch.setenv(METRICS_CSV_ENV_VAR, str(tmp_path / "logs"))
    fabric = pretrain._fabric(accelerator="cpu", devices=1, loggers=[users])
    assert fabric.logger is users and isinstance(fabric.loggers[1], CSVLogger)  # the user's stays first
    fabric.logger.log_hyperparams({"lr": 0.1})  # litgpt pretrain's hyperparameters: the user's logger only
    fabric.log_dict({"loss": 3.5, "iter_time": 0.25}, step=0)
    fabric.log_dict({"loss": 3.0, "iter_time": 0.5}, step=1)
    assert users.metrics == [(0, {"loss": 3.5, "iter_time": 0.25}), (1, {"loss": 3.0, "iter_time": 0.5})]
    assert users.hyperparameters == [{"lr": 0.1}]
    with open(tmp_path / "logs" / "csv" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["step"], row["loss"], row["iter_time"]) for row in rows] == [("0", "3.5", "0.25"), ("1", "3.0", "0.5")]
    # a CSV logger already (the presets' logger_name: csv): no second one
    own = CSVLogger(tmp_path / "own")
    assert pretrain._fabric(accelerator="cpu", devices=1, loggers=[own]).loggers == [own]


@pytest.mark.filterwarnings("ignore:each run's validation curve")
@pytest.mark.parametrize("logger_name", ["wandb", None])
def test_the_yamls_logger_reaches_litgpt_pretrain_unchanged(tmp_path, monkeypatch, shared_data, tokenizer_dir,
                                                            logger_name):
    """The run stops where litgpt pretrain builds its logger (a stand-in `choose_logger`, so nothing needs wandb or
    tensorboard): it gets the YAML's logger_name, one that is not litgpt's default, or litgpt's default
    (tensorboard) where the YAML names none; and setup gets the run's optimizer."""
    import litgpt.pretrain

    from litgpt_mka.compare.plan import LITGPT_DEFAULT_LOGGER, plan_runs
    from litgpt_mka.compare.worker import run_litgpt_pretrain

    config = yaml.safe_load(tiny_yaml(tmp_path, "a").read_text())
    config.pop("logger_name")
    if logger_name is not None:
        config["logger_name"] = logger_name
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(config))
    options = CompareOptions(configs=[tmp_path / "a.yaml"], train_path=shared_data / "train.txt",
                             val_path=[shared_data / "val.txt"], tokenizer_dir=tokenizer_dir, learning_rates=[0.016],
                             context_length=16, decode_new_tokens=4)
    (run,) = plan_runs(options, "float32")[1]
    built = {}

    class Stop(Exception):
        pass

    def choose_logger(logger_name, *args, **kwargs):
        built["logger_name"] = logger_name
        built["optimizer"] = inspect.currentframe().f_back.f_locals["optimizer"]  # setup's argument, as parsed
        raise Stop

    monkeypatch.setattr(litgpt.pretrain, "choose_logger", choose_logger)
    monkeypatch.setattr(sys, "argv", sys.argv)  # run_litgpt_pretrain sets it
    with pytest.raises(Stop):
        run_litgpt_pretrain([*run.spec.pretrain_args, "--out_dir", str(tmp_path / "out")])
    assert built["logger_name"] == (logger_name or LITGPT_DEFAULT_LOGGER)
    assert built["optimizer"] == {"class_path": "torch.optim.AdamW",
                                  "init_args": {"lr": 0.016, "weight_decay": 0.01, "betas": [0.9, 0.95]}}
