"""Model registry: shipped models (``Resources/Models/models.json``) plus models the user added.

A registry entry names a model file (relative to the models folder) or a URL, its SHA-256, its
config name and a description. Remote files are downloaded once into ``user_dir()/models/cache``
and checked against the SHA-256 before they are moved into place. User entries live in
``user_dir()/models.json`` and point at absolute paths; ``vmambax models add`` and the Slicer
training module register trained models through ``add_user_model``.

Every file is checked against its SHA-256 before it is used, so a stale, truncated or swapped
model file fails loudly instead of silently segmenting with the wrong weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Callable

from vmambax.errors import ConfigError, InputError, ModelFileError, VMambaXError
from vmambax.utils import atomic_path, user_dir

MODELS_DIR_ENV = "VMAMBAX_MODELS_DIR"
DEFAULT_ALIASES = ("default", "demo")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    config: str = ""
    description: str = ""
    file: str | None = None  # relative to the models folder (shipped) or absolute (user)
    url: str | None = None
    sha256: str | None = None
    license: str | None = None
    default: bool = False
    training_data: str | None = None  # e.g. "synthetic phantoms": said whenever it segments
    source: str = "shipped"  # "shipped" or "user"

    def local_path(self) -> Path:
        """Where the file is (shipped/user) or will be cached (remote)."""
        if self.file:
            path = Path(self.file).expanduser()
            return path if path.is_absolute() else models_dir() / path
        filename = self.url.rstrip("/").rsplit("/", 1)[-1] or f"{self.name}.pt"
        return cache_dir() / f"{(self.sha256 or 'nohash')[:12]}-{filename}"

    def to_json(self) -> dict:
        data = {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "", False)}
        data.pop("source", None)
        return data


def models_dir() -> Path:
    """The shipped models folder: ``<repo or extension>/Resources/Models`` (env override)."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import vmambax

    return Path(vmambax.__file__).resolve().parent.parent / "Resources" / "Models"


def cache_dir() -> Path:
    return user_dir() / "models" / "cache"


def user_registry_path() -> Path:
    return user_dir() / "models.json"


def _read_registry(path: Path, source: str) -> list[ModelEntry]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        items = data["models"] if isinstance(data, dict) else data
        fields = {f.name for f in dataclasses.fields(ModelEntry)} - {"source"}
        return [ModelEntry(**{k: v for k, v in item.items() if k in fields}, source=source)
                for item in items]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"model registry {path} is not valid ({exc}); fix or delete the file "
                          f"(the user registry is recreated by `vmambax models add`)") from exc


def shipped_models() -> list[ModelEntry]:
    return _read_registry(models_dir() / "models.json", "shipped")


def user_models() -> list[ModelEntry]:
    return _read_registry(user_registry_path(), "user")


class RegistryWarning(UserWarning):
    """The user's registry is unreadable; the shipped models are used without it."""


def list_models() -> list[ModelEntry]:
    """Shipped models first, then the user's; names are unique (``add_user_model`` enforces it).

    An unreadable user registry does not take the shipped models down with it: it is skipped
    with a ``RegistryWarning`` (``add_user_model`` still refuses to overwrite it).
    """
    try:
        mine = user_models()
    except ConfigError as exc:
        warnings.warn(f"{exc}. Using only the shipped models until then.", RegistryWarning,
                      stacklevel=2)
        mine = []
    return shipped_models() + mine


def default_model() -> ModelEntry:
    models = list_models()
    for entry in models:
        if entry.default:
            return entry
    if models:
        return models[0]
    raise ModelFileError(f"no models are registered ({models_dir() / 'models.json'} is missing or "
                         f"empty); pass a model file with --model PATH")


def get_model(name: str) -> ModelEntry:
    if name in DEFAULT_ALIASES:
        return default_model()
    for entry in list_models():
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in list_models()) or "none"
    raise ConfigError(f"unknown model {name!r} (registered: {known}); pass a model file path, "
                      f"or register one with `vmambax models add NAME PATH`")


#: The notice every segmentation with the shipped demo model carries (summary, report, Slicer).
DEMO_MODEL_NOTICE = "demo model trained on synthetic phantoms; not for patient data"


