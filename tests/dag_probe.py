"""What each stage really reads: run the stage bodies of the DAG in order, in the current folder, in
this one process, and write for each stage the project modules it imported and the settings it read.

    python tests/dag_probe.py OUT.json STAGE... -- OVERRIDE...

Used by tests/test_dag.py (a helper run as a script, not a test module). Before each stage the
project's own modules are dropped from sys.modules, so that each stage imports afresh whatever it
needs; the stage body gets a `Recorder` in place of the plain config dict.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = (ROOT / "stages", ROOT / "src" / "suptickets")


class Recorder(dict):
    """A config dict that notes every key read, as a dotted path, in `log`. Reading a value notes its
    key; going down into a section notes nothing by itself; using a section as a whole (iterating it,
    its items, values, length, a copy, comparing or printing it) notes the section."""

    def __init__(self, data: dict, path: str = "", log: set | None = None):
        super().__init__(data)
        self._path, self.log = path, (set() if log is None else log)

    def _note(self, key) -> None:
        self.log.add(f"{self._path}{key}")

    def _whole(self) -> None:
        if self._path:
            self.log.add(self._path[:-1])
        else:
            self.log.update(super().keys())

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if isinstance(value, dict):
            return Recorder(value, f"{self._path}{key}.", self.log)
        self._note(key)
        return value

    def get(self, key, default=None):
        if super().__contains__(key):
            return self[key]
        self._note(key)
        return default

    def __contains__(self, key) -> bool:
        if not isinstance(super().get(key), dict):  # asking for a section on the way down reads nothing
            self._note(key)
        return super().__contains__(key)

    # a section used as a whole
    def __iter__(self):
        self._whole()
        return super().__iter__()

    def __len__(self) -> int:
        self._whole()
        return super().__len__()

    def __eq__(self, other) -> bool:
        self._whole()
        return super().__eq__(other)

    __hash__ = None

    def __repr__(self) -> str:
        self._whole()
        return super().__repr__()

    def keys(self):
        self._whole()
        return super().keys()

    def items(self):
        self._whole()
        return super().items()

    def values(self):
        self._whole()
        return super().values()

    def copy(self) -> dict:
        self._whole()
        return dict(super().items())


def project_modules() -> dict[str, str]:
    """name -> file (relative to the checkout) of every loaded module that is the checkout's own code."""
    out = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and any(Path(file).resolve().is_relative_to(c) for c in CODE):
            out[name] = Path(file).resolve().relative_to(ROOT).as_posix()
    return out


def main(out: str, stages: list[str], overrides: list[str]) -> None:
    from suptickets.composition import compose

    sys.path.insert(0, str(ROOT / "stages"))
    cfg = compose(ROOT / "params", overrides)
    records = {}
    for name in stages:
        for module in project_modules():
            del sys.modules[module]
        module = importlib.import_module(name)
        from _stage import Stage  # this stage's fresh copy
        from suptickets.tracking import Run

        cfg_for_body = Recorder(cfg)
        module.run(Stage(name, cfg_for_body, Run(None)))
        records[name] = {"modules": sorted(set(project_modules().values())), "params": sorted(cfg_for_body.log)}
    Path(out).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    split = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
    main(sys.argv[1], sys.argv[2:split], sys.argv[split + 1:])
