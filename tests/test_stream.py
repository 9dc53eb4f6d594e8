"""A sweep that streams its features from the memory-mapped cache (issue 18, section 3): lazy reads equal in-memory
reads bit for bit, a streamed sweep equals the in-memory sweep, a bad budget is a one-line error, and on two hosts
each reads only the shards it owns."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxheads import cli, data, features
from jaxheads.features.lazy import LazyRows
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import SweepSpec, run_sweep
from jaxheads.sweep import stream
from jaxheads.sweep.stream import parse_bytes

HERE = Path(__file__).parent

SPEC = SweepSpec(pooling=("none", "max", "flatten"), widths=(8,), depth=(1,), dropout=(0.0, 0.5), epochs=3, seeds=1,
                 batch_size=(16,), folds=None, patience=None, design="grid", ridge_l2=())


@pytest.mark.slow
def test_lazy_split_reads_the_cached_features_bit_for_bit(tmp_path: Path, make_folder, tiny_source) -> None:
    root = make_folder(tmp_path / "imgs", per_class=5)
    ds = data.load_dataset(root, seed=0)
    source = tiny_source
    options = {"cache_dir": tmp_path / "cache", "need_maps": True, "batch_size": 2, "chunk_size": 2}
    eager = features.extract_all(source, ds, features.ExtractOptions(**options))
    lazy = features.extract_all(source, ds, features.ExtractOptions(lazy=True, **options))
    rng = np.random.default_rng(0)
    for name, split in eager.items():
        assert isinstance(lazy[name].maps, LazyRows) and lazy[name].maps.shape == split.maps.shape
        np.testing.assert_array_equal(lazy[name].labels, split.labels)
        for kind in ("pooled", "maps"):
            whole, mapped = getattr(split, kind), getattr(lazy[name], kind)
            assert mapped.dtype == whole.dtype and len(mapped) == len(whole)
            assert np.asarray(mapped).tobytes() == whole.tobytes()
            pick = rng.integers(-len(whole), len(whole), 7)
            assert mapped.take(pick).tobytes() == whole[pick].tobytes() and mapped[pick].tobytes() == whole[pick].tobytes()
            assert mapped[1:].tobytes() == whole[1:].tobytes() and mapped[-1].tobytes() == whole[-1].tobytes()
    first = features.extract_all(source, ds, features.ExtractOptions(lazy=True, **options))["train"].maps
    first.take(np.asarray([0]))  # reads the shard of row 0 only
    assert first.opened == {int(first.shard_of_rows()[0])}
    with pytest.raises(IndexError, match="out of range"):
        first.take(np.asarray([len(first)]))


def _worst_difference(a, b) -> float:
    worst = 0.0
    for ra, rb in zip(a.members, b.members, strict=True):
        assert ra["config"] == rb["config"] and ra["epochs_run"] == rb["epochs_run"]
        worst = max(worst, *(abs(x - y) for x, y in zip(ra["curves"]["train_loss"], rb["curves"]["train_loss"],
                                                         strict=True)))
        for split in ("val", "test"):
            assert sorted(ra[split]) == sorted(rb[split])
            worst = max(worst, *(abs(v - rb[split][k]) for k, v in ra[split].items()))
    for split in ("val", "test"):
        worst = max(worst, float(np.abs(a.predictions[split] - b.predictions[split]).max()))
    return worst


@pytest.mark.slow
def test_streamed_sweep_equals_the_in_memory_sweep(tmp_path: Path, write_feature_cache, feature_cache_splits) -> None:
    plan, labels = write_feature_cache(tmp_path)
    in_memory = run_sweep(SPEC, feature_cache_splits(tmp_path, plan, labels, lazy=False), num_classes=3)
    assert all(g["streamed"] is None for g in in_memory.groups)
    for budget in (1, "3kB"):  # one step / two rows per chunk; then several steps per chunk
        streamed = run_sweep(SPEC, feature_cache_splits(tmp_path, plan, labels, lazy=True), num_classes=3,
                             device_memory_budget=budget)
        assert len(streamed.groups) == 2 and all(g["streamed"] for g in streamed.groups)  # pooled "none"+max; flatten
        assert _worst_difference(in_memory, streamed) <= 1e-6, budget
    assert streamed.groups[0]["streamed"]["chunk_steps"] > 1


@pytest.mark.slow
def test_streamed_sweep_reads_augmented_views_as_the_in_memory_sweep(
        tmp_path: Path, write_feature_cache, feature_cache_splits) -> None:
    """Training rows v * N + i read view v of example i, from the view's own cache entry."""
    plan, labels = write_feature_cache(tmp_path / "plain")
    write_feature_cache(tmp_path / "view1", seed=5)

    def with_view(lazy: bool) -> dict[str, FeatureSplit]:
        splits = feature_cache_splits(tmp_path / "plain", plan, labels, lazy)
        view = feature_cache_splits(tmp_path / "view1", plan, labels, lazy)["train"]
        train = splits["train"]
        splits["train"] = FeatureSplit(train.labels, train.pooled, train.maps, (view,))
        return splits

    spec = dataclasses.replace(SPEC, pooling=("max",), dropout=(0.5,))
    in_memory = run_sweep(spec, with_view(False), num_classes=3)
    streamed = run_sweep(spec, with_view(True), num_classes=3, device_memory_budget="3kB")
    assert streamed.groups[0]["streamed"] and _worst_difference(in_memory, streamed) <= 1e-6


