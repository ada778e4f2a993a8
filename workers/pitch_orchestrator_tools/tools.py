"""The deterministic part of the pitch review, as a tool the model calls."""

from pathlib import PurePosixPath


def report_path(deck: str) -> str:
    """Where the evaluation of a deck is filed.

    Args:
        deck: The deck's path, e.g. 'input/acme-robotics.pdf'.
    """
    return f"evaluations/{PurePosixPath(deck).stem}.md"
