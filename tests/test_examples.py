"""Every example worker shipped in workers/ loads (they are the README's promises)."""

from pathlib import Path

from app.runtime import WorkerRegistry

REPO = Path(__file__).resolve().parents[1]


def test_every_example_worker_is_valid():
    registry = WorkerRegistry(REPO / "workers")
    names = registry.names()
    assert {"greeter", "calculator", "orchestrator", "save_note", "pitch_orchestrator_code"} <= set(
        names
    )
    for name in names:
        assert registry.get(name).name == name
