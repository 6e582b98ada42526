"""Client side of the control socket: `MeshClient` (trio), `SyncMeshClient` (blocking, for
scripts), `SyncClient` (one plain socket, for the CLI) and their errors."""

from meshactors.actors import Lagged
from meshactors.client._serving import RequestContext
from meshactors.client._streams import RpcStream
from meshactors.client.binary import BinaryStream, StreamBroken, StreamError
from meshactors.client.errors import (
    ClientClosed,
    ClientError,
    ConnectFailed,
    ConnectionLost,
    DaemonBusy,
    DaemonNotRunning,
    DeadlineExceeded,
    ProtocolError,
    SocketPathTooLong,
)
from meshactors.client.mesh import ChannelGap, ChannelMessage, EventStream, MeshClient
from meshactors.client.networks import NetworkSync
from meshactors.client.reconnect import UNSURE_CODES
from meshactors.client.state import SharedState
from meshactors.client.sync import SyncClient, SyncMeshClient

__all__ = [
    "UNSURE_CODES",
    "BinaryStream",
    "ChannelGap",
    "ChannelMessage",
    "ClientClosed",
    "ClientError",
    "ConnectFailed",
    "ConnectionLost",
    "DaemonBusy",
    "DaemonNotRunning",
    "DeadlineExceeded",
    "EventStream",
    "Lagged",
    "MeshClient",
    "NetworkSync",
    "ProtocolError",
    "RequestContext",
    "RpcStream",
    "SharedState",
    "SocketPathTooLong",
    "StreamBroken",
    "StreamError",
    "SyncClient",
    "SyncMeshClient",
]
