"""`litgpt-mka compare`: train, evaluate and measure attention variants the same way, then report.

    litgpt-mka compare --configs config_hub/pretrain/pythia-14m-*.yaml --seeds 1 2 3 \\
        --max_tokens 300000 --max_seq_length 512 --out_dir out/compare/pythia-14m

Modules (one concern each)
--------------------------
* :mod:`.options`: :class:`~.options.CompareOptions`, the command's options, declared once (jsonargparse
  reads the dataclass; ``litgpt_mka/cli.py``).
* :mod:`.records`: the typed records of every file written and read back (``spec.json``, ``train.json``,
  ``result.json``, ``results.json``), and their one JSON form.
* :mod:`.layout`: the output folder: every file name, a run's folder (:class:`~.layout.RunFolder`) and plan
  (:class:`~.layout.RunPlan`), reading a run's files back.
* :mod:`.plan`: the runs (config x rate x seed), their ``litgpt pretrain`` arguments, the check that every
  setting except the model is identical across configs, the reference variant, the curve-length warning.
* :mod:`.learning_rates`: the learning-rate axis (``--learning_rates``, ``--config_learning_rates``): each run's
  optimizer at its rate, and the held-apart choice of each variant's rate (``--selection_val``), on some seeds
  before the others run at it (``--selection_seeds``).
* :mod:`.runner`: runs every run in its own worker processes, with resume, progress and failure records; after
  every run, reads the results back and has the report rewritten.
* :mod:`.launch`: who starts the runs (``--launcher``): in order here (the default), several at once here with
  one GPU each, or one SLURM job per run through submitit.
* :mod:`.worker`: ``python -m litgpt_mka.compare.worker {train,evaluate,lm_eval,kv_quantization} RUN_DIR``: the
  per-run processes (training; held-out evaluation and measurements; lm-eval task scores; quantized-cache decoding).
* :mod:`.heldout`: the exact held-out evaluation of a checkpoint (full forward, and through the KV cache).
* :mod:`.measurements`: parameters, training throughput, peak memory, KV cache, decode speed, routing weights.
* :mod:`.summary`: per-variant mean ± std over seeds, differences to the reference with their t-test and
  verdict, the Pareto frontier; :mod:`.statistics`: Student's t, the paired and Welch tests, Holm's adjustment.
* :mod:`.tasks`: lm-eval task scores of each run's final checkpoint (``--lm_eval_tasks``).
* :mod:`.kv_quantization`: cached decoding of each run's final checkpoint through quantized KV caches
  (``--kv_cache_quantizations``).
* :mod:`.report` and :mod:`.plots`: ``results.json``, ``results.csv``, ``report.md`` and the PNG plots, from
  a typed :class:`~.records.Results` (they import neither the runner nor the plan).
* :mod:`.environment`, :mod:`.eta`: versions/machine, and the time left.

Checkpoints are read by :mod:`litgpt_mka.checkpoint`, files written atomically by :mod:`litgpt_mka.atomic`, task
scores come from :mod:`litgpt_mka.evaluate` (compare imports evaluate, never the reverse: docs/design.md, Layers).

Imports run one way: launch <- options, records <- layout <- plan <- runner -> report -> summary -> statistics,
plots; the workers import layout, records, heldout and measurements (and tasks, kv_quantization). The busy rule
and the decode measurement are :mod:`litgpt_mka.measure`'s; what a variant is (its label, whether it is MHA or
routes memories) the registry's.

Output folder (:mod:`.layout`)
------------------------------
::

    OUT/results.json  results.csv  report.md  loss_vs_tokens.png  loss_vs_kv_cache.png  [routing.png]  throughput.png
    OUT/runs/<config stem>-seed<seed>/
        spec.json          what the run is (config path and sha256, seed, litgpt arguments); a rerun with
                           other settings into the same OUT is refused
        checkpoints/       litgpt pretrain's --out_dir: step-*/ (resume and curve points; deleted once the run
                           finished, unless --keep_step_checkpoints), final/, logs/csv/version_*/metrics.csv
        run.log            the workers' full output (training and evaluation), every attempt appended
        train.json         written when training finished (wall time, peak memory and load of the training process)
        result.json        written last: status "ok" with every metric, or "failed" with the log's tail
        lm_eval.json       with --lm_eval_tasks: lm-eval task scores of final/ (:mod:`.tasks`), written after
                           result.json and never into it, so adding tasks to a finished comparison trains nothing
        kv_quantization.json  with --kv_cache_quantizations: the held-out loss of cached decoding of final/ through
                           the unquantized and each quantized cache, and their bytes (:mod:`.kv_quantization`), the
                           same way

A run is finished iff its ``result.json`` says ``"status": "ok"``; finished runs are never touched
again. Every other run, failed ones included, is (re)started: training with ``--resume auto`` (litgpt continues from the latest
``step-*`` checkpoint) unless ``train.json`` exists, then evaluation. All files are written atomically
(temporary file + ``os.replace``), so an interrupt leaves either the old or the new version.

Metrics
-------
* Validation loss: per validation text (``--val_path`` takes several; the first is the primary one),
  mean token-level cross-entropy (nats) of the final checkpoint, in float32, over the whole text and
  nothing else: windows of ``max_seq_length + 1`` tokens laid out by
  :func:`litgpt_mka.data.validation_windows` (stride ``max_seq_length``, plus one window aligned to
  the end of the stream whose already-seen targets are skipped), so every token after the first is a
  target exactly once; no padding exists. Perplexity = exp(validation loss). The curve points
  evaluate every ``step-*`` checkpoint the same way on the primary text; litgpt's own in-training
  validation (a mean of per-batch means over ``eval.max_iters`` batches) is switched off. Fewer than 8
  curve points per run are warned about before training.
* Training throughput: tokens per second over the iterations litgpt itself timed (``iter_time`` in
  metrics.csv, logged every iteration) of the last training process (for a resumed run, the one whose
  load is recorded), excluding its first ``throughput_skip_iters`` iterations (compilation, allocator
  warm-up): timed iterations x tokens per iteration / sum of their ``iter_time``. Checkpoint saving is
  outside ``iter_time``.
* Wall time: the ``litgpt pretrain`` call in the training process (litgpt's imports, data, model,
  compilation, training, checkpoint saves) of the attempt that finished; resumed runs are marked.
* Peak memory: of the training process only: CUDA ``max_memory_allocated`` (reset at process start) on
  GPU, else the process's peak resident set size (``ru_maxrss``). The evaluation process's own peak is
  recorded separately in results.json.
* KV cache: the bytes of the buffers that ``set_kv_cache`` allocates for ``decode_batch_size`` x
  ``context_length`` in the decode dtype (all layers), and that divided by batch x context (bytes per
  token). :mod:`litgpt_mka.measure.kv_cache_size`'s accounting is recorded beside them; a disagreement is warned
  about and noted in report.md.
* Busy timings: the 1-minute load average is recorded right before and right after each timed phase
  (training, decode measurement), with the process's CPU and wall time; above the run's threads + 0.5
  (:mod:`litgpt_mka.measure.load`, the rule the decode benchmark uses too), the phase is busy and report.md
  prints its timing cells as "busy" (results keep the numbers): :class:`~.records.PhaseLoad`.
* Routing weights (MKA/FMKA): mean lambda per layer and memory on the primary text
  (:func:`litgpt_mka.attention.mka.routing_weights`).
* Differences: primary validation loss of every variant minus the reference's (default: the MHA config),
  with its 95% interval, df and p from a paired t-test (``--paired``, the default: paired initialisation) or a
  Welch t-test, Holm-adjusted over the variants, and a verdict (better, worse, cannot tell): :mod:`.summary`,
  :mod:`.statistics`.
* Decode: greedy cached decode tokens/s (:func:`litgpt_mka.measure.decode_speed.measure_decode_tokens_per_second`) at
  ``context_length`` prompt tokens and ``decode_batch_size`` sequences, in the decode dtype (default:
  the dtype of ``litgpt generate``'s default precision on the machine: bfloat16 on bf16 GPUs and on CPUs with
  native bf16, float32 on CPUs that emulate it, :mod:`litgpt_mka.precision`).
"""
