"""`switchboard keys create | list | update | revoke`: API keys in the configured storage database (docs/tenants.md).

The secret is printed once, by `create`; the database keeps its SHA-256 digest only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

keys_app = typer.Typer(help="API keys: create, list, update limits and revoke (stored in the storage database).",
                       no_args_is_help=True)

CONFIG_OPTION = typer.Option(None, "--config", "-c", help="YAML config whose storage.url holds the keys; the embedded default if omitted.")
URL_OPTION = typer.Option(None, "--url", help="Database URL instead of the config's storage.url.")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of a table.")
# The limits, shared by `create` and `update`.
RPM_OPTION = typer.Option(None, "--rpm", min=0, help="Requests per minute.")
TPM_OPTION = typer.Option(None, "--tpm", min=0, help="Tokens (prompt + answer) per minute.")
USD_PER_DAY_OPTION = typer.Option(None, "--usd-per-day", min=0, help="Budget per UTC day, USD.")
USD_PER_MONTH_OPTION = typer.Option(None, "--usd-per-month", min=0, help="Budget per UTC month, USD.")
QUALITY_FLOOR_OPTION = typer.Option(None, "--quality-floor", min=0, max=1, help="Never serve below this predicted quality.")
USD_PER_MTOK_CEILING_OPTION = typer.Option(None, "--usd-per-mtok-ceiling", min=0,
                                           help="Never serve an expert pricier than this (USD/Mtok).")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _engine(config: Optional[Path], url: Optional[str]) -> Any:
    """The migrated storage database of `config` (or `url`)."""
    import os

    from switchboard.config import ConfigError, load_config
    from switchboard.config.default import default_config
    from switchboard.storage import database

    if url is None:
        try:
            cfg = load_config(config) if config is not None else default_config()
        except ConfigError as exc:
            _fail(str(exc))
        url = cfg.storage.url or database.default_url(os.environ)
    try:
        engine = database.open_engine(url)
        database.migrate(engine)
    except Exception as exc:  # noqa: BLE001 — any driver error: say which database, without its password
        from switchboard.storage.writer import database_label

        _fail(f"cannot open the key database {database_label(url)}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return engine


def _as_dict(key: Any) -> dict[str, Any]:
    import dataclasses
    import datetime as dt

    def iso(t: float | None) -> str | None:
        return None if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")

    limits = dataclasses.asdict(key.limits)
    limits["on_violation"] = key.limits.on_violation.value
    return {"id": key.key_id, "name": key.name, "tenant": key.tenant, "prefix": key.prefix, "created_at": iso(key.created_at),
            "revoked_at": iso(key.revoked_at), **limits}


@keys_app.command("create")
def create(
    name: str = typer.Argument(..., help="What the key is for (shown in lists and errors)."),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Tenant the key belongs to; default: the name."),
    rpm: Optional[int] = RPM_OPTION,
    tpm: Optional[int] = TPM_OPTION,
    usd_per_day: Optional[float] = USD_PER_DAY_OPTION,
    usd_per_month: Optional[float] = USD_PER_MONTH_OPTION,
    quality_floor: Optional[float] = QUALITY_FLOOR_OPTION,
    usd_per_mtok_ceiling: Optional[float] = USD_PER_MTOK_CEILING_OPTION,
    on_violation: str = typer.Option("reject", "--on-violation", help="When floor/ceiling cannot be met: degrade, queue or reject."),
    config: Optional[Path] = CONFIG_OPTION,
    url: Optional[str] = URL_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a key and print its secret (shown this once only)."""
    from switchboard.tenants.keys import KeyLimits, OnViolation
    from switchboard.tenants.store import create_key

    if on_violation not in {v.value for v in OnViolation}:
        _fail(f"--on-violation must be degrade, queue or reject, not {on_violation!r}")
    limits = KeyLimits(rpm, tpm, usd_per_day, usd_per_month, quality_floor, usd_per_mtok_ceiling, OnViolation(on_violation))
    engine = _engine(config, url)
    try:
        key, secret = create_key(engine, name, tenant or name, limits)
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps({**_as_dict(key), "secret": secret}))
        return
    from rich.console import Console

    console = Console()
    console.print(f"created key [bold]{key.key_id}[/] ({name}, tenant {key.tenant})")
    console.print(f"secret: [bold]{secret}[/]", soft_wrap=True)
    console.print("[yellow]store it now: it is not shown again (only its SHA-256 is kept)[/]")


