"""The node agent: stages, applies, verifies and rolls back the k3s binary on its host.

It talks only to the coordinator (over `wire`), never to the Kubernetes API, and must not import
the `kubernetes` package or anything from `coordinator`.
"""
