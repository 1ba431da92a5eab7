"""The fault-injection summary: one row per scenario, printed at the end of the run."""

from __future__ import annotations

ROWS: list[dict[str, object]] = []
NOTES: list[str] = []  # one-line findings printed under the table
COLUMNS = ("scenario", "sent", "acknowledged", "found", "lost", "duplicated", "refused", "recovery")
# Shown when a scenario gives them (the cluster suite): the refusals by code, the longest gap without a 200.
EXTRA_COLUMNS = ("refused codes", "longest gap")


def record(scenario: str, counts: dict[str, int], refused: int, recovery: float | None,
           codes: dict[str, int] | None = None, gap: float | None = None) -> None:
    """Add a scenario's counts and its recovery time (seconds, or None when not measured)."""
    row: dict[str, object] = {"scenario": scenario, **counts, "refused": refused,
                              "recovery": "-" if recovery is None else f"{recovery:.2f} s"}
    if codes is not None:
        row["refused codes"] = ", ".join(f"{code} {n}" for code, n in codes.items()) or "-"
    if gap is not None:
        row["longest gap"] = f"{gap:.2f} s"
    ROWS.append(row)


def note(text: str) -> None:
    NOTES.append(text)


def markdown() -> str:
    """The rows as a Markdown table (the README keeps a copy)."""
    columns = COLUMNS + tuple(col for col in EXTRA_COLUMNS if any(col in row for row in ROWS))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in ROWS:
        lines.append("| " + " | ".join(str(row.get(col, "")) for col in columns) + " |")
    return "\n".join(lines)
