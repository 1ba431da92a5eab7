"""Apply ``config/schema.sql`` to the configured database: ``python -m app.db.schema``.

Reads the same settings as the gateway (``GATEWAY_CONFIG``, ``GATEWAY_DB_*``),
so ``GATEWAY_CONFIG=config/pool-db.cfg make schema`` prepares the database a
gateway with that file will read. The script is idempotent and runs in one
transaction: applying it twice, or from two places at once, is safe.
"""

from __future__ import annotations

import sys
from pathlib import Path

from app.config import ConfigError, Settings, load_settings
from app.db import connection as db

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.sql"


def apply_schema(settings: Settings, path: Path = SCHEMA_PATH) -> None:
    """Run the schema script against the settings' database; raise DatabaseError on failure."""
    sql = path.read_text(encoding="utf-8")
    conn = db.connect(settings, autocommit=True)  # the script has its own BEGIN/COMMIT
    try:
        with db.deadline(max(settings.db_timeout, 30.0), f"applying {path.name} to {db.display(settings)}"), \
                conn.cursor() as cur:
            cur.execute(sql)
    finally:
        db.close_quietly(conn)


def main(argv: list[str]) -> int:
    """Command line: ``python -m app.db.schema [config-file]``."""
    try:
        settings = load_settings(argv[0] if argv else None)
        apply_schema(settings)
    except ConfigError as err:
        print(f"schema: config error: {err}", file=sys.stderr)
        return 1
    except db.DatabaseError as err:
        print(f"schema: {err}", file=sys.stderr)
        return 1
    print(f"schema: {SCHEMA_PATH.name} applied to {db.display(settings)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
