"""Starting (or joining) Ray the same way in every job."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys

import ray
import ray.data
from ray.data._internal.execution.execution_callback import ExecutionCallback
from ray.util.debug import log_once

from trainer.errors import ClusterError, is_process_death, linked
from trainer.inputs.specs import worker_runtime_env

# Whether Ray's own output reaches the console (a job's --verbose; set_verbose): its workers' lines,
# Ray Data's progress and INFO lines. Quiet, a job prints its own lines only; Ray's logs stay in
# the session's log files (/tmp/ray/session_latest/logs) either way.
_verbose = False


def set_verbose(verbose: bool) -> None:
    """A job's --verbose, before it starts Ray (ensure_ray reads it)."""
    global _verbose
    _verbose = verbose


def verbose() -> bool:
    return _verbose


def configure_data_context() -> None:
    ctx = ray.data.DataContext.get_current()
    # Ray Data's progress (bars in a terminal, blocks of INFO lines elsewhere) only with --verbose;
    # quiet, its console shows warnings and errors, not its INFO lines (its log file keeps them).
    ctx.enable_progress_bars = _verbose
    _console_level("ray.data", logging.INFO if _verbose else logging.WARNING)
    if not _verbose:
        log_once("ray_data_progress_manager_disabled")  # its warning that we turned them off: we know
    # Task-based sort shuffle: the hash shuffle starts aggregator actors on every execution,
    # seconds of overhead per epoch on small machines.
    ctx.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    # Our own errors (bad teacher output, ids missing from a store) reach the driver as themselves,
    # so the jobs can print their one-line message.
    ctx.raise_original_map_exception = True
    # ... and only as that: Ray Data's own logs of it (with its traceback) stay in its log files.
    if QuietTaskErrors not in ctx.custom_execution_callback_classes:
        ctx.custom_execution_callback_classes.append(QuietTaskErrors)


class QuietTaskErrors(ExecutionCallback):
    """Ray Data logs an exception raised in one of its tasks, with its traceback, on the console of
    the process that executes the dataset (the driver, or a training run's split coordinator), and
    again where it reaches the dataset's iterator; the job reports it itself, as its one `error:`
    line, or a bug's traceback once. The dataset's context carries this callback to that process,
    where it marks those records hidden (Ray Data's console handler skips hidden records; its log
    files keep them). A process or node that died is still logged as Ray logs it."""

    def before_execution_starts(self, executor) -> None:
        previous = logging.getLogRecordFactory()
        if getattr(previous, "hides_task_errors", False):
            return

        def make_record(*args, **kwargs) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if record.name.startswith("ray.data") and record.levelno >= logging.WARNING:
                exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
                if exc is not None and _raised_by_task_code(exc):
                    record.hide = True
            return record

        make_record.hides_task_errors = True
        logging.setLogRecordFactory(make_record)


def _raised_by_task_code(exc: BaseException) -> bool:
    """An exception that Python code raised in a task (Ray wraps those in RayTaskError), not a death."""
    for e in linked(exc, lambda e: [e.__context__, e.__cause__]):
        if isinstance(e, (ray.exceptions.RayTaskError, ray.exceptions.UserCodeException)):
            return not is_process_death(exc)
    return False


def quiet_console(*loggers: str) -> None:
    """No more console output from these loggers in this process (their log files keep it): where a
    Ray process would log, with its traceback, an error that the job reports to the user itself."""
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.CRITICAL + 1)


def _console_level(name: str, level: int) -> None:
    """The console handlers of logger `name` show records from `level` up (its log files keep all)."""
    for handler in logging.getLogger(name).handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(level)


