"""The download helper, exercised only with local ``file://`` URLs: no test touches the network."""

import hashlib
import re
import urllib.request

import pytest

from saf_ref.data import download as D


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly if anything tries to open a non-file URL."""
    real = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        if not str(url).startswith("file:"):
            raise AssertionError(f"test tried to reach the network: {url}")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


@pytest.fixture
def source(tmp_path):
    payload = bytes(range(256)) * 5000  # 1.28 MB: more than one 1 MiB read chunk
    path = tmp_path / "src" / "payload.bin"
    path.parent.mkdir()
    path.write_bytes(payload)
    return path, hashlib.sha256(payload).hexdigest()


def _leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".part")]


def test_download_from_file_url_verifies_and_writes(tmp_path, source, no_network):
    src, digest = source
    out = D.download("payload.bin", tmp_path / "dest", sha256=digest.upper(), url=src.as_uri())
    assert out == tmp_path / "dest" / "payload.bin" and out.read_bytes() == src.read_bytes()
    assert _leftovers(tmp_path / "dest") == []
    D.verify_sha256(out, digest)  # and no error
    assert D.sha256_file(out) == digest


def test_checksum_mismatch_leaves_no_file(tmp_path, source, no_network):
    src, digest = source
    wrong = "0" * 64
    with pytest.raises(
        D.ChecksumError,
        match=rf"download: payload.bin: no URL gave the expected bytes: .*SHA-256 {digest}, expected {wrong}",
    ):
        D.download("payload.bin", tmp_path / "dest", sha256=wrong, url=src.as_uri())
    assert list((tmp_path / "dest").iterdir()) == []


def test_existing_verified_file_is_not_downloaded_again(tmp_path, source, monkeypatch):
    src, digest = source
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "payload.bin").write_bytes(src.read_bytes())

    def refuse(*args, **kwargs):
        raise AssertionError("urlopen must not be called")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    assert D.download(
        "payload.bin", tmp_path / "dest", sha256=digest, url="https://example.invalid/x"
    ).is_file()


def test_corrupt_existing_file_is_replaced(tmp_path, source, no_network):
    src, digest = source
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "payload.bin").write_bytes(b"truncated")
    out = D.download("payload.bin", tmp_path / "dest", sha256=digest, url=src.as_uri())
    assert out.read_bytes() == src.read_bytes()


def test_known_name_tries_mirrors_in_order(tmp_path, source, monkeypatch, no_network):
    src, digest = source
    missing = (tmp_path / "nowhere" / "payload.bin").as_uri()
    monkeypatch.setitem(D.KNOWN_FILES, "payload.bin", D.KnownFile((missing, src.as_uri()), digest, 0, ""))
    out = D.download("payload.bin", tmp_path / "dest")
    assert out.read_bytes() == src.read_bytes()
    monkeypatch.setitem(D.KNOWN_FILES, "payload.bin", D.KnownFile((missing, missing), digest, 0, ""))
    with pytest.raises(OSError, match=r"download: payload.bin: every URL failed: file:.*nowhere.*; file:"):
        D.download("payload.bin", tmp_path / "dest2")
    assert _leftovers(tmp_path / "dest2") == []


def test_known_files_table_is_well_formed():
    for name, known in D.KNOWN_FILES.items():
        assert re.fullmatch(r"[0-9a-f]{64}", known.sha256) and re.fullmatch(r"[0-9a-f]{32}", known.md5)
        assert all(u.startswith(("https://", "http://")) and u.endswith("/" + name) for u in known.urls)
        assert known.size > 0
    assert D.KNOWN_FILES["cifar-10-python.tar.gz"].md5 == "c58f30108f718f92721af3b95e74349a"  # the CIFAR page


def test_verify_sha256_names_file_expected_and_got(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    got = hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(
        D.ChecksumError, match=rf"verify_sha256: .*f.bin has SHA-256 {got}, expected {'1' * 64}"
    ):
        D.verify_sha256(p, "1" * 64)
    with pytest.raises(ValueError, match=r"verify_sha256: expected must be 64 hex digits"):
        D.verify_sha256(p, "xyz")
    with pytest.raises(TypeError, match=r"verify_sha256: expected must be a str of 64 hex digits, got bytes"):
        D.verify_sha256(p, b"0" * 64)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(name=3), TypeError, r"download: name must be a str, got int"),
        (
            dict(name="a/b.bin", sha256="0" * 64, url="file:///x"),
            ValueError,
            r"name must be a plain file name",
        ),
        (dict(name="..", sha256="0" * 64, url="file:///x"), ValueError, r"name must be a plain file name"),
        (dict(name=""), ValueError, r"name must be a plain file name"),
        (dict(name="other.bin"), ValueError, r"download: name must be one of \('cifar-10-python.tar.gz'"),
        (dict(name="other.bin", sha256="0" * 64), ValueError, r"unless url and sha256 are both given"),
        (dict(name="other.bin", url="file:///x"), ValueError, r"unless url and sha256 are both given"),
        (
            dict(name="cifar-10-python.tar.gz", sha256="abc"),
            ValueError,
            r"download: sha256 must be 64 hex digits",
        ),
        (dict(name="cifar-10-python.tar.gz", url=5), TypeError, r"download: url must be a str, got int"),
        (
            dict(name="cifar-10-python.tar.gz", timeout=0),
            ValueError,
            r"download: timeout must be > 0 seconds",
        ),
        (
            dict(name="cifar-10-python.tar.gz", timeout="1"),
            TypeError,
            r"download: timeout must be a real number",
        ),
    ],
)
def test_download_argument_errors(tmp_path, kwargs, exc, match, no_network):
    with pytest.raises(exc, match=match):
        D.download(dest=tmp_path, **kwargs)


def test_paths_are_validated_before_anything_is_fetched(no_network):
    for call, match in (
        (lambda: D.download("payload.bin", None, sha256="0" * 64, url="file:///x"), "download: dest must be"),
        (lambda: D.download_cifar10(3), "download: dest must be a str or path-like, got int"),
        (lambda: D.download_mnist(None), "download_mnist: dest must be a str or path-like, got NoneType"),
        (lambda: D.sha256_file(None), "sha256_file: path must be a str or path-like, got NoneType"),
    ):
        with pytest.raises(TypeError, match=match):
            call()


def test_named_helpers_pass_their_file_name_and_options(tmp_path, source, no_network, monkeypatch):
    """download_cifar10/100 name their archive; download_mnist fetches the four IDX files by name."""
    src, digest = source
    for helper, name in ((D.download_cifar10, "cifar-10-python.tar.gz"),
                         (D.download_cifar100, "cifar-100-python.tar.gz")):  # fmt: skip
        out = helper(tmp_path / "c", sha256=digest, url=src.as_uri())
        assert out == tmp_path / "c" / name and out.read_bytes() == src.read_bytes()
    calls = []
    monkeypatch.setattr(D, "download", lambda name, dest, **kw: calls.append((name, dest, kw)))
    assert D.download_mnist(tmp_path / "m", timeout=5.0) == tmp_path / "m"
    assert [c[0] for c in calls] == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                     "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]  # fmt: skip
    assert all(c[1] == tmp_path / "m" and c[2] == {"timeout": 5.0} for c in calls)
