"""The processes of one run: ``python -m litgpt_mka.compare.worker {train,evaluate,lm_eval,kv_quantization} RUN_DIR``.

Both read ``RUN_DIR/spec.json`` (written by the runner) and write their result atomically.

``train``
    Runs ``litgpt pretrain`` through litgpt's own CLI entry point: ``litgpt.__main__.main`` with
    ``sys.argv = ["litgpt", "pretrain", *spec["pretrain_args"], "--out_dir", RUN_DIR/checkpoints]``, the
    exact code path of the ``litgpt`` command. ``--resume auto`` continues from the latest complete
    ``step-*`` checkpoint; a ``step-*`` folder without ``model_config.yaml`` (litgpt writes it last, so
    its save was interrupted) is renamed ``incomplete-step-*`` first, since resuming from it would fail.
    First sets ``LITGPT_MKA_PAIRED_INIT`` to 1 for a paired run (``compare --paired``, the spec's ``paired_init``),
    else 0; the plugin's ``initialize_weights`` reads it (docs/comparing.md: Paired runs). And
    ``LITGPT_MKA_METRICS_CSV`` to ``RUN_DIR/checkpoints/logs``: the plugin then logs litgpt's metrics to a CSV file
    there (``logs/csv/version_*/metrics.csv``, what ``evaluate`` reads) beside the run's own logger, the YAML's. Then writes ``train.json`` (:class:`~litgpt_mka.compare.records.TrainResult`): the wall time of the
    ``litgpt pretrain`` call (litgpt's imports, data, model, compilation, training, checkpoints; not the
    interpreter's and torch's start-up), the load around it, the step it resumed from, and the process's
    peak memory (training only: evaluation runs in another process).
    Multi-device runs: Fabric starts the other ranks as ``python -m litgpt_mka.compare.worker pretrain
    ARGS``, which runs ``litgpt pretrain ARGS``; the measurements are rank 0's (not tested on several GPUs).
``evaluate``
    Evaluates every complete checkpoint (``step-*`` and ``final``) exactly on the primary validation
    text and ``final`` on the others (:mod:`.heldout`), reads litgpt's metrics.csv (:mod:`.measurements`),
    records MKA/FMKA routing weights, measures parameters, KV cache and decode speed (with the load around
    it) on the final weights, and writes ``result.json`` (a :class:`~litgpt_mka.compare.records.RunResult`
    with ``"status": "ok"``). Then removes
    the ``step-*`` folders unless ``--keep_step_checkpoints`` (the run is finished; ``final/`` stays).
``lm_eval``
    With ``--tasks a,b [--include_path DIR]`` (compare's ``--lm_eval_tasks``), after the run finished: lm-eval
    task scores of ``final`` into ``lm_eval.json`` (:mod:`.tasks`).
``kv_quantization``
    With ``--quantizations int8,int4`` (compare's ``--kv_cache_quantizations``), after the run finished: the
    held-out loss of cached decoding of ``final`` through the unquantized and each quantized cache, and the cache
    bytes, into ``kv_quantization.json`` (:mod:`.kv_quantization`).
"""

import argparse
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch

from litgpt_mka.atomic import write_json
from litgpt_mka.attention import registry
from litgpt_mka.compare.environment import environment, utc_now
from litgpt_mka.compare.layout import RunFolder, spec_sha256
from litgpt_mka.compare.records import CurvePoint, EvalResult, MeasureResult, RunResult, TrainResult, Validation, to_json

# read by litgpt pretrain's initialize_weights as the plugin extends it (litgpt_mka.plugin.litgpt_internals.pretrain;
# tested equal: compare does not import the plugin's modules)
PAIRED_INIT_ENV_VAR = "LITGPT_MKA_PAIRED_INIT"
# the folder in which litgpt pretrain, as the plugin extends it, logs litgpt's metrics to CSV beside the run's own
# logger (litgpt_mka.plugin.litgpt_internals.pretrain; tested equal): OUT_DIR/logs, as litgpt's own CSV logger does
METRICS_CSV_ENV_VAR = "LITGPT_MKA_METRICS_CSV"


# ------------------------------------------------------------------------------------------------ train
def quarantine_incomplete_checkpoints(out_dir: Path) -> None:
    """Renames ``step-*`` folders whose save did not finish, so that ``--resume auto`` skips them."""
    for step_dir in sorted(Path(out_dir).glob("step-*")):
        if step_dir.is_dir() and not (step_dir / "model_config.yaml").is_file():
            target = step_dir.with_name(f"incomplete-{step_dir.name}")
            shutil.rmtree(target, ignore_errors=True)
            step_dir.rename(target)
            warnings.warn(f"{step_dir} is an interrupted checkpoint save; moved to {target.name} and not resumed from")


