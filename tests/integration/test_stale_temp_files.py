"""After `kill -9` in the middle of a write, the next run of the same command removes the
killed run's temporary files (not only `wmtp build`)."""

import json
import signal
import subprocess
import sys

from tests.helpers import TINY_META_PARAMS
from weighted_mtp.data.validate import validate_dataset
from weighted_mtp.models.verify import verify_model
from weighted_mtp.storage.atomic import TEMP_MARKER

KILL_AFTER_FIRST = """
import os, signal
import {module} as target
original = target.{cls}.{method}
def write_then_die(self, *args, **kwargs):
    original(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
target.{cls}.{method} = write_then_die
"""


def _wmtp(root, args, patch: str = "") -> subprocess.CompletedProcess:
    code = (
        f"import sys\n{patch}\nsys.argv = ['wmtp', '--root', {str(root)!r}, *{list(args)!r}]\n"
        "from weighted_mtp.cli import main\nmain()\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def _temp_files(folder):
    return sorted(p.name for p in folder.rglob(f"*{TEMP_MARKER}*"))


def test_a_rerun_of_prepare_removes_what_the_killed_run_left(layout, sp_model_path):
    paths = layout.dataset("mbpp")
    rows = [
        {"task_id": i, "text": f"Task {i}.", "code": f"x = {i}", "test_list": []}
        for i in range(1, 200)
    ]
    paths.raw_split("mbpp").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["data", "prepare", "mbpp", "--tokenizer", str(sp_model_path)]
    patch = KILL_AFTER_FIRST.format(
        module="weighted_mtp.data.prepare", cls="_SplitFiles", method="flush"
    )
    killed = _wmtp(layout.root, args, patch)
    assert killed.returncode == -signal.SIGKILL
    left = _temp_files(paths.processed)
    assert left, "the kill should leave a half-written split"
    rerun = _wmtp(layout.root, args)
    assert rerun.returncode == 0, rerun.stderr
    assert _temp_files(layout.root / "datasets_v2") == []
    assert validate_dataset(layout, "mbpp").ok


def test_a_rerun_of_convert_removes_what_the_killed_run_left(layout, sp_model_path, tmp_path):
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.models.upstream_download import download_model
    from weighted_mtp.synthetic.model_mirrors import write_meta_mirror

    mirror = write_meta_mirror(
        tmp_path / "mirror",
        tokenizer_model=sp_model_path,
        params={**TINY_META_PARAMS, "vocab_size": -1},
    )
    download_model(layout, load_catalog(), "meta-llama-mtp", mirror=mirror)
    model = layout.model("meta-llama-mtp")
    patch = KILL_AFTER_FIRST.format(
        module="weighted_mtp.models.safetensors_stream", cls="SafetensorsWriter", method="write"
    )
    killed = _wmtp(layout.root, ["models", "convert", "meta-llama-mtp"], patch)
    assert killed.returncode == -signal.SIGKILL
    assert _temp_files(model.safetensors_dir), "the kill should leave a half-written file"
    rerun = _wmtp(layout.root, ["models", "convert", "meta-llama-mtp"])
    assert rerun.returncode == 0, rerun.stderr
    assert _temp_files(model.root) == []
    assert verify_model(layout, "meta-llama-mtp").ok
