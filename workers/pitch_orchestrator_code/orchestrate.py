"""pitch_orchestrator, hardened: Python does the bookkeeping, a model does the judging."""

import asyncio
from pathlib import PurePosixPath


def report_path(deck: str) -> str:
    """input/acme-robotics.pdf -> evaluations/acme-robotics.md"""
    return f"evaluations/{PurePosixPath(deck).stem}.md"


async def review_all(ctx, input):
    decks = await ctx.list_files("input", "*.pdf")
    if not decks:
        return "No decks to review in input/."

    async def review(deck: str) -> str:
        report = await ctx.call_worker(
            "pitch_evaluator", "Evaluate this deck.", attachments=[deck]
        )
        path = report_path(deck)
        await ctx.write_file(path, report if isinstance(report, str) else str(report))
        await ctx.emit(f"- {deck} -> {path}\n")
        return path

    paths = await asyncio.gather(*(review(deck) for deck in decks))
    return f"Reviewed {len(paths)} deck(s): " + ", ".join(paths)
