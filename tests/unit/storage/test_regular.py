import os
import socket

import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.regular import open_regular, require_regular


@pytest.fixture
def specials(tmp_path):
    regular = tmp_path / "data.jsonl"
    regular.write_text("{}\n")
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock.jsonl"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    links = {
        "to_regular": regular,
        "to_fifo": fifo,
        "to_dir": tmp_path,
    }
    for name, target in links.items():
        (tmp_path / name).symlink_to(target)
    yield tmp_path
    sock.close()


@pytest.mark.parametrize("name", ["data.jsonl", "to_regular"])
def test_regular_files_and_links_to_them_are_read(specials, name):
    assert require_regular(specials / name) == specials / name
    with open_regular(specials / name) as handle:
        assert handle.read() == b"{}\n"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("fifo.jsonl", "a FIFO"),  # a reader would block forever (no writer)
        ("to_fifo", "a FIFO"),
        ("sock.jsonl", "a socket"),
        ("to_dir", "a folder"),
    ],
)
def test_anything_else_is_refused_without_blocking(specials, name, kind):
    for check in (require_regular, open_regular):
        with pytest.raises(WmtpError, match=f"is {kind}, not a regular file") as exc:
            check(specials / name)
        assert name in exc.value.line()


def test_a_device_is_refused():
    with pytest.raises(WmtpError, match="a character device"):
        open_regular("/dev/zero")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(WmtpError, match="file not found"):
        open_regular(tmp_path / "nothing")


def test_an_interrupt_while_the_file_object_is_made_stays_an_interrupt(tmp_path, monkeypatch):
    """Ctrl-C can land inside `os.fdopen` after its file object took the descriptor (and
    closed it on the way out): the interrupt must reach the caller, not an EBADF from
    closing the descriptor a second time."""
    path = tmp_path / "metadata.json"
    path.write_text("{}")
    real_fdopen = os.fdopen

    def interrupted_fdopen(fd, *args, **kwargs):
        real_fdopen(fd, *args, **kwargs).close()
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fdopen", interrupted_fdopen)
    with pytest.raises(KeyboardInterrupt):
        open_regular(path)
