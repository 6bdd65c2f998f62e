"""Split TinyStories' val.txt into two held-apart halves for study v3, by story: even stories -> verdict, odd -> selection.

Study v3 picks each variant's learning rate on one half (`val-selection`) and reads its verdicts from the other
(`val-verdict`), so that the text's noise in the selection half cannot flatter the verdict (a run's own luck shows
on both halves: compare's report checks the verdicts on the seeds that did not choose the rates). Stories are
separated by lines that read `<|endoftext|>` (../shared/data/tinystories/README.md); alternating keeps both halves
alike in length and topic. The halves are derived at run time into data/ (git-ignored): the shared text is never
committed. Deterministic: the same val.txt always gives the same halves.

    python docs/study-pythia-14m-v3/split_val.py ../shared/data/tinystories/val.txt docs/study-pythia-14m-v3/data
"""

import argparse
from pathlib import Path

SEPARATOR = "<|endoftext|>"


def stories(text: str) -> list[str]:
    """The non-empty stories of a TinyStories text file, without their separator lines."""
    parts, current = [], []
    for line in text.splitlines():
        if line.strip() == SEPARATOR:
            parts.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    parts.append("\n".join(current).strip())
    return [story for story in parts if story]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("val_txt", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    all_stories = stories(args.val_txt.read_text(encoding="utf-8"))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, half in (("val-verdict", all_stories[0::2]), ("val-selection", all_stories[1::2])):
        joined = f"\n{SEPARATOR}\n".join(half) + "\n"
        (args.out_dir / f"{name}.txt").write_text(joined, encoding="utf-8")
        print(f"{name}: {len(half)} stories, {len(joined):,} characters")


if __name__ == "__main__":
    main()
