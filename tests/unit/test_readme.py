"""The README's promises that code can check: the options table and the commands."""

from pathlib import Path

from app.config import options_table

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_options_table_is_current():
    start = README.index("<!-- options-table")
    start = README.index("\n", start) + 1
    end = README.index("<!-- /options-table -->")
    assert README[start:end].strip() == options_table().strip(), (
        "README's options table is stale: paste app.config.options_table()")


def test_two_commands_are_documented():
    assert "make run" in README and "make test" in README
