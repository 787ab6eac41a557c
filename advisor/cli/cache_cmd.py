"""`advisor cache`: list or clear the tuning databases and caches shared between runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from advisor.config import default_cache_dir


def cache_entries(cache_dir: Path) -> list[dict]:
    """One entry per backend folder in the cache (tvm/, tensorrt/, ...) with its size and file count."""
    if not cache_dir.is_dir():
        return []
    entries = []
    for folder in sorted(p for p in cache_dir.iterdir() if p.is_dir()):
        for sub in sorted(p for p in folder.iterdir()) or [folder]:
            files = [f for f in sub.rglob("*") if f.is_file()] if sub.is_dir() else [sub]
            entries.append({"backend": folder.name, "path": str(sub), "files": len(files),
                            "size_bytes": sum(f.stat().st_size for f in files)})
    return entries


def _cache_dir_option(func):
    return click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
                        help="Cache folder (default: the user cache dir).")(func)


@click.group()
def cache():
    """List or clear tuning databases and timing caches shared between runs."""


@cache.command("list")
@_cache_dir_option
def list_cache(cache_dir):
    """Show what the cache holds, per backend and target."""
    folder = cache_dir or default_cache_dir()
    entries = cache_entries(folder)
    click.echo(f"cache: {folder}")
    if not entries:
        click.echo("(empty)")
    for entry in entries:
        click.echo(f"{entry['backend']:<12} {entry['size_bytes'] / 2**20:9.2f} MiB {entry['files']:6d} files  "
                   f"{entry['path']}")
    return 0


@cache.command("clear")
@_cache_dir_option
@click.option("--backend", default=None, help="Clear only this backend's cache (e.g. tvm).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def clear_cache(cache_dir, backend, yes):
    """Delete cached tuning records (the next tuning run starts from scratch)."""
    folder = cache_dir or default_cache_dir()
    target = folder / backend if backend else folder
    if not target.exists():
        click.echo(f"nothing to clear in {target}")
        return 0
    if not yes:
        click.confirm(f"delete {target}?", abort=True)
    shutil.rmtree(target)
    click.echo(f"cleared {target}")
    return 0
