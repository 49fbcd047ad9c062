"""Running a plan's jobs through submitit: on this machine (its local executor: each job a subprocess)
or on SLURM (one job array per stage). A job runs its commands as child processes; on pre-emption or
a time limit submitit calls its `checkpoint`, which asks the child to save last.pth (SIGTERM, which
the training loop answers by finishing its step) and requeues the same commands, which resume."""
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

from runtime.errors import UserError

from .plan import STAGES, Job, Plan

STOP_GRACE_S = 150  # how long a pre-empted child may take to save last.pth
FINISHED = ("done", "skipped (done)")
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2"  # torchrun's own list, and USR2
LOCAL_TIMEOUT_MIN = 60 * 24 * 30  # no time limit on this machine (submitit's local default is 2 minutes)


class CommandJob:
    """The callable a submitit job runs: its commands, in order, each in a child process."""

    def __init__(self, name: str, commands: List[List[str]], cwd: str, env: Dict[str, str]):
        self.name, self.commands, self.cwd, self.env = name, commands, cwd, env
        self._child: Optional[subprocess.Popen] = None

    def __call__(self) -> str:
        for argv in self.commands:  # argv: a script and its flags, or ['-m', 'torch.distributed.run', ...]
            print(f"$ python {shlex.join(argv)}", flush=True)
            self._child = subprocess.Popen([sys.executable, *argv], cwd=self.cwd, env={**os.environ, **self.env})
            status = self._child.wait()
            self._child = None
            if status != 0:
                raise RuntimeError(f"python {shlex.join(argv)} exited with status {status}")
        return self.name

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on pre-emption and time-outs: stop the child cleanly, then requeue."""
        import submitit
        child = self._child
        if child is not None and child.returncode is None:
            child.send_signal(signal.SIGTERM)
            if not exited(child.pid, STOP_GRACE_S):
                child.kill()
        return submitit.helpers.DelayedSubmission(CommandJob(self.name, self.commands, self.cwd, self.env))

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
        self.kind, self.repo, self.workers, self.poll_s = kind, repo, workers, poll_s
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
        callables = [CommandJob(job.name, job.commands, self.repo, env) for job in jobs]
        if self.kind == "slurm":
            self.executor.update_parameters(gpus_per_node=gpus)
            with self.executor.batch():  # one job array
                handles = [self.executor.submit(c) for c in callables]
            return handles
        return [self.executor.submit(c) for c in callables]

    @staticmethod
    def ready(waiting: List[Job], states: Dict[str, str], checked: set) -> List[Job]:
        """The waiting jobs whose inputs are done and that still have work. A job is checked once its
        inputs are done, not before: what the jobs before it did this time (a resumed run's new best
        checkpoint, say) decides whether it has work. Found done, it leaves `waiting` at once, which
        may make the jobs after it ready in turn."""
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
                ready.append(job)
            if not skipped:
                return ready

    def run(self, jobs: List[Job], states: Dict[str, str]) -> None:
        """Every job of `jobs` (in stage order) whose inputs are done, to its end; updates `states`.
        Locally a job starts as soon as its inputs are done and a worker is free; on SLURM each stage
        is one array, submitted when the stage before it has ended."""
        waiting, running, checked = list(jobs), {}, set()
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
                    reason = str(error).strip().splitlines()[-1] if error is not None else what
                    print(f"[{clock()}] FAILED {name} after {elapsed}: {reason}; log {handle.paths.stdout}, "
                          f"{handle.paths.stderr}", flush=True)


def execute(plan: Plan, launcher: Launcher) -> Dict[str, str]:
    """Every job not done yet; a job whose inputs failed is 'blocked'. The report is written in this
    process (it needs no GPU) once its inputs are done. Returns each job's state."""
    states = {job.name: "pending" for job in plan.jobs}
    order = {stage: i for i, stage in enumerate(STAGES)}
    launcher.run(sorted((j for j in plan.jobs if j.stage != "report"), key=lambda j: order[j.stage]), states)
    for job in plan.jobs:
        if job.stage == "report":
            if not all(states[n] in FINISHED for n in job.needs):
                states[job.name] = "blocked"
            else:
                states[job.name] = "skipped (done)" if job.status()[0] else run_here(job, launcher.repo)
    return states


def run_here(job: Job, repo: str) -> str:
    print(f"[{clock()}] started {job.name}", flush=True)
    start = time.time()
    for argv in job.commands:
        if subprocess.call([sys.executable, *argv], cwd=repo) != 0:
            print(f"[{clock()}] FAILED {job.name}: python {shlex.join(argv)}", flush=True)
            return "failed"
    print(f"[{clock()}] finished {job.name} in {took(time.time() - start)}", flush=True)
    return "done"


def summary(plan: Plan, states: Dict[str, str]) -> str:
    width = max(len(job.name) for job in plan.jobs)
    lines = [f"{'job':<{width}}  {'stage':<8}  state", f"{'-' * width}  {'-' * 8}  {'-' * 14}"]
    lines += [f"{job.name:<{width}}  {job.stage:<8}  {states[job.name]}" for job in plan.jobs]
    counts: Dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()))
    return "\n".join(lines)
