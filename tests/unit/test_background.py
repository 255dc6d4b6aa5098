"""The hand-off between the RunEngine's thread and the worker: FrameQueue and DenoiseWorker,
on real threads."""

from __future__ import annotations

import threading

import pytest

from bluesky_symdenoise.stream.background import DenoiseWorker, FrameQueue, QueueItem


def _frame(seq_num: int) -> QueueItem:
    return QueueItem.document("run", "event", {"seq_num": seq_num}, 0.0)


def _document(name: str) -> QueueItem:
    return QueueItem.document("run", name, {"uid": name}, 0.0)


def _drain(queue: FrameQueue) -> list[QueueItem]:
    items = []
    while (item := queue.get(timeout=0)) is not None:
        items.append(item)
        queue.task_done()
    return items


def test_items_are_typed_records_and_only_frame_documents_count_as_frames():
    assert _frame(1).is_frame
    assert QueueItem.document("run", "stream_datum", {}, 0.0).is_frame
    assert not _document("descriptor").is_frame
    for kind in ("flush", "abandon", "dropped"):
        record = QueueItem.control(kind, "run")
        assert record.kind == kind and record.doc is None and not record.is_frame
    with pytest.raises(AttributeError):  # frozen
        _frame(1).name = "stop"


def test_a_full_queue_drops_frames_but_never_control_records_or_documents():
    queue = FrameQueue(2)
    assert queue.put(_frame(1)) and queue.put(_frame(2))
    assert not queue.put(_frame(3)), "a third frame must be dropped"
    assert queue.put(QueueItem.control("dropped", "run"))
    assert queue.put(_document("stop"))
    assert queue.frames_waiting == 2 and len(queue) == 4 and queue.high_water == 2
    items = _drain(queue)
    assert [(i.kind, i.name) for i in items] == [
        ("document", "event"), ("document", "event"), ("dropped", None), ("document", "stop")]
    assert queue.frames_waiting == 0
    assert queue.put(_frame(4)), "room again once the worker took the frames"


def test_a_put_that_finds_room_never_waits():
    queue = FrameQueue(4)
    waits = []
    for seq_num in range(4):
        assert queue.put(_frame(seq_num), on_wait=lambda: waits.append(1))
    assert not queue.put(_frame(5), on_wait=lambda: waits.append(1))  # dropped, not waited
    assert waits == []


def test_lossless_mode_waits_for_room_instead_of_dropping():
    queue = FrameQueue(1, lossless=True)
    assert queue.put(_frame(1))
    waited = threading.Event()
    done = threading.Event()

    def producer():
        queue.put(_frame(2), on_wait=waited.set)
        done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert waited.wait(10), "the producer must wait for room"
    assert not done.is_set()
    assert queue.get(timeout=1).doc == {"seq_num": 1}
    queue.task_done()
    assert done.wait(10)
    thread.join()
    assert [i.doc["seq_num"] for i in _drain(queue)] == [2]
    assert queue.high_water == 1


def test_a_put_that_finds_the_lock_taken_reports_the_wait():
    queue = FrameQueue(4)
    waited = threading.Event()
    with queue._cond:  # another thread holds the queue at this moment
        thread = threading.Thread(target=queue.put, args=(_frame(1),),
                                  kwargs={"on_wait": waited.set})
        thread.start()
        assert waited.wait(10), "the put must report that it waits for the lock"
    thread.join(10)
    assert queue.frames_waiting == 1


def test_wait_empty_waits_for_task_done_not_for_get():
    queue = FrameQueue(4)
    assert queue.wait_empty(0)
    queue.put(_document("start"))
    assert not queue.wait_empty(0)
    assert queue.get(timeout=1) is not None
    assert not queue.wait_empty(0), "taken but not processed yet"
    queue.task_done()
    assert queue.wait_empty(0)


def test_get_times_out_on_an_empty_queue():
    assert FrameQueue(1).get(timeout=0.01) is None


def test_max_frames_must_be_positive():
    with pytest.raises(ValueError, match="max_frames"):
        FrameQueue(0)


def test_the_worker_handles_items_in_order_and_stop_finishes_the_queue():
    queue = FrameQueue(8)
    handled: list[str] = []
    release = threading.Event()

    def handle(item: QueueItem) -> None:
        release.wait(10)
        handled.append(item.name)

    worker = DenoiseWorker(queue, handle, on_error=lambda exc: None, name="symdenoise-test")
    for name in ("start", "descriptor", "event", "stop"):
        queue.put(_document(name))
    assert worker.alive
    release.set()
    assert worker.stop(timeout=10), "the worker must end after the queued items"
    assert handled == ["start", "descriptor", "event", "stop"]
    assert not worker.alive and queue.wait_empty(0)


def test_an_exception_in_the_handler_is_reported_and_the_worker_goes_on():
    queue = FrameQueue(8)
    errors: list[BaseException] = []
    handled: list[str] = []

    def handle(item: QueueItem) -> None:
        if item.name == "descriptor":
            raise RuntimeError("handler bug")
        handled.append(item.name)

    worker = DenoiseWorker(queue, handle, on_error=errors.append, name="symdenoise-test")
    for name in ("start", "descriptor", "stop"):
        queue.put(_document(name))
    assert queue.wait_empty(10)
    assert worker.alive, "an exception in the handler must not end the worker"
    assert handled == ["start", "stop"]
    assert len(errors) == 1 and "handler bug" in str(errors[0])
    assert worker.stop(timeout=10)


def test_a_failing_error_callback_does_not_end_the_worker_either():
    queue = FrameQueue(8)

    def on_error(exc: BaseException) -> None:
        raise ValueError("error callback bug")

    worker = DenoiseWorker(queue, lambda item: 1 / 0, on_error, name="symdenoise-test")
    queue.put(_document("start"))
    queue.put(_document("stop"))
    assert queue.wait_empty(10) and worker.alive
    assert worker.stop(timeout=10)
