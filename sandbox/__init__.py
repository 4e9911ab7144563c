"""A simulated k3s cluster on one machine: API server emulator, release and channel servers,
stand-in k3s nodes under a supervisor, real agents and a real coordinator. For rehearsals and tests;
production code never imports it.
"""
