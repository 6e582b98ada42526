"""The WebSocket relay that routes sealed frames between daemons of one network.

Its protocol (hello, notices, batches, close codes) is meshactors/wire/broker.py, which the
daemon's link imports too.
"""

from meshactors.broker.limits import BrokerConfig
from meshactors.broker.server import Broker

__all__ = ["Broker", "BrokerConfig"]
