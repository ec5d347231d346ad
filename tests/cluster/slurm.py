"""A throw-away single-node Slurm cluster for tests.

``slurm_cluster(workdir)`` writes a minimal ``slurm.conf`` under *workdir*, starts
``munged`` (unless one is already running), ``slurmctld`` and ``slurmd``, waits until the
node is idle, and stops everything it started again on exit -- by PID, never by name.

Needs root and Debian's ``slurm-wlm`` + ``munge`` (install with ``.ci/install-slurm.sh``).
There is no accounting database: finished jobs are recorded by ``jobcomp/filetxt`` in a
text file (see ``SlurmCluster.job_records``), and ``sacct`` does not work.

Pitfall handled here: the Snakemake Slurm jobstep executor strips every ``SLURM_*``
variable, ``SLURM_CONF`` included, before it calls ``srun`` inside a job. With the config
outside ``/etc/slurm`` that ``srun`` would find no configuration, so the cluster's ``env``
puts a ``bin/`` directory first on ``PATH`` whose Slurm client commands are small
wrappers that set ``SLURM_CONF`` and exec the real binaries.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = "run `sudo .ci/install-slurm.sh` (installs Debian's slurm-wlm and munge)"
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
PARTITION = "debug"

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("munge", "sinfo", "sbatch", "srun", "squeue", "scontrol", "scancel")
# Client commands wrapped in bin/ so that they find the config even without SLURM_CONF.
WRAPPED_CLIENTS = (
    "sbatch", "srun", "salloc", "squeue", "sinfo", "scontrol", "scancel", "sacct",
    "sacctmgr", "sshare", "sstat", "sattach", "sbcast", "sprio", "sdiag",
)  # fmt: skip
# Inherited variables that would redirect or reconfigure the Slurm clients.
_FOREIGN_ENV = re.compile(r"^(SLURM|SBATCH|SRUN|SALLOC|SQUEUE|SINFO|SACCT|SCONTROL)_")
# UNIX socket paths (slurmstepd's sockets live in the spool dir) are limited to 108 bytes.
_MAX_SPOOL_PATH = 70
_JOBCOMP_FIELD = re.compile(r"(\w+)=(.*?)(?=\s+\w+=|\s*$)")


class SlurmError(RuntimeError):
    """The test cluster could not be started or used."""


class SlurmNotInstalledError(SlurmError):
    """Slurm or munge is missing on this machine."""


@dataclass
class SlurmCluster:
    """A running single-node cluster; use ``env`` for every Slurm/Snakemake subprocess."""

    workdir: Path
    conf_path: Path
    node_name: str
    partition: str
    cpus: int
    real_memory_mb: int
    env: dict[str, str]
    jobcomp_path: Path
    log_dir: Path
    pids: dict[str, int] = field(default_factory=dict)

    def run(
        self, args: Sequence[str], *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (e.g. ``["squeue"]``) with the cluster's environment."""
        return _run(list(args), env=self.env, check=check, timeout=timeout)

    def sbatch(self, *args: str) -> str:
        """Submit a batch job (``sbatch --parsable ARGS``) and return its job ID."""
        out = self.run(["sbatch", "--parsable", *args]).stdout.strip()
        return out.split(";")[0]

    def job_records(self) -> list[dict[str, str]]:
        """Return slurmctld's job-completion records (one dict per finished job).

        Keys include ``JobId``, ``Name``, ``JobState``, ``Partition``, ``NodeList``,
        ``ExitCode`` and ``WorkDir``.
        """
        if not self.jobcomp_path.exists():
            return []
        lines = self.jobcomp_path.read_text().splitlines()
        return [dict(_JOBCOMP_FIELD.findall(line)) for line in lines if line.strip()]

    def wait_for_job(self, job_id: str, timeout: float = 60) -> dict[str, str]:
        """Block until job *job_id* has a completion record; return that record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.job_records():
                if record.get("JobId") == str(job_id):
                    return record
            time.sleep(0.5)
        queue = self.run(["squeue", "--states=all"], check=False).stdout
        raise SlurmError(
            f"job {job_id} did not finish within {timeout:.0f} s\n"
            f"squeue:\n{queue}\n{self.log_tails()}"
        )

    def log_tails(self, lines: int = 25) -> str:
        """Return the last *lines* lines of every daemon log, for error messages."""
        return _log_tails(self.log_dir, lines)


@contextlib.contextmanager
def slurm_cluster(workdir: Path, *, start_timeout: float = 60) -> Iterator[SlurmCluster]:
    """Start munged (if needed), slurmctld and slurmd under *workdir*; stop them on exit."""
    binaries = _find_binaries()
    if os.geteuid() != 0:
        raise SlurmError("the Slurm test cluster runs its daemons as root; run the tests as root")

    workdir = Path(workdir).resolve()
    dirs = {name: workdir / name for name in ("etc", "state", "spool", "log", "run", "bin")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    spool = dirs["spool"]
    short_spool: Path | None = None
    if len(str(spool)) > _MAX_SPOOL_PATH:
        short_spool = Path(tempfile.mkdtemp(prefix="slurmd-spool-"))
        spool = short_spool

    node_name = _short_hostname()
    cpus = os.cpu_count() or 1
    memory_mb = _usable_memory_mb()
    ctld_port, slurmd_port = _free_ports(2)
    conf_path = dirs["etc"] / "slurm.conf"
    plugstack = dirs["etc"] / "plugstack.conf"
    plugstack.write_text("# no SPANK plugins in the test cluster\n")
    jobcomp_path = dirs["log"] / "jobcomp.txt"
    conf_path.write_text(
        _slurm_conf(
            node_name=node_name,
            cpus=cpus,
            memory_mb=memory_mb,
            ctld_port=ctld_port,
            slurmd_port=slurmd_port,
            state_dir=dirs["state"],
            spool_dir=spool,
            log_dir=dirs["log"],
            run_dir=dirs["run"],
            plugstack=plugstack,
            jobcomp_path=jobcomp_path,
        )
    )
    _write_client_wrappers(dirs["bin"], conf_path)
    env = _cluster_env(conf_path, dirs["bin"])

    cluster = SlurmCluster(
        workdir=workdir,
        conf_path=conf_path,
        node_name=node_name,
        partition=PARTITION,
        cpus=cpus,
        real_memory_mb=memory_mb,
        env=env,
        jobcomp_path=jobcomp_path,
        log_dir=dirs["log"],
    )
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        munged = _ensure_munged(binaries, dirs["log"])
        if munged is not None:
            started.append(("munged", munged))
        for name in ("slurmctld", "slurmd"):
            proc = _start_daemon(
                name, [binaries[name], "-D", "-f", str(conf_path)], env, dirs["log"]
            )
            started.append((name, proc))
        cluster.pids = {name: proc.pid for name, proc in started}
        _wait_until_idle(cluster, started, start_timeout)
        yield cluster
    finally:
        try:
            if any(name == "slurmctld" for name, _ in started):
                _cancel_all_jobs(cluster)
        finally:
            for name, proc in reversed(started):
                _stop(name, proc)
            if short_spool is not None:
                shutil.rmtree(short_spool, ignore_errors=True)


def slurm_installed() -> bool:
    """Whether the Slurm daemons, clients, munge and a munge key are present."""
    try:
        _find_binaries()
    except SlurmNotInstalledError:
        return False
    return True


# --------------------------------------------------------------------------- helpers


def _find_binaries() -> dict[str, str]:
    """Locate the daemons and clients, or raise SlurmNotInstalledError."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in (*DAEMONS, *CLIENTS):
        path = shutil.which(name, path=search)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        raise SlurmNotInstalledError(f"not installed: {', '.join(missing)}; {INSTALL_HINT}")
    if not MUNGE_KEY.exists():
        raise SlurmNotInstalledError(f"no munge key at {MUNGE_KEY}; {INSTALL_HINT}")
    return found