def entry_with_sha256(sha256: str | None) -> ModelEntry | None:
    """The registered model whose file has this SHA-256 (a registry model given by its path)."""
    if not sha256:
        return None
    try:
        models = list_models()
    except VMambaXError:
        return None
    return next((e for e in models if e.sha256 and e.sha256.lower() == sha256.lower()), None)


def model_notices(name: str, entry: ModelEntry | None, metadata: dict | None) -> list[str]:
    """What the user must be told whenever this model segments: a model trained only on
    synthetic data (the shipped demo model), or one saved without any validation (its accuracy
    was never measured). One mechanism for every front end: the Segmenter puts these into
    ``SegmentationResult.warnings``."""
    metadata = metadata or {}
    notices = []
    training = (entry.training_data if entry is not None else None) or metadata.get("training_data")
    if training and "synthetic" in str(training).lower():
        if entry is not None and entry.source == "shipped":
            notices.append(DEMO_MODEL_NOTICE)
        else:
            notices.append(f"model {name} was trained on {training} only; not for patient data")
    if "best_val_dice" in metadata and metadata.get("best_val_dice") is None:
        notices.append(f"model {name} was saved without any validation (its training stopped "
                       "before the first validation, or validation was turned off), so its "
                       "accuracy is unknown; validate it on annotated cases before relying on it")
    return notices


def notices_for(spec: str | os.PathLike, path: Path | None = None, entry: ModelEntry | None = None,
                metadata: dict | None = None, sha256: str | None = None) -> list[str]:
    """``model_notices`` of a model given as the user gives it (name, alias or path); what is
    already known (resolved ``path``/``entry``, the file's ``metadata``, its ``sha256``) is not
    read again. A registered file given by its path, or copied and registered under another
    name, is still that model: it is recognised by its SHA-256."""
    if path is None:
        path, entry = resolve_model(spec)
    if metadata is None:
        from vmambax.model.checkpoint import model_file_info

        try:
            metadata = model_file_info(path).get("metadata") or {}
        except (VMambaXError, KeyError, TypeError, AttributeError):  # e.g. an authors' checkpoint
            metadata = {}
    sha = sha256 or (entry.sha256 if entry is not None and entry.sha256 else sha256_file(path))
    name = entry.name if entry is not None else Path(path).name
    return model_notices(name, entry_with_sha256(sha) or entry, metadata)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None, what: str) -> str:
    """Hash ``path``; raise ModelFileError when it differs from ``expected`` (None: no check)."""
    actual = sha256_file(path)
    if expected and actual.lower() != expected.lower():
        raise ModelFileError(
            f"{what} {path} fails its checksum (SHA-256 {actual[:16]}..., registry expects "
            f"{expected[:16]}...): the file is corrupted, truncated or was replaced. Restore the "
            f"original file, or re-register it with `vmambax models add NAME PATH --overwrite`")
    return actual


def resolve_model(spec: str | os.PathLike = "default",
                  progress: Callable[[float, str], None] | None = None) -> tuple[Path, ModelEntry | None]:
    """Return ``(local file, registry entry or None)`` for a registry name, alias or file path.

    Registry files are checksum-verified (remote ones downloaded first); a plain path is taken
    as is (the loader still rejects non-model files).
    """
    spec_str = str(spec)
    path = Path(spec_str).expanduser()
    looks_like_path = path.suffix in (".pt", ".pth", ".ckpt") or os.sep in spec_str or "/" in spec_str
    if path.is_file():
        return path, None
    registered = any(e.name == spec_str for e in list_models())
    if path.is_dir() and (looks_like_path or not registered):  # ./default/ must not hide "default"
        raise InputError(_path_problem(path, "model file"))
    if looks_like_path and not registered:
        raise InputError(f"model file {path} does not exist; check the path, or use a registered "
                         f"model name (`vmambax models list`)")
    entry = get_model(spec_str)
    local = entry.local_path()
    if entry.file:
        if not local.is_file():
            hint = ("reinstall VMambaX or restore the file" if entry.source == "shipped"
                    else f"re-register it with `vmambax models add {entry.name} PATH --overwrite`")
            raise ModelFileError(f"model {entry.name!r}: file {local} is missing; {hint}")
        verify_sha256(local, entry.sha256, f"model {entry.name!r}:")
        return local, entry
    if not entry.url:
        raise ConfigError(f"model {entry.name!r} has neither a file nor a url in its registry entry")
    if local.is_file():
        verify_sha256(local, entry.sha256, f"cached model {entry.name!r}:")
        return local, entry
    download(entry.url, local, entry.sha256, progress=progress, name=entry.name)
    return local, entry


