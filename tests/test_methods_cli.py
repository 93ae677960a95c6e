"""`vetset detectors` / `defenses` / `purifiers`: every registered method is listed with its
one-line description and every option of its Config dataclass, with type and default."""
from __future__ import annotations

import dataclasses
import json

import pytest

from flows.cli import run


def _listed(kind: str, capsys) -> list[dict]:
    assert run([kind, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_detector_and_every_option_is_listed(capsys):
    import cleansers
    from cleansers.base import DETECTORS

    import flows_plugin  # noqa: F401  (plug-in detectors without class docstrings, as other tests register)

    items = {i["name"]: i for i in _listed("detectors", capsys)}
    assert sorted(items) == DETECTORS.names()
    for name, item in items.items():
        cls = DETECTORS.get(name)
        fields = [f.name for f in dataclasses.fields(cls.Config)]
        assert [o["name"] for o in item["options"]] == fields, name
        assert item["kind"] == cls.kind and item["summary"] and "Base class" not in item["summary"]
        if cls.__module__.startswith("cleansers."):
            assert not item["summary"].startswith("(no description"), name
        assert item["default"] == (name in cleansers.DEFAULT_DETECTORS)
    assert "slow_rows" in items  # a plug-in is listed too, described by its module's docstring
    window = next(o for o in items["sentinet"]["options"] if o["name"] == "window")
    assert window["default"] == DETECTORS.get("sentinet").Config().window and "float" in window["type"]
    assert any(o["name"] == "model" for o in items["vdc"]["options"])


def test_defenses_and_purifiers_are_listed(capsys):
    from trainers.defenses.base import DEFENSES
    from trainers.purify.base import PURIFIERS

    defenses = {i["name"]: i for i in _listed("defenses", capsys)}
    assert sorted(defenses) == DEFENSES.names() and {"none", "abl", "pdb", "curate"} <= set(defenses)
    purifiers = {i["name"]: i for i in _listed("purifiers", capsys)}
    assert sorted(purifiers) == PURIFIERS.names()
    sau = PURIFIERS.get("sau")
    assert [o["name"] for o in purifiers["sau"]["options"]] == [f.name for f in dataclasses.fields(sau.config)]
    assert purifiers["sau"]["summary"] == sau.summary


def test_the_text_listing_and_one_method(capsys):
    assert run(["detectors"]) == 0
    out = capsys.readouterr().out
    assert "vetset audit --set DETECTOR.OPTION=VALUE" in out and "sentinet [specialist, default]:" in out
    assert "    window: float = 0.25" in out
    assert run(["purifiers", "npd"]) == 0
    out = capsys.readouterr().out
    assert out.count("\nnpd") + out.startswith("npd") >= 1 and "sau:" not in out


@pytest.mark.parametrize("kind", ["detectors", "defenses", "purifiers"])
def test_an_unknown_name_is_one_line_and_exit_2(kind, capsys):
    assert run([kind, "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vetset: error: no ") and "known:" in err[0]
