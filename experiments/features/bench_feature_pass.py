"""Benchmark: images/s of the feature pass (EfficientNet-Lite0 at 224 px, its shipped weights), the fraction of the
matmul rate it reaches, and an in-network per-layer time profile; old and new forward side by side in one run.

    python experiments/features/bench_feature_pass.py [--batch 32] [--rounds 6] [--calls 3] [--profile-repeats 3]
        [--out experiments/results/bench_feature_pass.json] [--quick]

The forward is ``jaxheads.features.compute._forward`` as ``jaxheads.features`` runs it (jitted, the batch sharded over
the devices of a mesh, uint8 images in, pooled float16 out), on synthetic uint8 images. The host is split into one
JAX device per core as the CLI does (``distributed.split_cpu_host``). Compared, alternating call by call each round:

* implementation ``old``: the whole network in ``lax.map`` micro-batches of 8 and strided depthwise convolutions
  through strided slices (``high_res_layers=0, phases=False``: the code before this benchmark); ``new``: the default
  module, whose leading ``high_res_layers`` run one image at a time (``backbones.base.HIGH_RES_MICRO_BATCH``), the
  rest in micro-batches of 8, strided depthwise views read through a phase reshape;
* layout ``2dev`` (the batch split over both CPU devices, the CLI's default) and ``1dev`` (one device).

Every case's pooled features are compared with ``old``'s, and the float32 feature maps of old and new on real
images (the first ``--batch`` ELPV training images) too: max abs differences in the JSON. GFLOPs per image:
multiply-adds of every conv counted from the model's block specs (x2), and XLA's ``cost_analysis`` of a one-image
forward. The matmul rate is ``bench_sweep.matmul_flops`` (2048x2048 float32), taken before and after; the fraction
uses the best of the two.

Profile: every case is traced (``jax.profiler``, a perfetto trace of ``--calls`` calls) ``--profile-repeats``
times, alternating; every executed XLA op is mapped to its layer through the compiled HLO's ``op_name`` metadata
(the Flax module path; loops and calls are left out, their events span the ops inside), and a layer's time is its
least over the traces (load from other users only adds time). Summed per layer and per kind (stem, 1x1 expand,
depthwise k x k / stride, 1x1 project, head, other), with GFLOP/s and the GB/s of the float32 maps each kind reads
and writes, next to a measured streaming rate (an elementwise pass over 256 MiB). On 2 devices the op times of
both are summed, so they are device-seconds per image, about twice the wall time.

JSON fields: ``cases`` (per implementation/layout: best and median img/s, every round's img/s, max abs diff),
``speedup`` (new/old per layout: of the best, of the medians, and per round), ``gflops_per_image``,
``xla_gflops_per_image``, ``matmul_gflops``, ``fraction_of_matmul`` (best img/s x GFLOPs / matmul GFLOP/s),
``profile`` (per case: by kind and by layer, milliseconds per image and share; ``traced_ms_per_image`` their sum),
``real_images``, ``stream_gbytes_s``, platform and versions.
``--quick`` is a smoke run (batch 8, one round, no profile): not a measurement.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gzip
import json
import math
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from jaxheads import distributed

distributed.split_cpu_host()  # before any JAX computation: the CLI's layout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxheads import backbones, parallel  # noqa: E402
from jaxheads.data import images  # noqa: E402
from jaxheads.data import sources as loaders  # noqa: E402
from jaxheads.backbones.base import feature_maps  # noqa: E402
from jaxheads.backbones.efficientnet_lite import STEM_CHANNELS, HEAD_CHANNELS, block_name  # noqa: E402
from jaxheads.features.compute import _forward  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/ is not an installed package
from experiments.sweep.bench_sweep import best_seconds, matmul_flops  # noqa: E402

BACKBONE = "efficientnet_lite0"
CONTAINER_OPS = {"while", "call", "conditional"}
SIZE = 224


def layer_macs(blocks: tuple[Any, ...], size: int = SIZE) -> dict[str, tuple[str, int, int]]:
    """{layer path: (kind, multiply-adds per image, bytes its input and output maps hold per image)}; kinds are
    ``stem``, ``expand``, ``dw{k}s{stride}``, ``project``, ``head``."""
    out: dict[str, tuple[str, int, int]] = {}
    side = size // 2
    out["stem"] = ("stem", side * side * 27 * STEM_CHANNELS, 4 * (size * size * 3 + side * side * STEM_CHANNELS))
    for i, spec in enumerate(blocks):
        name, hidden = block_name(i), spec.in_channels * spec.expand
        if spec.expand != 1:
            out[f"{name}/expand"] = ("expand", side * side * spec.in_channels * hidden,
                                     4 * side * side * (spec.in_channels + hidden))
        new_side = side // spec.stride
        out[f"{name}/depthwise"] = (f"dw{spec.kernel}s{spec.stride}", new_side * new_side * hidden * spec.kernel ** 2,
                                    4 * hidden * (side * side + new_side * new_side))
        side = new_side
        out[f"{name}/project"] = ("project", side * side * hidden * spec.out_channels,
                                  4 * side * side * (hidden + spec.out_channels))
    out["head"] = ("head", side * side * blocks[-1].out_channels * HEAD_CHANNELS,
                   4 * side * side * (blocks[-1].out_channels + HEAD_CHANNELS))
    return out


def real_image_diff(backbone: backbones.Backbone, count: int) -> dict[str, float]:
    """Max abs difference of the float32 feature maps, old vs new forward, on the first ``count`` ELPV images
    (as the feature pass sizes them), and the largest map value for scale."""
    sources = loaders.elpv().split("train").sources[:count]
    batch = np.stack([images.resize_center_crop(images.load_image(s), SIZE) for s in sources])
    old = backbone.module.clone(high_res_layers=0, phases=False)
    maps = {name: np.asarray(jax.jit(lambda v, x, m=module: feature_maps(m, v, x, backbone.config.preprocessing))(
        backbone.variables, batch)) for name, module in (("old", old), ("new", backbone.module))}
    return {"images": count, "max_abs_diff": float(np.abs(maps["new"] - maps["old"]).max()),
            "max_abs_value": float(np.abs(maps["old"]).max())}


def xla_flops_per_image(backbone: backbones.Backbone) -> float:
    """XLA's own FLOP count of a one-image forward (no lax.map, one device)."""
    shape = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), np.uint8)
    fn = jax.jit(lambda v, x: backbone.module.apply(v, backbone.config.preprocessing(x), train=False)["features"])
    cost = fn.lower(backbone.variables, shape).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", math.nan)) if cost else math.nan


