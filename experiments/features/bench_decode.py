"""Benchmark: images/s of decode + resize into batches, as the feature pass consumes them (issue 27, item 2): the
current thread pool (``jaxheads.data.iter_batches``) against grain (worker processes, and its threads), on the same
images.

    python experiments/features/bench_decode.py [--rounds 2] [--workers 2] [--batch 32] [--size 224]
        [--elpv-images 1200] [--fashion-images 2000] [--out experiments/results/bench_decode.json]

Variants (each yields ``jaxheads.data.Batch`` es of ``--batch`` images resized + centre-cropped to ``--size``):
- ``threads``: ``data.iter_batches`` (the default path: a thread pool of ``--workers``, 2 batches prefetched);
- ``grain-threads``: the ``grain-mp`` pipeline below with grain's reading threads (``ReadOptions(num_threads=
  --workers)``) instead of processes: grain's own overhead, without worker start-up or inter-process copies;
- ``grain-mp``: ``grain.MapDataset`` of the indices, ``.map`` decode + resize, ``ShardByJaxProcess`` slicing,
  ``.to_iter_dataset().mp_prefetch`` on ``--workers`` spawned processes (grain interleaves their slices back into
  the source order), and batches stacked in the parent: the same batches, in the same order, as ``threads``;
- ``grain-loader``: ``grain.DataLoader`` (``IndexSampler`` unshuffled, one epoch, ``ShardByJaxProcess``,
  ``worker_count=--workers``) with ``grain.transforms.Batch`` in the workers: deterministic, but each batch holds
  one worker's interleaved slice of the indices, not a contiguous run.

Datasets: ELPV's PNG files (``data.load_dataset('elpv')``, its first ``--elpv-images`` images over all splits,
300x300 grayscale) and a folder of ``--fashion-images`` Fashion-MNIST PNGs (28x28, stratified from Debian's IDX
test set, written to a temporary folder and read back through ``data.load_dataset(folder)``).

Each (dataset, variant) runs in its own Python process, so the memory figures are that variant's alone; variants
alternate (the order is reversed every other round) over ``--rounds`` rounds, since the box is shared. Per run:
``images_per_s`` (all images / the time from building the iterator, worker start included, to the last batch),
``steady_images_per_s`` (after the first batch), ``first_batch_s``, ``peak_rss_mib`` (the parent's VmHWM),
``peak_tree_pss_mib`` (the sampled peak of the proportional set size summed over the parent and its worker
processes: shared libraries counted once), ``content_sha`` (the pixels, by image index: equal across variants
means the same pixels) and ``order_sha`` (the index stream: ``threads``, ``grain-threads`` and ``grain-mp``
should agree), and the load average before and after. ``summary``: per dataset and variant the medians over
rounds of images/s, steady images/s and first-batch time, the ratio to ``threads`` in each round (the runs of a
round are minutes apart) and its median (``ratio_to_threads``), the memory peaks, and whether the pixels and the
order equal ``threads``'. JSON also has ``grain_import_s`` (``import grain`` in a fresh interpreter: it imports jax, and
each spawned worker pays it; the runs import grain and start JAX's backend before their timer, as the feature pass
has), ``machine``, versions and ``load_average`` (1/5/15 min) at start and end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("threads", "grain-threads", "grain-mp", "grain-loader")
DATASETS = ("elpv", "fashion-png")


# ---------------------------------------------------------------------------------------------------------------
# The grain variants (module level, so the spawned workers can unpickle them)


class DecodeRecord:
    """Source index -> {"image": (S, S, 3) uint8, "index", "ok"}: the decode + resize ``iter_batches`` runs. An
    unreadable image comes back as zeros with ``ok`` False (an exception would stop the worker); the parent
    decodes it again for the message."""

    def __init__(self, split: Any, size: int) -> None:
        self.split, self.size = split, size

    def __call__(self, index: int) -> dict[str, Any]:
        from jaxheads.data import BadImageError, load_image, resize_center_crop

        index = int(index)
        try:
            image = resize_center_crop(load_image(self.split.sources[index], name=self.split.name(index)), self.size)
            ok = True
        except BadImageError:
            image, ok = np.zeros((self.size, self.size, 3), np.uint8), False
        return {"image": image, "index": np.int64(index), "ok": ok}


class RecordSource:
    """The indices to decode as a grain ``RandomAccessDataSource`` (for ``grain.DataLoader``)."""

    def __init__(self, split: Any, indices: np.ndarray, size: int) -> None:
        self.decode, self.indices = DecodeRecord(split, size), np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.decode(self.indices[k])


def _to_batch(split: Any, images: np.ndarray, indices: np.ndarray, ok: np.ndarray) -> Any:
    from jaxheads.data import Batch

    kept = indices[ok]
    return Batch(images[ok], split.labels[kept], kept, indices[~ok])


def _grain() -> Any:
    """grain, with absl's flags marked parsed (grain reads its flags; a program that is not an absl app never
    parses them, and grain's multiprocessing refuses unparsed flags)."""
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain


