"""Children of an activated process: subprocess, multiprocessing (spawn, fork, forkserver),
a bare ``os.fork`` while another thread holds kapatch's locks, and gunicorn ``--preload``.

Each door (KAPATCH_ENABLED through kapatch.pth, ``import kapatch.auto``, ``kapatch run``)
starts a fresh parent interpreter; the parent starts its children, each child connects
to a real loopback server and reads the options back from its own socket.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from checks import READ_SOCKET_SOURCE
from servers import free_port
from test_activation import clean_env

KAPATCH = str(Path(sys.executable).with_name("kapatch"))
TIMEOUT = 120
POLICY = {"KAPATCH_IDLE": "21", "KAPATCH_INTERVAL": "4", "KAPATCH_COUNT": "3"}
EXPECTED = {"keepalive": 1, "idle": 21, "interval": 4, "count": 3, "user_timeout_ms": (21 + 4 * 3) * 1000}
RUN_OPTIONS = ["--idle", "21", "--interval", "4", "--count", "3"]

# Reads the options of one fresh connection; imports nothing of kapatch.
READ = (
    READ_SOCKET_SOURCE
    + """
def measure(host, port):
    with socket.create_connection((host, port), timeout=10) as s:
        return read(s)
"""
)

PARENT = (
    """
import json, multiprocessing, os, signal, subprocess, sys, threading
if os.environ.get("TEST_DOOR") == "auto":
    import kapatch.auto
"""
    + READ
    + '''
CHILD = READ_SOURCE + "import json, sys; print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))"


def fork_while_locks_are_held(host, port):
    """os.fork while another thread holds the runtime's locks: the child must not deadlock."""
    import kapatch.runtime
    runtime = kapatch.runtime.context()
    held, release = threading.Event(), threading.Event()

    def hold():
        with runtime._lock, runtime._stats_lock:
            held.set()
            release.wait(20)

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(20)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)  # a deadlocked child ends itself instead of hanging the suite
        try:
            result = measure(host, port)
            counts = dict(kapatch.runtime.status().adapter("socket").counts)
            os.write(write_end, json.dumps({"socket": result, "counts": counts}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    release.set()
    thread.join()
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    return {"data": json.loads(data) if data else None, "status": status}


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    out = {"parent": measure(host, port)}
    child = subprocess.run([sys.executable, "-c", CHILD, host, str(port)], capture_output=True, text=True,
                           timeout=60, check=True)
    out["subprocess"] = json.loads(child.stdout)
    for method in ("spawn", "fork", "forkserver"):
        with multiprocessing.get_context(method).Pool(1) as pool:
            out[method] = pool.apply(measure, (host, port))
    kapatch = sys.modules.get("kapatch")
    if kapatch is not None and kapatch.status().installed:
        out["parent_counts"] = dict(kapatch.status().adapter("socket").counts)
        out["locked_fork"] = fork_while_locks_are_held(host, port)
    print(json.dumps(out))
'''
).replace("READ_SOURCE", repr(READ))

CHILD_KINDS = ("subprocess", "spawn", "fork", "forkserver")


@pytest.fixture(scope="module")
def parent_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fork") / "parent.py"
    path.write_text(PARENT)
    return path


def run_parent(door: str, script: Path, host: str, port: int) -> dict[str, object]:
    command = [sys.executable, str(script), host, str(port)]
    env = clean_env(TEST_DOOR=door)
    if door == "env":
        env.update(KAPATCH_ENABLED="1", **POLICY)
    elif door == "auto":
        env.update(POLICY)
    elif door == "run":
        command = [KAPATCH, "run", *RUN_OPTIONS, "--", *command]
    done = subprocess.run(
        command, env=env, cwd="/", capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_without_kapatch_no_child_is_patched(parent_script, http_server):
    """The baseline: the same parent with no door open leaves every socket alone."""
    result = run_parent("none", parent_script, http_server.host, http_server.port)
    for kind in ("parent", *CHILD_KINDS):
        assert result[kind]["keepalive"] == 0, kind  # type: ignore[index]
    assert "locked_fork" not in result


@pytest.mark.parametrize("door", ["env", "auto", "run"])
def test_every_kind_of_child_is_patched(parent_script, http_server, door):
    result = run_parent(door, parent_script, http_server.host, http_server.port)
    for kind in ("parent", *CHILD_KINDS):
        assert result[kind] == EXPECTED, kind


@pytest.mark.parametrize("door", ["env", "auto", "run"])
def test_fork_while_another_thread_holds_the_locks(parent_script, http_server, door):
    result = run_parent(door, parent_script, http_server.host, http_server.port)
    assert result["parent_counts"]["configured"] >= 1  # type: ignore[index]
    locked = result["locked_fork"]
    assert locked["status"] == 0, "the forked child died (a deadlock ends it by SIGALRM)"  # type: ignore[index]
    data = locked["data"]  # type: ignore[index]
    assert data["socket"] == EXPECTED
    # Counters restart in the child: only its own connection, not the parent's, is counted.
    assert data["counts"]["configured"] == 1


# --- gunicorn --preload: the application is imported in the master, workers are forked ----------

APP = (
    READ
    + """
import json, os
TARGET = (os.environ["TARGET_HOST"], int(os.environ["TARGET_PORT"]))

def app(environ, start_response):
    data = measure(*TARGET)
    data["pid"] = os.getpid()
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""
)


@pytest.fixture
def gunicorn_preloaded(tmp_path: Path, http_server) -> Iterator[tuple[int, int]]:
    """gunicorn --preload -w 2 under kapatch run; yields (master pid, port); stopped by its pid."""
    gunicorn = Path(sys.executable).with_name("gunicorn")
    if not gunicorn.is_file():
        pytest.skip("gunicorn is not installed in this environment (dev extra)")
    (tmp_path / "app.py").write_text(APP)
    port = free_port(ipv6=False)
    env = clean_env(TARGET_HOST=http_server.host, TARGET_PORT=str(http_server.port))
    command = [KAPATCH, "run", *RUN_OPTIONS, "--", str(gunicorn), "--preload", "-w", "2",
               "-b", f"127.0.0.1:{port}", "--chdir", str(tmp_path), "app:app"]  # fmt: skip
    log = (tmp_path / "gunicorn.log").open("w")
    master = subprocess.Popen(command, env=env, cwd=str(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    try:
        yield master.pid, port
    finally:
        master.send_signal(signal.SIGTERM)  # kapatch run exec'd: this pid is gunicorn's master
        try:
            master.wait(timeout=30)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait(timeout=10)
        log.close()


def _get(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            result: dict[str, object] = json.loads(response.read())
            return result
    except OSError:
        return None


def test_gunicorn_preload_workers_are_patched(gunicorn_preloaded):
    master_pid, port = gunicorn_preloaded
    first = None
    for _ in range(300):  # up to ~30 s for the master to bind and the workers to boot
        first = _get(port)
        if first is not None:
            break
        time.sleep(0.1)
    assert first is not None, "gunicorn did not answer"
    answers = [first, *(answer for answer in (_get(port) for _ in range(10)) if answer is not None)]
    for answer in answers:
        assert answer["pid"] != master_pid  # served by a forked worker
        assert {k: v for k, v in answer.items() if k != "pid"} == EXPECTED
