"""The coordinator: evaluates upgrade.cattle.io/v1 Plans and leases nodes to agents for upgrade.

Layering: pure decision modules (no I/O) sit beside thin adapters; only `coordinator.kube` imports
the `kubernetes` package.
"""
