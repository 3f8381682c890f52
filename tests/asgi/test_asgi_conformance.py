"""The shared conformance tests that apply under ASGI, run against the App mounted
in FastAPI (uvicorn) and Starlette (hypercorn): see conftest.py's `driver`.

Left out, because the ASGI server owns what they test: protocol errors (1002:
frame parsing), keepalive pings, `open_timeout` on a silent client (the HTTP
handshake), a plain-HTTP request at a websocket path (the framework answers it),
and TLS (the server's certificate options).
"""

from __future__ import annotations

from tests.transports.test_conformance import (
    test_async_step_output_keeps_order,
    test_client_initiated_close,
    test_flow_completion_closes_normally,
    test_game_flow_socker_to_socker,
    test_handshake_hook_rejects_and_accepts,
    test_handshake_hook_that_raises_is_500,
    test_many_clients_at_once,
    test_messages_handled_in_order,
    test_on_open_speaks_first,
    test_origins,
    test_oversize_fragmented_message_closes_with_1009,
    test_oversize_message_closes_with_1009,
    test_peer_vanishing_is_1006,
    test_routing_by_path,
    test_server_initiated_close,
    test_shutdown_aborts_a_peer_that_never_answers,
    test_shutdown_closes_live_connections_with_1001,
    test_socker_client_initiated_close,
    test_step_timeout_closes_with_4408,
    test_text_accepted_when_allowed,
    test_text_message_closes_with_1003,
)

__all__ = [
    "test_async_step_output_keeps_order",
    "test_client_initiated_close",
    "test_flow_completion_closes_normally",
    "test_game_flow_socker_to_socker",
    "test_handshake_hook_rejects_and_accepts",
    "test_handshake_hook_that_raises_is_500",
    "test_many_clients_at_once",
    "test_messages_handled_in_order",
    "test_on_open_speaks_first",
    "test_origins",
    "test_oversize_fragmented_message_closes_with_1009",
    "test_oversize_message_closes_with_1009",
    "test_peer_vanishing_is_1006",
    "test_routing_by_path",
    "test_server_initiated_close",
    "test_shutdown_aborts_a_peer_that_never_answers",
    "test_shutdown_closes_live_connections_with_1001",
    "test_socker_client_initiated_close",
    "test_step_timeout_closes_with_4408",
    "test_text_accepted_when_allowed",
    "test_text_message_closes_with_1003",
]
