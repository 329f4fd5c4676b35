"""Reading a file or a string a user hands over never runs code (issue 15).

Real payloads: a checkpoint and a CIFAR-10 batch whose unpickling would create a marker file. Each test first
shows that its payload is live (an unrestricted ``pickle`` / ``torch.load(weights_only=False)`` does create a
control marker), then that samkit refuses the same bytes with a one-line error and the marker never appears.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import zipfile
from pathlib import Path

import pytest
import torch
from cifar_files import write_folder

from samkit.cli import main
from samkit.report import write_report
from samkit.train import TrainConfig, TrainError, train
from samkit.train.records import load_checkpoint

SMALL = [
    "--dataset",
    "synthetic",
    "--model",
    "mlp",
    "--batch-size",
    "32",
    "--synthetic-train",
    "64",
    "--synthetic-test",
    "32",
    "--image-size",
    "8",
    "--no-progress",
    "--threads",
    "1",
    "--epochs",
    "2",
]


class _System:
    """Unpickling calls ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class _Exec:
    """Unpickling calls ``exec`` on Python source that writes MARKER."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


PAYLOADS = [_System, _Exec]


def _one_line_error(capsys, prefix: str = "samkit train: error: ") -> str:
    err = capsys.readouterr().err
    assert err.startswith(prefix) and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------------- checkpoints
def _evil_checkpoint(path: Path, payload: object) -> None:
    """A file shaped like a samkit checkpoint whose model entry runs the payload when unpickled."""
    torch.save(
        {
            "version": 1,
            "config": {},
            "epoch": 1,
            "step": 1,
            "model": payload,
            "optimizer": {},
            "rng": torch.get_rng_state(),
            "rows": [],
            "status": "running",
            "summary": {},
        },
        path,
    )


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_malicious_checkpoint_is_refused_on_resume_and_runs_nothing(tmp_path, capsys, payload):
    control = tmp_path / "control-marker"
    _evil_checkpoint(tmp_path / "control.pt", payload(control))
    torch.load(tmp_path / "control.pt", weights_only=False)  # the unsafe loader runs it: the payload is live
    assert control.exists()

    run, marker = tmp_path / "shared-run", tmp_path / "marker"
    run.mkdir()
    _evil_checkpoint(run / "checkpoint.pt", payload(marker))
    assert main(["train", *SMALL, "--out", str(run), "--resume"]) == 2
    err = _one_line_error(capsys)
    assert f"{run / 'checkpoint.pt'} is not a samkit checkpoint or was written by an untrusted tool" in err
    assert "nothing in it was run" in err
    assert not marker.exists()


def test_a_checkpoint_with_a_malicious_object_anywhere_is_refused(tmp_path):
    marker = tmp_path / "marker"
    torch.save([{"a": torch.ones(2)}, (1, _System(marker))], tmp_path / "nested.pt")
    with pytest.raises(TrainError, match="asks to load posix.system"):
        load_checkpoint(tmp_path / "nested.pt")
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda good: good[: len(good) // 2],  # truncated
        lambda good: good[:100],
        lambda good: b"",
        lambda good: random.Random(0).randbytes(4096),  # garbage
        lambda good: _zip_of_text(),  # a zip, but not torch's
    ],
    ids=["half", "first-100-bytes", "empty", "garbage", "other-zip"],
)
def test_a_truncated_or_garbage_checkpoint_is_one_line(tmp_path, capsys, damage):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--out", str(run)]) == 0  # a real run, then its checkpoint is damaged
    capsys.readouterr()
    good = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(damage(good))
    (run / "summary.json").unlink()
    assert main(["train", *SMALL, "--out", str(run), "--resume"]) == 2
    err = _one_line_error(capsys)
    assert f"{run / 'checkpoint.pt'} is not a readable checkpoint: the file is truncated or corrupt" in err


def _zip_of_text() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes.txt", "hello")
    return buf.getvalue()


def test_a_foreign_but_harmless_checkpoint_is_not_a_samkit_checkpoint(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "other.pt")
    with pytest.raises(TrainError, match=r"other.pt is not a samkit checkpoint \(expected the keys version, "):
        load_checkpoint(tmp_path / "other.pt")


def test_samkit_checkpoints_load_with_the_safe_loader(tmp_path):
    cfg = TrainConfig(
        dataset="synthetic",
        model="resnet20",
        channels=3,
        image_size=8,
        synthetic_train=32,
        synthetic_test=16,
        batch_size=16,
        epochs=1,
        progress=False,
        quiet=True,
        out=str(tmp_path / "r"),
    )
    train(cfg)
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)  # BatchNorm buffers, SAM state, RNG
    assert ckpt["status"] == "completed" and ckpt["rng"].dtype == torch.uint8
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["epoch"] == 1


# ------------------------------------------------------------------------------------------------- CIFAR-10
@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("verify", [True, False])
def test_a_malicious_cifar_batch_is_refused_and_runs_nothing(tmp_path, capsys, monkeypatch, payload, verify):
    monkeypatch.delenv("SAMKIT_DATA_DIR", raising=False)
    control = tmp_path / "control-marker"
    with open(tmp_path / "control", "wb") as fh:
        pickle.dump(payload(control), fh, protocol=2)
    with open(tmp_path / "control", "rb") as fh:
        pickle.load(fh, encoding="bytes")  # what samkit used to do: the payload is live
    assert control.exists()

    root, marker = tmp_path / "cifar-10-batches-py", tmp_path / "marker"
    write_folder(root, n=4)
    with open(root / "data_batch_1", "wb") as fh:
        pickle.dump(payload(marker), fh, protocol=2)
    argv = [
        "train",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(tmp_path),
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / "run"),
    ] + ([] if verify else ["--no-verify-data"])
    assert main(argv) == 2
    err = _one_line_error(capsys)
    if verify:  # the checksum is checked before the file is read at all
        assert "data_batch_1 is not a known CIFAR-10 file" in err
    else:
        assert f"{root / 'data_batch_1'} is not a CIFAR-10 batch: it asks to load" in err
        assert "refused; nothing in it was run" in err
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name", [("numpy", "load"), ("builtins", "eval"), ("numpy.core.multiarray", "scalar"), ("os", "getcwd")]
)
def test_the_cifar_reader_refuses_any_global_but_array_reconstruction(tmp_path, module, name):
    from samkit.data import DataError, _read_cifar_batch

    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")  # GLOBAL, EMPTY_TUPLE, REDUCE
    with pytest.raises(DataError, match=f"it asks to load {module}.{name}, which a CIFAR-10 batch never holds"):
        _read_cifar_batch(path)


# ------------------------------------------------------------------------------------------------- the rest
def test_set_values_are_parsed_never_evaluated(tmp_path, capsys):
    marker = tmp_path / "marker"
    code = f"__import__('os').system('touch {marker}')"
    assert main(["run", "E1", "--preset", "tiny", "--out", str(tmp_path), "--set", f"steps={code}"]) == 2
    assert "steps: expected an integer" in _one_line_error(capsys, "samkit: error: ")
    assert main(["run", "E1", "--preset", "tiny", "--out", str(tmp_path), "--set", f"rhos=[{code}]"]) == 2
    assert "rhos: expected a list" in _one_line_error(capsys, "samkit: error: ")
    assert not marker.exists()


def test_report_of_a_crafted_results_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "E1").mkdir()
    (tmp_path / "E1" / "config.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 3  # damaged result files: the report says so (issue 14)
    assert "config.json' is not readable JSON (JSONDecodeError" in _one_line_error(capsys, "samkit: error: ")
    (tmp_path / "E1" / "config.json").write_text('{"experiment": "E1", "config": []}')
    assert main(["report", str(tmp_path)]) == 3
    assert "config.json' is not a complete samkit config" in _one_line_error(capsys, "samkit: error: ")


def test_the_html_report_escapes_everything_it_reads(tmp_path):
    evil = "<script>alert(1)</script>"
    result = {
        "experiment": "javascript:alert(1)//",
        "title": evil,
        "summary": evil,
        "preset": evil,
        "overrides": [evil],
        "config_hash": evil,
        "run": {"units": "<img src=x onerror=alert(1)>", "units_cached": evil, "seconds": 1.0},
        "claims": [
            {
                "id": evil,
                "statement": evil,
                "setting": evil,
                "prediction": evil,
                "measured": evil,
                "tolerance": evil,
                "passed": True,
                "figure": "f.png",
            }
        ],
        "figures": [
            {
                "file": "x.png' onerror='alert(1)",
                "title": evil,
                "caption": evil,
                "claims": [evil],
                "data": ["data/t.csv'><script>"],
            }
        ],
        "provenance": {"samkit": evil, "torch": evil, "numpy": evil, "python": evil, "platform": evil},
    }
    html_path = write_report(tmp_path, [result])[0]
    page = html_path.read_text()
    assert "<script" not in page and "<img src=x" not in page and "onerror='" not in page
    assert "href='javascript:" not in page and "src='javascript:" not in page
    assert "href='./javascript:alert(1)//" in page  # a relative link, not a URL scheme
    assert json.loads((tmp_path / "claims.json").read_text())["total"] == 1
