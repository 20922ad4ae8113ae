"""Model registry: shipped entries, user entries, downloads with checksum, offline errors."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from vmambax.errors import ConfigError, InputError, ModelFileError
from vmambax.infer import registry


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Isolated shipped-models folder and user folder."""
    shipped = tmp_path / "Models"
    shipped.mkdir()
    monkeypatch.setenv("VMAMBAX_MODELS_DIR", str(shipped))
    monkeypatch.setenv("VMAMBAX_HOME", str(tmp_path / "home"))
    return shipped


def _write_registry(folder: Path, models: list[dict]) -> None:
    (folder / "models.json").write_text(json.dumps({"format_version": 1, "models": models}))


@contextlib.contextmanager
def _http_server(root: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shipped_registry_entries_match_their_files():
    """Every shipped entry with a local file has a SHA-256 that matches it (catches stale hashes)."""
    entries = registry.shipped_models()
    assert entries, "Resources/Models/models.json lists no models"
    assert sum(e.default for e in entries) == 1, "exactly one shipped model must be the default"
    for entry in entries:
        assert entry.config, f"{entry.name}: no config"
        path = entry.local_path()
        if entry.file and path.is_file():
            assert entry.sha256, f"{entry.name}: shipped file {path} has no sha256 in models.json"
            assert registry.sha256_file(path) == entry.sha256, (
                f"{entry.name}: models.json sha256 is stale for {path}")


def test_local_entry_resolves_and_checksum_mismatch_is_an_error(dirs):
    (dirs / "m.pt").write_bytes(b"weights-v1")
    good = hashlib.sha256(b"weights-v1").hexdigest()
    _write_registry(dirs, [{"name": "m", "file": "m.pt", "sha256": good, "config": "vmambax-nano",
                            "default": True}])
    path, entry = registry.resolve_model("default")
    assert path == dirs / "m.pt" and entry.name == "m"
    (dirs / "m.pt").write_bytes(b"weights-v2")  # replaced behind the registry's back
    with pytest.raises(ModelFileError, match="checksum"):
        registry.resolve_model("m")


def test_unknown_name_and_missing_path_are_clear(dirs):
    _write_registry(dirs, [{"name": "m", "file": "m.pt", "sha256": "00", "config": "c"}])
    with pytest.raises(ConfigError, match="unknown model 'nope'.*registered: m"):
        registry.resolve_model("nope")
    with pytest.raises(InputError, match="does not exist"):
        registry.resolve_model(str(dirs / "missing.pt"))
    with pytest.raises(ModelFileError, match="missing"):
        registry.resolve_model("m")


def test_download_verifies_checksum_and_caches(dirs, tmp_path):
    served = tmp_path / "srv"
    served.mkdir()
    payload = bytes(range(256)) * 4096  # 1 MiB: several chunks
    (served / "net.pt").write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()
    with _http_server(served) as base:
        _write_registry(dirs, [
            {"name": "remote", "url": f"{base}/net.pt", "sha256": good, "config": "vmambax-nano"},
            {"name": "bad", "url": f"{base}/net.pt", "sha256": "ab" * 32, "config": "vmambax-nano"},
            {"name": "gone", "url": f"{base}/missing.pt", "sha256": good, "config": "vmambax-nano"},
        ])
        seen = []
        path, entry = registry.resolve_model("remote", progress=lambda f, m: seen.append(f))
        assert path.read_bytes() == payload and path.parent == registry.cache_dir()
        assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)

        with pytest.raises(ModelFileError, match="fails its checksum"):
            registry.resolve_model("bad")
        assert not registry.get_model("bad").local_path().exists()
        assert [p.name for p in registry.cache_dir().iterdir()] == [path.name], "partial file left"

        with pytest.raises(ModelFileError, match="HTTP 404"):
            registry.resolve_model("gone")
    # Served once, now cached: works with the server gone, and the cached copy is re-verified.
    assert registry.resolve_model("remote")[0] == path
    path.write_bytes(b"tampered")
    with pytest.raises(ModelFileError, match="checksum"):
        registry.resolve_model("remote")


def test_offline_download_says_where_to_put_the_file(dirs):
    url = f"http://127.0.0.1:{_closed_port()}/net.pt"
    _write_registry(dirs, [{"name": "r", "url": url, "sha256": "cd" * 32, "config": "c"}])
    with pytest.raises(ModelFileError, match="offline") as err:
        registry.resolve_model("r")
    assert str(registry.get_model("r").local_path()) in str(err.value)


def test_user_models_add_list_remove(dirs, tmp_path):
    from vmambax.model import build_model
    from vmambax.model.checkpoint import save_model_file

    _write_registry(dirs, [{"name": "shipped", "file": "s.pt", "sha256": "00", "config": "c",
                            "default": True}])
    model_file = tmp_path / "mine.pt"
    save_model_file(model_file, build_model("vmambax-nano"), config_name="vmambax-nano",
                    preprocessing={}, metadata={})
    entry = registry.add_user_model("mine", model_file, description="my run")
    assert entry.config == "vmambax-nano" and entry.sha256 == registry.sha256_file(model_file)
    assert [e.name for e in registry.list_models()] == ["shipped", "mine"]
    assert registry.resolve_model("mine")[0] == model_file.resolve()

    with pytest.raises(ConfigError, match="already registered"):
        registry.add_user_model("mine", model_file)
    with pytest.raises(ConfigError, match="shipped model name"):
        registry.add_user_model("shipped", model_file)
    with pytest.raises(ConfigError, match="invalid model name"):
        registry.add_user_model("bad name!", model_file)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelFileError):
        registry.add_user_model("junk", junk)

    registry.remove_user_model("mine")
    assert [e.name for e in registry.list_models()] == ["shipped"]
    with pytest.raises(ConfigError, match="no user model"):
        registry.remove_user_model("mine")


def test_models_cli_list_and_add(dirs, tmp_path, capsys):
    from vmambax.cli import main

    _write_registry(dirs, [{"name": "demo-net", "file": "d.pt", "sha256": "00",
                            "config": "vmambax-nano", "description": "the demo", "default": True}])
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "demo-net" in out and "MISSING" in out and "*" in out
    assert main(["models", "add", "x", str(tmp_path / "nope.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["models", "verify"]) == 2  # the shipped file is missing
    captured = capsys.readouterr()
    assert "demo-net: FAILED" in captured.out and "failed verification" in captured.err
    (dirs / "d.pt").write_bytes(b"x")
    _write_registry(dirs, [{"name": "demo-net", "file": "d.pt", "config": "vmambax-nano",
                            "sha256": hashlib.sha256(b"x").hexdigest(), "default": True}])
    assert main(["models", "verify"]) == 0 and "demo-net: OK" in capsys.readouterr().out