def _run(
    args: list[str],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with captured text output and a readable error."""
    proc = subprocess.run(
        args, env=None if env is None else dict(env), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise SlurmError(
            f"{' '.join(args)} failed with exit code {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def _short_hostname() -> str:
    """The short host name, which slurmd uses to find its NodeName."""
    return socket.gethostname().split(".")[0]


def _usable_memory_mb() -> int:
    """RealMemory for the node: MemTotal minus headroom (slurmd drains a node that has less)."""
    total_mb = 2048
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total_mb = int(line.split()[1]) // 1024
                break
    return max(256, min(int(total_mb * 0.9), total_mb - 512))


def _free_ports(count: int) -> list[int]:
    """Ask the kernel for *count* currently unused TCP ports."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _slurm_conf(
    *, node_name: str, cpus: int, memory_mb: int, ctld_port: int, slurmd_port: int,
    state_dir: Path, spool_dir: Path, log_dir: Path, run_dir: Path, plugstack: Path,
    jobcomp_path: Path,
) -> str:  # fmt: skip
    """Render a minimal single-node slurm.conf (known to work with Slurm 22.05)."""
    return f"""\
# Written by tests/cluster/slurm.py: a throw-away single-node cluster.
ClusterName=eqptest
SlurmctldHost={node_name}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={state_dir}
SlurmdSpoolDir={spool_dir}
SlurmctldPidFile={run_dir}/slurmctld.pid
SlurmdPidFile={run_dir}/slurmd.pid
SlurmctldLogFile={log_dir}/slurmctld.log
SlurmdLogFile={log_dir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={plugstack}
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={max(1, memory_mb // cpus)}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={jobcomp_path}
# squeue keeps finished jobs this long; the Snakemake plugin's squeue status check needs it
MinJobAge=300
NodeName={node_name} NodeHostname={node_name} NodeAddr=127.0.0.1 CPUs={cpus} \
RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={node_name} Default=YES MaxTime=INFINITE State=UP
"""


