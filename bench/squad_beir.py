"""Write the SQuAD 2.0 dev sample as a BEIR-format retrieval set.

The corpus is the sample's distinct context paragraphs, one document each (no
title: the sample does not keep SQuAD's article names); every question, the
unanswerable ones included (they are still about their paragraph), is a query
whose one relevant document is the paragraph it was asked about. The result is
read by ``verity eval retrieval --dataset OUT`` like any BEIR set.

Run from the repository root:

    python bench/squad_beir.py --squad ../shared/datasets/squad_v2_dev500 --out data/squad-beir
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def paragraph_id(context: str) -> str:
    """A stable id for a paragraph: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(context.encode()).hexdigest()[:16]


def write_beir(squad: Path, out: Path) -> tuple[int, int]:
    """Write ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/test.tsv`` under ``out``.

    Returns:
        The number of paragraphs and of queries written.
    """
    items = json.loads((squad / "queries.json").read_text(encoding="utf-8"))["queries"]
    corpus: dict[str, str] = {}
    for item in items:
        corpus.setdefault(paragraph_id(item["context"]), item["context"])
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for pid, text in corpus.items():
            f.write(json.dumps({"_id": pid, "title": "", "text": text}) + "\n")
    with (out / "queries.jsonl").open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps({"_id": item["id"], "text": item["question"]}) + "\n")
    with (out / "qrels" / "test.tsv").open("w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for item in items:
            f.write(f"{item['id']}\t{paragraph_id(item['context'])}\t1\n")
    return len(corpus), len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--squad", type=Path, default=Path("../shared/datasets/squad_v2_dev500"),
                        help="folder with the sample's queries.json")
    parser.add_argument("--out", type=Path, required=True, help="folder for the BEIR files")
    args = parser.parse_args()
    paragraphs, queries = write_beir(args.squad, args.out)
    print(f"{paragraphs} paragraphs, {queries} queries -> {args.out}")


if __name__ == "__main__":
    main()
