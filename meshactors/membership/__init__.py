"""Closed networks: an owner-signed, hash-linked membership log per network (records in
`facts`, order and rules in `log`, peer frames in `frames`), the part of each network's core
that owns it (`part`) and its table in the state database (`store`); its ops are
`ops/membership_ops.py`."""
