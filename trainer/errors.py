"""One error hierarchy for the trainer and the jobs: every message names the problem and the fix."""


class TrainerError(Exception):
    """Base class of all trainer errors."""


class ConfigError(TrainerError):
    """A job's configuration is invalid; `problems` lists every problem found at once."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class DataError(TrainerError):
    """A dataset is missing, malformed, or does not match the store."""


class ModelError(TrainerError):
    """A model spec cannot be resolved, or the model does not fit the data or the store."""


class ClusterError(TrainerError):
    """The Ray cluster at RAY_ADDRESS cannot be joined."""


def find_cause(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """Our own error inside whatever Ray wrapped it in (task errors keep the cause chain)."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        inner = getattr(e, "cause", None)  # ray.exceptions.RayTaskError keeps the original here
        if isinstance(e, types) and not isinstance(inner, types):
            return e
        stack += [e.__context__, e.__cause__, inner]
    return None
