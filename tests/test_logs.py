"""Progress lines: paced by a clock (a fake one here: no test waits), with the time spent and an estimate of
the time left from the pace of the stage under way."""
from cbmctl.logs import duration, stage_progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_stage_progress_says_a_line_every_ten_seconds_with_the_time_left_at_the_stage_pace():
    clock, lines = FakeClock(), []
    progress = stage_progress(lines.append, lambda stage, done, total, spent, left:
                              f"{stage} {done}/{total} spent {spent} left {left}", clock=clock)
    for done in range(1, 5):  # four path points, 4 s each: a line once 10 s have passed since the start
        clock.now += 4
        progress("path", done, 8)
    assert lines == ["path 3/8 spent 12 s left 20 s"]  # 3 points in 12 s: 5 more take 20 s
    clock.now += 3
    progress("refit", 1, 6)  # 7 s after the last line: nothing said
    clock.now += 9
    progress("refit", 2, 6)  # the refits began where the path ended (116): 12 s for two, 24 s for four more
    assert lines[1:] == ["refit 2/6 spent 28 s left 24 s"]


def test_durations_read_as_people_write_them():
    assert [duration(s) for s in (0.4, 59.6, 61, 3725)] == ["0 s", "1 min 00 s", "1 min 01 s", "1 h 02 min"]
