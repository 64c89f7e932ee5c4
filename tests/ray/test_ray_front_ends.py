"""`pullsmith serve --executor ray` and `pullsmith eval run --executor ray` on the session's Ray
instance give the local executor's results; an unreachable cluster and a missing ray package
are one sentence each, and no queued task is lost."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import git
from ray_helpers import (  # noqa: F401
    INSTRUCTION,
    RAY_ENV,
    TEST_COMMAND,
    event_types,
    make_repo,
    ray_cluster_fixture,
    ray_env,
    record,
)
from service_helpers import Server, server_env

from pullsmith.config import load_settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eval"))
from eval_helpers import FIX_PLANS, PlanModel, make_mini_suite  # noqa: E402

CLI = [sys.executable, "-c", "from pullsmith.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_env(home: Path, **extra: str) -> dict[str, str]:
    return server_env(home, **{"PULLSMITH_TEST_COMMAND": TEST_COMMAND, **RAY_ENV, **extra})


def test_serve_on_ray_gives_the_local_executors_result(ray_cluster, tmp_path):
    from pullsmith.executors import ThreadExecutor
    from pullsmith.service.queue import NewTask, TaskService
    from pullsmith.store import Store

    settings = load_settings({"sandbox": "none", "test_command": TEST_COMMAND}, cwd=tmp_path)
    spec, _ = record(tmp_path, settings)
    # The local executor's result: the service's queue and engine in this process.
    local_repo = make_repo(tmp_path / "repo-local")
    local_settings = load_settings(
        {"sandbox": "none", "test_command": TEST_COMMAND, "data_dir": str(tmp_path / "local")},
        cwd=tmp_path,
    )
    store = Store.open(local_settings)
    service = TaskService(local_settings, store, 1, executor=ThreadExecutor(1))
    service.start()
    try:
        row = service.create(NewTask(repo=str(local_repo), instruction=INSTRUCTION, model=spec))
        while service.require(row.id).state in ("queued", "running"):
            time.sleep(0.1)
        local = service.require(row.id)
    finally:
        service.close()
        store.close()
    local_types = event_types(local_settings.runs_dir / local.id / "events.jsonl")
    # The same task through `pullsmith serve --executor ray`.
    home = tmp_path / "serve-ray"
    repo = make_repo(tmp_path / "repo-ray")
    server = Server(home, "--workers", "1", "--executor", "ray", env=serve_env(home, **ray_env()))
    server.start(90)
    try:
        assert "executor  Ray, 1 node with 2 CPUs" in server.output, server.output
        task = server.create(repo, spec)
        remote = server.wait(task["id"], ("passed", "failed", "error", "cancelled"), timeout=120)
        merged = server.post(f"/api/prs/{remote['pr']}/merge") if remote["pr"] else None
    finally:
        server.close()
    remote_types = event_types(home / "pullsmith" / "runs" / task["id"] / "events.jsonl")
    assert local.state == remote["state"] == "passed", remote
    assert remote["result"]["diff"] == local.result["diff"]
    assert remote_types == local_types
    # The Ray run's pull request merges into the user's repository.
    assert merged is not None and merged.status_code == 200, merged and merged.text
    assert "return a + b  # fixed" in git("show", "main:calc.py", cwd=repo)


def test_eval_run_on_ray_scores_as_the_local_executor(ray_cluster, tmp_path):
    from pullsmith.eval.harness import EvalOptions, run_suite
    from pullsmith.eval.tasks import load_suite
    from pullsmith.executors import ThreadExecutor

    suite_dir = make_mini_suite(tmp_path)
    suite = load_suite(suite_dir)
    settings = load_settings({"sandbox": "none"}, cwd=tmp_path)
    recorded = tmp_path / "recorded"
    run = run_suite(suite, suite.tasks, settings, EvalOptions(out=recorded), PlanModel(FIX_PLANS))
    expected = {r.task_id: (r.resolved, r.status) for r in run.records}
    assert expected == {"add": (True, "passed"), "mul": (True, "passed")}
    replay = load_settings({"sandbox": "none", "model": f"replay:{recorded}"}, cwd=tmp_path)
    local_run = run_suite(
        suite,
        suite.tasks,
        replay,
        EvalOptions(out=tmp_path / "replayed-local", workers=2),
        executor=ThreadExecutor(2),
    )
    scores = {"local": {r.task_id: (r.resolved, r.status) for r in local_run.records}}
    out = tmp_path / "replayed-ray"
    env = serve_env(tmp_path / "eval-ray", **ray_env())
    env.pop("PULLSMITH_TEST_COMMAND")
    done = subprocess.run(
        [*CLI, "eval", "run", str(suite_dir), "--model", f"replay:{recorded}"]
        + ["--sandbox", "none", "--workers", "2", "--executor", "ray", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "executor ray" in done.stdout, done.stdout
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    scores["ray"] = {r["task_id"]: (r["resolved"], r["status"]) for r in records}
    assert all(r["error"] is None for r in records), [r["error"] for r in records]
    assert scores["local"] == scores["ray"] == expected


def test_an_unreachable_ray_address_is_one_sentence_and_no_task_is_lost(tmp_path):
    from pullsmith.executors import ThreadExecutor
    from pullsmith.service.queue import NewTask, TaskService
    from pullsmith.store import Store

    home = tmp_path / "home"
    env = serve_env(home, PULLSMITH_RAY_ADDRESS=f"127.0.0.1:{free_port()}")
    settings = load_settings({"data_dir": str(home / "pullsmith")}, cwd=tmp_path)
    repo = make_repo(tmp_path / "repo")
    store = Store.open(settings)
    service = TaskService(settings, store, 1, executor=ThreadExecutor(1))
    queued = service.create(NewTask(repo=str(repo), instruction=INSTRUCTION))
    store.close()
    done = subprocess.run(
        [*CLI, "serve", "--port", "0", "--executor", "ray"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("pullsmith: can not reach the Ray cluster at 127.0.0.1:")
    assert "ray start --head" in lines[0] and "Traceback" not in done.stderr + done.stdout
    store = Store.open(settings)
    try:
        again = TaskService(settings, store, 1, executor=ThreadExecutor(1))
        assert again.require(queued.id).state == "queued"
    finally:
        store.close()


def test_ray_not_installed_says_how_to_install_it(tmp_path):
    # A `ray` that fails to import, ahead of the real one on the path.
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    env = serve_env(tmp_path / "home", PYTHONPATH=str(fake.parent))
    suite_dir = make_mini_suite(tmp_path)
    commands = (
        ["eval", "run", str(suite_dir), "--executor", "ray", "--out", str(tmp_path / "out")],
    )
    for args in commands:
        done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0, args
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        assert lines[-1].startswith("pullsmith: the Ray executor needs the ray package"), (
            done.stderr
        )
        assert "pip install 'pullsmith[ray]'" in lines[-1]
        assert "Traceback" not in done.stderr, done.stderr