def stream_rate(mib: int = 256, repeats: int = 5) -> float:
    """Bytes/s of an elementwise pass (read + write) over ``mib`` MiB of float32."""
    x = jnp.ones((mib * 1024 * 1024 // 4,), jnp.float32)
    return 2 * x.nbytes / best_seconds(jax.jit(lambda a: a * 1.0001 + 1.0), x, repeats)


class Case:
    """One (implementation, layout): the jitted feature pass bound to its module, mesh and replicated weights."""

    def __init__(self, backbone: backbones.Backbone, impl: str, devices: list[jax.Device]):
        module = backbone.module if impl == "new" else backbone.module.clone(high_res_layers=0, phases=False)
        self.mesh = parallel.make_mesh(1, devices)
        self.forward = functools.partial(_forward, module=module, preprocessing=backbone.config.preprocessing,
                                         need_maps=False, mesh=self.mesh)
        self.variables = jax.device_put(backbone.variables, parallel.replicated(self.mesh))

    def put(self, batch: np.ndarray) -> jax.Array:
        return jax.device_put(batch, parallel.data_sharding(self.mesh))

    def __call__(self, batch: jax.Array) -> jax.Array:
        pooled, _ = self.forward(self.variables, batch)
        return pooled.block_until_ready()


def time_cases(cases: dict[str, Case], batch: np.ndarray, rounds: int, calls: int) -> dict[str, dict[str, Any]]:
    """img/s of every case per round (``calls`` calls each, cases alternating within a round), and each case's max
    abs difference to the first case's pooled features."""
    inputs = {name: case.put(batch) for name, case in cases.items()}
    reference = None
    results: dict[str, dict[str, Any]] = {}
    for name, case in cases.items():
        pooled = np.asarray(case(inputs[name]), np.float32)  # compiles
        reference = pooled if reference is None else reference
        results[name] = {"max_abs_diff": float(np.abs(pooled - reference).max()), "rounds": []}
    for _ in range(rounds):
        for name, case in cases.items():
            start = time.perf_counter()
            for _ in range(calls):
                case(inputs[name])
            results[name]["rounds"].append(calls * len(batch) / (time.perf_counter() - start))
    for result in results.values():
        result["best"], result["median"] = max(result["rounds"]), float(np.median(result["rounds"]))
    return results


def op_layers(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> layer path (``stem``, ``blockNN/expand`` ...) from its op_name metadata; loops and
    calls are left out (their trace events span the ops inside them)."""
    layers: dict[str, str] = {}
    pattern = re.compile(r'%([\w.\-]+) = .*? ([\w\-]+)\(.*?op_name="([^"]*)"')
    for line in hlo_text.splitlines():
        match = pattern.search(line)
        if match is None or match.group(2) in CONTAINER_OPS:
            continue
        path = match.group(3).split("/")
        if "EfficientNetLite" not in path:
            layers[match.group(1)] = "other"
            continue
        inner = path[path.index("EfficientNetLite") + 1:]
        layers[match.group(1)] = "/".join(inner[:2] if inner and inner[0].startswith("block") else inner[:1])
    return layers


def traced_op_times(fn: Callable[[], Any], calls: int) -> dict[str, float]:
    """Seconds per executed XLA op name over ``calls`` calls of ``fn``, read from a jax.profiler perfetto trace."""
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            for _ in range(calls):
                fn()
        trace_file = next(Path(folder).rglob("*.trace.json.gz"))
        events = json.loads(gzip.decompress(trace_file.read_bytes()))["traceEvents"]
    times: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("ph") == "X":
            times[event["name"]] += event.get("dur", 0.0) * 1e-6
    return times


def hlo_layers(case: Case, batch: np.ndarray) -> dict[str, str]:
    """:func:`op_layers` of the compiled feature pass of ``case`` on a batch like ``batch``."""
    x = case.put(batch)
    return op_layers(case.forward.func.lower(case.variables, x, **case.forward.keywords).compile().as_text())


def layer_times(case: Case, batch: np.ndarray, layers: dict[str, str], calls: int) -> dict[str, float]:
    """Traced seconds per image of every layer over ``calls`` calls of ``case`` on ``batch``."""
    x = case.put(batch)
    case(x)
    per_layer: dict[str, float] = collections.defaultdict(float)
    for op, seconds in traced_op_times(lambda: case(x), calls).items():
        if op in layers:
            per_layer[layers[op]] += seconds / (len(batch) * calls)
    return per_layer


def profile(cases: dict[str, Case], batch: np.ndarray, macs: dict[str, tuple[str, int, int]], calls: int,
            repeats: int) -> dict[str, Any]:
    """Per case, by layer and by kind: traced milliseconds per image (each layer's least over ``repeats`` traces
    of ``calls`` calls, the cases alternating: load from other users only adds time), share of the traced op
    time, GFLOP/s, and the GB/s of the maps each kind reads and writes."""
    layers = {name: hlo_layers(case, batch) for name, case in cases.items()}
    best: dict[str, dict[str, float]] = {name: {} for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            for layer, seconds in layer_times(case, batch, layers[name], calls).items():
                best[name][layer] = min(best[name].get(layer, math.inf), seconds)
    return {name: profile_table(per_layer, macs) for name, per_layer in best.items()}


def profile_table(per_layer: dict[str, float], macs: dict[str, tuple[str, int, int]]) -> dict[str, Any]:
    """One case's per-layer seconds per image summed by kind, with rates."""
    total = sum(per_layer.values())
    by_kind: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"s": 0.0, "macs": 0, "bytes": 0})
    for layer, seconds in per_layer.items():
        kind, multiply_adds, map_bytes = macs.get(layer, ("other", 0, 0))
        by_kind[kind]["s"] += seconds
        by_kind[kind]["macs"] += multiply_adds
        by_kind[kind]["bytes"] += map_bytes
    kinds = {}
    for kind, row in sorted(by_kind.items(), key=lambda item: -item[1]["s"]):
        seconds = row["s"]
        kinds[kind] = {"ms_per_image": seconds * 1e3, "share": seconds / total,
                       "mmacs_per_image": row["macs"] / 1e6,
                       "gflop_s": 2 * row["macs"] / seconds / 1e9 if seconds else 0.0,
                       "gbyte_s": row["bytes"] / seconds / 1e9 if seconds else 0.0}
    return {"traced_ms_per_image": total * 1e3, "by_kind": kinds,
            "by_layer_ms_per_image": {k: v * 1e3 for k, v in sorted(per_layer.items())}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of the benchmark, as the JSON record."""
    backbone = backbones.load(BACKBONE)
    devices = jax.devices()
    macs = layer_macs(backbone.module.blocks)
    gflops = 2 * sum(m for _, m, _ in macs.values()) / 1e9
    matmul_before = matmul_flops() / 1e9
    batch = np.random.default_rng(0).integers(0, 256, (args.batch, SIZE, SIZE, 3), dtype=np.uint8)
    layouts = {f"{len(devices)}dev": devices, "1dev": devices[:1]} if len(devices) > 1 else {"1dev": devices}
    cases = {f"{impl}/{layout}": Case(backbone, impl, devs) for layout, devs in layouts.items()
             for impl in ("old", "new")}
    timings = time_cases(cases, batch, args.rounds, args.calls)
    matmul = max(matmul_before, matmul_flops() / 1e9)
    speedup = {}
    for layout in layouts:
        old, new = timings[f"old/{layout}"], timings[f"new/{layout}"]
        speedup[layout] = {"of_best": new["best"] / old["best"], "of_medians": new["median"] / old["median"],
                           "per_round": [n / o for n, o in zip(new["rounds"], old["rounds"])]}
    record: dict[str, Any] = {
        "backbone": BACKBONE, "image_size": SIZE, "batch": args.batch, "rounds": args.rounds, "calls": args.calls,
        "profile_repeats": args.profile_repeats, "cases": timings, "speedup": speedup, "gflops_per_image": gflops,
        "xla_gflops_per_image": xla_flops_per_image(backbone) / 1e9,
        "matmul_gflops": {"before": matmul_before, "best": matmul},
        "fraction_of_matmul": {name: case["best"] * gflops / matmul for name, case in timings.items()},
        "stream_gbytes_s": stream_rate() / 1e9,
    }
    if not args.quick:
        record["profile"] = profile(cases, batch, macs, args.calls, args.profile_repeats)
        record["real_images"] = real_image_diff(backbone, args.batch)
    record.update(platform=platform.platform(), processor=platform.processor(), jax=jax.__version__,
                  devices=len(devices))
    return record


def print_tables(record: dict[str, Any]) -> None:
    """The timing table, then each implementation's profile by kind."""
    print(f"{record['backbone']} at {record['image_size']} px, batch {record['batch']}: "
          f"{record['gflops_per_image']:.3f} GFLOPs/image counted (XLA says {record['xla_gflops_per_image']:.3f}); "
          f"matmul {record['matmul_gflops']['best']:.0f} GFLOP/s; stream {record['stream_gbytes_s']:.1f} GB/s")
    print(f"{'case':10s} {'best img/s':>10s} {'median':>8s} {'of matmul':>9s} {'max diff':>9s}")
    for name, case in record["cases"].items():
        print(f"{name:10s} {case['best']:10.1f} {case['median']:8.1f} {record['fraction_of_matmul'][name]:9.1%} "
              f"{case['max_abs_diff']:9.2g}")
    for layout, s in record["speedup"].items():
        rounds = ", ".join(f"{r:.2f}" for r in s["per_round"])
        print(f"new/old on {layout}: best {s['of_best']:.2f}x, medians {s['of_medians']:.2f}x, rounds {rounds}")
    if "real_images" in record:
        real = record["real_images"]
        print(f"old vs new feature maps on {real['images']} ELPV images: max abs diff {real['max_abs_diff']:.3g} "
              f"(largest value {real['max_abs_value']:.3g})")
    for impl, prof in record.get("profile", {}).items():
        print(f"\nprofile, {impl} (traced op time {prof['traced_ms_per_image']:.2f} ms/image, the devices summed, "
              f"each layer's best of {record['profile_repeats']} traces)")
        print(f"{'kind':8s} {'ms/img':>7s} {'share':>6s} {'MMACs':>7s} {'GFLOP/s':>8s} {'GB/s':>6s}")
        for kind, row in prof["by_kind"].items():
            print(f"{kind:8s} {row['ms_per_image']:7.2f} {row['share']:6.1%} {row['mmacs_per_image']:7.1f} "
                  f"{row['gflop_s']:8.1f} {row['gbyte_s']:6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="images per feature-pass call (the CLI's default)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds over the cases")
    parser.add_argument("--calls", type=int, default=3, help="calls per case per round")
    parser.add_argument("--profile-repeats", type=int, default=3, help="traces per case; each layer's least counts")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_feature_pass.json"))
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 8, one round, no profile")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.rounds, args.calls = 8, 1, 1
    for flag, value in (("--batch", args.batch), ("--rounds", args.rounds), ("--calls", args.calls),
                        ("--profile-repeats", args.profile_repeats)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    record = run(args)
    print_tables(record)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
