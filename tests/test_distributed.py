"""Two-process CPU fits through Lightning's strategies (gloo), each in its own subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("distributed_fit.py")


def run_fit(kind: str, out: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parent)}
    proc = subprocess.run([sys.executable, str(SCRIPT), kind, str(out)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "strategy"), [("ddp", "DDPStrategy"), ("fsdp2", "ModelParallelStrategy")])
def test_two_ranks_train_and_the_result_predicts(kind: str, strategy: str, tmp_path: Path) -> None:
    ranks = run_fit(kind, tmp_path)
    for r, info in enumerate(ranks):
        assert info["rank"] == r and info["world_size"] == 2 and info["strategy"] == strategy
        assert info["global_step"] == 3 and len(info["losses"]) == 3
        assert all(loss == loss and loss < 1e6 for loss in info["losses"])  # finite
    # the distributed sampler gave each rank different data
    assert ranks[0]["batches"] != ranks[1]["batches"]
    assert (tmp_path / "model.ckpt").exists()
    shapes = json.loads((tmp_path / "predict.json").read_text())
    assert shapes == {"video": [2, 6, 1, 16, 16], "action": [2, 6, 2], "reward": [2, 6, 1]}
