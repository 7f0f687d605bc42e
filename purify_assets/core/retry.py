"""Small helpers shared by the clients that call OpenAI-compatible servers (embedder, reviewer)."""

from __future__ import annotations

from typing import Any


def retry_after_seconds(exc: Any) -> float | None:
    """The server's ``Retry-After`` header (seconds) from an openai exception, or None."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    try:
        return float(response.headers.get("retry-after"))
    except (TypeError, ValueError):
        return None
