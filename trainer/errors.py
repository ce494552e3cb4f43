"""One error hierarchy for the trainer and the jobs: every message names the problem and the fix."""

from __future__ import annotations

from collections.abc import Callable, Iterator


class TrainerError(Exception):
    """Base class of all trainer errors."""


class ConfigError(TrainerError):
    """A job's configuration is invalid; `problems` lists every problem found at once."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))

    def __reduce__(self):  # to a Ray worker and back: the problems, not the joined message
        return (type(self), (self.problems,))


class DataError(TrainerError):
    """A dataset is missing, malformed, or does not match the store."""


class ModelError(TrainerError):
    """A model spec cannot be resolved, or the model does not fit the data or the store."""


class ClusterError(TrainerError):
    """The Ray cluster at RAY_ADDRESS cannot be joined."""


class RemoteError(Exception):
    """An exception raised by Python code in a Ray worker (a training worker, or a Ray Data task it
    iterated over), brought to the driver. A restart would raise it again, so the job ends at once:
    `cause` is our own error (StoreError, TrainerError) when it is one, which the job prints as its
    one line; any other exception (a bug) is printed as `traceback`, the worker's own, once."""

    def __init__(self, where: str, summary: str, traceback: str, cause: BaseException | None = None):
        super().__init__(where, summary, traceback, cause)
        self.where, self.summary, self.traceback, self.cause = where, summary, traceback, cause

    def __str__(self) -> str:
        return f"{self.where}: {self.summary}"

    @staticmethod
    def wrap(exc: BaseException, where: str, known: tuple[type[BaseException], ...]) -> RemoteError:
        """`exc`, being handled now (its traceback is formatted here), as a RemoteError; `known`: the
        error types the job reports as one line."""
        import traceback

        cause = find_cause(exc, known)
        summary = str(cause) if cause is not None else f"{type(exc).__name__}: {exc}"
        return RemoteError(
            where,
            summary.strip().splitlines()[0] if summary.strip() else type(exc).__name__,
            traceback.format_exc(),
            cause,
        )


def linked(exc: BaseException, follow: Callable[[BaseException], list]) -> Iterator[BaseException]:
    """`exc` and every exception reached from it by `follow` (its cause, context, what Ray keeps),
    each once, depth first."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += follow(e)


def _wrapped(e: BaseException) -> list:
    """What an exception wraps: its cause and context, the original of a Ray task error or a
    RemoteError (`cause`), a failed Ray Train run's (`controller_failure`, `worker_failures`)."""
    workers = list((getattr(e, "worker_failures", None) or {}).values())
    return [e.__context__, e.__cause__, getattr(e, "cause", None), getattr(e, "controller_failure", None), *workers]


def find_cause(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """Our own error inside whatever Ray wrapped it in (task errors keep the cause chain; Ray Train
    keeps a failed run's cause in `controller_failure`, its workers' in `worker_failures`)."""
    for e in linked(exc, _wrapped):
        if isinstance(e, types) and not isinstance(getattr(e, "cause", None), types):
            return e
    return None


def is_process_death(exc: BaseException) -> bool:
    """Whether `exc` says a process or node died (or Ray itself failed) rather than that Python code
    raised: those, and only those, are worth restarting the workers for (--max-failures). A worker
    whose collective call (gloo, NCCL) lost its peer counts too: the peer's death is the cause."""
    import ray.exceptions as rx
    from ray.train.v2._internal.exceptions import RayTrainError, UserExceptionWithTraceback

    raised_by_code = (rx.RayTaskError, rx.UserCodeException, rx.UnserializableException, rx.CrossLanguageError)

    def follow(e: BaseException) -> list:
        context = None if e.__suppress_context__ else e.__context__  # (`raise ... from None`: Ray's own flow)
        return [context, e.__cause__, getattr(e, "cause", None), getattr(e, "health_check_failure", None)]

    for e in linked(exc, follow):
        if isinstance(e, rx.RayError) and not isinstance(e, raised_by_code):
            return True
        if isinstance(e, RayTrainError) and not isinstance(e, UserExceptionWithTraceback):
            return True  # e.g. a worker's failed or timed-out health check
        if _lost_peer(e):
            return True
    return False


def _lost_peer(exc: BaseException) -> bool:
    """A collective call whose peer went away (torch.distributed raises gloo's as a RuntimeError)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc) if isinstance(exc, RuntimeError) else ""
    return any(marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "gloo/transport"))
