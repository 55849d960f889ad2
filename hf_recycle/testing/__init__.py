"""Helpers for tests and CI: tiny model builders and a local Hub-compatible server.

Nothing here touches the network. Import the submodules directly
(``hf_recycle.testing.models``); this package imports nothing heavy.
"""
