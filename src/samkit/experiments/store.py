"""The files of a results folder: JSON and CSV written atomically and read back checked, the config that ties the
data to its preset and overrides (:func:`read_config`), the tables checked against their recorded checksums
(:func:`load_tables`), cached unit records (:func:`load_unit`), and the staged commit of an experiment's new
outputs (:func:`switch_over`). See :mod:`samkit.experiments.runner` for the folder's layout."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from samkit._io import atomic_write_text, claim_folder, csv_text, file_head, write_csv
from samkit.experiments.base import ConfigError, Experiment, Table, _jsonable, read_table, stable_hash, table_from_text
from samkit.experiments.results import Problem

__all__ = [
    "atomic_write_text",
    "write_json",
    "write_csv",
    "csv_text",
    "read_json",
    "safe_name",
    "ensure_writable",
    "claim_results_folder",
    "result_digest",
    "load_unit",
    "write_failure",
    "STAGING",
    "switch_over",
    "DamagedDataError",
    "TamperedConfigError",
    "StaleConfigError",
    "read_config",
    "verify_config",
    "load_tables",
]


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (numpy values and non-finite floats made JSON-safe)."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=1, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file; a missing, unreadable or damaged one is a :class:`ConfigError` naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{str(path)!r} is not readable JSON ({type(err).__name__}: {err})") from None


def safe_name(key: str) -> str:
    """``key`` made safe as a file name inside the output folder (no separators, no leading dot).

    >>> safe_name("rho=0.1/../x")
    'rho=0.1_.._x'
    """
    name = re.sub(r"[^A-Za-z0-9._=+,-]", "_", str(key)).lstrip(".")
    return name[:120] or "_"


#: The system's limit on a path's length, and the longest path samkit writes inside an output directory (an
#: experiment folder, ``units/``, a unit file named by its key — at most 120 characters — and its hash).
_PATH_MAX = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
_LONGEST_INSIDE = 256


def ensure_writable(out: Path) -> Path:
    """Create ``out`` if needed and check that files can be written there; raise :class:`ConfigError` if not."""
    out = Path(out)
    longest = len(os.fsencode(os.path.abspath(out))) + _LONGEST_INSIDE
    if longest > _PATH_MAX:
        raise ConfigError(
            f"the output directory's path is too long ({len(os.fsencode(os.path.abspath(out)))} bytes): the files "
            f"samkit writes inside it would pass the system's limit of {_PATH_MAX} bytes; choose a shorter path"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigError(f"cannot write to output directory {str(out)!r}: {reason}") from None
    return out


def result_digest(result: Any) -> str:
    """The sha256 of a unit's result as JSON (keys sorted, compact): recorded in its file, checked on load.

    >>> result_digest({"b": [1.0, float("nan")], "a": 1}) == result_digest({"a": 1, "b": [1.0, float("nan")]})
    True
    """
    text = json.dumps(_jsonable(result), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def load_unit(path: Path, h: str) -> tuple[bool, Any, str | None]:
    """``(hit, result, why)``: a unit file's result when it is complete, its hash matches and its result matches the
    checksum recorded with it; anything else is a cache miss (``why`` says why when the file exists but cannot be
    used, so the run can say that it recomputes it)."""
    if not path.exists():
        return False, None, None
    try:
        stored = read_json(path)
    except (OSError, ValueError):
        return False, None, "it is not readable JSON"
    if not isinstance(stored, dict) or stored.get("hash") != h or not isinstance(stored.get("result"), dict):
        return False, None, "it is not a complete unit record"
    if stored.get("result_sha256") != result_digest(stored["result"]):
        return False, None, "its result does not match the sha256 recorded with it (edited?)"
    return True, stored["result"], None


def write_failure(exp_dir: Path, failure: Problem) -> None:
    """Record in ``EXP_DIR/failure.json`` why the last run of an experiment did not finish."""
    write_json(exp_dir / "failure.json", failure.to_dict())


#: Where a run writes an experiment's new tables, config, figures and result before switching them in.
STAGING = ".commit"
#: What a committed experiment folder holds besides its units (replaced as a whole by :func:`switch_over`).
_COMMITTED = ("data", "figures", "result.json", "config.json")


def switch_over(new: Path, exp_dir: Path) -> None:
    """Move the complete new outputs in ``new`` into ``exp_dir``, the old ones aside first (then deleted); the config
    (the commit point that names the tables and their checksums) goes last. Renames within one folder need no space,
    so once everything was written this cannot fail half-way for want of it."""
    old = exp_dir / ".old"
    if old.exists():
        shutil.rmtree(old)
    old.mkdir()
    for name in _COMMITTED:
        dest = exp_dir / name
        if dest.exists() or dest.is_symlink():
            os.replace(dest, old / name)
        if (new / name).exists():
            os.replace(new / name, dest)
    shutil.rmtree(old)
    shutil.rmtree(new)


def _is_results_entry(path: Path) -> bool:
    """Whether ``path``, an entry of a results folder with no :data:`~samkit._io.MARKER`, was written by samkit (a
    folder from before the marker): an experiment folder, or the report's files."""
    if path.is_dir():
        return any((path / n).exists() for n in ("config.json", "result.json", "failure.json", "units", ".lock"))
    head = file_head(path)
    if head is None:
        return False
    if path.name == "README.md":
        return head.startswith(b"# samkit")
    if path.name == "index.html":
        return b"samkit" in head
    return path.name == "claims.json" and b'"claims"' in head