@keys_app.command("list")
def list_keys(
    show_revoked: bool = typer.Option(True, "--revoked/--no-revoked", help="Include revoked keys."),
    config: Optional[Path] = CONFIG_OPTION,
    url: Optional[str] = URL_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """List keys (never their secrets)."""
    from switchboard.tenants.store import load_keys

    engine = _engine(config, url)
    try:
        keys = [k for k in load_keys(engine) if show_revoked or not k.is_revoked]
    finally:
        engine.dispose()
    rows = [_as_dict(k) for k in keys]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"API keys ({len(rows)})", title_justify="left")
    headers = {"id": "id", "name": "name", "tenant": "tenant", "prefix": "prefix", "rpm": "rpm", "tpm": "tpm", "usd_per_day": "$/day",
               "usd_per_month": "$/month", "quality_floor": "q floor", "usd_per_mtok_ceiling": "$/Mtok max", "on_violation": "on violation"}
    for column, header in headers.items():
        table.add_column(header, justify="right" if column in ("rpm", "tpm") or column.startswith(("usd", "quality")) else "left", no_wrap=column == "id")
    table.add_column("status")
    for row in rows:
        status = "[red]revoked[/]" if row["revoked_at"] else "[green]active[/]"
        table.add_row(*("—" if row[c] is None else f"{row[c]:g}" if isinstance(row[c], float) else str(row[c]) for c in headers), status)
    Console().print(table)


@keys_app.command("update")
def update(
    key_id: str = typer.Argument(..., help="The key's id (key_...), from `keys list`."),
    rpm: Optional[int] = RPM_OPTION,
    tpm: Optional[int] = TPM_OPTION,
    usd_per_day: Optional[float] = USD_PER_DAY_OPTION,
    usd_per_month: Optional[float] = USD_PER_MONTH_OPTION,
    quality_floor: Optional[float] = QUALITY_FLOOR_OPTION,
    usd_per_mtok_ceiling: Optional[float] = USD_PER_MTOK_CEILING_OPTION,
    on_violation: Optional[str] = typer.Option(None, "--on-violation", help="When floor/ceiling cannot be met: degrade, queue or reject."),
    unset: list[str] = typer.Option([], "--unset", help="A limit to remove (unlimited), by name: rpm, tpm, usd-per-day, "
                                    "usd-per-month, quality-floor, usd-per-mtok-ceiling. Repeatable."),
    config: Optional[Path] = CONFIG_OPTION,
    url: Optional[str] = URL_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Change a key's limits; the others stay. A running gateway applies them within `auth.refresh_interval_s`."""
    import dataclasses

    from switchboard.tenants.keys import OnViolation
    from switchboard.tenants.store import LIMIT_COLUMNS, KeyNotFound, load_keys, update_key_limits

    if on_violation is not None and on_violation not in {v.value for v in OnViolation}:
        _fail(f"--on-violation must be degrade, queue or reject, not {on_violation!r}")
    cleared = {name.replace("-", "_") for name in unset}
    if unknown := sorted(cleared - set(LIMIT_COLUMNS)):
        _fail(f"--unset takes {', '.join(c.replace('_', '-') for c in LIMIT_COLUMNS)}; not {', '.join(unknown)}")
    given = {"rpm": rpm, "tpm": tpm, "usd_per_day": usd_per_day, "usd_per_month": usd_per_month,
             "quality_floor": quality_floor, "usd_per_mtok_ceiling": usd_per_mtok_ceiling}
    changes: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    if both := sorted(cleared & changes.keys()):
        _fail(f"{', '.join(both)} both set and unset")
    changes.update({name: None for name in cleared})
    if on_violation is not None:
        changes["on_violation"] = OnViolation(on_violation)
    if not changes:
        _fail("nothing to change: give a limit (e.g. --rpm 60) or --unset NAME")
    def change(engine: Any) -> Any:
        current = next((k for k in load_keys(engine) if k.key_id == key_id), None)
        if current is None:
            raise KeyNotFound(key_id)
        if current.is_revoked:
            _fail(f"key {key_id} is revoked; create a new one")
        return update_key_limits(engine, key_id, dataclasses.replace(current.limits, **changes))

    key = _on_key(config, url, key_id, change)
    shown = ", ".join(f"{k}={'unlimited' if v is None else getattr(v, 'value', v)}" for k, v in changes.items())
    _echo_key(key, as_json, f"updated {key.key_id} ({key.name}): {shown}")


def _on_key(config: Optional[Path], url: Optional[str], key_id: str, operation: Any) -> Any:
    """`operation(engine)` on the key database; an unknown key id is a clear error (exit 2)."""
    from switchboard.tenants.store import KeyNotFound

    engine = _engine(config, url)
    try:
        return operation(engine)
    except KeyNotFound:
        _fail(f"no key with id {key_id!r}; see `switchboard keys list`")
    finally:
        engine.dispose()


def _echo_key(key: Any, as_json: bool, line: str) -> None:
    typer.echo(json.dumps(_as_dict(key)) if as_json else line)


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (key_...), from `keys list`."),
    config: Optional[Path] = CONFIG_OPTION,
    url: Optional[str] = URL_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Revoke a key: a running gateway refuses it within `auth.refresh_interval_s`."""
    from switchboard.tenants.store import revoke_key

    key = _on_key(config, url, key_id, lambda engine: revoke_key(engine, key_id))
    _echo_key(key, as_json, f"revoked {key.key_id} ({key.name}) at {_as_dict(key)['revoked_at']}")
