import pytest

from cli.main import _step_bar

pytestmark = pytest.mark.unit


def test_training_progress_off_a_terminal_prints_plain_lines(capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    with _step_bar(every=2) as on_step:
        for step in range(1, 6):
            on_step(step, 5, 1.0 / step)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "train: step 2/5", "train: step 4/5", "train: step 5/5"]
    assert "loss 0.200" in lines[-1]