def test_bad_budget_is_a_one_line_error_naming_the_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture, write_feature_cache, feature_cache_splits) -> None:
    assert parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("512MB") == 512 * 10**6 and parse_bytes("1e6") == 10**6
    for bad in ("lots", "0", "-3", "2XB"):
        with pytest.raises(ValueError, match="--device-memory-budget: expected a positive size") as err:
            parse_bytes(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["sweep", "--device-memory-budget", "lots"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--device-memory-budget" in err and "2GiB" in err
    assert cli.build_parser().parse_args(["sweep", "--device-memory-budget", "1GiB"]).device_memory_budget == 2**30
    plan, labels = write_feature_cache(tmp_path)
    splits = feature_cache_splits(tmp_path, plan, labels, lazy=True)
    with pytest.raises(ValueError, match="device_memory_budget"):
        run_sweep(SPEC, splits, num_classes=3, device_memory_budget=0)
    with pytest.raises(ValueError, match="--folds none or a larger --device-memory-budget"):
        run_sweep(dataclasses.replace(SPEC, folds=2), splits, num_classes=3, device_memory_budget=1)


@pytest.mark.slow
def test_two_hosts_each_read_only_their_own_shards(tmp_path: Path, write_feature_cache) -> None:
    """Two processes (4 CPU devices each) on one (1, 8) mesh: the data axis spans them, so each reads only the
    shards it owns (k % 2 == its rank), and both end with the same results."""
    write_feature_cache(tmp_path / "cache")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    logs = [open(tmp_path / f"log-{rank}.txt", "w") for rank in (0, 1)]
    host = [sys.executable, str(HERE / "stream_hosts.py"), str(port)]  # then its rank, the folder and the sweep
    procs = [subprocess.Popen([*host, str(rank), str(tmp_path), json.dumps(SPEC.to_dict())],
                              env=env, stdout=logs[rank], stderr=subprocess.STDOUT, start_new_session=True)
             for rank in (0, 1)]
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    text = "\n".join((tmp_path / f"log-{rank}.txt").read_text()[-3000:] for rank in (0, 1))
    assert codes == [0, 0], text
    out = [json.loads((tmp_path / f"host-{rank}.json").read_text()) for rank in (0, 1)]
    for rank, host in enumerate(out):
        assert host["opened"] and all(k % 2 == rank for k in host["opened"]), (rank, host["opened"])
        assert host["streamed"]
    assert out[0]["members"] == out[1]["members"]


def test_the_cpu_default_budget_counts_reclaimable_page_cache(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:          100000 kB\nMemAvailable:   12000000 kB\n")
    assert stream.host_available_bytes(meminfo) == 12000000 * 1024  # not MemFree: page cache can be dropped
    meminfo.write_text("MemTotal:       24000000 kB\n")  # no MemAvailable (old kernels): the free pages
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for fallback in (meminfo, tmp_path / "missing"):
        assert 0 < stream.host_available_bytes(fallback) <= physical
