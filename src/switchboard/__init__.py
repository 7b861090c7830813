"""Switchboard: a serverless mixture-of-experts serving platform."""

__version__ = "0.1.0"
