"""API keys and tenants: who is calling, what they may spend, and which answers they accept (docs/tenants.md).

`keys` (the key and its limits), `limits` (pure rate-limit and budget decisions), `compliance` (pure
quality-floor / cost-ceiling decisions), `meter` (per-key usage in memory), `store` (the key table, blocking I/O).
"""
