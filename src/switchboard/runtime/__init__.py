"""The live side of the fleet: real replicas with real engines, fed by wall-clock time."""
