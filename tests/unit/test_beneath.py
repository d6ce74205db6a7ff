"""The resolver beneath a jail, against a real tree: the kernel's openat2 and the userspace
walk used where the kernel lacks it must give the same answers."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from execgate.daemon.beneath import O_PATH, PathRefused, find, open_beneath, openat2, walk

Opener = Callable[[int, str, int, int], int]


@pytest.fixture
def jail(tmp_path: Path) -> Path:
    """``jail`` with links of every kind, beside a ``secret`` directory."""
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("outside")
    root = tmp_path / "jail"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "file").write_text("inside")
    (root / "rel").symlink_to("dir/sub")
    (root / "dir" / "up").symlink_to("..")
    (root / "file-link").symlink_to("dir/file")
    (root / "abs").symlink_to(root / "dir")
    (root / "out").symlink_to("../secret")
    (root / "self").symlink_to("self")
    (root / "loop1").symlink_to("loop2")
    (root / "loop2").symlink_to("loop1")
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "dangling").symlink_to("dir/created")
    (root / "proc-self").symlink_to("/proc/self/root")
    return root


@pytest.fixture
def root_fd(jail: Path) -> Iterator[int]:
    fd = os.open(jail, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def _has_openat2() -> bool:
    try:
        os.close(openat2(os.open("/", os.O_RDONLY), ".", O_PATH))
    except OSError as exc:
        return exc.errno != errno.ENOSYS
    return True


OPENERS = [pytest.param(walk, id="walk"),
           pytest.param(openat2, id="openat2", marks=pytest.mark.skipif(
               not _has_openat2(), reason="this kernel has no openat2"))]


def _errno(opener: Opener, root_fd: int, path: str, flags: int = O_PATH) -> int:
    try:
        fd = opener(root_fd, path, flags, 0o600)
    except OSError as exc:
        return exc.errno or 0
    os.close(fd)
    pytest.fail(f"{path!r} was opened")


def _read(opener: Opener, root_fd: int, path: str) -> bytes:
    fd = opener(root_fd, path, os.O_RDONLY, 0)
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


@pytest.mark.parametrize("opener", OPENERS)
@pytest.mark.parametrize("path", ["..", "dir/../..", "out", "out/key", "escape/key", "abs",
                                  "/etc", "dir/up/../secret", "proc-self/etc"])
def test_a_way_out_fails_with_exdev(opener: Opener, root_fd: int, path: str) -> None:
    assert _errno(opener, root_fd, path) == errno.EXDEV


@pytest.mark.parametrize("opener", OPENERS)
@pytest.mark.parametrize("path", ["self", "loop1", "loop1/../out", "self/x"])
def test_a_symlink_loop_fails_with_eloop(opener: Opener, root_fd: int, path: str) -> None:
    """Even when ``..`` follows the loop: the path is not collapsed by string."""
    assert _errno(opener, root_fd, path) == errno.ELOOP


@pytest.mark.parametrize("opener", OPENERS)
@pytest.mark.parametrize("path", ["file-link", "rel/../file", "dir/up/dir/file",
                                  "./dir//file", "dir/sub/../file"])
def test_links_and_dotdot_that_stay_inside_are_followed(opener: Opener, root_fd: int,
                                                        path: str) -> None:
    assert _read(opener, root_fd, path) == b"inside"


@pytest.mark.parametrize("opener", OPENERS)
def test_a_name_over_255_bytes_fails_with_enametoolong(opener: Opener, root_fd: int) -> None:
    assert _errno(opener, root_fd, "dir/" + "a" * 300) == errno.ENAMETOOLONG


@pytest.mark.parametrize("opener", OPENERS)
def test_a_file_used_as_a_directory_fails_with_enotdir(opener: Opener, root_fd: int) -> None:
    assert _errno(opener, root_fd, "dir/file/x") == errno.ENOTDIR


@pytest.mark.parametrize("opener", OPENERS)
def test_creating_through_a_dangling_link_creates_its_target(opener: Opener, root_fd: int,
                                                             jail: Path) -> None:
    os.close(opener(root_fd, "dangling", os.O_WRONLY | os.O_CREAT, 0o600))
    assert (jail / "dir" / "created").is_file()


@pytest.mark.parametrize("opener", OPENERS)
def test_exclusive_create_refuses_an_existing_link(opener: Opener, root_fd: int,
                                                   jail: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    assert _errno(opener, root_fd, "dangling", flags) == errno.EEXIST
    assert not (jail / "dir" / "created").exists()


@pytest.mark.parametrize("opener", OPENERS)
def test_odd_bytes_in_names_are_opened(opener: Opener, root_fd: int, jail: Path) -> None:
    name = os.fsdecode(b"\xff\n odd \x01")
    (jail / name).write_text("odd")
    assert _read(opener, root_fd, name) == b"odd"


@pytest.mark.parametrize("opener", OPENERS)
def test_the_empty_path_is_the_jail_itself(opener: Opener, root_fd: int) -> None:
    fd = opener(root_fd, "", O_PATH | os.O_DIRECTORY, 0)
    try:
        assert os.fstat(fd).st_ino == os.fstat(root_fd).st_ino
    finally:
        os.close(fd)


def test_proc_magic_links_are_not_followed() -> None:
    """/proc/self/root looks like a directory but is a jump the kernel makes: refused."""
    proc = os.open("/proc/self", O_PATH | os.O_DIRECTORY)
    try:
        for opener in (walk, openat2) if _has_openat2() else (walk,):
            assert _errno(opener, proc, "root/etc") in (errno.ELOOP, errno.EXDEV)
    finally:
        os.close(proc)


def test_find_reports_the_real_path_and_identity(jail: Path) -> None:
    found = find(jail, "rel")
    st = (jail / "dir" / "sub").stat()
    assert found.path == jail / "dir" / "sub"
    assert found.identity == (st.st_dev, st.st_ino)


def test_a_refusal_says_whether_it_escapes_and_never_names_the_host(jail: Path) -> None:
    with pytest.raises(PathRefused) as out:
        find(jail, "escape")
    with pytest.raises(PathRefused) as loop:
        find(jail, "self")
    assert out.value.escapes and not loop.value.escapes
    assert str(jail.parent) not in out.value.reason + loop.value.reason


def test_a_nul_byte_is_refused(root_fd: int) -> None:
    with pytest.raises(PathRefused, match="NUL"):
        open_beneath(root_fd, "dir\0x", O_PATH)


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EAGAIN])
def test_the_walk_answers_when_openat2_cannot(monkeypatch: pytest.MonkeyPatch, root_fd: int,
                                              code: int) -> None:
    """ENOSYS: a kernel before 5.6; EAGAIN: a rename on the host kept racing ``..``."""
    def unavailable(*_: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("execgate.daemon.beneath.openat2", unavailable)
    fd = open_beneath(root_fd, "file-link", os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"inside"
    finally:
        os.close(fd)
    with pytest.raises(PathRefused) as info:
        open_beneath(root_fd, "out/key", os.O_RDONLY)
    assert info.value.escapes
