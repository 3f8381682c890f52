"""Connection: the per-connection context every handler and hook receives as `conn`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic

from ._errors import LocalProtocolError
from ._flow import Flow, StateT
from ._state import State
from ._stepper_base import _DETACHED_STATES

if TYPE_CHECKING:
    from ._rooms import Registry
    from ._stepper import Stepper


class Connection(Generic[StateT]):
    """The per-connection context every handler and hook receives as `conn`.

    Generic over the type of `conn.state` (`Connection[GameState]` for a
    `Flow("game", state=GameState)`); a bare `Connection` is `Connection[Any]`.
    The parameter exists only for the type checker: it costs nothing at run time.
    """

    __slots__ = ("__weakref__", "_state", "_stepper", "flow")

    def __init__(self, stepper: Stepper[StateT], flow: Flow[StateT]) -> None:
        self._stepper = stepper
        #: The flow this connection runs.
        self.flow = flow
        self._state: Any = None  # made on first use: most connections never need one

    @property
    def state(self) -> StateT:
        """The application's own per-connection objects: made on first use by the
        flow's `state` factory (a `types.SimpleNamespace` by default)."""
        state = self._state
        if state is None:
            state = self._state = self.flow.state_factory()
        return state  # type: ignore[no-any-return]

    @state.setter
    def state(self, value: StateT) -> None:
        self._state = value

    def send(self, data: bytes | str) -> None:
        """Send one message to the peer: binary for bytes (or any bytes-like), text for a
        str. Raises ConnectionClosedError once closing."""
        stepper = self._stepper
        guard = stepper.guard
        if guard is None:
            stepper._send(data)
        else:
            with guard:
                stepper._send(data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with `code` and `reason` (a no-op once closing)."""
        stepper = self._stepper
        guard = stepper.guard
        if guard is None:
            stepper._close(code, reason)
        else:
            with guard:
                stepper._close(code, reason)

    @property
    def id(self) -> str:
        """This connection's unique id (kept across a resume, once resume exists)."""
        return self._stepper.id

    # -- identity and rooms ---------------------------------------------------

    @property
    def server(self) -> Any:
        """What a handler broadcasts through: the driver's `Server`, or the core
        `Registry` when embedded without a driver; None for a client."""
        stepper = self._stepper
        server = stepper.server
        return stepper.registry if server is None else server

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """The peer's (host, port), or None when embedded without one."""
        return self._stepper.remote_address

    @property
    def request(self) -> Any:
        """The handshake request this server connection was accepted with (a
        `socker_transports.wire.HandshakeRequest`: path, query, headers, ...);
        None for a client or when embedded without one."""
        return self._stepper.request

    def join(self, room: str, info: Mapping[str, str] | None = None) -> None:
        """Join `room` (a no-op if already in it), with presence `info` (a small
        str -> str mapping; a new `info` updates it). ConnectionClosedError once
        closing; LocalProtocolError for a connection with no server (a client)."""
        self._registry("join").join(self, room, info)

    def leave(self, room: str) -> None:
        """Leave `room` (a no-op if not in it)."""
        self._registry("leave").leave(self, room)
        replay = self._stepper.replay
        if replay is not None and replay.ledger is not None:
            replay.ledger.left(room)  # a later join starts afresh

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this connection is in (empty once it stops being open)."""
        registry = self._stepper.registry
        return frozenset() if registry is None else registry.rooms_of(self)

    def _registry(self, what: str) -> Registry:
        registry = self._stepper.registry
        if registry is None:
            raise LocalProtocolError(
                f"cannot {what} a room: this connection has no server (a client, or a "
                "Stepper made without registry=)"
            )
        return registry

    @property
    def step(self) -> str:
        """The current step's name."""
        return self._stepper.step

    @property
    def is_open(self) -> bool:
        """True while the connection is open (also while an async handler runs)."""
        return self._stepper.phase in (State.OPEN, State.AWAITING)

    @property
    def is_detached(self) -> bool:
        """True while the transport is lost and the session waits for a resume."""
        return self._stepper.phase in _DETACHED_STATES

    @property
    def close_code(self) -> int | None:
        """The close code once the connection is closing or closed, else None."""
        return self._stepper.close_code

    @property
    def close_reason(self) -> str:
        """The close reason once the connection is closing or closed, else ''."""
        return self._stepper.close_reason

    def __repr__(self) -> str:
        return (
            f"<Connection {self.id} flow={self.flow.name!r} step={self.step!r} "
            f"{self._stepper.phase.value}>"
        )


def stepper_of(conn: Connection[StateT]) -> Stepper[StateT]:
    """The Stepper behind `conn` (for the wire layer: delivering a room publication
    with its origin, `Stepper.deliver`)."""
    return conn._stepper
