"""The actor runtime: bounded inboxes, ask with deadlines, supervisors, the live registry."""

from meshactors.actors._actor import DEFAULT_INBOX_CAPACITY, Actor, Inbox
from meshactors.actors._ask import ActorGone, AskTimeout, Reply, ask, unanswered
from meshactors.actors._crash import DebugCrash
from meshactors.actors._doorbell import Doorbell
from meshactors.actors._fanout import DEFAULT_SUBSCRIBER_CAPACITY, Broadcast, Lagged, Subscriber
from meshactors.actors._lanes import LanedInbox
from meshactors.actors._pending import Pending
from meshactors.actors._queued import hand_over, take_queued
from meshactors.actors._registry import ActorState, Node, cleanup_scope, current_node
from meshactors.actors._sequencer import Sequencer, Turn
from meshactors.actors._supervisor import (
    ASK_TIMEOUT,
    ChildSpec,
    ChildStartFailed,
    Restart,
    RestartLimits,
    Strategy,
    Supervisor,
    SupervisorEscalation,
    run_root,
)

__all__ = [
    "ASK_TIMEOUT",
    "DEFAULT_INBOX_CAPACITY",
    "DEFAULT_SUBSCRIBER_CAPACITY",
    "Actor",
    "ActorGone",
    "ActorState",
    "AskTimeout",
    "Broadcast",
    "ChildSpec",
    "ChildStartFailed",
    "DebugCrash",
    "Doorbell",
    "Inbox",
    "Lagged",
    "LanedInbox",
    "Node",
    "Pending",
    "Reply",
    "Restart",
    "RestartLimits",
    "Sequencer",
    "Strategy",
    "Subscriber",
    "Supervisor",
    "SupervisorEscalation",
    "Turn",
    "ask",
    "cleanup_scope",
    "current_node",
    "hand_over",
    "run_root",
    "take_queued",
    "unanswered",
]
