"""How much a frozen model loses on reoriented images: val accuracy and loss of a saved head (with its frozen
backbone) on each of the 8 dihedral transforms of the val split, the plain images and their rotations and flips.

    python experiments/quality/bench_orientation.py --head runs/bench_finetune_elpv/head

If a transform costs the frozen model much, a fine-tune trained under that augmentation spends its first epochs
learning to undo it, and its val (the plain images) falls before it can rise: the fine-tune's augmentation
choice on ELPV rests on this table. The head is ``bench_finetune.py``'s swept head (Lite0 pooled features at 300 px
on ELPV's default split). JSON: ``head``, ``dataset``, ``image_size``, ``rows`` ([{transform, accuracy, loss}]),
``seconds``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from jaxheads import data, export


def dihedral(images: np.ndarray, k: int) -> np.ndarray:
    """Transform k of the dihedral group on (N, H, W, C): k % 4 quarter turns, then a left-right flip if k >= 4."""
    out = np.rot90(images, k % 4, axes=(1, 2))
    return np.ascontiguousarray(out[:, :, ::-1] if k >= 4 else out)


NAMES = ("identity", "rot90", "rot180", "rot270", "flip", "rot90+flip", "rot180+flip", "rot270+flip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", type=Path, default=Path("runs/bench_finetune_elpv/head"))
    parser.add_argument("--dataset", default="elpv")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_orientation.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    model = export.image_model(args.head)
    ds = data.load_dataset(args.dataset, seed=0)
    batches = list(data.iter_batches(ds.split("val"), image_size=model.image_size, batch_size=32))
    labels = np.concatenate([b.labels for b in batches])
    rows = []
    for k, name in enumerate(NAMES):
        probs = np.concatenate([model.predict(dihedral(b.images, k)) for b in batches])
        loss = float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))))
        rows.append({"transform": name, "accuracy": float(np.mean(probs.argmax(-1) == labels)), "loss": loss})
        print(f"{name:>12}  val accuracy {rows[-1]['accuracy']:.4f}  loss {loss:.4f}", flush=True)
    record = {"head": str(args.head), "dataset": ds.name, "image_size": model.image_size, "rows": rows,
              "seconds": time.perf_counter() - start}
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
