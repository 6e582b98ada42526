"""The WebSocket relay that routes sealed frames between daemons of one network.

Its protocol (hello, notices, batches, close codes) is meshactors/wire/broker.py, which the
daemon's link imports too. Import the broker's modules directly (`meshactors.broker.server`,
`.limits`, `.nonces`): the package re-exports nothing, so a daemon that only needs the limits
does not load the server and trio-websocket before it is ready (docs/performance.md, "Cold
start").
"""