def grain_mp_batches(split: Any, indices: np.ndarray, size: int, batch: int, workers: int,
                     processes: bool = True) -> Iterator[Any]:
    """MapDataset -> decode -> ShardByJaxProcess slice -> mp_prefetch(workers) (or, without ``processes``, grain's
    reading threads: ``ReadOptions(num_threads=workers)``), batches stacked in the parent."""
    grain = _grain()

    shard = grain.sharding.ShardByJaxProcess(drop_remainder=False)
    ds = grain.MapDataset.source(np.asarray(indices, np.int64)).map(DecodeRecord(split, size))
    ds = ds[shard.shard_index :: shard.shard_count]
    if processes:
        iterable = ds.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    else:
        iterable = ds.to_iter_dataset(grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * batch))
    it = iter(iterable)
    records: list[dict[str, Any]] = []
    try:
        for record in it:
            records.append(record)
            if len(records) == batch:
                yield _stack(split, records)
                records = []
        if records:
            yield _stack(split, records)
    finally:
        if hasattr(it, "close"):
            it.close()


def _stack(split: Any, records: list[dict[str, Any]]) -> Any:
    return _to_batch(split, np.stack([r["image"] for r in records]), np.asarray([r["index"] for r in records]),
                     np.asarray([r["ok"] for r in records]))


def grain_loader_batches(split: Any, indices: np.ndarray, size: int, batch: int, workers: int) -> Iterator[Any]:
    """grain.DataLoader: unshuffled IndexSampler, ShardByJaxProcess, Batch in the workers."""
    grain = _grain()

    shard = grain.sharding.ShardByJaxProcess(drop_remainder=False)
    source = RecordSource(split, indices, size)
    sampler = grain.samplers.IndexSampler(len(source), shard_options=shard, shuffle=False, num_epochs=1)
    loader = grain.DataLoader(data_source=source, sampler=sampler, shard_options=shard, worker_count=workers,
                              operations=[grain.transforms.Batch(batch, drop_remainder=False)])
    for out in loader:
        yield _to_batch(split, out["image"], out["index"], out["ok"].astype(bool))


# ---------------------------------------------------------------------------------------------------------------
# One run (a child process)


class TreeMemory:
    """Peak PSS summed over this process and its children, sampled every ``interval_s`` on a thread."""

    def __init__(self, interval_s: float = 0.1) -> None:
        import psutil

        self.me, self.interval_s, self.peak = psutil.Process(), interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        total = 0
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                total += proc.memory_full_info().pss
            except Exception:  # noqa: BLE001, S112 - a worker that exits between listing and reading
                continue
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> TreeMemory:  # noqa: PYI034
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def load_split(name: str, folder: str | None, count: int) -> Any:
    """The images to decode: ELPV's first ``count`` over its splits, or the whole PNG folder."""
    from jaxheads import data

    ds = data.load_dataset("elpv" if name == "elpv" else folder)
    sources = [s for split in ds.splits.values() for s in split.sources]
    labels = np.concatenate([split.labels for split in ds.splits.values()])
    order = np.argsort(np.asarray(sources), kind="stable")[:count]  # by path: the same images in every process
    return data.ImageSplit([sources[i] for i in order], labels[order])


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from jaxheads import data

    jax.process_index()  # the feature pass has started JAX's backend before it reads batches (ShardByJaxProcess asks)
    if args.variant.startswith("grain"):
        _grain()  # its import (which imports jax) is timed in the parent, once: not part of each pass

    split = load_split(args.dataset, args.folder, args.count)
    indices = np.arange(len(split))
    make = {"threads": lambda: data.iter_batches(split, image_size=args.size, batch_size=args.batch,
                                                 num_workers=args.workers),
            "grain-threads": lambda: grain_mp_batches(split, indices, args.size, args.batch, args.workers, False),
            "grain-mp": lambda: grain_mp_batches(split, indices, args.size, args.batch, args.workers),
            "grain-loader": lambda: grain_loader_batches(split, indices, args.size, args.batch, args.workers)}
    load_before = os.getloadavg()
    pixels: dict[int, bytes] = {}
    order = hashlib.sha256()
    with TreeMemory() as memory:
        start = time.perf_counter()
        first, first_n = None, 0
        for batch in make[args.variant]():
            if first is None:
                first, first_n = time.perf_counter(), len(batch.indices) + len(batch.skipped)
            order.update(batch.indices.tobytes())
            for i, image in zip(batch.indices.tolist(), batch.images, strict=True):
                pixels[i] = hashlib.sha256(image.tobytes()).digest()
        end = time.perf_counter()
    content = hashlib.sha256(b"".join(pixels[i] for i in sorted(pixels))).hexdigest()[:16]
    return {"dataset": args.dataset, "variant": args.variant, "images": len(pixels), "workers": args.workers,
            "images_per_s": len(pixels) / (end - start), "first_batch_s": (first or end) - start,
            "steady_images_per_s": (len(pixels) - first_n) / max(end - (first or end), 1e-9),
            "peak_rss_mib": _vm_hwm_kib() / 1024, "peak_tree_pss_mib": memory.peak / 2**20,
            "content_sha": content, "order_sha": order.hexdigest()[:16],
            "load_before": load_before, "load_after": os.getloadavg()}


