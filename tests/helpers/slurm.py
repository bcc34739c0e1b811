"""A real one-node SLURM on localhost for the tests: munged, slurmctld and slurmd, CPU only, no cgroups.

``one_node_cluster(folder)`` writes a minimal ``slurm.conf`` into ``folder`` (state, spool, pids and logs
there too), starts the daemons and waits until the node is idle; it yields the environment in which
``sbatch``, ``squeue``, ``scontrol`` and submitit reach it (``SLURM_CONF``), and stops the daemons it
started. Requeued jobs start again after about 11 s (``AuthInfo=cred_expire=10``, the scheduler every 2 s).
Where the packages are missing or the daemons cannot run here, ``SlurmUnavailable`` says exactly why
(the tests skip with that reason). CI installs the packages (Debian's ``slurm-wlm`` and ``munge``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")


class SlurmUnavailable(RuntimeError):
    """Why a real SLURM cannot run here (a missing package, no permission, a daemon that did not start)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(folder: Path, host: str) -> str:
    ctld, node = _free_port(), _free_port()
    return "\n".join([
        f"ClusterName=segtrain{os.getpid()}", f"SlurmctldHost={host}", "SlurmUser=root", "AuthType=auth/munge",
        "AuthInfo=cred_expire=10", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=2,bf_interval=2", "MpiDefault=none", "ReturnToService=2",
        f"SlurmctldPort={ctld}", f"SlurmdPort={node}", f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}", f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}", f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd.log'}", "KillWait=30", "MinJobAge=600",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""])


def _munged() -> None:
    """munged, as its package's user, unless one runs already."""
    socket_path = Path("/run/munge/munge.socket.2")
    if socket_path.exists() and subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    proc = subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "munged"], capture_output=True, text=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise SlurmUnavailable(f"munged did not start: {proc.stderr.strip() or proc.stdout.strip() or 'no output'}")


@contextlib.contextmanager
def one_node_cluster(folder: Path):
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        raise SlurmUnavailable(f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurmd must run as root to start jobs, and this test runs as another user")
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, host))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for key in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        env.pop(key)  # a test run inside a SLURM job must not talk to that job's cluster
    _munged()
    daemons = []
    try:
        for daemon in ("slurmctld", "slurmd"):
            log = open(folder / f"{daemon}.out", "w")
            daemons.append(subprocess.Popen([daemon, "-D", "-f", str(conf)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True))
        deadline = time.time() + 30
        state = ""
        while time.time() < deadline:
            for proc in daemons:
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{proc.args[0]} exited {proc.returncode}: "
                                           f"{(folder / (proc.args[0] + '.out')).read_text()[-400:].strip()}")
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            state = out.stdout.strip() or out.stderr.strip()
            if state == "idle":
                break
            time.sleep(0.3)
        else:
            raise SlurmUnavailable(f"the node did not become idle in 30 s (sinfo: {state!r})")
        yield env
    finally:
        for proc in reversed(daemons):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in daemons:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
