"""Running a plan's jobs through submitit: on this machine (its local executor: each job a subprocess)
or on SLURM (one job array per stage). A job runs its commands as child processes; on pre-emption or
a time limit submitit calls its `checkpoint`, which asks the child to save last.pth (SIGTERM, which
the training loop answers by finishing its step) and requeues the same commands, which resume.

Local jobs live and die with reproduce.py: Ctrl-C reaches reproduce.py alone (submitit's processes start
with SIGINT ignored, so none prints a traceback), which then stops its jobs (SIGTERM: a run saves last.pth);
a job whose reproduce.py is gone (kill -9) stops its command the same way. The jobs a call starts are listed
in <root>/jobs/running.json, so that the next call says which of them still run rather than start twins."""
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

from runtime.checkpoints import atomic_write_json
from runtime.errors import UserError

from .plan import STAGES, Job, Plan

STOP_GRACE_S = 150  # how long a pre-empted child may take to save last.pth
FINISHED = ("done", "skipped (done)")
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2"  # torchrun's own list, and USR2
LOCAL_TIMEOUT_MIN = 60 * 24 * 30  # no time limit on this machine (submitit's local default is 2 minutes)
WATCH_S = 1.0  # how often a local job checks that its reproduce.py still runs
RUNNING_FILE = "running.json"  # in the jobs folder: {controller pid: job name} of the local jobs running
CONTROLLER = "submitit.local._local"  # the module of submitit's local job processes (their command line)


class JobStopped(Exception):
    """A local job's command was stopped because reproduce.py was interrupted or is gone."""


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): it exists


class CommandJob:
    """The callable a submitit job runs: its commands, in order, each in a child process."""

    def __init__(self, name: str, commands: List[List[str]], cwd: str, env: Dict[str, str],
                 parent_pid: Optional[int] = None):
        """parent_pid (local jobs): reproduce.py's process; the job stops its command when that process sends
        SIGTERM (reproduce.py interrupted) or is gone (killed), instead of running on as an orphan."""
        self.name, self.commands, self.cwd, self.env, self.parent_pid = name, commands, cwd, env, parent_pid
        self._child: Optional[subprocess.Popen] = None
        self._parent_gone = False

    def __call__(self) -> str:
        if self.parent_pid is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)  # instead of submitit's: SIGTERM ends a local job
            threading.Thread(target=self.follow_parent, daemon=True).start()
        for argv in self.commands:  # argv: a script and its flags, or ['-m', 'torch.distributed.run', ...]
            print(f"$ python {shlex.join(argv)}", flush=True)
            self._child = subprocess.Popen([sys.executable, *argv], cwd=self.cwd, env={**os.environ, **self.env})
            status = self._child.wait()
            self._child = None
            if status != 0:
                raise RuntimeError(f"python {shlex.join(argv)} exited with status {status}")
        return self.name

    def follow_parent(self) -> None:
        while process_alive(self.parent_pid):
            time.sleep(WATCH_S)
        self._parent_gone = True
        os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread, by `stop`

    def stop(self, signum, frame):
        """SIGTERM of a local job: its child saves last.pth and ends, then the job ends without running the
        commands after it."""
        self.stop_child()
        why = "reproduce.py is gone" if self._parent_gone else "reproduce.py stopped it"
        raise JobStopped(f"{why}: the command was stopped (a training run saves last.pth first)")

    def stop_child(self) -> None:
        """SIGTERM to the running child, which saves last.pth and ends; killed if it takes too long."""
        child = self._child
        if child is not None and child.returncode is None:
            child.send_signal(signal.SIGTERM)
            if not exited(child.pid, STOP_GRACE_S):
                child.kill()

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on pre-emption and time-outs: stop the child cleanly, then requeue."""
        import submitit
        self.stop_child()
        return submitit.helpers.DelayedSubmission(CommandJob(self.name, self.commands, self.cwd, self.env,
                                                             self.parent_pid))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_child"] = None  # a process is not part of what is requeued
        return state


def exited(pid: int, seconds: float) -> bool:
    """Whether child `pid` ends within `seconds`. os.waitpid, not Popen.wait: this runs in a signal
    handler that may have interrupted Popen.wait in the same thread, which holds Popen's lock."""
    deadline = time.time() + seconds
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return True
        except ChildProcessError:  # reaped already
            return True
        if time.time() > deadline:
            return False
        time.sleep(0.05)


def clock() -> str:
    return time.strftime("%H:%M:%S")


