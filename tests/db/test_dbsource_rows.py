"""Rows of rmq_connections into specs, without a database: bad rows skipped, passwords never echoed."""

from app.config import Settings, parse_connection, settings_from_text
from app.db.live_source import secrets_of, specs_from_rows


def test_good_rows_parse_like_the_file_and_empty_backup_means_none():
    rows = [("a", "guest:guest@h:5672/v", None), ("b", "amqp://u:p@h/", ""), ("c", "u:p@h", "u:q@g:5673/")]
    specs, skipped = specs_from_rows(rows)
    assert skipped == {}
    assert specs == [parse_connection("a", ["guest:guest@h:5672/v"]), parse_connection("b", ["amqp://u:p@h/"]),
                     parse_connection("c", ["u:p@h", "u:q@g:5673/"])]


def test_bad_rows_are_skipped_with_a_reason_that_hides_the_password():
    rows = [
        ("ok", "u:p@h:5672/", None),
        ("port", "user:Sekr%2Ft@h:99999/", None),
        ("scheme", "http://user:hunter2@h/", None),
        ("backup", "u:p@h", "amqp://user:hunter3@h:5672/?bogus=1"),
        ("no primary", "u:p@h", None),
        ("", "u:p@h", None),
        ("empty", "", None),
    ]
    specs, skipped = specs_from_rows(rows)
    assert [s.conn_id for s in specs] == ["ok"]
    assert sorted(skipped) == ["", "backup", "empty", "no primary", "port", "scheme"]
    assert "invalid port" in skipped["port"] and "unsupported scheme" in skipped["scheme"]
    assert "backup" in skipped["backup"] and "no primary broker" in skipped["empty"]
    text = repr(skipped)
    assert not any(secret in text for secret in ("Sekr%2Ft", "Sekr/t", "hunter2", "hunter3"))


def test_secrets_cover_loaded_and_skipped_rows():
    rows = [("ok", "u:pw1@h", "amqp://u:pw%232@g/"), ("bad", "u:pw3@h:x/", None)]
    specs, _ = specs_from_rows(rows)
    found = set(secrets_of(Settings(), specs, rows))
    assert {"pw1", "pw#2", "pw%232", "pw3"} <= found


def test_db_password_from_the_environment_is_a_secret_and_never_described():
    settings = settings_from_text("USE_DB,true\nDB_PASSWORD,from-file", "<t>", {"GATEWAY_DB_PASSWORD": "from-env"})
    assert settings.db_password == "from-env"  # the environment wins
    assert "from-env" in settings.secrets()
    assert settings.describe()["DB_PASSWORD"] == "***" and "from-env" not in repr(settings)
