"""The flows' Prefect artifacts: one rule for keys, one call for a Markdown report."""

from __future__ import annotations

import re

from prefect.artifacts import create_markdown_artifact


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key from ``parts``: keys allow only lowercase letters, digits
    and dashes, so anything else (paths, dates, underscores) becomes one dash."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def publish_markdown(markdown: str, description: str, *key_parts: str) -> None:
    """A Markdown artifact (a report the Prefect UI shows beside the run)."""
    create_markdown_artifact(
        key=artifact_key(*key_parts), markdown=markdown, description=description
    )
