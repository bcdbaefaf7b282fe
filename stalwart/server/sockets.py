"""Listening sockets, owned by the master for their whole life (network.md §3 "We do better").

One socket per bind address, shared by every worker of every generation and kept open across
reloads while its address stays configured, so no queued connection is ever reset by a worker
exiting or a reload. A socket is either fully built (every option applied, bound, listening) or
not created at all; any failure names the listener, the address and the option.
"""
from __future__ import annotations

import errno
import socket

from .. import events
from ..config import Config
from ..config.model import NetworkListener
from ..config.types import SocketAddr
from ..errors import BindError

Key = tuple[int, str, int]


def _v6only_needed(cfg: Config, addr: SocketAddr) -> int:
    """``[::]:p`` is dual-stack unless the listener set also binds ``0.0.0.0:p``."""
    if addr.family != socket.AF_INET6 or addr.host != "::":
        return 1
    for lst in cfg.NetworkListener:
        for other in lst.bind:
            if other.family == socket.AF_INET and other.host == "0.0.0.0" and other.port == addr.port:
                return 1
    return 0


def _set(sock: socket.socket, listener: str, addr: str, name: str, level: int, opt: int, value: int) -> None:
    try:
        sock.setsockopt(level, opt, value)
    except OSError as exc:
        raise BindError(listener, addr, f"cannot set {name}={value}: {exc.strerror or exc}") from None


def apply_listen_options(sock: socket.socket, lst: NetworkListener, addr: str) -> None:
    """Options a live listening socket accepts; also used on reload for a kept socket."""
    if lst.socket_receive_buffer_size is not None:
        _set(sock, lst.name, addr, "SO_RCVBUF", socket.SOL_SOCKET, socket.SO_RCVBUF, lst.socket_receive_buffer_size)
    if lst.socket_send_buffer_size is not None:
        _set(sock, lst.name, addr, "SO_SNDBUF", socket.SOL_SOCKET, socket.SO_SNDBUF, lst.socket_send_buffer_size)
    if lst.socket_tos_v4 is not None and sock.family == socket.AF_INET:
        # IP_TOS is an IPv4 option: skipped, without error, on AF_INET6 sockets.
        _set(sock, lst.name, addr, "IP_TOS", socket.IPPROTO_IP, socket.IP_TOS, lst.socket_tos_v4)


def open_listener_socket(cfg: Config, lst: NetworkListener, addr: SocketAddr) -> socket.socket:
    text = str(addr)
    family, host = addr.family, addr.host
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if family == socket.AF_INET6 and host == "::" and exc.errno == errno.EAFNOSUPPORT:
            events.emit("network.listen-error", level="warn", ListenerId=lst.name, LocalIp=host,
                        LocalPort=addr.port, Tls=lst.tls_implicit,
                        Reason="IPv6 unavailable; binding 0.0.0.0 on the same port")
            return open_listener_socket(cfg, lst, SocketAddr("0.0.0.0", addr.port, socket.AF_INET))
        raise BindError(lst.name, text, f"cannot create socket: {exc.strerror or exc}") from None
    try:
        _set(sock, lst.name, text, "SO_REUSEADDR", socket.SOL_SOCKET, socket.SO_REUSEADDR, int(lst.socket_reuse_address))
        if hasattr(socket, "SO_REUSEPORT"):
            _set(sock, lst.name, text, "SO_REUSEPORT", socket.SOL_SOCKET, socket.SO_REUSEPORT, int(lst.socket_reuse_port))
        if family == socket.AF_INET6:
            _set(sock, lst.name, text, "IPV6_V6ONLY", socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, _v6only_needed(cfg, addr))
        apply_listen_options(sock, lst, text)
        try:
            sock.bind((host, addr.port))
        except OSError as exc:
            raise BindError(lst.name, text, exc.strerror or str(exc)) from None
        try:
            sock.listen(lst.socket_backlog or 1024)
        except OSError as exc:
            raise BindError(lst.name, text, f"listen() failed: {exc.strerror or exc}") from None
        sock.setblocking(False)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


class SocketSet:
    """The master's listening sockets, keyed by (family, host, port)."""

    def __init__(self) -> None:
        self.sockets: dict[Key, socket.socket] = {}
        self.owner: dict[Key, NetworkListener] = {}

    def plan(self, cfg: Config) -> tuple[dict[Key, socket.socket], list[Key]]:
        """Sockets for ``cfg``: existing ones reused (live options re-applied), missing ones bound.

        Returns the mapping for the new configuration and the keys created now. On any failure
        the sockets created by this call are closed and :class:`BindError` propagates, leaving the
        running set untouched (network.md §9 step 2).
        """
        result: dict[Key, socket.socket] = {}
        created: list[Key] = []
        try:
            for lst in cfg.NetworkListener:
                for addr in lst.bind:
                    key = addr.key()
                    sock = self.sockets.get(key)
                    if sock is not None:
                        old = self.owner[key]
                        apply_listen_options(sock, lst, str(addr))
                        if (old.socket_backlog or 1024) != (lst.socket_backlog or 1024):
                            sock.listen(lst.socket_backlog or 1024)
                        for field in ("socket_reuse_port", "socket_reuse_address"):
                            if getattr(old, field) != getattr(lst, field):
                                events.emit("server.reload-warning", level="warn", ListenerId=lst.name,
                                            Details=f"{str(addr)}: {field} changes at the next restart")
                    else:
                        sock = open_listener_socket(cfg, lst, addr)
                        created.append(key)
                    result[key] = sock
        except BaseException:
            for key in created:
                result[key].close()
            raise
        return result, created

    def commit(self, cfg: Config, sockets: dict[Key, socket.socket]) -> list[socket.socket]:
        """Adopt ``sockets`` as the running set; returns the sockets no longer configured
        (the caller closes them once the old workers stopped accepting)."""
        removed = [s for k, s in self.sockets.items() if k not in sockets]
        self.sockets = dict(sockets)
        self.owner = {addr.key(): lst for lst in cfg.NetworkListener for addr in lst.bind}
        return removed

    def close_all(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
