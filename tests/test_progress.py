"""The TTY progress line: throttled redraws, rate over a window, silence off a terminal."""

from __future__ import annotations

import io

import pytest

from worker.progress import Progress, ProgressLine


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class _BrokenTty(_Tty):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _line(progress: Progress, stream: io.StringIO, clock: _Clock, **kwargs: float) -> ProgressLine:
    return ProgressLine(progress, stream=stream, clock=clock, **kwargs)


def test_no_output_at_all_off_a_terminal() -> None:
    """On a non-TTY stream refresh and close write nothing."""
    stream, clock, progress = io.StringIO(), _Clock(), Progress()
    line = _line(progress, stream, clock)
    progress.deleted += 5
    line.refresh()
    clock.now += 10
    line.refresh()
    line.close()
    assert stream.getvalue() == ""
    assert line.enabled is False


def test_first_refresh_draws_counters_on_one_line() -> None:
    """The first refresh draws every counter after a carriage return, without a newline."""
    stream, clock = _Tty(), _Clock()
    progress = Progress(listed=1234, selected=900, deleted=450, requeued=12, failed=3)
    _line(progress, stream, clock).refresh()
    out = stream.getvalue()
    assert out.startswith("\r")
    assert "\n" not in out
    for part in ("listed 1,234", "selected 900", "deleted 450", "requeued 12", "failed 3"):
        assert part in out


@pytest.mark.parametrize(
    ("advances", "draws"),
    [
        ([0.0, 0.0, 0.0], 1),
        ([0.1, 0.1, 0.1], 2),
        ([0.25, 0.25, 0.25], 4),
        ([0.24, 0.02, 0.24], 2),
    ],
)
def test_redraws_at_most_once_per_interval(advances: list[float], draws: int) -> None:
    """Refreshes closer than the interval to the last drawing are skipped."""
    stream, clock, progress = _Tty(), _Clock(), Progress()
    line = _line(progress, stream, clock, interval=0.25)
    line.refresh()
    for step in advances:
        clock.now += step
        progress.deleted += 1
        line.refresh()
    assert stream.getvalue().count("\r") == draws


def test_rate_over_window() -> None:
    """The rate is deletions per second between the window's baseline and the newest drawing."""
    stream, clock, progress = _Tty(), _Clock(), Progress()
    line = _line(progress, stream, clock, interval=0.1, rate_window=5.0)
    line.refresh()
    assert line.rate() == 0.0
    for _ in range(4):
        clock.now += 1.0
        progress.deleted += 10
        line.refresh()
    assert line.rate() == pytest.approx(10.0)
    assert "10.0/s" in stream.getvalue().rsplit("\r", 1)[-1]
    # Ten idle seconds push every busy sample out of the window: the rate falls to zero.
    for _ in range(10):
        clock.now += 1.0
        line.refresh()
    assert line.rate() == pytest.approx(0.0)


def test_shorter_line_overwrites_a_longer_one() -> None:
    """When the text shrinks, spaces pad over what the previous drawing left."""
    stream, clock = _Tty(), _Clock()
    progress = Progress(listed=123_456_789)
    line = _line(progress, stream, clock)
    line.refresh()
    first = stream.getvalue()
    progress.listed = 1
    clock.now += 1
    line.refresh()
    second = stream.getvalue()[len(first) :]
    assert len(second) == len(first)
    assert second.endswith(" ")


def test_close_draws_final_state_and_ends_the_line_once() -> None:
    """close() draws even within the interval, ends with a newline, and later calls are silent."""
    stream, clock, progress = _Tty(), _Clock(), Progress()
    line = _line(progress, stream, clock, interval=10.0)
    line.refresh()
    progress.deleted = 7
    line.close()
    out = stream.getvalue()
    assert out.endswith("\n")
    assert "deleted 7" in out.rsplit("\r", 1)[-1]
    line.close()
    clock.now += 100
    line.refresh()
    assert stream.getvalue() == out


def test_elapsed_time_follows_the_clock() -> None:
    """The line shows time since the display was created, as h:mm:ss."""
    stream, clock = _Tty(), _Clock()
    line = _line(Progress(), stream, clock)
    clock.now += 3723
    line.refresh()
    assert stream.getvalue().rstrip().endswith("1:02:03")


def test_broken_terminal_disables_display() -> None:
    """A write error turns the display off instead of failing the run."""
    line = _line(Progress(), _BrokenTty(), _Clock())
    line.refresh()
    assert line.enabled is False
    line.close()


async def test_run_refreshes_until_cancelled() -> None:
    """run() refreshes after each injected sleep and stops when the display closes."""
    stream, clock, progress = _Tty(), _Clock(), Progress()
    line = _line(progress, stream, clock, interval=0.5)
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += seconds
        progress.deleted += 1
        if len(sleeps) == 3:
            line.close()

    await line.run(sleep=fake_sleep)
    assert sleeps == [0.5, 0.5, 0.5]
    assert stream.getvalue().count("\r") == 4
    assert "deleted 3" in stream.getvalue().rsplit("\r", 1)[-1]


@pytest.mark.parametrize(("interval", "window"), [(0.0, 5.0), (0.25, 0.0), (-1.0, 5.0)])
def test_bad_timing_is_refused(interval: float, window: float) -> None:
    """Non-positive interval or window is a ValueError."""
    with pytest.raises(ValueError, match="positive"):
        ProgressLine(Progress(), stream=_Tty(), interval=interval, rate_window=window)