def claim_results_folder(out: Path) -> Path:
    """:func:`~samkit._io.claim_folder` for a results folder (``run``, ``reproduce``, ``report``)."""
    return claim_folder(out, ours=_is_results_entry, what="results folder")


class DamagedDataError(ConfigError):
    """A table on disk does not match what the run that wrote it recorded (truncated, edited, missing)."""


class TamperedConfigError(DamagedDataError):
    """``config.json`` is not the config that its preset and overrides give (edited after the run)."""


class StaleConfigError(TamperedConfigError):
    """``config.json`` has other keys than this samkit's schema: written by another samkit version (an upgrade that
    added a key), so its results cannot be judged by this one; a rerun recomputes them."""


def read_config(exp_dir: Path, exp: Experiment | None = None) -> dict[str, Any]:
    """Read and check ``EXP_DIR/config.json``: a clear :class:`ConfigError` when it is missing or damaged.

    With ``exp`` (the experiment it belongs to), the config is re-derived from the recorded preset and overrides
    through ``exp``'s schema (:meth:`Experiment.config`) and must equal the recorded config and its hash, else
    :class:`TamperedConfigError`: a threshold edited in ``config.json`` can never judge the data.
    """
    path = Path(exp_dir) / "config.json"
    meta = read_json(path)
    ok = isinstance(meta, dict) and isinstance(meta.get("config"), dict) and isinstance(meta.get("experiment"), str)
    ok = ok and isinstance(meta.get("tables"), dict) and isinstance(meta.get("preset"), str)
    ok = (
        ok
        and isinstance(meta.get("overrides", []), list)
        and all(isinstance(o, str) for o in meta.get("overrides", []))
    )
    if not ok:
        raise ConfigError(
            f"{str(path)!r} is not a complete samkit config (written by an older samkit or edited); "
            f"rerun `samkit run {Path(exp_dir).name}`"
        )
    if exp is not None:
        verify_config(exp, meta, path)
    return meta


def verify_config(exp: Experiment, meta: Mapping[str, Any], path: Path) -> None:
    """Raise :class:`TamperedConfigError` unless ``meta`` (the content of ``path``, a ``config.json`` read by
    :func:`read_config`) holds the config its preset and overrides give through ``exp``'s schema."""
    rerun = f"rerun `samkit run {exp.name}` to recompute it"
    if meta["experiment"] != exp.name:
        raise TamperedConfigError(f"{str(path)!r} is the config of {meta['experiment']!r}, not of {exp.name}; {rerun}")
    try:
        derived = exp.config(meta["preset"], meta.get("overrides", []))
    except ConfigError as err:
        raise TamperedConfigError(
            f"{str(path)!r}: its preset and overrides give no valid config ({err}); {rerun}"
        ) from None
    derived = json.loads(json.dumps(_jsonable(derived)))
    added, dropped = sorted(set(derived) - set(meta["config"])), sorted(set(meta["config"]) - set(derived))
    if added or dropped:
        what = "; ".join(
            [f"it lacks key(s) {', '.join(added)} of this samkit's schema"] * bool(added)
            + [f"it has key(s) {', '.join(dropped)} this samkit does not know"] * bool(dropped)
        )
        raise StaleConfigError(f"{str(path)!r} was written by another samkit version ({what}); {rerun}")
    if derived != meta["config"] or stable_hash(derived) != meta.get("config_hash"):
        keys = sorted(k for k in set(derived) | set(meta["config"]) if derived.get(k) != meta["config"].get(k))
        what = f"key(s) {', '.join(keys)} differ" if keys else "its config_hash differs"
        raise TamperedConfigError(
            f"{str(path)!r} was edited: it is not the config that preset {meta['preset']!r} with overrides "
            f"{meta.get('overrides', [])} gives ({what}); {rerun}"
        )


def load_tables(exp_dir: Path, manifest: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Table]:
    """Read the ``data/*.csv`` of an experiment directory.

    With ``manifest`` (the ``tables`` of ``config.json``: file name -> rows and sha256), exactly those files are
    read and each must match its recorded checksum and row count, else :class:`DamagedDataError` — verdicts are
    never computed from partial or edited data.
    """
    data_dir = Path(exp_dir) / "data"
    if manifest is None:
        return {p.stem: read_table(p) for p in sorted(data_dir.glob("*.csv"))}
    out = {}
    rerun = f"rerun `samkit run {Path(exp_dir).name}` to recompute it from the cached units"
    for name, meta in sorted(manifest.items()):
        path = data_dir / safe_name(name)
        if not isinstance(meta, Mapping):
            raise DamagedDataError(
                f"{str(Path(exp_dir) / 'config.json')!r} records {name!r} as {meta!r}, not as its rows and sha256; "
                f"{rerun}"
            )
        try:
            raw = path.read_bytes()
        except OSError:
            raise DamagedDataError(f"{str(path)!r} is missing; {rerun}") from None
        # nothing is decoded before its checksum matched: a crafted file is refused unread
        if hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
            raise DamagedDataError(
                f"{str(path)!r} is damaged: its sha256 differs from the one config.json records; {rerun}"
            )
        try:
            table = table_from_text(raw.decode("utf-8"))
        except (UnicodeDecodeError, csv.Error) as err:
            raise DamagedDataError(f"{str(path)!r} is damaged: it is not samkit's CSV text ({err}); {rerun}") from None
        if len(table) != meta.get("rows"):
            raise DamagedDataError(
                f"{str(path)!r} is damaged: it holds {len(table)} rows, the run recorded {meta.get('rows')}; {rerun}"
            )
        out[path.stem] = table
    return out
