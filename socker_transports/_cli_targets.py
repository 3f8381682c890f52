"""Loading MODULE:ATTR: the Flow (or mapping of path to Flow) a command runs."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping

from socker_core import Flow, FlowDefinitionError

from ._cli_shared import CliError


def load_target(spec: str) -> object:
    """Import MODULE:ATTR (ATTR may be dotted); the current directory is importable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"expected MODULE:ATTR (like game.flows:server), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CliError(f"cannot import module {module_name!r}: {exc}") from None
        raise _TargetFailed(module_name, exc) from exc
    except FlowDefinitionError as exc:
        raise _TargetFailed(module_name, exc, "a flow in it fails to define") from exc
    except Exception as exc:  # the user's module raised while importing
        raise _TargetFailed(module_name, exc) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


class _TargetFailed(CliError):
    """Importing the user's module raised: a usage error whose traceback -vv shows."""

    def __init__(self, module: str, exc: BaseException, what: str = "it raised") -> None:
        super().__init__(f"importing {module!r} failed ({what}): {type(exc).__name__}: {exc}")


def _validated(spec: str, flow: Flow) -> Flow:
    try:
        flow.validate()
    except FlowDefinitionError as exc:
        raise CliError(f"{spec} cannot run: {exc}") from None
    return flow


def load_flow(spec: str) -> Flow:
    """Import MODULE:ATTR and check it is a Flow that can run (CliError otherwise)."""
    obj = load_target(spec)
    if not isinstance(obj, Flow):
        raise CliError(f"{spec} is a {type(obj).__name__}, not a socker Flow")
    return _validated(spec, obj)


def load_routes(spec: str) -> Flow | Mapping[str, Flow]:
    """Import MODULE:ATTR: a Flow, or a mapping of path to Flow (CliError otherwise)."""
    obj = load_target(spec)
    if isinstance(obj, Flow):
        return _validated(spec, obj)
    if (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, Flow) for k, v in obj.items())
    ):
        for path, flow in obj.items():
            _validated(f"{spec}[{path!r}]", flow)
        return obj
    raise CliError(f"{spec} is a {type(obj).__name__}, not a Flow or a mapping path -> Flow")


def _describe(routes: Flow | Mapping[str, Flow]) -> str:
    if isinstance(routes, Flow):
        return f"flow {routes.name!r}"
    return ", ".join(f"{path} -> {flow.name!r}" for path, flow in routes.items())
