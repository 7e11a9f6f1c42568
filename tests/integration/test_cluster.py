"""Real multi-node Ray on this machine: `ray start` head + a labelled second node, jobs submitted
through the jobs API with token auth, silos pinned to their labelled nodes.

Every Ray process here is started by this file (``ray start --block`` in its own session) and
stopped by its process group: never ``ray stop``, which would kill other people's Ray too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import recipe_tree, write_recipe

VENV_BIN = str(Path(sys.executable).parent)
HEAD_LABEL, WORKER_LABEL = "housing", "transport"


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_env(token_path: Path) -> dict[str, str]:
    """Environment for our Ray processes: token auth with our own token file, offline hubs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


class RayNode:
    """One `ray start --block` process; its Ray daemons live in the process group it leads."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [f"{VENV_BIN}/ray", "start", "--block", "--disable-usage-stats", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # pgid == pid: exactly the processes we started
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` shuts its node down
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything of ours still alive
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def api(url: str, token: str | None, method: str = "GET", body: dict | None = None):
    """(status, parsed JSON or text) of one jobs/state API request."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def alive_nodes(dash: str, token: str) -> list[dict]:
    try:
        status, body = api(f"{dash}/api/v0/nodes?detail=1&limit=100", token)
    except OSError:
        return []
    if status != 200 or not isinstance(body, dict):
        return []
    return [n for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"]


@pytest.fixture(scope="module")
def labelled_cluster():
    """Head (fl-silo=housing) + second node (fl-silo=transport), token auth on, loopback only."""
    # Ray's socket paths must stay under ~107 characters: a short temp root, not tmp_path.
    root = Path(tempfile.mkdtemp(prefix="flc", dir="/tmp"))
    token = secrets.token_hex(32)
    (root / "token").write_text(token)
    (root / "token").chmod(0o600)
    env = node_env(root / "token")
    gcs, dash, client, *head_ports = free_ports(9)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0"]

    def agent_ports(ports: list[int]) -> list[str]:
        """Every per-node port explicit: other Ray instances on this machine use the defaults."""
        names = ("node-manager", "object-manager", "dashboard-agent-listen")
        names += ("dashboard-agent-grpc", "metrics-export", "runtime-env-agent")
        return [f"--{n}-port={p}" for n, p in zip(names, ports, strict=True)]

    nodes: list[RayNode] = []
    try:
        started = time.perf_counter()
        head_args = [
            "--head",
            f"--port={gcs}",
            f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1",  # the jobs API is code execution: never public
            "--include-dashboard=true",
            f"--ray-client-server-port={client}",
            f"--temp-dir={root / 'ray'}",
            f"--labels=fl-silo={HEAD_LABEL}",
            *common,
            *agent_ports(head_ports),
        ]
        nodes.append(RayNode(head_args, env, root / "head.log"))
        dash_url = f"http://127.0.0.1:{dash}"
        _wait(lambda: len(alive_nodes(dash_url, token)) == 1, 90, nodes[0])
        # on-prem style: the node's identity comes from a labels file on that node
        (root / "labels.yaml").write_text(f"fl-silo: {WORKER_LABEL}\n")
        worker_args = [
            f"--address=127.0.0.1:{gcs}",
            f"--labels-file={root / 'labels.yaml'}",
            *common,
            *agent_ports(free_ports(6)),
        ]
        nodes.append(RayNode(worker_args, env, root / "worker.log"))
        _wait(lambda: len(alive_nodes(dash_url, token)) == 2, 90, nodes[1])
        print(f"cluster up in {time.perf_counter() - started:.1f} s")
        yield {"dash": dash_url, "token": token, "env": env, "root": root}
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


def _wait(ready, timeout_s: float, node: RayNode) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {node.log.read_text()[-2000:]}")
        if ready():
            return
        time.sleep(0.5)
    raise TimeoutError(f"Ray node not ready in {timeout_s} s: {node.log.read_text()[-2000:]}")


def test_submitted_job_runs_each_silo_on_its_labelled_node(
    labelled_cluster, tiny_base, demo_data, tmp_path
):
    cluster = labelled_cluster
    # The working directory holds only the recipe: model and data stay where the nodes read them.
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    out = tmp_path / "runs"
    tree = recipe_tree(tiny_base, demo_data, out, silos=(WORKER_LABEL, HEAD_LABEL), rounds=1)
    for silo in tree["silos"]:
        silo["node_label"] = silo["name"]  # each department's silo on its own node
    tree["output"] = {"save_merged": False}
    write_recipe(job_dir / "recipe.yaml", tree)

    started = time.perf_counter()
    proc = subprocess.run(
        [f"{VENV_BIN}/fl-ray", "submit", "recipe.yaml", "run_name=pinned"]
        + ["--address", cluster["dash"]],
        cwd=job_dir,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(f"job round trip {time.perf_counter() - started:.1f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SUCCEEDED" in proc.stderr
    assert "run directory:" in proc.stdout  # the driver's own output was streamed back

    labels = {
        n["labels"]["fl-silo"]: n["node_id"] for n in alive_nodes(cluster["dash"], cluster["token"])
    }
    assert set(labels) == {HEAD_LABEL, WORKER_LABEL} and len(set(labels.values())) == 2
    metrics = json.loads((out / "pinned" / "rounds" / "00001" / "metrics.json").read_text())
    assert metrics["contributed"] == sorted([HEAD_LABEL, WORKER_LABEL])
    for silo in (HEAD_LABEL, WORKER_LABEL):
        assert metrics["silos"][silo]["node_id"] == labels[silo]


def test_failed_job_returns_the_drivers_exit_code(labelled_cluster, tiny_base, tmp_path):
    """A recipe valid here but not runnable on the cluster (data absent on the nodes): the job
    FAILS, and `fl-ray submit` returns the driver's own exit code (2: refused recipe)."""
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    tree = recipe_tree(tiny_base, tmp_path / "absent-data", tmp_path / "runs", rounds=1)
    write_recipe(job_dir / "recipe.yaml", tree)
    proc = subprocess.run(
        [f"{VENV_BIN}/fl-ray", "submit", "recipe.yaml", "--address", labelled_cluster["dash"]],
        cwd=job_dir,
        env=labelled_cluster["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "FAILED" in proc.stderr and "missing file" in proc.stdout
    assert not (tmp_path / "runs").exists()


def test_unauthenticated_job_submission_is_refused(labelled_cluster, tmp_path):
    cluster = labelled_cluster
    dash, token = cluster["dash"], cluster["token"]
    before = api(f"{dash}/api/jobs/", token)
    assert before[0] == 200
    marker = tmp_path / "should-not-exist"
    job = {"entrypoint": f"touch {marker}"}

    # no token at all, and a wrong token: refused at the HTTP layer
    assert api(f"{dash}/api/jobs/", None, "POST", job)[0] == 401
    assert api(f"{dash}/api/jobs/", "0" * 64, "POST", job)[0] == 403

    # the real `ray job submit` client with a wrong token, and with no token on this machine
    home = tmp_path / "home"  # no ~/.ray/auth_token here
    home.mkdir()
    base_env = {k: v for k, v in cluster["env"].items() if not k.startswith("RAY_AUTH")}
    attempts = {
        "wrong token": {**base_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "f" * 64},
        "no token": {**base_env, "HOME": str(home), "RAY_AUTH_MODE": "disabled"},
    }
    for why, env in attempts.items():
        proc = subprocess.run(
            [f"{VENV_BIN}/ray", "job", "submit", "--address", dash, "--no-wait"]
            + ["--", "touch", str(marker)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0, f"{why}: {proc.stdout[-1000:]}"
        assert "auth" in (proc.stdout + proc.stderr).lower(), why
    # `fl-ray submit` turns the refusal into one line and exit code 2
    (tmp_path / "r.yaml").write_text(
        "run_name: x\nbase_model: {path: /nonexistent}\n"
        "silos: [{name: a, data_dir: /nonexistent}]\n"
    )
    proc = subprocess.run(
        [f"{VENV_BIN}/fl-ray", "submit", "r.yaml", "--address", dash],
        cwd=tmp_path,
        env=attempts["wrong token"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "refused" in proc.stderr
    assert "Traceback" not in proc.stderr
    after = api(f"{dash}/api/jobs/", token)
    assert len(after[1]) == len(before[1])  # no job was created by any of the attempts
    assert not marker.exists()


def test_pinned_silo_waits_for_its_node_and_never_moves(tiny_base, demo_data, tmp_path):
    """Remove the node labelled `transport`: the transport silo is not rescheduled onto the
    unlabelled node with free CPUs; it comes back only when a `transport` node returns."""
    import ray
    from ray.cluster_utils import Cluster

    from fl_ray.config import parse_recipe
    from fl_ray.on_ray import RaySiloPool

    tree = recipe_tree(tiny_base, demo_data, tmp_path, silos=(WORKER_LABEL, HEAD_LABEL))
    for silo in tree["silos"]:
        silo["node_label"] = silo["name"]
    recipe = parse_recipe(tree)

    os.environ.pop("RAY_ADDRESS", None)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "labels": {"fl-silo": HEAD_LABEL},
            "include_dashboard": False,
        },
    )
    try:
        transport_node = cluster.add_node(num_cpus=1, labels={"fl-silo": WORKER_LABEL})
        spare = cluster.add_node(num_cpus=1)  # free CPUs, no label: where a move would land
        ray.init(address=cluster.address, log_to_driver=False)
        pool = RaySiloPool(recipe)
        assert pool.node_ids == {
            WORKER_LABEL: transport_node.node_id,
            HEAD_LABEL: cluster.head_node.node_id,
        }
        actor = pool.actors[WORKER_LABEL]

        cluster.remove_node(transport_node)
        time.sleep(4)
        for _ in range(2):  # calls fail fast (max_task_retries=0): it must never answer
            with pytest.raises(ray.exceptions.RayError):
                ray.get(actor.ready.remote(), timeout=5)
            # private state API: the public one needs the dashboard, which this cluster skips
            state = ray._private.state.actors(actor._actor_id.hex())
            assert state["State"] in ("RESTARTING", "PENDING_CREATION"), state["State"]
            assert state["Address"]["Port"] == 0  # not running in any worker process
            time.sleep(2)
        assert ray.get(pool.actors[HEAD_LABEL].ready.remote()) == cluster.head_node.node_id

        replacement = cluster.add_node(num_cpus=1, labels={"fl-silo": WORKER_LABEL})
        assert _first_answer(actor, 120) == replacement.node_id != spare.node_id
        pool.close()
    finally:
        ray.shutdown()
        cluster.shutdown()


def _first_answer(actor, timeout_s: float) -> str:
    """Poll a restarting actor until it answers ``ready()`` (its node id)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(actor.ready.remote(), timeout=10)
        except ray.exceptions.RayError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
