"""Where the int8 embedder's time goes, per chunk, and the ingestion rate that bounds.

Splits the first SciFact abstracts as ingestion does (the default chunking and the
text ingestion embeds), runs each chunk alone through the cached int8 export on one
thread with ONNX Runtime's profiler on, and prints the kernel time per chunk by kind
of operator: the integer products, attention's float32 products and softmax, the
per-token quantization the export adds, and the rest. The last lines say how fast a
chunk would have to go for a target rate, given a measured rate at today's cost.

    PYTHONPATH=. python bench/embedder_profile.py --data ../shared/datasets/scifact \
        --docs 300 --chunks 200 --measured 35.76 --target 58.9
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, and bench/ingest.py would
# stand in for the ingest package; the repository must come first.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

from ingest.beir import load_beir_corpus  # noqa: E402
from ingest.splitter import TokenSplitter, embedding_text  # noqa: E402
from verity.backends.onnx_embedder import OnnxEmbedder  # noqa: E402
from verity.core.settings import ChunkingSettings, EmbedderSettings, default_data_dir  # noqa: E402

ATTENTION = {"FusedMatMul", "MatMul", "Softmax", "Transpose", "Add", "Reshape"}


def chunk_texts(data: Path, tokenizer: object, *, docs: int, chunks: int) -> list[str]:
    """The first ``chunks`` texts ingestion would embed for the first ``docs`` documents."""
    chunking = ChunkingSettings()
    splitter = TokenSplitter(tokenizer, chunk_tokens=chunking.chunk_tokens,
                             overlap_tokens=chunking.overlap_tokens)
    texts: list[str] = []
    for number, document in zip(range(docs), load_beir_corpus(data, fingerprint=""), strict=False):
        texts += [embedding_text(c, title=document.title)
                  for c in splitter.split(document, doc_id=str(number))]
    return texts[:chunks]


def kind(op: str, name: str) -> str:
    """The row a profiled kernel is counted in.

    The export's own nodes have no names (ONNX Runtime calls them ``Mul_12`` and so on),
    except each product's last ``Reshape``, which keeps the replaced MatMul's name.
    """
    if op == "MatMulIntegerToFloat":
        return "int8 products"
    if op == "Gelu":  # fused by ONNX Runtime, which names it anew
        return "other Gelu"
    if not name.startswith("/") or name.endswith("/MatMul"):
        return "per-token quantization and rescaling"
    projection = any(part in name for part in ("/query/", "/key/", "/value/"))
    if "/attention/self/" in name and op in ATTENTION and not projection:
        return f"attention {op}"
    return f"other {op}"


def profile(model: Path, encodings: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Milliseconds of kernel time a run, by kind, over one run of every encoded text."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="verity-profile-") as tmp:
        options.profile_file_prefix = f"{tmp}/run"
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        feeds = [{name: encoded[name].astype(np.int64) for name in names} for encoded in encodings]
        runs = feeds[:4] + feeds  # a few first to warm up; the profiler counts every run
        for feed in runs:
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[kind(event["args"]["op_name"], event["name"])] += event["dur"]
    return {name: micros / len(runs) / 1000 for name, micros in totals.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/scifact"))
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="where the ONNX export is cached (exported there if missing)")
    parser.add_argument("--measured", type=float, help="docs/s ingestion measured at today's cost")
    parser.add_argument("--target", type=float, help="docs/s wanted")
    args = parser.parse_args()
    embedder = OnnxEmbedder(EmbedderSettings(backend="onnx", precision="int8"), data_dir=args.data_dir)
    tokenizer = embedder.tokenizer
    texts = chunk_texts(args.data, tokenizer, docs=args.docs, chunks=args.chunks)
    encodings = [tokenizer([text], truncation=True, max_length=embedder.max_tokens, return_tensors="np")
                 for text in texts]
    ms = profile(embedder.artifact, encodings)
    whole = sum(ms.values())
    tokens = np.mean([e["input_ids"].shape[1] for e in encodings])
    print(f"{len(texts)} chunks, {tokens:.1f} tokens each on average, one thread, {embedder.artifact.name}")
    for name, took in ms.items():
        print(f"  {name:<40} {took:6.2f} ms  {took / whole:6.1%}")
    print(f"  {'all kernels':<40} {whole:6.2f} ms")
    if args.measured and args.target:
        floor = sum(took for name, took in ms.items()
                    if name == "int8 products" or name.startswith("attention"))
        print(f"{args.target:g} docs/s at the cost that gave {args.measured:g} needs "
              f"{whole * args.measured / args.target:.2f} ms a chunk; the integer and attention "
              f"kernels alone take {floor:.2f} ms")

if __name__ == "__main__":
    main()
