"""The node agent: upgrades this node's k3s binary when the coordinator says so (see agent.upgrade)."""

__version__ = "0.2.0"