def ensure_ray() -> None:
    """Join the cluster at RAY_ADDRESS, else start a local embedded one (never the cluster that
    `ray start` may have left on this machine: RAY_ADDRESS=auto joins that one); reuse a running session.
    Quiet (no --verbose), the workers' output is not forwarded to this console: a job reports
    progress and errors itself (an error raised in a worker reaches the driver as an exception)."""
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or "local"
        silent = _nothing_listens(address)
        if silent:  # ray.init would wait for it forever
            raise ClusterError(_join_problem(address, silent))
        # A new local cluster checks a token (Ray >= 2.59's default) and says so with a WARNING each
        # time: the job keeps that default and drops the notice (with --verbose it stays).
        notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = notice.level
        if not _verbose and address == "local":
            notice.setLevel(logging.ERROR)
        try:
            env = worker_runtime_env()
            ray.init(
                address=address,
                runtime_env=env,
                include_dashboard=False,
                logging_level="WARNING",
                log_to_driver=_verbose,
            )
        except ConnectionError as exc:
            raise ClusterError(_join_problem(address, exc)) from None
        finally:
            notice.setLevel(level)
        if not _verbose:
            _spend_restart_warning()
    configure_data_context()


@ray.remote(num_cpus=0, max_restarts=1, resources={"logitstore_never_scheduled": 1})
class _NeverStarted:
    def __init__(self, arg) -> None:
        pass


def _spend_restart_warning() -> None:
    """Ray's core worker logs an ERROR, once per process, when it creates an actor that may restart
    (max_restarts != 0) with a constructor argument in the object store (ray-project/ray#53727: the
    argument might be gone by a restart). Ray Data creates every actor of an actor pool that way:
    its MapWorker takes its DataContext and map function as ObjectRefs, and max_restarts=-1 (a killed
    teacher actor is replaced), whatever our own arguments are; the references stay alive while the
    dataset runs, so the restarts it warns about work. Spent here, once, on an actor that is never
    scheduled (a resource no node has) and removed at once, with this process's stderr closed for
    that one synchronous call; --verbose shows it where Ray Data starts its first actor."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        actor = _NeverStarted.remote(ray.put(None))
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    ray.kill(actor)


def _nothing_listens(address: str | None) -> str | None:
    """For a host:port address, why nothing answers there (None when something does, or for the
    other forms: auto, local, ray://)."""
    match = re.fullmatch(r"([^:/]+):([0-9]{1,5})", address or "")
    if not match:
        return None
    try:
        socket.create_connection((match.group(1), int(match.group(2))), timeout=10).close()
    except OSError as exc:
        return f"nothing answers there: {exc.strerror or exc}"
    return None


def _join_problem(address: str | None, exc: BaseException | str) -> str:
    if isinstance(exc, str):  # nothing listens
        return (
            f"cannot join the Ray cluster at RAY_ADDRESS={address} ({exc}): check that the head node runs and "
            "the address (`ray status` on the head prints it), or unset RAY_ADDRESS to run on a local Ray"
        )
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (
        f"cannot join the Ray cluster at RAY_ADDRESS={address} ({reason}): a cluster started by `ray start` "
        "(Ray >= 2.59) checks a token: export RAY_AUTH_MODE=token here, with the cluster's token in "
        "~/.ray/auth_token or RAY_AUTH_TOKEN (`ray get-auth-token` on the head prints it)"
    )


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def node_cpus(resources: dict[str, float]) -> list[float]:
    """The CPUs of each alive node that offers these custom resources (every node when none)."""
    return [
        float(n["Resources"].get("CPU", 0.0))
        for n in ray.nodes()
        if n.get("Alive") and all(n["Resources"].get(name, 0.0) >= amount for name, amount in resources.items())
    ]


def placement_problem(resources: dict[str, float], cpus: float, flag: str, what: str) -> str | None:
    """Why no node can host one `what` needing `cpus` CPUs and these custom resources (Ray would
    wait for such a node forever), or None."""
    offering = node_cpus(resources)
    if resources and not offering:
        return (
            f"{flag} {resources}: no node of the cluster offers these resources; start the nodes meant "
            f"for {what}s with them (ray start --resources '...'), or drop the flag"
        )
    if offering and max(offering) < cpus:
        return (
            f"each {what} needs {cpus:g} CPUs but the largest node that may host it has {max(offering):g}: "
            "lower --cpus-per-worker (or add larger nodes)"
        )
    return None
