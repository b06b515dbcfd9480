"""The mutation catalogue (tests/mutations.py) stays applicable: each mutation's original text occurs exactly once in
its file, so a refactor that moves the code on cannot leave a mutant silently "not applicable" (two were, found
2026-11-29)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import mutations  # noqa: E402


def test_every_mutation_applies_once():
    names = [m.name for m in mutations.MUTATIONS]
    assert len(set(names)) == len(names)
    stale = {m.name: (ROOT / m.file).read_text().count(m.original) for m in mutations.MUTATIONS}
    assert {name: n for name, n in stale.items() if n != 1} == {}