def took(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class Launcher:
    """Submits a stage's jobs and follows them to their end, a line per start and end."""

    def __init__(self, kind: str, folder: str, repo: str, workers: int = 1, slurm: Optional[Dict] = None,
                 poll_s: float = 2.0, gpus: int = 0):
        """`gpus`: local only, the GPUs of this machine; each job is given the least busy one."""
        try:
            import submitit
        except ImportError:
            raise UserError("reproduce.py needs submitit: python -m pip install -r requirements.txt") from None
        self.kind, self.repo, self.workers, self.poll_s, self.folder = kind, repo, workers, poll_s, folder
        self.reasons: Dict[str, str] = {}  # why each failed job failed: its one line
        self.local_jobs: Dict[int, str] = {}  # {controller pid: job name} of the local jobs running
        self.gpu_load = {gpu: 0 for gpu in range(gpus if kind == "local" else 0)}
        if kind == "local":
            self.executor = submitit.LocalExecutor(folder=folder)
            self.executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
            threads = str(max(1, (os.cpu_count() or 1) // workers))
            self.env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
        else:
            slurm = dict(slurm or {})
            try:
                self.executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
            except RuntimeError as exc:  # no srun on this machine
                raise UserError(f"--launcher slurm: {exc} Run reproduce.py on the cluster's login node, or use "
                                f"--launcher local") from None
            params = {"timeout_min": slurm["time"], "tasks_per_node": 1,
                      "cpus_per_task": slurm["cpus"], "slurm_array_parallelism": slurm["array_parallelism"],
                      "slurm_signal_delay_s": STOP_GRACE_S + 30, "name": "advkd"}
            for key in ("partition", "account", "qos", "constraint"):
                if slurm.get(key):
                    params[f"slurm_{key}"] = slurm[key]
            self.executor.update_parameters(**params)
            self.env = {"OMP_NUM_THREADS": str(slurm["cpus"])}
            self.workers = 10 ** 9  # SLURM queues the array; --array_parallelism caps it

    def submit(self, jobs: List[Job], env: Optional[Dict[str, str]] = None):
        """One SLURM array of `jobs` (they share one stage, and so a GPU count) or, locally, one job."""
        gpus = max(job.gpus for job in jobs)
        env = dict(self.env, **(env or {}))
        if gpus > 1:  # torchrun's processes share the job's cores
            env["OMP_NUM_THREADS"] = str(max(1, int(env["OMP_NUM_THREADS"]) // gpus))
            # SLURM's USR2 warning reaches torchrun too: it must pass it on to its processes (which save
            # last.pth) rather than die of it.
            env["TORCHELASTIC_SIGNALS_TO_HANDLE"] = TORCHRUN_SIGNALS
        parent = os.getpid() if self.kind == "local" else None  # a SLURM job outlives the login node's call
        callables = [CommandJob(job.name, job.commands_now(), self.repo, env, parent) for job in jobs]
        if self.kind == "slurm":
            self.executor.update_parameters(gpus_per_node=gpus)
            with self.executor.batch():  # one job array
                handles = [self.executor.submit(c) for c in callables]
            return handles
        with sigint_ignored():  # inherited by submitit's processes: Ctrl-C is reproduce.py's to handle
            handles = [self.executor.submit(c) for c in callables]
        for job, handle in zip(jobs, handles):
            self.local_jobs[int(handle.job_id)] = job.name
        self.write_running()
        return handles

    def write_running(self) -> None:
        if self.kind == "local":
            atomic_write_json(os.path.join(self.folder, RUNNING_FILE), {str(pid): name for pid, name in
                                                                       self.local_jobs.items()})

    def ready(self, waiting: List[Job], states: Dict[str, str], checked: set) -> List[Job]:
        """The waiting jobs whose inputs are done and that still have work. A job is checked once its
        inputs are done, not before: what the jobs before it did this time (a resumed run's new best
        checkpoint, say) decides whether it has work. Found done, it leaves `waiting` at once, which
        may make the jobs after it ready in turn. A job its script would refuse as planned (its folder
        holds another run) fails here, with the reason, without starting."""
        while True:
            ready, skipped = [], False
            for job in [j for j in waiting if all(states[n] in FINISHED for n in j.needs)]:
                if job.name not in checked:
                    checked.add(job.name)
                    if job.status()[0]:
                        states[job.name] = "skipped (done)"
                        waiting.remove(job)
                        skipped = True
                        continue
                    refused = job.refused()
                    if refused:
                        self.fail(job.name, refused)
                        states[job.name] = "failed"
                        waiting.remove(job)
                        continue
                ready.append(job)
            if not skipped:
                return ready

    def fail(self, name: str, reason: str, elapsed: str = "") -> None:
        self.reasons[name] = reason
        print(f"[{clock()}] FAILED {name}{f' after {elapsed}' if elapsed else ''}: {reason}", flush=True)

    def run(self, jobs: List[Job], states: Dict[str, str]) -> None:
        """Every job of `jobs` (in stage order) whose inputs are done, to its end; updates `states`.
        Locally a job starts as soon as its inputs are done and a worker is free; on SLURM each stage
        is one array, submitted when the stage before it has ended. Ctrl-C stops the local jobs that run
        (each run saves last.pth) and raises KeyboardInterrupt saying what it did."""
        running: Dict[str, Tuple] = {}
        try:
            self.follow(jobs, states, running)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(self.stop(running)) from None

    def follow(self, jobs: List[Job], states: Dict[str, str], running: Dict[str, Tuple]) -> None:
        waiting, checked = list(jobs), set()
        while waiting or running:
            for job in list(waiting):
                if any(states[n] in ("failed", "blocked") for n in job.needs):
                    states[job.name] = "blocked"
                    waiting.remove(job)
            ready = self.ready(waiting, states, checked)
            if not waiting and not running:
                break
            if self.kind == "slurm":
                if ready and not running:
                    batch = [j for j in ready if j.stage == ready[0].stage]
                    print(f"[{clock()}] stage {batch[0].stage}: submitting {len(batch)} job(s) as one SLURM array",
                          flush=True)
                    for job, handle in zip(batch, self.submit(batch)):
                        waiting.remove(job)
                        running[job.name] = (job, handle, None)
                        states[job.name] = "submitted"
                        print(f"[{clock()}] submitted {job.name}: SLURM job {handle.job_id}, log "
                              f"{handle.paths.stdout}", flush=True)
            else:
                for job in ready[:max(0, self.workers - len(running))]:
                    waiting.remove(job)
                    env, on, gpus = {}, "", []
                    if self.gpu_load:  # one job per GPU while there are enough: main.py's --gpu_id 0 is it
                        gpus = sorted(self.gpu_load, key=lambda g: (self.gpu_load[g], g))[:job.gpus]
                        for gpu in gpus:
                            self.gpu_load[gpu] += 1
                        listed = ",".join(map(str, gpus))
                        env, on = {"CUDA_VISIBLE_DEVICES": listed}, f" on GPU{'s' if len(gpus) > 1 else ''} {listed}"
                    handle = self.submit([job], env)[0]
                    handle.gpus = gpus
                    running[job.name] = (job, handle, time.time())
                    states[job.name] = "running"
                    print(f"[{clock()}] started {job.name}{on} (log {handle.paths.stdout})", flush=True)
            if not running:
                if waiting and not ready:  # nothing runs and nothing can start: inputs that never finish
                    for job in waiting:
                        states[job.name] = "blocked"
                    break
                continue
            time.sleep(self.poll_s)
            for name, (job, handle, started) in list(running.items()):
                if started is None and handle.state == "RUNNING":
                    started = time.time()
                    running[name] = (job, handle, started)
                    states[name] = "running"
                    print(f"[{clock()}] started {name} (SLURM job {handle.job_id})", flush=True)
                if not handle.done():
                    continue
                del running[name]
                self.ended(handle)
                for gpu in getattr(handle, "gpus", []):
                    self.gpu_load[gpu] -= 1
                elapsed = took(time.time() - (started or time.time()))
                error = handle.exception()
                done, what = job.status()
                if error is None and done:
                    states[name] = "done"
                    print(f"[{clock()}] finished {name} in {elapsed}", flush=True)
                else:
                    states[name] = "failed"
                    self.fail(name, failure_reason(handle, error, what), elapsed)

    def ended(self, handle) -> None:
        if self.local_jobs.pop(int(handle.job_id) if self.kind == "local" else -1, None) is not None:
            self.write_running()

    def stop(self, running: Dict[str, Tuple]) -> str:
        """After Ctrl-C: SIGTERM to the local jobs that run (each asks its command to stop; a training run
        saves last.pth first), and a wait for them to end, which a second Ctrl-C cuts short. Says what it did."""
        if not running:
            return "no job was running"
        if self.kind == "slurm":
            return (f"the SLURM jobs {', '.join(name for name in running)} go on; the same command follows them "
                    f"again")
        handles = [handle for _, handle, _ in running.values()]
        print(f"[{clock()}] interrupted: stopping {', '.join(running)} (a training run saves last.pth first; "
              f"Ctrl-C again not to wait)", file=sys.stderr, flush=True)
        for handle in handles:
            with contextlib.suppress(OSError):
                os.kill(int(handle.job_id), signal.SIGTERM)  # submitit's controller passes it on to the job
        try:
            deadline = time.time() + STOP_GRACE_S + 30
            while time.time() < deadline and not all(handle.done() for handle in handles):
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        for handle in handles:
            if handle.done():
                self.ended(handle)
        left = [name for name, (_, handle, _) in running.items() if not handle.done()]
        if left:
            return (f"{', '.join(left)} still stopping (each ends by itself within {STOP_GRACE_S} s, a run after "
                    f"saving last.pth; the next call says if one still runs)")
        return f"stopped {', '.join(running)} (a training run saved last.pth)"


@contextlib.contextmanager
def sigint_ignored():
    """SIGINT ignored while submitit starts a local job's processes, which inherit it (Python leaves an ignored
    SIGINT ignored): Ctrl-C in the terminal reaches reproduce.py alone, which stops its jobs itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def last_error_line(path) -> Optional[str]:
    """The last `error: ...` line a job's command wrote to its log (the one line every script ends with)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - (1 << 16)))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    errors = [line.strip() for line in lines if line.startswith("error: ")]
    return errors[-1][len("error: "):] if errors else None


def failure_reason(handle, error, what: str) -> str:
    """A failed job's one line: its command's own error line, else how it ended, with its log."""
    line = last_error_line(handle.paths.stderr)
    if line:
        return line
    if error is None:  # ended without an error, but its files do not say it is done
        return f"{what} (log {handle.paths.stderr})"
    ending = [part for part in str(error).splitlines() if "exited with status" in part or "JobStopped" in part]
    said = ending[-1].split(": ", 1)[-1].strip() if ending else str(error).strip().splitlines()[0]
    return f"{said} (log {handle.paths.stderr})"


def still_running(folder: str) -> Optional[str]:
    """A line naming the local jobs of an earlier call on this root that still run, or None."""
    path = os.path.join(folder, RUNNING_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            listed = json.load(f)
    except (OSError, ValueError):
        return None
    alive = []
    for pid, name in (listed.items() if isinstance(listed, dict) else []):
        try:
            with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
                command = f.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if CONTROLLER.encode() in command and process_alive(int(pid)):
            alive.append((int(pid), str(name)))
    if not alive:
        return None
    return (f"jobs of an earlier reproduce.py call on this root still run: "
            f"{', '.join(f'{name} (pid {pid})' for pid, name in alive)}; wait for them to end (a stopped run saves "
            f"last.pth within {STOP_GRACE_S} s), or stop them with kill -TERM {' '.join(str(p) for p, _ in alive)}, "
            f"then run the same command again")


def execute(plan: Plan, launcher: Launcher) -> Dict[str, str]:
    """Every job not done yet; a job whose inputs failed is 'blocked'. The report is written in this
    process (it needs no GPU) once its inputs are done. Returns each job's state; a failed job's line is
    in launcher.reasons."""
    states = {job.name: "pending" for job in plan.jobs}
    order = {stage: i for i, stage in enumerate(STAGES)}
    launcher.run(sorted((j for j in plan.jobs if j.stage != "report"), key=lambda j: order[j.stage]), states)
    for job in plan.jobs:
        if job.stage == "report":
            if not all(states[n] in FINISHED for n in job.needs):
                states[job.name] = "blocked"
            elif job.status()[0]:
                states[job.name] = "skipped (done)"
            else:
                try:
                    states[job.name], reason = run_here(job, launcher.repo)
                except KeyboardInterrupt:
                    raise KeyboardInterrupt(f"the {job.name} was being written: the next call writes it") from None
                if reason:
                    launcher.fail(job.name, reason)
    return states


def run_here(job: Job, repo: str) -> Tuple[str, Optional[str]]:
    """The job's commands in this process's terminal; (state, the failing command's error line)."""
    print(f"[{clock()}] started {job.name}", flush=True)
    start = time.time()
    for argv in job.commands_now():
        with subprocess.Popen([sys.executable, *argv], cwd=repo, stderr=subprocess.PIPE, text=True,
                              errors="replace") as child:
            said = []
            for line in child.stderr:  # shown as it comes; its last error line is kept for the summary
                sys.stderr.write(line)
                said.append(line.rstrip("\n"))
        if child.returncode != 0:
            errors = [line[len("error: "):] for line in said if line.startswith("error: ")]
            ending = f"python {shlex.join(argv)} exited with status {child.returncode}"
            return "failed", errors[-1] if errors else ending
    print(f"[{clock()}] finished {job.name} in {took(time.time() - start)}", flush=True)
    return "done", None


def summary(plan: Plan, states: Dict[str, str], reasons: Optional[Dict[str, str]] = None) -> str:
    """The table of job states; a failed job's row carries its one line."""
    reasons = reasons or {}
    width = max(len(job.name) for job in plan.jobs)
    lines = [f"{'job':<{width}}  {'stage':<8}  state", f"{'-' * width}  {'-' * 8}  {'-' * 14}"]
    lines += [f"{job.name:<{width}}  {job.stage:<8}  {states[job.name]}"
              + (f": {reasons[job.name]}" if states[job.name] == "failed" and job.name in reasons else "")
              for job in plan.jobs]
    counts: Dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()))
    return "\n".join(lines)
