"""kapatch._fdsocket: the policy on the socket behind a descriptor a C library owns."""

from __future__ import annotations

import os
import socket
from typing import Any

import kapatch
from kapatch import KeepaliveState
from kapatch._fdsocket import configure_fd
from kapatch.runtime import context


def test_configures_the_same_kernel_socket_and_leaves_the_descriptor_open(install: Any) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        owner = socket.create_connection(server.getsockname())  # before install: nothing configured it
        try:
            install(idle="13s", interval="3s", count=4, adapters=["socket"])
            fd = owner.fileno()
            decision = configure_fd(context(), fd, "socket", host="db.internal", chosen=frozenset())
            assert decision is not None and decision.action == "apply"
            assert kapatch.inspect(owner) == KeepaliveState(True, 13, 3, 4, 25000)
            os.fstat(owner.fileno())  # still open: only the duplicate was closed
            assert kapatch.status().adapter("socket").counts["configured"] == 1
        finally:
            owner.close()


def test_not_tcp_or_not_connected_is_left_alone_and_not_counted(install: Any) -> None:
    install(idle="13s", interval="3s", count=4, adapters=["socket"])
    left, right = socket.socketpair()
    unconnected = socket.socket()
    try:
        assert configure_fd(context(), left.fileno(), "socket") is None
        assert configure_fd(context(), unconnected.fileno(), "socket") is None
        closed = socket.socket()
        fd = closed.fileno()
        closed.close()
        assert configure_fd(context(), fd, "socket") is None
    finally:
        for sock in (left, right, unconnected):
            sock.close()
    assert kapatch.status().adapter("socket").counts["configured"] == 0
