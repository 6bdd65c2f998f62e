"""``litgpt-mka evaluate``: lm-evaluation-harness tasks on a litgpt checkpoint of any variant, directly.

    litgpt-mka evaluate CHECKPOINT_DIR --tasks lambada_openai,piqa [--num_fewshot N] [--batch_size N|auto]
        [--max_batch_size N] [--limit N] [--include_path DIR] [--device D] [--precision P] [--out_dir DIR] [--seed S]

``litgpt evaluate`` converts a checkpoint to Hugging Face first, so it cannot evaluate MLA, MKA or FMKA;
here the litgpt ``GPT`` (which the plugin builds for every variant from ``model_config.yaml``) answers lm-eval's
requests itself. lm-eval is the optional extra ``[eval]``. It is a thin wrapper over lm-eval's own path:
``simple_evaluate(model="litgpt-mka", model_args=...)``, the model that ``lm_eval --model litgpt-mka --model_args
checkpoint_dir=DIR`` builds too. Writes ``OUT_DIR/results.json`` (lm-eval's results) and ``OUT_DIR/results.md``
(its table); progress is a tqdm bar per request type on stderr.

Modules
-------
* :mod:`.command`: the command's options (:func:`~.command.evaluate`) and :func:`~.command.evaluate_checkpoint`.
* :mod:`.lm`: :class:`~.lm.LitgptLM`, lm-eval's model interface over a litgpt ``GPT`` (imports lm-eval).
* :mod:`.scoring`: log-likelihoods of lm-eval's requests in batched windows, the largest batch that fits.
* :mod:`.registration`: registers ``litgpt-mka`` with lm-eval when ``lm_eval.models`` is first imported (the
  plugin's import finder, :mod:`litgpt_mka.plugin.activation`).
* :mod:`.results`: ``results.json`` and ``results.md``, and the task scores (:class:`~.results.TaskScore`) read
  back from them.
* :mod:`.cloze`: the local TinyStories cloze task (``litgpt-mka cloze``).

Importing this package imports neither torch nor lm-eval (``litgpt-mka compare --help`` reads it).
"""

from litgpt_mka.evaluate.command import (
    evaluate,
    evaluate_checkpoint,
    lm_eval_missing_message,
    lm_eval_requirement,
    task_manager,
)

__all__ = ["evaluate", "evaluate_checkpoint", "lm_eval_missing_message", "lm_eval_requirement", "task_manager"]
