"""What every dock shares: its workers end with ``errored`` and ``finished`` whatever fails."""

import pytest

pytest.importorskip("napari")

from napari_rat._widgets.dock_base import WorkerRuntimeError, start_worker  # noqa: E402

pytestmark = pytest.mark.gui


def _job(fail_with):
    yield 1
    raise fail_with("CUDA out of memory (simulated by the test)")


@pytest.mark.parametrize("error", [RuntimeError, ValueError])
def test_a_failing_generator_job_reports_its_error_and_finishes(qtbot, error):
    got = {"yielded": [], "errored": [], "finished": 0}

    def finished():
        got["finished"] += 1

    # The handlers are connected before the worker starts (no signal can be missed).
    start_worker(
        _job,
        error,
        yielded=got["yielded"].append,
        errored=got["errored"].append,
        finished=finished,
    )
    qtbot.waitUntil(lambda: got["finished"] == 1, timeout=10_000)
    assert got["yielded"] == [1]
    [exc] = got["errored"]
    # superqt ends a generator worker silently on a RuntimeError; the dock must hear of it.
    expected = WorkerRuntimeError if error is RuntimeError else error
    assert type(exc) is expected and "out of memory" in str(exc)
    if error is RuntimeError:
        assert str(exc).startswith("RuntimeError:") and type(exc.__cause__) is RuntimeError
