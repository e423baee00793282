"""HTTP load test: ``embellama serve`` vs llama-cpp-python's own server on the same GGUF, same run, loopback only.

``python -m benchmarks.server [--seconds 18] [--rounds 2] [--out benchmarks/results/server.md]``

Both servers are started as subprocesses on 127.0.0.1 (free ephemeral ports) with the default model (all-MiniLM-L6-v2
F16): ``embellama serve`` with its default options, and ``python -m llama_cpp.server --embedding true --n_threads
<cores>``. After a short warm-up (which also checks that both answer the same vectors), single-text
``POST /v1/embeddings`` requests with short texts (~8 words, each made unique so that no cache answers) are sent by
1, 16 and 64 concurrent clients: one asyncio process on the same machine, each client with its own keep-alive
connection and a minimal HTTP/1.1 client (httpx's pool costs more CPU per request than the servers under test once
dozens of connections are open). Every (server, clients) cell gets the same share of ``--seconds`` (the whole
measurement budget, at most 30 s), split over ``--rounds`` rounds that interleave the servers and client counts so
that drifts in machine speed hit both alike. Reports requests/s and p50/p99 latency per cell as a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import numpy as np

from benchmarks.workloads import make_texts

__all__ = ["CONCURRENCIES", "Cell", "main", "measure", "render_table", "run_load_test"]

HOST = "127.0.0.1"  # loopback only, always
MODEL = "minilm"
CONCURRENCIES = (1, 16, 64)
MAX_TOTAL_SECONDS = 30.0
MAX_REQUESTS_PER_CELL = 200_000  # a bound on any one measurement, whatever its time budget
START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 30.0


@dataclass
class Cell:
    """One measurement: a server and a client count, possibly accumulated over several rounds."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    """Seconds per successful request."""

    def add(self, other: Cell) -> None:
        """Accumulate another round of the same cell."""
        self.requests += other.requests
        self.errors += other.errors
        self.seconds += other.seconds
        self.latencies += other.latencies

    @property
    def rps(self) -> float:
        """Successful requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """The q-th latency percentile in milliseconds (NaN without requests)."""
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


class _Texts:
    """Short texts, each one unique (a counter suffix), so no cache on either side can answer them."""

    def __init__(self, seed: int = 11) -> None:
        self._base = make_texts(256, 8, seed=seed)
        self._counter = itertools.count()

    def next(self) -> str:
        n = next(self._counter)
        return f"{self._base[n % len(self._base)]} #{n}"


class _Connection:
    """A minimal keep-alive HTTP/1.1 client connection: the load generator must not be the bottleneck.

    (httpx's connection pool costs more CPU per request than the servers under test once dozens of connections
    are open; on a small machine it would measure itself.)
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post_json(self, path: str, payload: bytes) -> tuple[int, bytes]:
        """POST ``payload`` and return the status and the body (reconnecting when the server closed the connection)."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode("ascii")
        try:
            writer.write(head + payload)
            await writer.drain()
            status_line, *header_lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in header_lines if ": " in line)
            if headers.get("transfer-encoding") == "chunked":
                body = b""
                while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                    body += (await reader.readexactly(size + 2))[:-2]
                await reader.readuntil(b"\r\n")
            else:
                body = await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            self.close()
            raise
        if headers.get("connection") == "close":
            self.close()
        return int(status_line.split(" ", 2)[1]), body

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def measure(
    url: str,
    model: str,
    concurrency: int,
    seconds: float,
    *,
    texts: _Texts | None = None,
    max_requests: int = MAX_REQUESTS_PER_CELL,
) -> Cell:
    """Send single-text ``/v1/embeddings`` requests from ``concurrency`` clients for ``seconds`` (or ``max_requests``).

    Args:
        url: The server's base URL (``http://127.0.0.1:PORT``; loopback only).
        model: The ``model`` field of the requests.
        concurrency: Clients, each with its own keep-alive connection and one request in flight at a time.
        seconds: Time budget; clients start no request after it.
        texts: Text source (unique texts). Defaults to a fresh one.
        max_requests: Stop starting requests after this many, whatever the time.

    Returns:
        The cell: successful requests, errors (non-200 answers, transport errors, timeouts, answers without exactly
        one vector), the wall time and each successful request's latency.
    """
    prefix = f"http://{HOST}:"
    if not url.startswith(prefix) or not url[len(prefix) :].isdigit():
        raise ValueError(f"loopback only (http://{HOST}:PORT): {url!r}")
    port = int(url[len(prefix) :])
    source = texts or _Texts()
    cell = Cell()
    started = 0
    t0 = time.perf_counter()
    end = t0 + seconds

    async def client() -> None:
        nonlocal started
        connection = _Connection(HOST, port)
        try:
            while time.perf_counter() < end and started < max_requests:
                started += 1
                payload = json.dumps({"model": model, "input": source.next()}).encode()
                t = time.perf_counter()
                try:
                    status, body = await asyncio.wait_for(
                        connection.post_json("/v1/embeddings", payload), REQUEST_TIMEOUT_S
                    )
                    ok = status == 200 and len(json.loads(body)["data"]) == 1
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, KeyError):
                    ok = False
                if ok:
                    cell.latencies.append(time.perf_counter() - t)
                    cell.requests += 1
                else:
                    cell.errors += 1
        finally:
            connection.close()

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(concurrency))), seconds + 2 * REQUEST_TIMEOUT_S)
    cell.seconds = time.perf_counter() - t0
    return cell


