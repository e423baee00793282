"""Ingestion on Ray at scale: Ray Data's own readers (``read_json``/``read_parquet``) as the source, the default
pool sizing, a write task killed right after its commit, the driver SIGKILLed mid-run then resumed, and no Ray
process of embellama's driver left behind. A real local cluster (2 CPUs) and the tiny random-weight BERT GGUF."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")  # the extra 'ray'; skipped where it is not installed
pa = pytest.importorskip("pyarrow")
pytest.importorskip("lancedb")
psutil = pytest.importorskip("psutil")

from embellama import InvalidInputError  # noqa: E402
from embellama.ingest.lancedb import staging_name  # noqa: E402
from embellama.ingest.pipeline import ingest, ingest_dataset  # noqa: E402
from embellama.ingest.ray import pool_layout  # noqa: E402
from tests.fixtures.ingest_corpora import table_ids, table_names, tiny_bert, write_corpus_dir, write_jsonl  # noqa: E402
from tests.fixtures.ray_cluster import ray_environment  # noqa: E402

pytestmark = pytest.mark.ray

HOOKS = str(Path(__file__).parents[1] / "fixtures" / "ingest_hooks")


@pytest.fixture(scope="module")
def tiny() -> Path:
    return tiny_bert()


@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kill-hook")


@pytest.fixture(scope="module")
def cluster(hook_dir: Path) -> Iterator[str]:
    """A local 2-CPU Ray cluster whose workers load the kill-after-commit hook (inactive until armed)."""
    if ray.is_initialized():
        ray.shutdown()
    ray_environment()
    path = os.pathsep.join([HOOKS, os.environ.get("PYTHONPATH", "")])
    env = {"PYTHONPATH": path, "EMBELLAMA_TEST_KILL_AFTER_COMMIT": str(hook_dir)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


# a pool holding every CPU never schedules the read tasks: this would hang until the suite's timeout
def test_default_pool_leaves_a_cpu_for_ray_readers(cluster: str, tiny: Path, tmp_path: Path) -> None:
    assert pool_layout(None, 1) == (1, 1.0)  # 2 CPUs: one actor, one CPU for read and write tasks
    assert pool_layout(2, 1) == (2, 1.0)  # as asked
    corpus = write_corpus_dir(tmp_path / "parts", 2000, 4)
    report = ingest_dataset(
        ray.data.read_json(str(corpus)), db=tmp_path / "db", model_path=tiny, pooling="mean", batch_size=128
    )
    assert report.table_rows == 2000 == len(set(table_ids(tmp_path / "db", "documents")))
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist([{"id": f"p{i}", "text": f"row {i}"} for i in range(500)]), tmp_path / "c.parquet"
    )
    report = ingest_dataset(
        ray.data.read_parquet(str(tmp_path / "c.parquet")),
        db=tmp_path / "db",
        table="pq",
        model_path=tiny,
        pooling="mean",
    )
    assert report.table_rows == 500 == len(set(table_ids(tmp_path / "db", "pq")))


def test_a_write_task_killed_after_its_commit_duplicates_nothing(
    cluster: str, tiny: Path, tmp_path: Path, hook_dir: Path
) -> None:
    corpus = write_corpus_dir(tmp_path / "parts", 6000, 3)
    (hook_dir / "armed").touch()
    try:
        report = ingest(
            corpus, tmp_path / "db", model_path=tiny, pooling="mean", ray_address=cluster, num_actors=1, batch_size=512
        )
    finally:
        (hook_dir / "armed").unlink()
    assert int((hook_dir / "killed").read_text()) > 0  # a task did die after committing rows
    ids = table_ids(tmp_path / "db", "documents")
    assert report.table_rows == report.written == len(ids) == len(set(ids)) == 6000
    assert report.rows == 6000 and report.duplicates == 0


def test_ray_reads_a_line_over_4_mb_and_refuses_a_corrupt_corpus(cluster: str, tiny: Path, tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", 0, 300)
    with corpus.open("a") as f:
        f.write(json.dumps({"id": "big", "text": "word " * 1_000_000, "n": -1}) + "\n")
    report = ingest(
        corpus, tmp_path / "db", model_path=tiny, pooling="mean", ray_address=cluster, long_text_mode="truncate"
    )
    assert report.table_rows == 301
    bad = write_jsonl(tmp_path / "bad.jsonl", 0, 1000, bad_rows={500: "{not json"})
    with pytest.raises(InvalidInputError, match="Ray's reader could not parse the corpus"):
        ingest(bad, tmp_path / "db", table="bad", model_path=tiny, pooling="mean", ray_address=cluster)
    assert "bad" not in table_names(tmp_path / "db")


def _ray_processes_of(pids: set[int]) -> list[psutil.Process]:
    alive = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_driver_sigkilled_mid_run_then_resumed_on_ray(cluster: str, tiny: Path, tmp_path: Path) -> None:
    rows = 12_000
    corpus = write_corpus_dir(tmp_path / "parts", rows, 6)
    db = tmp_path / "db"
    cmd = [sys.executable, "-m", "embellama.cli", "ingest", str(corpus), "--db", str(db), "-m", str(tiny),
           "--pooling", "mean", "-q", "--ray", cluster, "--num-actors", "1", "--write-rows", "1000"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    children: set[int] = set()
    try:
        staged = 0
        deadline = time.monotonic() + 120
        while staged < 3000 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            children |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
            if staging_name("documents") in table_names(db):
                staged = len(table_ids(db, staging_name("documents")))
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "documents" not in table_names(db)
    deadline = time.monotonic() + 20
    while _ray_processes_of(children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes_of(children)  # nothing the driver started outlives it
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    ids = table_ids(db, "documents")
    assert len(ids) == len(set(ids)) == rows and f"the table holds {rows} rows" in done.stderr


def test_a_local_cluster_started_by_the_cli_is_gone_after_it(tiny: Path, tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", 0, 500)
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled")
    cmd = [sys.executable, "-m", "embellama.cli", "ingest", str(corpus), "--db", str(tmp_path / "db"),
           "-m", str(tiny), "--pooling", "mean", "-q", "--ray", "local"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the table holds 500 rows" in done.stderr

    def leftovers() -> list[str]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            line = " ".join(proc.info["cmdline"] or [])
            if ray_tmp in line:
                found.append(line[:200])
        return found

    deadline = time.monotonic() + 20
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not leftovers()
