"""What the service tests share for the whole session: the recorded runs they replay.

`recordings` records the runs once (one `pullsmith exec` against a scripted model, plus two
hand-written histories) for every module here; before, each module that asked for it recorded
its own. Each test still works on its own repository copy and its own server's data directory,
so nothing one test does is seen by another.

A conftest.py outside a package is imported as the module `conftest`, replacing tests/conftest.py
in sys.modules (pytest does so on purpose): test modules collected after this one that do
`from conftest import git` would find this file. So every name of tests/conftest.py that is not
a fixture is re-exported here, from a copy of that module loaded under another name.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_TOP = Path(__file__).resolve().parent.parent / "conftest.py"


def _load_top() -> object:
    spec = importlib.util.spec_from_file_location("_pullsmith_tests_conftest", _TOP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_fixture(value: object) -> bool:
    return type(value).__name__ == "FixtureFunctionDefinition" or hasattr(
        value, "_pytestfixturefunction"
    )


globals().update(
    {
        name: value
        for name, value in vars(_load_top()).items()
        if not name.startswith("_") and not _is_fixture(value) and name not in globals()
    }
)

# After the re-export: service_helpers itself does `from conftest import git`.
from service_helpers import record_runs  # noqa: E402


@pytest.fixture(scope="session")
def recordings(tmp_path_factory) -> dict[str, str]:
    """Model specs to replay: "good", "sleepy" (sleeps 60 s first), "slow" (sleeps 4 s, then
    the good run); see service_helpers.record_runs."""
    return record_runs(tmp_path_factory.mktemp("recording"))
