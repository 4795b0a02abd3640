"""Errors a user can fix. The CLI prints them on one line and exits with code 2."""

import contextlib
import typing


class UserError(Exception):
    """Bad input: a spec field, a flag, a file. The message names what and what is allowed."""


def check_known(flag: str, kind: str, names, allowed) -> None:
    """Each of `names` must be one of `allowed`; else a UserError naming the flag and the choices."""
    for name in names:
        if name not in allowed:
            raise UserError(f"{flag}: unknown {kind} {name!r} (allowed: {', '.join(allowed)})")


class SpecError(UserError):
    """A spec field failed validation; `path` is the dotted field path (e.g. 'arms.0.lr')."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)

    def __reduce__(self):  # crosses process boundaries (pool and Ray workers) intact
        return type(self), (self.path, self.message)


class TrialsFailed(UserError):
    """Some trials of a study raised an error; each is recorded in its failure.json, and
    `trainlab resume` runs them again. The study itself is in `study_dir`."""

    def __init__(self, study_dir, failures: list[dict]):
        self.study_dir, self.failures = study_dir, failures
        first = failures[0]
        super().__init__(f"{len(failures)} trial(s) of {study_dir} failed; trial {first['index']}: {first['reason']} "
                         f"(details in its failure.json; `trainlab resume {study_dir}` runs them again)")

    def __reduce__(self):
        return type(self), (self.study_dir, self.failures)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while a study ran; `study_dir` is the study to resume."""

    def __init__(self, study_dir=None, signal_name: str = "interrupt"):
        super().__init__(signal_name)
        self.study_dir, self.signal_name = study_dir, signal_name


def one_line(exc: BaseException, limit: int = 600) -> str:
    """An exception as one line: a trainlab error's own message, else 'Type: message'."""
    text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def spec_error_from_pydantic(err, prefix: str = "", model=None) -> SpecError:
    """Turn the first pydantic error into a SpecError whose path starts with `prefix`."""
    errors = err.errors()
    first = errors[0]
    loc = [p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    path = ".".join(str(p) for p in [prefix, *loc] if p != "")
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
        allowed = _fields_at(model, loc[:-1])
        if allowed:
            msg += f" (allowed here: {', '.join(allowed)})"
    elif first["type"] == "missing":
        msg = "required field is missing"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return SpecError(path, msg)


def _fields_at(model, loc) -> list[str]:
    """The field names of the (nested) model found by following `loc` from `model`."""
    for key in loc:
        if model is None:
            return []
        if isinstance(key, int):
            continue
        field = model.model_fields.get(key)
        model = _inner_model(field.annotation) if field else None
    return sorted(model.model_fields) if model is not None else []


def _inner_model(annotation):
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


@contextlib.contextmanager
def user_code(path: str, what: str):
    """Around code a user wrote (a task's data loader, a model factory): its errors become one
    SpecError naming the spec field, with the code's own message."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        raise SpecError(path, f"{what} failed: {one_line(exc)}") from None
