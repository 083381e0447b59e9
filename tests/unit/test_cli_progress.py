import io

import pytest

from tests.unit.test_progress import Clock
from verity.cli.tune import training_progress

pytestmark = pytest.mark.unit


def test_training_progress_off_a_terminal_prints_plain_lines() -> None:
    clock, out = Clock(), io.StringIO()
    clock.now = 0.0
    with training_progress(every_s=2, stream=out, tty=False, clock=clock) as progress:
        for step in range(1, 6):
            clock.now = step
            progress.advance(total=5, loss=1.0 / step)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "train: step 2/5", "train: step 4/5", "train: step 5/5"]
    assert "loss 0.200" in lines[-1]
    assert lines[-1].endswith(", 5 s")