# ----------------------------------------------------------------------------------------------------------- servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class _Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def log_tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-3000:]


def _wait_ready(server: _Server, deadline: float) -> None:
    with httpx.Client(base_url=server.url, timeout=5) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited ({server.process.returncode}):\n{server.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/v1/models").status_code == 200:
                    return
            time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not start within {START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


def _commands(model_path: str, threads: int) -> dict[str, list[str]]:
    return {
        "embellama serve": [
            sys.executable, "-m", "embellama.cli", "serve", "--model", model_path, "--model-name", MODEL,
            "--host", HOST, "--port", "{port}",
        ],
        "llama-cpp-python server": [
            sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--model_alias", MODEL,
            "--embedding", "true", "--host", HOST, "--port", "{port}", "--n_threads", str(threads),
            "--verbose", "false",
        ],
    }  # fmt: skip


@contextlib.contextmanager
def _servers(model_path: str, threads: int) -> Iterator[list[_Server]]:
    """Start both servers (in parallel), wait until they answer, and stop them (SIGTERM, then SIGKILL) after."""
    started: list[_Server] = []
    try:
        for name, command in _commands(model_path, threads).items():
            port = _free_port()
            log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
            args = [a.replace("{port}", str(port)) for a in command]
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            started.append(_Server(name, f"http://{HOST}:{port}", process, log))
        deadline = time.monotonic() + START_TIMEOUT_S
        for server in started:
            _wait_ready(server, deadline)
        yield started
    finally:
        for server in started:
            if server.process.poll() is None:
                server.process.terminate()
        for server in started:
            try:
                server.process.wait(15)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(5)
            server.log.close()


async def _vectors(url: str, texts: list[str]) -> np.ndarray:
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        rows = []
        for text in texts:  # one text per request: llama-cpp-python's server answers lists too, but keep it simple
            response = await client.post("/v1/embeddings", json={"model": MODEL, "input": text})
            response.raise_for_status()
            rows.append(response.json()["data"][0]["embedding"])
    out = np.asarray(rows, dtype=np.float64)
    normed: np.ndarray = out / np.linalg.norm(out, axis=1, keepdims=True)
    return normed


async def _warm_up(servers: list[_Server], texts: _Texts) -> float:
    """Warm both servers up and return the smallest cosine between their vectors for the same texts."""
    probe = make_texts(8, 8, seed=99)
    vectors = [await _vectors(server.url, probe) for server in servers]
    for server in servers:
        await measure(server.url, MODEL, 4, 0.5, texts=texts)
    return float(np.min(np.sum(vectors[0] * vectors[1], axis=1)))


def run_load_test(
    model_path: str, seconds: float, rounds: int = 2, concurrencies: Sequence[int] = CONCURRENCIES
) -> tuple[dict[tuple[str, int], Cell], dict[str, str]]:
    """Start both servers, warm them up and measure every (server, clients) cell, interleaved over ``rounds``.

    Returns:
        The cells by (server name, clients) and notes for the report (agreement of the vectors, budgets, ...).
    """
    seconds = min(seconds, MAX_TOTAL_SECONDS)
    threads = len(os.sched_getaffinity(0))
    texts = _Texts()
    cells: dict[tuple[str, int], Cell] = {}
    started = time.perf_counter()
    with _servers(model_path, threads) as servers:
        startup = time.perf_counter() - started
        agreement = asyncio.run(_warm_up(servers, texts))
        share = seconds / (len(servers) * len(concurrencies) * rounds)
        for r in range(rounds):
            order = servers if r % 2 == 0 else servers[::-1]
            for clients in concurrencies:
                for server in order:
                    cell = asyncio.run(measure(server.url, MODEL, clients, share, texts=texts))
                    cells.setdefault((server.name, clients), Cell()).add(cell)
    notes = {
        "model": Path(model_path).name,
        "cores": str(threads),
        "budget": f"{seconds:.1f} s of measurement ({share:.2f} s per cell and round, {rounds} rounds), "
        f"start-up {startup:.1f} s",
        "agreement": f"{agreement:.5f}",
    }
    return cells, notes


def render_table(cells: dict[tuple[str, int], Cell], notes: dict[str, str]) -> str:
    """The markdown report."""
    lines = [
        "# HTTP embeddings server load test",
        "",
        f"Single-text `POST /v1/embeddings` requests (~8 words, each unique) on loopback, model `{notes['model']}`, "
        f"{notes['cores']} cores shared by the server and the client (one asyncio process, raw keep-alive HTTP/1.1); "
        f"{notes['budget']}. Smallest cosine between the two servers' vectors for the same texts: "
        f"{notes['agreement']}.",
        "",
        "| server | clients | requests | errors | req/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (name, clients), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(
            f"| {name} | {clients} | {cell.requests} | {cell.errors} | {cell.rps:.1f} | "
            f"{cell.percentile_ms(50):.1f} | {cell.percentile_ms(99):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the load test, print the table and write it to ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=18.0, help="whole measurement budget (max 30 s)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per cell")
    parser.add_argument("--model", help="GGUF path (default: embellama's default model)")
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    ns = parser.parse_args(argv)
    if ns.seconds <= 0 or ns.rounds < 1:
        parser.error("--seconds must be > 0 and --rounds >= 1")
    if ns.model is None:
        from embellama import default_model_path

        ns.model = str(default_model_path())
    cells, notes = run_load_test(ns.model, ns.seconds, ns.rounds)
    table = render_table(cells, notes)
    print(table)
    if ns.out is not None:
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        ns.out.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
