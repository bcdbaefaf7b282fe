"""What the master hands a worker generation: the configuration and the sockets to accept on."""
from __future__ import annotations

import socket
from dataclasses import dataclass, field

from ..config import Config
from ..config.model import NetworkListener


@dataclass
class ListenerPlan:
    name: str
    index: int  # row of this listener in the shared connection table
    cfg: NetworkListener
    sockets: list[socket.socket]


@dataclass
class GenerationPlan:
    number: int
    config: Config
    hostname: str
    workers: int
    listeners: list[ListenerPlan]
    tls: object | None = None  # stalwart.tls store, built by the master before it forks
    extra: dict = field(default_factory=dict)

    def all_sockets(self) -> list[socket.socket]:
        return [s for lp in self.listeners for s in lp.sockets]
