"""The key table on SQLite and PostgreSQL: create / list / revoke, only digests stored, spend rebuilt from the
request log; and `switchboard keys` against a configured database."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from switchboard.cli.main import _register_subcommands, app
from switchboard.storage import database
from switchboard.tenants.keys import SECRET_PREFIX, KeyLimits, OnViolation, digest_of
from switchboard.tenants.store import KeyNotFound, create_key, load_keys, revoke_key, spend_since, update_key_limits

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc).timestamp()


@pytest.fixture
def engine(db_url):
    engine = database.open_engine(db_url)
    database.migrate(engine)
    yield engine
    engine.dispose()


def test_keys_round_trip_and_only_the_digest_is_stored(engine):
    limits = KeyLimits(rpm=60, tpm=10_000, usd_per_day=1.5, usd_per_month=20.0, quality_floor=0.5, usd_per_mtok_ceiling=0.3, on_violation=OnViolation.DEGRADE)
    key, secret = create_key(engine, "search", "acme", limits, now_s=NOW)
    other, other_secret = create_key(engine, "batch", "acme", KeyLimits(), now_s=NOW + 1)
    assert secret.startswith(SECRET_PREFIX) and len(secret) == len(SECRET_PREFIX) + 43 and secret != other_secret
    assert key.digest == digest_of(secret) and key.prefix == secret[:10]
    assert load_keys(engine) == [key, other]
    with engine.connect() as connection:
        stored = " ".join(str(row) for row in connection.execute(text("SELECT * FROM api_keys")))
    assert secret not in stored and secret[10:] not in stored and key.digest in stored
    revoked = revoke_key(engine, key.key_id, now_s=NOW + 5)
    assert revoked.revoked_at == NOW + 5 and revoke_key(engine, key.key_id, now_s=NOW + 9).revoked_at == NOW + 5
    assert [k.is_revoked for k in load_keys(engine)] == [True, False]
    with pytest.raises(KeyNotFound):
        revoke_key(engine, "key_nope")


def test_a_keys_limits_can_be_replaced_keeping_its_identity(engine):
    key, secret = create_key(engine, "search", "acme", KeyLimits(rpm=60, usd_per_day=1.0), now_s=NOW)
    updated = update_key_limits(engine, key.key_id, KeyLimits(rpm=600, on_violation=OnViolation.QUEUE))
    assert updated.limits == KeyLimits(rpm=600, on_violation=OnViolation.QUEUE)
    assert (updated.key_id, updated.digest, updated.created_at) == (key.key_id, digest_of(secret), NOW)
    assert load_keys(engine) == [updated]
    with pytest.raises(KeyNotFound):
        update_key_limits(engine, "key_nope", KeyLimits())


def test_spend_per_key_since_the_start_of_the_day_and_month(engine):
    def row(request_id, key_id, at, usd):
        return (request_id, at, key_id, "chat", "e", None, None, 1, 1, usd, 0.1, 0.1, False, None, "ok", 200, None)

    day = NOW - NOW % 86400
    month = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).timestamp()
    database.write_batch(engine, [row("a", "k1", NOW - 60, 0.25), row("b", "k1", day - 60, 1.0), row("c", "k1", month - 60, 9.0),
                                  row("d", "k2", NOW - 1, 0.5), row("e", None, NOW, 3.0)], [])
    spend = spend_since(engine, day, month)
    assert spend.keys() == {"k1", "k2"}
    assert (spend["k1"].usd_today, spend["k1"].usd_this_month) == pytest.approx((0.25, 1.25))
    assert (spend["k2"].usd_today, spend["k2"].usd_this_month) == pytest.approx((0.5, 0.5))


def test_cli_create_list_revoke_with_a_config(db_url, tmp_path):
    config = tmp_path / "switchboard.yaml"
    config.write_text(f'experts:\n  - id: e\n    backend: {{kind: simulated}}\nstorage: {{url: "{db_url}"}}\n')
    _register_subcommands()
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "search", "--tenant", "acme", "--rpm", "60", "--quality-floor", "0.5",
                                  "--on-violation", "degrade", "--config", str(config), "--json"])
    assert created.exit_code == 0, created.output
    made = json.loads(created.stdout)  # stdout only: other tests may have left log handlers writing to stderr
    assert made["secret"].startswith(SECRET_PREFIX) and (made["rpm"], made["quality_floor"], made["on_violation"]) == (60, 0.5, "degrade")
    table = runner.invoke(app, ["keys", "list", "--config", str(config)], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and made["id"] in table.output and "active" in table.output
    assert made["secret"] not in table.output and made["secret"][10:] not in table.output
    updated = runner.invoke(app, ["keys", "update", made["id"], "--rpm", "600", "--unset", "quality-floor", "--tpm", "5000",
                                  "--config", str(config), "--json"])
    assert updated.exit_code == 0, updated.output
    changed = json.loads(updated.stdout)
    assert (changed["rpm"], changed["tpm"], changed["quality_floor"], changed["on_violation"]) == (600, 5000, None, "degrade")
    human = runner.invoke(app, ["keys", "update", made["id"], "--usd-per-day", "2.5", "--config", str(config)])
    assert human.exit_code == 0 and "usd_per_day=2.5" in human.output
    for args, message in ((["--unset", "colour"], "--unset takes rpm, tpm"), ([], "nothing to change"),
                          (["--rpm", "1", "--unset", "rpm"], "rpm both set and unset"),
                          (["--on-violation", "panic"], "degrade, queue or reject")):
        bad = runner.invoke(app, ["keys", "update", made["id"], *args, "--config", str(config)])
        assert bad.exit_code == 2 and message in bad.output, (args, bad.output)
    assert runner.invoke(app, ["keys", "revoke", made["id"], "--config", str(config)]).exit_code == 0
    revoked = runner.invoke(app, ["keys", "update", made["id"], "--rpm", "1", "--config", str(config)])
    assert revoked.exit_code == 2 and "is revoked" in revoked.output
    listed = json.loads(runner.invoke(app, ["keys", "list", "--config", str(config), "--json"]).stdout)
    assert [(k["id"], k["revoked_at"] is not None) for k in listed] == [(made["id"], True)] and "secret" not in listed[0]
    assert json.loads(runner.invoke(app, ["keys", "list", "--no-revoked", "--config", str(config), "--json"]).stdout) == []
    for command in ("revoke", "update"):
        missing = runner.invoke(app, ["keys", command, "key_nope", "--rpm", "1", "--config", str(config)]
                                if command == "update" else ["keys", command, "key_nope", "--config", str(config)])
        assert missing.exit_code == 2 and "no key with id 'key_nope'" in missing.output
    bad = runner.invoke(app, ["keys", "create", "x", "--on-violation", "panic", "--config", str(config)])
    assert bad.exit_code == 2 and "degrade, queue or reject" in bad.output
    human = runner.invoke(app, ["keys", "create", "shown-once", "--config", str(config)])
    assert human.exit_code == 0 and "sk-sb-" in human.output and "not shown again" in human.output