def latest_checkpoint_step(out_dir: Path) -> int | None:
    """The step of the checkpoint that ``--resume auto`` will load (litgpt's own rule), or None."""
    from litgpt.utils import find_resume_path

    path = find_resume_path("auto", Path(out_dir)) if Path(out_dir).is_dir() else None
    return None if path is None else int(path.parent.name.split("-")[1])


def effective_precision(checkpoint_dir: Path) -> str:
    """The precision litgpt trained with: the saved setting, or litgpt's default for null (as litgpt decides)."""
    from litgpt.utils import get_default_supported_precision

    from litgpt_mka.checkpoint import read_hyperparameters

    return read_hyperparameters(checkpoint_dir).get("precision") or get_default_supported_precision(training=True)


def run_litgpt_pretrain(args: list[str]) -> None:
    """``litgpt pretrain ARGS`` in this process, through litgpt's CLI entry point."""
    from litgpt.__main__ import main

    sys.argv = ["litgpt", "pretrain", *args]
    main()


def train(run_dir: Path) -> None:
    from litgpt_mka.compare.measurements import measure_phase, peak_memory, reset_peak_memory

    folder = RunFolder(run_dir)
    spec, out_dir = folder.read_spec(), folder.checkpoints
    # read by litgpt pretrain's initialize_weights, inherited by Fabric's other ranks; set either way, so that a
    # variable exported in the shell cannot pair the runs of an unpaired comparison
    os.environ[PAIRED_INIT_ENV_VAR] = "1" if spec.paired_init else "0"
    # the metrics compare reads (iter_time, total_tokens, loss): a CSV file beside the YAML's own logger
    os.environ[METRICS_CSV_ENV_VAR] = str(out_dir / "logs")
    quarantine_incomplete_checkpoints(out_dir)
    resumed_from = latest_checkpoint_step(out_dir)
    reset_peak_memory()
    started = utc_now()
    _, load = measure_phase(lambda: run_litgpt_pretrain([*spec.pretrain_args, "--out_dir", str(out_dir)]))
    write_json(folder.train_json, to_json(TrainResult(
        spec_sha256=spec_sha256(spec),
        precision=effective_precision(out_dir / "final"),
        started=started,
        finished=utc_now(),
        wall_time_s=load.wall_s,
        resumed_from_step=resumed_from,
        peak_memory=peak_memory(),
        load=load,
    )))


# --------------------------------------------------------------------------------------------- evaluate
def validation_curve(
    out_dir: Path, data, batch_size: int, tokens_per_iter: int, device: torch.device
) -> tuple[list[CurvePoint], torch.nn.Module]:
    """Exact validation loss of every complete checkpoint, by iteration; and the final model.

    Checkpoints holding an iteration already evaluated (the last ``step-*`` is often ``final``) are skipped.
    """
    from litgpt_mka.checkpoint import checkpoint_dirs, load_model, load_state
    from litgpt_mka.compare.heldout import heldout_loss

    dirs = checkpoint_dirs(out_dir)
    if not dirs or dirs[-1].name != "final":
        raise FileNotFoundError(f"{out_dir}/final holds no complete checkpoint; training did not finish")
    points, final_model = {}, None
    for position, checkpoint_dir in enumerate(reversed(dirs), start=1):
        state = load_state(checkpoint_dir / "lit_model.pth")
        iteration = int(state["iter_num"])
        if iteration in points:
            continue
        print(f"evaluating {checkpoint_dir.name} (iteration {iteration}; {position}/{len(dirs)})", flush=True)
        model = load_model(checkpoint_dir, device, state)
        result = heldout_loss(model, data, batch_size)
        points[iteration] = CurvePoint(iter=iteration, tokens=iteration * tokens_per_iter, val_loss=result.loss,
                                       val_tokens=result.tokens, checkpoint=checkpoint_dir.name)
        final_model = model if final_model is None else final_model
        del state
    return [points[i] for i in sorted(points)], final_model


def validation_record(data, loss: float, tokens: int) -> Validation:
    return Validation(name=data.val_path.stem, path=str(data.val_path), loss=loss, perplexity=math.exp(loss),
                      tokens=tokens, windows=len(data.windows), max_seq_length=data.max_seq_length)


