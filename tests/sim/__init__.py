"""Deterministic simulation of pgsansio's engine: clients, network, fake servers.

See :mod:`tests.sim.world` (clock, network, frontend), :mod:`tests.sim.client` and
:mod:`tests.sim.scenarios` (what clients do and check), :mod:`tests.sim.harness`
(building, running and checking a run) and :mod:`tests.sim.direct` (a one-to-one
proxy that runs the same scenarios without pooling, to validate them).
"""
