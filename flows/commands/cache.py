"""`vetset cache info|clear`: where the score cache is, what it holds, and emptying it."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pipelines.errors import VetsetError

from ..cli import COMMANDS, Command


def _arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("action", choices=["info", "clear"], help="info: where and how big; clear: delete it")
    sp.add_argument("--cache-dir", help="a cache other than the default ($VETSET_CACHE_DIR or the user cache dir)")


def _size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def cmd_cache(args: argparse.Namespace) -> int:
    from ..caching import default_cache_dir

    root = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.action == "info":
        if not root.exists():
            print(f"cache: {root} (empty: nothing cached yet)")
            return 0
        n, size = _size(root)
        parts = {p.name: _size(p) for p in sorted(root.iterdir()) if p.is_dir()}
        print(f"cache: {root}: {n} files, {size / 1e6:.1f} MB")
        for name, (k, b) in parts.items():
            print(f"  {name}: {k} files, {b / 1e6:.1f} MB")
        return 0
    if root.exists():
        if not root.is_dir():
            raise VetsetError(f"{root} is not a folder")
        n, size = _size(root)
        shutil.rmtree(root)
        print(f"cleared {root}: {n} files, {size / 1e6:.1f} MB")
    else:
        print(f"cache: {root} (already empty)")
    return 0


COMMANDS.register("cache")(Command("cache", "show or clear the score cache", _arguments, cmd_cache))