def evaluate(run_dir: Path, keep_step_checkpoints: bool) -> None:
    from litgpt_mka.compare import measurements
    from litgpt_mka.compare.heldout import heldout_data, heldout_loss

    folder = RunFolder(run_dir)
    spec, trained = folder.read_spec(), folder.read_train()
    if trained is None:
        raise FileNotFoundError(f"{folder.train_json} is missing: the run has not finished training")
    out_dir, settings = folder.checkpoints, spec.measure
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started, t0 = utc_now(), time.perf_counter()
    primary = heldout_data(out_dir / "final", Path(spec.val_paths[0]))
    segments = measurements.read_metrics(out_dir)
    throughput = measurements.training_throughput(segments, settings.throughput_skip_iters)
    curve, model = validation_curve(out_dir, primary, settings.eval_batch_size, throughput.tokens_per_iteration, device)
    validations = [validation_record(primary, curve[-1].val_loss, curve[-1].val_tokens)]
    for val_path in spec.val_paths[1:]:
        print(f"evaluating final on {Path(val_path).name}", flush=True)
        data = heldout_data(out_dir / "final", Path(val_path))
        result = heldout_loss(model, data, settings.eval_batch_size)
        validations.append(validation_record(data, result.loss, result.tokens))
    routing = None
    if registry.entry_of(model.config).memory_routing:
        routing = measurements.routing(model, primary.windows, primary.new_from, settings.eval_batch_size)
    parameters = measurements.parameter_counts(model)
    kv_cache = measurements.kv_cache(model, settings.decode_batch_size, settings.context_length, settings.decode_dtype)
    decode = measurements.decode_speed(model, settings.decode_batch_size, settings.context_length,
                                  settings.decode_new_tokens, settings.decode_dtype)
    result = RunResult(
        status="ok", name=spec.name, variant=spec.variant, seed=spec.seed, config_path=spec.config_path,
        config_sha256=spec.config_sha256, spec_sha256=spec_sha256(spec),
        train=trained,
        evaluation=EvalResult(validation=validations, curve=curve, routing=routing, device=str(device),
                              wall_time_s=time.perf_counter() - t0, peak_memory=measurements.peak_memory(), started=started),
        measure=MeasureResult(parameters=parameters, kv_cache=kv_cache, decode=decode, throughput=throughput,
                              train_loss_curve=measurements.train_loss_curve(segments)),
        environment=environment(),
        finished=utc_now(),
        learning_rate=spec.learning_rate,
    )
    write_json(folder.result_json, to_json(result))
    if not keep_step_checkpoints:
        remove_step_checkpoints(out_dir)


def score_tasks(run_dir: Path, tasks: list[str], include_path: Path | None) -> None:
    """The lm_eval phase: lm-eval task scores of the final checkpoint into lm_eval.json (litgpt_mka.compare.tasks)."""
    from litgpt_mka.compare.tasks import score_run

    spec = RunFolder(run_dir).read_spec()
    result = score_run(run_dir, tasks, include_path, spec.measure.eval_batch_size, spec.seed)
    print(f"lm-eval: {len(result.scores)} scores of {', '.join(tasks)} in {result.wall_time_s:.0f} s", flush=True)


def measure_quantized_caches(run_dir: Path, quantizations: list[str]) -> None:
    """The kv_quantization phase: cached decoding of the final checkpoint through each cache (compare.kv_quantization)."""
    from litgpt_mka.compare.kv_quantization import measure_run

    result = measure_run(run_dir, quantizations)
    costs = ", ".join(f"{q.quantization} {q.loss - result.unquantized.loss:+.4f}" for q in result.quantized)
    print(f"cached decoding: unquantized {result.unquantized.loss:.4f} (full forward {result.full_forward_loss:.4f});"
          f" cost {costs} nats/token; {result.wall_time_s:.0f} s", flush=True)


def remove_step_checkpoints(out_dir: Path) -> None:
    """Deletes the resume points of a finished run (``step-*``, ``incomplete-step-*``); ``final/`` stays."""
    for path in [*Path(out_dir).glob("step-*"), *Path(out_dir).glob("incomplete-step-*")]:
        shutil.rmtree(path)


# ---------------------------------------------------------------------------------------------- command
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m litgpt_mka.compare.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=("train", "evaluate", "lm_eval", "kv_quantization"))
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--keep_step_checkpoints", action="store_true", help="evaluate: keep the step-* folders")
    parser.add_argument("--tasks", help="lm_eval: comma-separated lm-eval task names")
    parser.add_argument("--include_path", type=Path, help="lm_eval: a folder of extra task YAML files")
    parser.add_argument("--quantizations", help="kv_quantization: comma-separated kv_cache_quantization names")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pretrain"]:
        # a rank > 0 of a multi-device run: Fabric starts `python -m <this module> <sys.argv[1:]>` again
        run_litgpt_pretrain(argv[1:])
        return
    args = parse_args(argv)
    if args.phase == "train":
        train(args.run_dir)
    elif args.phase == "lm_eval":
        score_tasks(args.run_dir, args.tasks.split(","), args.include_path)
    elif args.phase == "kv_quantization":
        measure_quantized_caches(args.run_dir, args.quantizations.split(","))
    else:
        evaluate(args.run_dir, args.keep_step_checkpoints)


if __name__ == "__main__":
    main()
