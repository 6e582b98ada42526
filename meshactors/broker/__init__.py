"""The WebSocket relay that routes sealed frames between daemons of one network.

Import its modules directly (`meshactors.broker.server`, `.hello`, `.envelope`, `.limits`): the
package re-exports nothing, so a daemon that only needs the limits or the hello does not load
the server and trio-websocket before it is ready (docs/performance.md, "Cold start").
"""
