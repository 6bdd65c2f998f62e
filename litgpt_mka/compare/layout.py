"""The folder of a comparison: every file name, where each run lives, and reading a run's files back.

The one module that knows the layout (the runner, the workers and the report ask it)::

    OUT/results.json  results.csv  report.md  *.png       the report (litgpt_mka.compare.report)
    OUT/runs/<config stem>-seed<seed>/                     one RunFolder per run
        spec.json      RunSpec: what the run is; written by the runner before the run starts
        checkpoints/   litgpt pretrain's --out_dir (step-*/, final/, logs/csv/version_*/metrics.csv)
        run.log        the workers' full output, every attempt appended
        train.json     TrainResult: written by the training worker when training finished
        result.json    RunResult: written last ("ok" by the evaluation worker, "failed" by the runner)

Files are read back as the records of :mod:`litgpt_mka.compare.records`, of the schema this version writes.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from litgpt_mka.atomic import read_json
from litgpt_mka.compare.records import RunResult, RunSpec, TrainResult, from_json, read_run, to_json

RESULTS_JSON, RESULTS_CSV, REPORT_MD = "results.json", "results.csv", "report.md"
RUNS_DIR = "runs"
SPEC_JSON, TRAIN_JSON, RESULT_JSON, RUN_LOG = "spec.json", "train.json", "result.json", "run.log"
CHECKPOINTS_DIR = "checkpoints"


@dataclass(frozen=True)
class RunFolder:
    """The files of one run (``OUT/runs/<run>/``)."""

    path: Path

    @property
    def spec_json(self) -> Path:
        return self.path / SPEC_JSON

    @property
    def train_json(self) -> Path:
        return self.path / TRAIN_JSON

    @property
    def result_json(self) -> Path:
        return self.path / RESULT_JSON

    @property
    def log(self) -> Path:
        return self.path / RUN_LOG

    @property
    def checkpoints(self) -> Path:
        """litgpt pretrain's ``--out_dir`` for the run."""
        return self.path / CHECKPOINTS_DIR

    def read_spec(self) -> RunSpec:
        return from_json(RunSpec, read_json(self.spec_json))

    def read_train(self) -> TrainResult | None:
        """``train.json``, or None while training has not finished."""
        return from_json(TrainResult, read_json(self.train_json)) if self.train_json.is_file() else None

    def read_result(self) -> RunResult | None:
        """``result.json``, or None before the run has one."""
        return read_run(read_json(self.result_json)) if self.result_json.is_file() else None


def spec_sha256(spec: RunSpec) -> str:
    """The sha256 of a run's spec, as canonical JSON."""
    return hashlib.sha256(json.dumps(to_json(spec), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class RunPlan:
    """One config x seed of a comparison: its spec and its folder."""

    index: int  # 1-based position in the comparison
    run_dir: Path
    spec: RunSpec

    @classmethod
    def in_comparison(cls, out_dir: Path, index: int, spec: RunSpec) -> "RunPlan":
        """The run's plan with its folder under ``out_dir/runs/<spec.name>``."""
        return cls(index=index, run_dir=Path(out_dir) / RUNS_DIR / spec.name, spec=spec)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def variant(self) -> str:
        return self.spec.variant

    @property
    def seed(self) -> int:
        return self.spec.seed

    def spec_sha256(self) -> str:
        return spec_sha256(self.spec)

    def read_result(self) -> RunResult | None:
        """The run's ``result.json`` if it belongs to this spec, else None."""
        result = self.folder.read_result()
        return result if result is not None and result.spec_sha256 == self.spec_sha256() else None

    def is_finished(self) -> bool:
        result = self.read_result()
        return result is not None and result.ok
