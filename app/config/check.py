"""Check a config without starting anything: ``python -m app.config.check [file]`` (``make check-config``).

Like ``nginx -t`` and ``haproxy -c``: it runs the very check the gunicorn
master runs at start-up and on ``SIGHUP`` (:func:`validate`), prints the same
one line on an error and exits non-zero. The file is ``GATEWAY_CONFIG`` (or
``config/pool.cfg``) unless given; ``GATEWAY_*`` variables apply as they
would to the service.
"""

from __future__ import annotations

import sys

from app.config import ConfigError, Settings, load_settings


def validate(path: str | None = None) -> Settings:
    """The settings from the file and environment, tokens file included; ConfigError if anything is wrong.

    The tokens file's text is kept in the settings, so workers forked from
    the master that validated it use what was checked, not what the file
    holds by the time they boot.
    """
    from app.http.auth import load_tokens

    settings = load_settings(path)
    if settings.auth_tokens_file:
        from app.config import read_text_file

        settings = settings.replace(
            auth_tokens_file_text=read_text_file(settings.auth_tokens_file, "AUTH_TOKENS_FILE: file"))
    load_tokens(settings)
    return settings


def error_line(err: ConfigError) -> str:
    """The one line a config error prints as (start-up, this command)."""
    return f"gateway: config error: {err}"


def main(argv: list[str]) -> int:
    """Command line: exit 0 and one line if the config is good, else 1 and the error line on stderr."""
    try:
        settings = validate(argv[0] if argv else None)
    except ConfigError as err:
        print(error_line(err), file=sys.stderr)
        return 1
    print(f"gateway: config ok: {settings.source} ({len(settings.connections)} connection ids"
          f"{', from PostgreSQL' if settings.use_db else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
