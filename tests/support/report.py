"""The fault-injection summary: one row per scenario, printed at the end of the run."""

from __future__ import annotations

ROWS: list[dict[str, object]] = []
COLUMNS = ("scenario", "sent", "acknowledged", "found", "lost", "duplicated", "refused", "recovery")


def record(scenario: str, counts: dict[str, int], refused: int, recovery: float | None) -> None:
    """Add a scenario's counts and its recovery time (seconds, or None when not measured)."""
    ROWS.append({"scenario": scenario, **counts, "refused": refused,
                 "recovery": "-" if recovery is None else f"{recovery:.2f} s"})


def markdown() -> str:
    """The rows as a Markdown table (the README keeps a copy)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in ROWS:
        lines.append("| " + " | ".join(str(row.get(col, "")) for col in COLUMNS) + " |")
    return "\n".join(lines)
