"""The agent <-> coordinator wire format.

Both `agent` and `coordinator` import this package; neither imports the other. Keeping the
messages in one place is what lets the two processes evolve without drifting apart.
"""