def _write_client_wrappers(bin_dir: Path, conf_path: Path) -> None:
    """Write bin/<client> wrappers that pin SLURM_CONF, then exec the real client."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/sbin"])
    for name in WRAPPED_CLIENTS:
        real = shutil.which(name, path=search)
        if real is None or Path(real).parent == bin_dir:
            continue
        wrapper = bin_dir / name
        wrapper.write_text(
            f"#!/bin/sh\nSLURM_CONF='{conf_path}'\nexport SLURM_CONF\nexec '{real}' \"$@\"\n"
        )
        wrapper.chmod(0o755)


def _cluster_env(conf_path: Path, bin_dir: Path) -> dict[str, str]:
    """os.environ without inherited Slurm job/client variables, plus this cluster's."""
    env = {key: value for key, value in os.environ.items() if not _FOREIGN_ENV.match(key)}
    env["SLURM_CONF"] = str(conf_path)
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "/usr/bin:/bin")])
    return env


def _munge_works(munge: str) -> bool:
    """Whether a munged answers on the default socket."""
    try:
        proc = subprocess.run([munge, "-n"], capture_output=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def _ensure_munged(binaries: Mapping[str, str], log_dir: Path) -> subprocess.Popen[bytes] | None:
    """Start munged as user munge unless one already runs; return it if we started it."""
    if _munge_works(binaries["munge"]):
        return None
    MUNGE_RUN_DIR.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_RUN_DIR, user="munge", group="munge")
    MUNGE_RUN_DIR.chmod(0o755)
    out = open(log_dir / "munged.stderr", "ab")  # the daemon inherits it
    proc = subprocess.Popen(
        [binaries["munged"], "--foreground"],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        user="munge", group="munge", extra_groups=[], start_new_session=True,
    )  # fmt: skip
    out.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SlurmError(
                f"munged exited with code {proc.returncode}\n{_log_tails(log_dir, 25)}"
            )
        if _munge_works(binaries["munge"]):
            return proc
        time.sleep(0.2)
    _stop("munged", proc)
    raise SlurmError(f"munged did not come up within 15 s\n{_log_tails(log_dir, 25)}")


def _start_daemon(
    name: str, args: list[str], env: Mapping[str, str], log_dir: Path
) -> subprocess.Popen[bytes]:
    """Start a foreground daemon with stdout/stderr appended to log/<name>.stderr."""
    out = open(log_dir / f"{name}.stderr", "ab")  # the daemon inherits it
    try:
        return subprocess.Popen(
            args, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    finally:
        out.close()


def _wait_until_idle(
    cluster: SlurmCluster, started: list[tuple[str, subprocess.Popen[bytes]]], timeout: float
) -> None:
    """Poll sinfo until the node is idle; fail early if a daemon dies."""
    deadline = time.monotonic() + timeout
    state = "?"
    while time.monotonic() < deadline:
        for name, proc in started:
            if proc.poll() is not None:
                raise SlurmError(
                    f"{name} exited with code {proc.returncode} during start-up\n"
                    f"{cluster.log_tails()}"
                )
        proc = cluster.run(
            ["sinfo", "--noheader", "--Node", "--nodes", cluster.node_name, "--format=%t"],
            check=False,
            timeout=15,
        )
        state = proc.stdout.strip() or proc.stderr.strip()
        if proc.returncode == 0 and state == "idle":
            return
        time.sleep(0.5)
    raise SlurmError(
        f"node {cluster.node_name} not idle after {timeout:.0f} s (last sinfo: {state!r})\n"
        f"{cluster.log_tails()}"
    )


def _cancel_all_jobs(cluster: SlurmCluster, timeout: float = 30) -> None:
    """Cancel every job still known to slurmctld so that no slurmstepd outlives slurmd."""
    with contextlib.suppress(SlurmError, subprocess.TimeoutExpired):
        active = "--states=PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING"
        jobs = cluster.run(["squeue", "--noheader", active, "--format=%i"], timeout=15)
        if not jobs.stdout.strip():
            return
        cluster.run(["scancel", *jobs.stdout.split()], check=False, timeout=15)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = cluster.run(["squeue", "--noheader", active, "--format=%i"], timeout=15)
            if not left.stdout.strip():
                return
            time.sleep(0.5)


def _stop(name: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Stop one daemon we started: SIGTERM, wait, then SIGKILL (by PID only)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def _log_tails(log_dir: Path, lines: int) -> str:
    """Concatenate the tails of all *.log / *.stderr files in *log_dir*."""
    parts = []
    for path in sorted(log_dir.glob("*")):
        if path.suffix not in (".log", ".stderr") or not path.is_file():
            continue
        text = path.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {path.name} (last {lines} lines) ---\n" + "\n".join(text))
    return "\n".join(parts) if parts else f"(no daemon logs in {log_dir})"
