"""`vetset detectors`, `vetset defenses`, `vetset purifiers`: every registered method with a
one-line description and its options (name, type, default) read from its Config dataclass,
so that `--set vdc.model=PATH` is findable without reading code.

    vetset detectors              # all detectors, their kind and options
    vetset detectors sentinet     # one, with the whole docstring
    vetset purifiers --json       # machine-readable
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from typing import Any, Callable

from pipelines.errors import VetsetError

from ..cli import COMMANDS, Command


def _first_paragraph(doc: str | None) -> str:
    text = inspect.cleandoc(doc or "").split("\n\n")[0]
    return " ".join(text.split())


def _type_name(t: Any) -> str:
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", str(t)).replace("typing.", "")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return "(required)"


def config_options(config: type) -> list[dict[str, Any]]:
    """Name, type and default of each field of a Config dataclass (JSON-able defaults)."""
    if not dataclasses.is_dataclass(config):
        return []
    out = []
    for f in dataclasses.fields(config):
        if f.name.startswith("_"):
            continue
        value = _default(f)
        if not isinstance(value, (str, int, float, bool, type(None), list, tuple, dict)):
            value = type(value).__name__
        out.append({"name": f.name, "type": _type_name(f.type), "default": value})
    return out


def _own_doc(cls: type) -> str:
    """The class's own docstring (not its base class's), else its module's."""
    own = cls.__dict__.get("__doc__")
    doc = inspect.cleandoc(own) if own else inspect.getdoc(inspect.getmodule(cls)) or ""
    return doc or f"(no description: {cls.__module__}.{cls.__qualname__} has no docstring)"


def _detectors() -> list[dict[str, Any]]:
    import cleansers  # noqa: F401  (registers the detectors)
    from cleansers.base import DETECTORS

    default = set(getattr(cleansers, "DEFAULT_DETECTORS", ()))
    out = []
    for name in DETECTORS.names():
        cls = DETECTORS.get(name)
        doc = _own_doc(cls)
        out.append({"name": name, "kind": cls.kind, "default": name in default, "summary": _first_paragraph(doc),
                    "doc": doc, "options": config_options(cls.Config)})
    return out


def _defenses() -> list[dict[str, Any]]:
    import trainers.defenses  # noqa: F401  (registers the defenses)
    from trainers.defenses.base import DEFENSES

    out = []
    for name in DEFENSES.names():
        cls = DEFENSES.get(name)
        doc = _own_doc(cls)
        out.append({"name": name, "summary": _first_paragraph(doc), "doc": doc, "options": config_options(cls.Config)})
    return out


def _purifiers() -> list[dict[str, Any]]:
    import trainers.purify  # noqa: F401  (registers the methods)
    from trainers.purify.base import PURIFIERS

    out = []
    for name in PURIFIERS.names():
        p = PURIFIERS.get(name)
        doc = inspect.getdoc(p.config) or ""
        options = config_options(p.config)
        for o in options:
            if o["name"] in p.cpu:
                o["cpu"] = p.cpu[o["name"]]
        out.append({"name": name, "summary": p.summary, "doc": doc, "options": options})
    return out


KINDS: dict[str, tuple[Callable[[], list[dict]], str, str]] = {
    # command: (lister, the option flag that takes them, example)
    "detectors": (_detectors, "vetset audit --set DETECTOR.OPTION=VALUE", "--set sentinet.window=0.2"),
    "defenses": (_defenses, "vetset train --defense NAME --defense-option OPTION=VALUE",
                 "--defense pdb --defense-option ratio=0.1"),
    "purifiers": (_purifiers, "vetset purify --method NAME --set OPTION=VALUE", "--method sau --set epochs=20"),
}


def _arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("name", nargs="?", help="show only this one, with its whole description")
    sp.add_argument("--json", action="store_true", help="print JSON (name, summary, options with type and default)")


def _show(kind: str, args: argparse.Namespace) -> int:
    lister, flag, example = KINDS[kind]
    items = lister()
    if args.name:
        items = [i for i in items if i["name"] == args.name]
        if not items:
            raise VetsetError(f"no {kind[:-1]} named {args.name!r}; known: {', '.join(i['name'] for i in lister())}")
    if args.json:
        print(json.dumps([{k: v for k, v in i.items() if k != "doc" or args.name} for i in items], indent=2, default=str))
        return 0
    print(f"{len(items)} {kind}; options are set with `{flag}` (e.g. {example})\n")
    for item in items:
        tags = [t for t in (item.get("kind"), "default" if item.get("default") else None) if t]
        print(f"{item['name']}" + (f" [{', '.join(tags)}]" if tags else "") + f": {item['summary']}")
        if args.name and item["doc"]:
            print("\n" + item["doc"] + "\n")
        for o in item["options"]:
            cpu = f"  (on the CPU: {o['cpu']!r})" if "cpu" in o else ""
            print(f"    {o['name']}: {o['type']} = {o['default']!r}{cpu}")
        if not item["options"]:
            print("    (no options)")
    return 0


for _kind in KINDS:
    COMMANDS.register(_kind)(Command(_kind, f"list the {_kind} with their options and defaults", _arguments,
                                     lambda args, _k=_kind: _show(_k, args)))