def download(url: str, dest: Path, sha256: str | None,
             progress: Callable[[float, str], None] | None = None, name: str = "model") -> Path:
    """Stream ``url`` to ``dest``; the file appears only once complete and checksum-verified."""
    import requests

    manual = (f"download {url} by hand and save it as {dest}, or register a local copy with "
              f"`vmambax models add NAME PATH`")
    if not sha256:
        raise ConfigError(f"model {name!r} has a url but no sha256 in the registry; refusing to "
                          f"download an unverifiable file")
    digest = hashlib.sha256()
    try:
        with requests.get(url, stream=True, timeout=(10, 60)) as response:
            if response.status_code != 200:
                raise ModelFileError(f"downloading model {name!r} failed: HTTP "
                                     f"{response.status_code} from {url}; {manual}")
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            def read_back(path: Path) -> None:  # the file on disk, not the bytes we streamed
                if sha256_file(path) != sha256.lower():
                    raise ValueError("the written file does not match its SHA-256 (a short or "
                                     "damaged write)")

            with atomic_path(dest, verify=read_back) as tmp, open(tmp, "wb") as fh:
                for chunk in response.iter_content(chunk_size=_CHUNK):
                    fh.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        frac = done / total if total else 0.0
                        progress(min(frac, 1.0), f"downloading {name}: {done / 2**20:.1f} MiB")
                fh.flush()
                if digest.hexdigest().lower() != sha256.lower():
                    raise ModelFileError(
                        f"downloaded model {name!r} from {url} fails its checksum (SHA-256 "
                        f"{digest.hexdigest()[:16]}..., expected {sha256[:16]}...); the partial "
                        f"file was removed. Retry, or {manual}")
    except requests.RequestException as exc:
        raise ModelFileError(f"cannot download model {name!r} from {url} (offline or server "
                             f"unreachable: {type(exc).__name__}); {manual}") from exc
    return dest


def _path_problem(path: Path, what: str) -> str | None:
    # Imported here: vmambax.model imports torch, and listing the models must not (the Slicer
    # panels list them before the first install, and without loading torch into Slicer).
    from vmambax.model.pretrained import path_problem

    return path_problem(path, what)


def _write_user_registry(entries: list[ModelEntry]) -> None:
    path = user_registry_path()
    payload = {"format_version": 1, "models": [e.to_json() for e in entries]}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def add_user_model(name: str, path: str | os.PathLike, description: str = "",
                   overwrite: bool = False) -> ModelEntry:
    """Register a model file under ``name`` for this user (used by the CLI and the Slicer modules).

    The file is opened to check it is a loadable VMambaX model and to read its config; the entry
    stores the absolute path and the SHA-256, so later changes to the file are detected.
    """
    if not _NAME_RE.match(name or "") or name in DEFAULT_ALIASES:
        raise ConfigError(f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' "
                          f"(max 64), not {' / '.join(DEFAULT_ALIASES)}")
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise InputError(_path_problem(file, "model file"))
    if any(e.name == name for e in shipped_models()):
        raise ConfigError(f"{name!r} is a shipped model name; choose another name")
    existing = user_models()
    if any(e.name == name for e in existing) and not overwrite:
        raise ConfigError(f"a model named {name!r} is already registered; pass --overwrite to "
                          f"replace it, or choose another name")
    from vmambax.model.checkpoint import load_model_file

    # Built and loaded as segmenting would (strict): a file of another architecture, or one
    # that is not a model at all, is refused now rather than at the user's first segmentation.
    _model, info = load_model_file(file, map_location="cpu")
    entry = ModelEntry(name=name, config=str(info.get("config", "")), description=description,
                       file=str(file), sha256=sha256_file(file), source="user")
    _write_user_registry([e for e in existing if e.name != name] + [entry])
    return entry


def remove_user_model(name: str) -> None:
    """Forget a user model (the file itself is left alone)."""
    existing = user_models()
    if not any(e.name == name for e in existing):
        if any(e.name == name for e in shipped_models()):
            raise ConfigError(f"{name!r} is a shipped model and cannot be removed")
        raise ConfigError(f"no user model named {name!r} (see `vmambax models list`)")
    _write_user_registry([e for e in existing if e.name != name])
