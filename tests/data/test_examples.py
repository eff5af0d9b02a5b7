import os
import subprocess
import sys

import pytest

from ..conftest import ROOT


@pytest.mark.parametrize("script", ["custom_data_datasets.py", "custom_data_tensors.py"])
def test_custom_data_example_runs(script, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / script),
            f"run_dir={tmp_path}",
            "comm_round=2",
            "quiet=true",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert "test accuracy after 2 rounds" in done.stdout
    assert len(list(tmp_path.iterdir())) == 1
