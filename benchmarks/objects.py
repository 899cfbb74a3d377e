"""Large objects sent once: bytes on the wire, corral's ``put`` beside dask's ``scatter``, in one run.

    python benchmarks/objects.py [--mib 100] [--tasks 1000] [--auto 10] [--no-dask] [--no-ray]

One numpy array of ``--mib`` MiB is used by ``--tasks`` tasks on two remote workers:

- corral: a standalone ``corral broker`` over CurveZMQ on loopback, and ``corral worker
  --processes 2`` (two workers); ``ex.put(arr)``, then the tasks take the Ref.  Also
  ``--auto`` tasks that take the array itself (content addressing: hashed at each submit);
- dask: ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``,
  ``client.scatter(arr, broadcast=True)``, then ``client.map`` over the future;
- Ray (where it is installed): a head node with no CPU for the driver and two worker nodes of
  one CPU each, every node with its own object store (``ray.cluster_utils.Cluster``, all on
  this machine, so that an object crosses from one store to another as it would between
  machines; Ray binds to the machine's own address, whose traffic Linux carries on ``lo``);
  ``ray.put(arr)``, then the tasks take the reference.

Each reports, from before the object is stored to the last result: the bytes sent on the
loopback interface (psutil's counters for ``lo``: every process's, so only a quiet machine
gives the benchmark's own; run it a few times and take the smallest), the time that took,
and, for corral, the broker's own count of the object bytes it sent to workers.  Ray's own
control traffic between its nodes (heartbeats, metrics) counts too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import psutil

import corral

MiB = 1 << 20


def pick(a, i: int) -> float:
    return float(a[i % a.size])


def lo_sent() -> int:
    return psutil.net_io_counters(pernic=True)["lo"].bytes_sent


class Count:
    """What a stretch of the benchmark sent on loopback, in MiB; how long it took."""

    def __enter__(self) -> Count:
        self.lo, self.began = lo_sent(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.lo = (lo_sent() - self.lo) / MiB
        self.took = time.perf_counter() - self.began


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_corral(home: str) -> tuple[list, str]:
    """A broker over CurveZMQ and ``corral worker --processes 2``; the processes and the connection file."""
    env = {**os.environ, "CORRAL_HOME": home, "PYTHONPATH": os.pathsep.join(
        filter(None, [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH")]))}
    broker = subprocess.Popen([sys.executable, "-m", "corral", "broker", "--listen",
                               f"tcp://127.0.0.1:{free_port()}"], stderr=subprocess.PIPE, text=True, env=env)
    connection = None
    while connection is None:
        line = broker.stderr.readline()
        if not line:
            raise RuntimeError("the broker did not start")
        if "connection file " in line:
            connection = line.split("connection file ", 1)[1].split(" (")[0].strip()
    worker = subprocess.Popen([sys.executable, "-m", "corral", "worker", connection, "--processes", "2"],
                              stderr=subprocess.DEVNULL, env=env)
    return [worker, broker], connection


def run_corral(arr: np.ndarray, tasks: int, auto: int) -> dict:
    import tempfile

    home = tempfile.mkdtemp(prefix="corral-bench-")
    procs, connection = start_corral(home)
    try:
        with corral.Executor(address=connection) as ex:
            ex.submit(pick, np.zeros(4), 0).result(60)  # both connected, the function imported
            while len(ex.summary()) < 2:
                time.sleep(0.1)
            with Count() as put:
                ref = ex.put(arr)
                results = [f.result(600) for f in [ex.submit(pick, ref, i) for i in range(tasks)]]
            sent = ex.summary().objects["sent_bytes"]
            assert results == [float(arr[i % arr.size]) for i in range(tasks)]
            out = {"put_lo_mib": put.lo, "put_s": put.took,
                   "put_broker_sent_mib": sent / MiB}
            del ref
            if auto:
                with Count() as passed:
                    results = [f.result(600) for f in [ex.submit(pick, arr, i) for i in range(auto)]]
                out.update(auto_lo_mib=passed.lo, auto_s=passed.took,
                           auto_broker_sent_mib=(ex.summary().objects["sent_bytes"] - sent) / MiB)
            out["workers_lost"] = sum(1 for w in ex.summary() if not w["alive"])  # went silent: sent again
        return out
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        import shutil

        shutil.rmtree(home, ignore_errors=True)


def run_dask(arr: np.ndarray, tasks: int) -> dict:
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.submit(pick, np.zeros(4), 0).result()
        with Count() as scattered:
            fut = client.scatter(arr, broadcast=True)
            results = client.gather(client.map(pick, [fut] * tasks, range(tasks)))
        assert results == [float(arr[i % arr.size]) for i in range(tasks)]
        return {"lo_mib": scattered.lo, "s": scattered.took}


def run_ray(arr: np.ndarray, tasks: int) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        remote_pick = ray.remote(num_cpus=1)(pick)
        ray.get([remote_pick.remote(np.zeros(4), i) for i in range(8)])  # both nodes' workers started
        with Count() as put:
            ref = ray.put(arr)
            results = ray.get([remote_pick.remote(ref, i) for i in range(tasks)])
        assert results == [float(arr[i % arr.size]) for i in range(tasks)]
        return {"lo_mib": put.lo, "s": put.took}
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--auto", type=int, default=10, help="tasks that take the array itself (0: none)")
    parser.add_argument("--no-dask", action="store_true")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    arr = np.random.default_rng(0).random(args.mib * MiB // 8)
    report = {"mib": args.mib, "tasks": args.tasks, "corral": run_corral(arr, args.tasks, args.auto)}
    if not args.no_dask:
        report["dask"] = run_dask(arr, args.tasks)
    if not args.no_ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            report["ray"] = "not installed"
        else:
            report["ray"] = run_ray(arr, args.tasks)
    report["naive_mib"] = args.mib * args.tasks  # the array sent with every task
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
