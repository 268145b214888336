"""download: argument checks found in review.

The timeout: a value a socket cannot take (inf, 1e300) is refused before any URL is opened.

It used to pass the check (> 0) and reach ``socket.settimeout``, which raised a bare OverflowError
("timestamp out of range for platform time_t") for an http URL.
"""

import urllib.request

import pytest

from saf_ref.data import download as D


@pytest.fixture
def nothing_opened(monkeypatch):
    def refuse(url, *args, **kwargs):
        raise AssertionError(f"download opened {url} before checking its arguments")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("timeout", [float("inf"), 1e300, 2e9])  # the last: beyond the documented 1e9 cap
def test_a_timeout_beyond_the_cap_is_refused_up_front(tmp_path, nothing_opened, timeout):
    with pytest.raises(ValueError, match=r"^download: timeout must be > 0 seconds and at most 1e\+09, got "):
        D.download("x.bin", tmp_path, sha256="0" * 64, url="http://127.0.0.1:9/x.bin", timeout=timeout)


def test_the_largest_timeout_is_one_a_socket_accepts():
    import socket

    with socket.socket() as s:  # never connected: no network
        s.settimeout(1e9)
        assert s.gettimeout() == 1e9


@pytest.mark.parametrize("fn", ["verify_sha256", "load_digits"])
def test_verify_sha256_names_the_caller_for_a_bad_path(fn):
    kwargs = {} if fn == "verify_sha256" else {"fn": fn}
    with pytest.raises(TypeError, match=rf"^{fn}: path must be a str or path-like, got int$"):
        D.verify_sha256(5, "0" * 64, **kwargs)
