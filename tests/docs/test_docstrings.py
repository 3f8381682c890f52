"""Every public name has a docstring, so the API reference (mkdocstrings) documents it.

Public: each name in a public module's `__all__` (classes and functions), and the
public methods and properties those classes define themselves."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

PUBLIC_MODULES = [
    "socker_core",
    "socker_core.testing",
    "socker_transports",
    "socker_transports.wire",
    "socker_transports.anyio",
    "socker_transports.threaded",
    "socker_transports.webrtc",
    "socker_transports.asgi",
    "socker_transports.metrics",
    "socker_transports.engine",
    "socker_transports.workers",
]


def _undocumented(obj: object) -> bool:
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj):
        own = obj.__dict__.get("__doc__")
        if not own:
            return True  # inherited from a base class only
        if dataclasses.is_dataclass(obj) and own.startswith(f"{obj.__name__}("):
            return True  # the signature dataclasses write when there is no docstring
    return not doc.strip()


def _missing(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    missing = [] if (module.__doc__ or "").strip() else [module_name]
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if _undocumented(obj):
            missing.append(f"{module_name}.{name}")
        if not inspect.isclass(obj):
            continue
        for attr, value in vars(obj).items():
            if attr.startswith("_"):
                continue
            target = (
                value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            )
            if (inspect.isfunction(target) or isinstance(value, property)) and not (
                (target.__doc__ or "").strip()
            ):
                missing.append(f"{module_name}.{name}.{attr}")
    return missing


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(module_name: str) -> None:
    assert _missing(module_name) == []


def test_the_check_finds_a_missing_docstring() -> None:
    class Bare:
        def method(self) -> None:
            pass

    @dataclasses.dataclass
    class Data:
        x: int = 0

    assert _undocumented(Bare) and _undocumented(Data)
    assert not (Bare.method.__doc__ or "").strip()
