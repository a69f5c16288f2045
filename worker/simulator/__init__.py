"""An OMS-compatible simulator for tests, the demo and benchmarks (see ARCHITECTURE.md).

Start one with `worker.simulator.server.run_simulator(SimulatorConfig(...))`; its live state
is the handle's `state` (also `app[worker.simulator.app.STATE_KEY]`) and `GET /_sim/state`.
"""
