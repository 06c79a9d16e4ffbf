"""Coverage-guided fuzzing with atheris: ``python -m tests.fuzz.run_atheris TARGET [libFuzzer args]``.

The corpus lives in ``tests/fuzz/corpus/TARGET``; pass it as the first libFuzzer argument to
grow it. ``make fuzz`` runs every target for a long time; the test suite runs each briefly.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from tests.fuzz.targets import TARGETS


def main() -> None:
    name, *libfuzzer_args = sys.argv[1:]
    target = TARGETS[name]
    atheris.Setup([sys.argv[0], *libfuzzer_args], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
