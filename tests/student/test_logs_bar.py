"""The training progress bar: rank 0 posts its steps to a ProgressBoard, the driver redraws a
tqdm bar from it in a terminal; elsewhere (CI logs, files) there is no bar and rank 0 prints lines.
The whole job under a terminal was looked at with `script` (README, "Watching a run")."""

from __future__ import annotations

import io
import time

import ray

from trainer.student.logs import StepLog
from trainer.student.progress_bar import DriverBar, DriverLines, ProgressBoard, wants_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_driver_draws_what_rank_0_posts(ray_session, tmp_path, capsys):
    board = ProgressBoard.remote()
    screen = Terminal()
    log = StepLog(str(tmp_path), (), 2, 10, active=True, board=board, lines=False)
    with DriverBar(board, 10, interval=0.05, stream=screen):
        for step in range(1, 11):
            log.step(step, 1 + (step > 5), [8.0 * step, 6.0, 2.0, 0.0, 4.0], 0.01)
            time.sleep(0.06)
        deadline = time.time() + 10
        while ray.get(board.read.remote())["step"] != 10 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    drawn = screen.getvalue()
    assert "epoch 2" in drawn and "10/10" in drawn and "loss 20.0000" in drawn and "positions/s" in drawn
    assert capsys.readouterr().err == ""  # no plain lines beside the bar
    assert wants_bar(screen) and not wants_bar(io.StringIO())


def test_without_a_terminal_nor_verbose_the_driver_prints_a_line_at_each_quarter(ray_session, tmp_path):
    board = ProgressBoard.remote()
    ray.get(board.read.remote())  # the board's actor is up (seconds on a loaded machine) before the quarters pass
    screen = io.StringIO()
    log = StepLog(str(tmp_path), (), 2, 20, active=True, board=board, lines=False)
    with DriverLines(board, 20, interval=0.05, stream=screen):
        for step in range(1, 21):  # the quarters 0.75 s apart: each seen on its own
            log.step(step, 1 + (step > 10), [8.0 * step, 6.0, 2.0, 0.0, 4.0], 0.01)
            time.sleep(0.15)
        time.sleep(0.3)
    lines = screen.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("training: step ") for line in lines), lines
    steps = [int(line.split()[2].split("/")[0]) for line in lines]
    assert steps == sorted(steps) and steps[0] >= 5 and steps[1] >= 10 and steps[2] >= 15 and "/20 " in lines[0]
    assert "ETA" in lines[-1] and "positions/s" in lines[-1]


def test_without_a_terminal_rank_0_prints_plain_lines(tmp_path, capsys):
    log = StepLog(str(tmp_path), (), 2, 4, active=True)
    for step in range(1, 5):
        log.step(step, 1, [4.0, 3.0, 1.0, 0.0, 4.0], 0.01)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[-1].startswith("epoch 1 step 4/4 loss 1.0000")
