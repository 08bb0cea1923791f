"""meta_schedule tuning through TVM's RPC tracker, on loopback: a tracker and two servers as
subprocesses, ``attnrewrite tune --rpc`` measuring on them, records that builds then use.

The RPC test is marked slow: about 105 s on 2 cores, of which ~18 s start the three processes
(each imports TVM and torch) and ~25 s is meta_schedule importing its tensor intrinsics once
in the tuning process; the 4 builds and 4 remote runs take seconds."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")
for _module in ("tornado", "psutil"):
    pytest.importorskip(_module, reason=f"TVM's RPC tracker and runner need {_module}")

import psutil  # noqa: E402

from attnrewrite.lower import scan, targets, tune  # noqa: E402
from attnrewrite.lower.runner import Runner  # noqa: E402
from tests.lower.references import block_scan_reference  # noqa: E402

KEY = "attnrewrite-test"
SHAPE = (2, 64, 8, 8, 16)  # rows, n, R, E, block: small, so each build and run is quick


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    """A TVM RPC process in its own session (so its workers can be ended with it)."""
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def stop(procs: list[subprocess.Popen]) -> None:
    """End each process and every descendant (forked sessions, popen_worker children) by
    PID: stopping a server alone leaves its workers running."""
    victims = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            victims += [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(victims, timeout=5)
    for victim in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    psutil.wait_procs(alive, timeout=5)
    for proc in procs:
        proc.wait(timeout=5)


def tracker_up(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_servers(port: int) -> int:
    """How many servers under KEY the tracker at ``port`` has free."""
    from tvm import rpc

    summary = rpc.connect_tracker("127.0.0.1", port).summary()
    return int(summary.get("queue_info", {}).get(KEY, {}).get("free", 0))


def wait_for(ready, procs: list[subprocess.Popen], logs: Path, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            text = "\n".join(f.read_text() for f in logs.glob("*.log"))
            pytest.fail(f"RPC tracker/servers did not come up:\n{text}")
        time.sleep(0.3)


@pytest.fixture
def tracker(tmp_path):
    """(tracker port, server logs): a tracker and two servers registered under KEY."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    port = free_port()
    procs = [
        spawn(
            [
                "tvm.exec.rpc_tracker",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--port-end",
                str(port + 1),
            ],
            tmp_path / "tracker.log",
        )
    ]
    logs = []
    try:
        # servers that find no tracker retry only every 5 s: start them once it answers
        wait_for(lambda: tracker_up(port), procs, tmp_path)
        for i in range(2):
            server_port = free_port()
            logs.append(tmp_path / f"server{i}.log")
            args = ["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(server_port)]
            args += ["--port-end", str(server_port + 1), "--key", KEY]
            procs.append(spawn([*args, "--tracker", f"127.0.0.1:{port}"], logs[-1]))
        wait_for(lambda: free_servers(port) == 2, procs, tmp_path)
        yield port, logs
    finally:
        stop(procs)
        # the runner's own popen workers (children of this process) go with the test
        leftover = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        for proc in leftover:
            proc.kill()
        psutil.wait_procs(leftover, timeout=5)


def test_cpu_builder_output_matches_numpy():
    """tune.build_cpu (the builder that skips the intrinsic import) builds working code."""
    import tvm

    rows, n, r, e, block = SHAPE
    kernel = scan.block_scan_kernel(rows, n, n, r, e, block, "float64")
    target = targets.make_target("llvm")
    func = tune.build_cpu(tvm.IRModule({kernel.name: kernel.func}), target)[kernel.name]
    rng = np.random.default_rng(1)
    q, k, x = (rng.standard_normal(s) for s in ((rows, n, r), (rows, n, r), (rows, n, e)))
    out = tvm.runtime.empty((rows, n, e), "float64")
    func(*(tvm.runtime.tensor(a) for a in (q, k, x)), out)
    want = block_scan_reference(q, k, x, block)
    assert np.abs(out.numpy() - want).max() < 1e-12 * np.abs(want).max()


@pytest.mark.slow
def test_tune_over_rpc_tracker(tracker, tmp_path, monkeypatch, capsys):
    port, logs = tracker
    rows, n, r, e, block = SHAPE
    argv = ["scan", "--batch", str(rows), "--heads", "1", "--n", str(n), "--features", str(r)]
    argv += ["--channels", str(e), "--block", str(block), "--dtype", "float64"]
    argv += ["--trials", "4", "--out", str(tmp_path / "records")]
    argv += ["--rpc", f"127.0.0.1:{port}:{KEY}", "--rpc-workers", "2"]
    start = time.monotonic()
    assert tune.main(argv) == 0
    elapsed = time.monotonic() - start
    assert "records:" in capsys.readouterr().out

    target = targets.make_target("llvm")
    folder = tmp_path / "records" / targets.target_name(target)
    assert (folder / "target.json").is_file()
    monkeypatch.setenv("ATTNREWRITE_TARGETS", str(tmp_path / "records"))
    db = targets.database_for(target)
    records = db.get_all_tuning_records()
    assert len(records) == 1  # merge_best keeps the best of the one workload
    secs = [float(s) for s in records[0].run_secs]
    assert secs and all(0 < s < 1 for s in secs), secs  # measured (failures read 1e10)

    # the servers ran the measurements (each session is logged by the server that took it)
    sessions = [log.read_text().count("connected from") for log in logs]
    assert sum(sessions) >= 1, sessions

    kernel = scan.block_scan_kernel(rows, n, n, r, e, block, "float64")
    rng = np.random.default_rng(0)
    q, k, x = (rng.standard_normal(s) for s in ((rows, n, r), (rows, n, r), (rows, n, e)))
    tuned = Runner(kernel, target, database=db)
    want = block_scan_reference(q, k, x, block)
    assert np.abs(tuned(q, k, x) - want).max() < 1e-12 * np.abs(want).max()
    assert elapsed < 300, f"tuning over RPC took {elapsed:.0f} s"