def _vm_hwm_kib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1])
    return float("nan")


# ---------------------------------------------------------------------------------------------------------------
# The parent: the PNG folder, the alternating runs, the table


def write_fashion_pngs(folder: Path, count: int) -> None:
    """``count`` Fashion-MNIST test images, stratified, as PNG files in one sub-folder per class."""
    from PIL import Image

    from jaxheads import data

    test = data.fashion_mnist(val_fraction=0.1).split("test")
    keep = data.stratified_split(test.labels, {"rest": 1 - count / len(test)})["train"]
    for i in keep.tolist():
        target = folder / f"class{int(test.labels[i])}" / f"{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.sources[i]).save(target)


def run_variant(args: argparse.Namespace, dataset: str, variant: str, folder: Path) -> dict[str, Any]:
    count = args.elpv_images if dataset == "elpv" else args.fashion_images
    command = [sys.executable, __file__, "--child", variant, "--dataset", dataset, "--folder", str(folder),
               "--count", str(count), "--workers", str(args.workers), "--batch", str(args.batch),
               "--size", str(args.size)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{dataset}/{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _import_seconds(module: str) -> float:
    """Wall seconds of ``import module`` in a fresh interpreter (what each spawned grain worker pays too)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset and variant: medians over rounds, and the ratio to ``threads`` paired by round (the two ran
    minutes apart, under the same load), whose median is the figure to read."""
    out: dict[str, Any] = {}
    for dataset in DATASETS:
        mine = [r for r in rows if r["dataset"] == dataset]
        base = {r["round"]: r["images_per_s"] for r in mine if r["variant"] == "threads"}
        out[dataset] = {}
        for v in VARIANTS:
            runs = [r for r in mine if r["variant"] == v]
            paired = [r["images_per_s"] / base[r["round"]] for r in runs]
            out[dataset][v] = {
                "median_images_per_s": statistics.median(r["images_per_s"] for r in runs),
                "median_steady_images_per_s": statistics.median(r["steady_images_per_s"] for r in runs),
                "median_first_batch_s": statistics.median(r["first_batch_s"] for r in runs),
                "ratio_to_threads_by_round": paired, "ratio_to_threads": statistics.median(paired),
                "max_peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                "max_peak_tree_pss_mib": max(r["peak_tree_pss_mib"] for r in runs),
                "same_pixels_as_threads": len({r["content_sha"] for r in mine if r["variant"] in ("threads", v)}) == 1,
                "same_order_as_threads": len({r["order_sha"] for r in mine if r["variant"] in ("threads", v)}) == 1}
    return out


def print_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"{'dataset':<12} {'variant':<13} {'round':>5} {'img/s':>8} {'steady':>8} {'1st s':>6} "
          f"{'rss MiB':>8} {'tree PSS':>9} {'load':>5}")
    for r in rows:
        print(f"{r['dataset']:<12} {r['variant']:<13} {r['round']:>5} {r['images_per_s']:>8.1f} "
              f"{r['steady_images_per_s']:>8.1f} {r['first_batch_s']:>6.2f} {r['peak_rss_mib']:>8.0f} "
              f"{r['peak_tree_pss_mib']:>9.0f} {r['load_before'][0]:>5.1f}")
    print("\nmedian images/s over rounds (median of the per-round ratios to threads):")
    for dataset, variants in summary.items():
        cells = ", ".join(f"{v} {s['median_images_per_s']:.1f} ({s['ratio_to_threads']:.2f}x)"
                          for v, s in variants.items())
        print(f"  {dataset}: {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--elpv-images", type=int, default=1200)
    parser.add_argument("--fashion-images", type=int, default=2000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "bench_decode.json")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", choices=DATASETS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.variant = args.child
        print(json.dumps(run_child(args)))
        return
    variants = tuple(v for v in args.variants.split(",") if v)
    load_start, rows = os.getloadavg(), []
    grain_import_s = _import_seconds("grain")
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        folder = Path(tmp)
        write_fashion_pngs(folder, args.fashion_images)
        for r in range(args.rounds):
            for dataset in DATASETS:
                for variant in variants if r % 2 == 0 else variants[::-1]:
                    row = run_variant(args, dataset, variant, folder) | {"round": r}
                    rows.append(row)
                    print(f"  {dataset} {variant} round {r}: {row['images_per_s']:.1f} img/s", file=sys.stderr)
    summary = summarise(rows) if set(variants) == set(VARIANTS) else {}
    print_table(rows, summary)
    print(f"import grain: {grain_import_s:.2f} s; load average {load_start} -> {os.getloadavg()}")
    import grain
    import PIL

    result = {"rows": rows, "summary": summary, "settings": {k: v for k, v in vars(args).items()
                                                             if k not in ("child", "variant", "dataset", "folder",
                                                                          "count", "out")},
              "load_average": {"start": load_start, "end": os.getloadavg()}, "cpu_count": os.cpu_count(),
              "grain_import_s": grain_import_s,
              "machine": platform.platform(), "python": platform.python_version(),
              "versions": {"grain": getattr(grain, "__version__", "0.2.18"), "pillow": PIL.__version__,
                           "numpy": np.__version__}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
