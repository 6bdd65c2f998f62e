"""A local TinyStories cloze task for lm-eval, LAMBADA's format: predict the last word of held-out stories.

    litgpt-mka cloze ../shared/data/tinystories/val.txt --out_dir tasks/tinystories
    (or python -m litgpt_mka.evaluate.cloze, the same options)

writes ``OUT_DIR/tinystories_cloze.jsonl`` (one story per line: ``context``, every word but the last, and
``target``, the last word without its punctuation) and ``OUT_DIR/tinystories_cloze.yaml``, the task
(``output_type: loglikelihood``; ``acc``: the target is the greedy continuation, ``perplexity`` of the target),
naming the JSON file by its absolute path so that ``--include_path OUT_DIR`` works from any directory.
Stories whose last word is not plain letters (a quote, a number) are skipped.
"""

import argparse
import json
import re
from pathlib import Path

from litgpt_mka.atomic import write_text
from litgpt_mka.data import split_documents, text_files

TASK = "tinystories_cloze"
LAST_WORD = re.compile(r"^(?P<context>.*\S)\s+(?P<target>[A-Za-z][A-Za-z'-]*)[.!?]*$", re.DOTALL)

TASK_YAML = """\
# TinyStories cloze (LAMBADA's format): the last word of held-out stories; built by litgpt_mka/evaluate/cloze.py
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{' ' + target}}}}"  # the space before the word, as lambada_openai writes it
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def cloze_docs(stories: list[str], max_docs: int | None = None) -> list[dict[str, str]]:
    """``{"context", "target"}`` per story whose text ends in a plain word; at most `max_docs` of them."""
    docs = []
    for story in stories:
        match = LAST_WORD.match(story.strip())
        if match:
            docs.append({"context": match["context"], "target": match["target"]})
        if max_docs is not None and len(docs) == max_docs:
            break
    return docs


def write_cloze_task(val_path: Path, out_dir: Path, max_docs: int | None = None) -> Path:
    """Writes the task's JSON Lines and YAML into `out_dir`; returns the YAML's path.

    Raises:
        FileNotFoundError: nothing exists at `val_path`.
        ValueError: `val_path` is a folder without .txt files, or no story of it ends in a plain word.
    """
    stories = [doc for path in text_files(Path(val_path), "val_path") for doc in split_documents(path.read_text(encoding="utf-8"))]
    docs = cloze_docs(stories, max_docs)
    if not docs:
        raise ValueError(f"val_path={str(val_path)!r}: no story ends in a plain word, so there is nothing to predict")
    out_dir = Path(out_dir).resolve()
    data_file = out_dir / f"{TASK}.jsonl"
    write_text(data_file, "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs))
    yaml_file = out_dir / f"{TASK}.yaml"
    write_text(yaml_file, TASK_YAML.format(task=TASK, data_file=json.dumps(str(data_file))))
    return yaml_file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("val_path", type=Path, help="held-out .txt file(s) or folder, stories separated by <|endoftext|> lines")
    parser.add_argument("--out_dir", type=Path, required=True, help="folder for the task (pass it as --include_path)")
    parser.add_argument("--max_docs", type=int, default=None, help="at most this many stories (default: all)")
    args = parser.parse_args(argv)
    yaml_file = write_cloze_task(args.val_path, args.out_dir, args.max_docs)
    print(f"wrote {yaml_file} and {yaml_file.with_suffix('.jsonl')}")


if __name__ == "__main__":
    main()
