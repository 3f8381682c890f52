"""The TypedDicts that type the drivers' and installers' keywords stay in step with
what they describe. A branch that adds an `Options` field (or an installer
keyword) without adding it to the TypedDict fails here."""

from __future__ import annotations

import dataclasses
import inspect
import typing

from socker_transports import webrtc
from socker_transports.wire import Options, OptionsDict


def test_options_dict_has_every_options_field_with_its_type() -> None:
    fields = {field.name: field for field in dataclasses.fields(Options)}
    hints = typing.get_type_hints(OptionsDict)
    assert set(hints) == set(fields), (
        "wire.OptionsDict and wire.Options differ: add the new field to both "
        f"(missing from OptionsDict: {sorted(set(fields) - set(hints))}, "
        f"not in Options: {sorted(set(hints) - set(fields))})"
    )
    option_hints = typing.get_type_hints(Options)
    for name in fields:
        assert hints[name] == option_hints[name], name
    assert not OptionsDict.__required_keys__  # every option is optional


def _keywords(function: object, *, skip: set[str]) -> dict[str, object]:
    signature = inspect.signature(function)  # type: ignore[arg-type]
    hints = typing.get_type_hints(function, vars(webrtc))
    return {
        name: hints[name]
        for name, parameter in signature.parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in skip
    }


def test_role_options_match_the_roles_keywords() -> None:
    role = _keywords(webrtc.Answerer.__init__, skip=set())
    assert typing.get_type_hints(webrtc.RoleOptions, vars(webrtc)) == role


def test_offerer_options_match_the_offerers_keywords() -> None:
    own = _keywords(webrtc.Offerer.__init__, skip=set())
    role = typing.get_type_hints(webrtc.RoleOptions, vars(webrtc))
    assert typing.get_type_hints(webrtc.OffererOptions, vars(webrtc)) == {**role, **own}


def test_the_drivers_take_exactly_the_options() -> None:
    from socker_transports import anyio as socker_anyio
    from socker_transports import threaded

    for function in (
        socker_anyio.serve,
        socker_anyio.connect,
        socker_anyio.run_client,
        threaded.serve,
        threaded.connect,
        threaded.run_client,
    ):
        variadic = [
            p
            for p in inspect.signature(function).parameters.values()
            if p.kind is inspect.Parameter.VAR_KEYWORD
        ]
        assert [p.name for p in variadic] == ["options"], function
        assert "Unpack[OptionsDict]" in str(variadic[0].annotation), function
