"""Engines: the one interface through which the gateway asks an expert replica for tokens."""
