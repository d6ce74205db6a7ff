"""The path jail: over random trees of directories, files and symlinks (loops, ``..``,
absolute targets, /proc magic links, names with odd bytes), no accepted path resolves
outside the jail, and every refusal is a clean Denial naming its rule."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from execgate.daemon import beneath
from execgate.daemon.model import DenialKind
from execgate.daemon.policy._jail import resolve_path
from tests.property._support import refusal

RULE = "tools.shell.working_directory"
_ODD = st.binary(min_size=1, max_size=6).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_"))
_NAME = st.one_of(st.sampled_from(["a", "b", "c", "d", "link", "..."]),
                  _ODD.filter(lambda b: b not in (b".", b"..")).map(os.fsdecode))
_TARGET = st.one_of(
    _NAME, st.sampled_from(["..", "../..", "../outside", "../outside/secret", "/", "/etc",
                            "/proc/self/root", "/proc/self/cwd", "/proc/self/fd/0",
                            "a/../..", "./a", "a/b/../../..", "link", "link/link"]),
    st.lists(_NAME | st.just(".."), min_size=1, max_size=4).map("/".join))


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    """(kind, path inside the jail, symlink target) entries, parents before children."""
    entries: list[tuple[str, str, str]] = []
    dirs = [""]
    for _ in range(draw(st.integers(0, 12))):
        parent = draw(st.sampled_from(dirs))
        name = draw(_NAME)
        path = f"{parent}/{name}" if parent else name
        kind = draw(st.sampled_from(["dir", "file", "link", "link"]))
        target = draw(_TARGET) if kind == "link" else ""
        if kind == "link" and draw(st.booleans()):
            target = draw(st.sampled_from(["{jail}", "{outside}", "{jail}/a", "{outside}/a"]))
        entries.append((kind, path, target))
        if kind == "dir":
            dirs.append(path)
    return entries


_REQUEST = st.one_of(
    _TARGET, st.lists(_NAME | st.sampled_from(["..", ".", ""]), min_size=1, max_size=6)
    .map("/".join), st.sampled_from(["{jail}", "{jail}/a", "{jail}/..", "{outside}"]))


@contextmanager
def _planted(entries: list[tuple[str, str, str]]) -> Iterator[tuple[Path, Path]]:
    top = Path(tempfile.mkdtemp(prefix="jail-prop-"))
    jail, outside = top / "jail", top / "outside"
    jail.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("secret")
    try:
        # Only beneath directories made here, never at a name already taken: planting never
        # goes through a symlink, so it cannot write outside the jail itself.
        made, taken = {""}, set()
        for kind, path, target in entries:
            if path.rpartition("/")[0] not in made or path in taken:
                continue
            taken.add(path)
            where = jail / path
            if kind == "dir":
                where.mkdir()
                made.add(path)
            elif kind == "file":
                where.write_bytes(b"x")
            else:
                where.symlink_to(_fill(target, jail, outside))
        yield jail, outside
    finally:
        shutil.rmtree(top)


def _fill(template: str, jail: Path, outside: Path) -> str:
    return template.replace("{jail}", str(jail)).replace("{outside}", str(outside))


def _inside(path: Path, jail: Path) -> bool:
    return path == jail or path.is_relative_to(jail)


@given(trees(), _REQUEST)
def test_no_accepted_path_resolves_outside_the_jail(entries: list[tuple[str, str, str]],
                                                    template: str) -> None:
    with _planted(entries) as (jail, outside):
        requested = _fill(template, jail, outside)
        found = None

        def resolve() -> None:
            nonlocal found
            found = resolve_path(jail, requested, RULE)

        denial = refusal(resolve)
        if denial is not None:
            assert denial.rule == RULE
            assert denial.kind in (DenialKind.POLICY_DENIED, DenialKind.INVALID_ARGUMENT,
                                   DenialKind.PERMISSION_DENIED)
            assert str(outside) not in denial.message or str(outside) in requested
            return
        assert found is not None
        assert _inside(found.path, jail)
        # What the kernel would reach by the path's text, following every link: the same.
        assert Path(os.path.realpath(jail / requested)) == found.path


@given(trees(), _REQUEST)
def test_the_userspace_walk_never_leaves_the_jail(entries: list[tuple[str, str, str]],
                                                  template: str) -> None:
    """The fallback for kernels without openat2 keeps the same rules on its own."""
    with _planted(entries) as (jail, outside):
        requested = _fill(template, jail, outside)
        root = os.open(jail, os.O_PATH | os.O_DIRECTORY)
        try:
            fd = beneath.walk(root, requested, os.O_PATH)
        except OSError:
            return
        finally:
            os.close(root)
        try:
            real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        finally:
            os.close(fd)
        assert _inside(real, jail), f"{requested!r} reached {real}"
        assert not requested.startswith("/")
