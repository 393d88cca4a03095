"""Reading, fusing and writing overlap: inputs are read and outputs written in threads."""

import threading

import numpy as np
import pytest

from napari_xfusion.config import TimeModel
from napari_xfusion.io import BackgroundWriter, StackError, open_writer, read_stack
from napari_xfusion.streaming import stream_frames
from napari_xfusion.timeline import Timeline

#: Generous bound on waiting for another thread: a guard against hanging, not a timing.
PATIENCE_S = 30


class SignallingStack:
    """A stack that sets an event per frame when that frame is read, and notes the thread."""

    def __init__(self, data):
        self.data = data
        self.shape, self.dtype = data.shape, data.dtype
        self.read = [threading.Event() for _ in data]
        self.threads = {}

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.threads[i] = threading.current_thread().name
        self.read[i].set()
        return self.data[i]


def test_next_inputs_are_read_while_a_frame_is_fused():
    n, r = 8, 1
    lr = SignallingStack(np.random.default_rng(0).random((n, 4, 4), dtype=np.float32))
    hr = np.random.default_rng(1).random((2, 16, 16), dtype=np.float32)
    timeline = Timeline(n, 2, TimeModel(spacing=7, separation=r))

    def fuse_one(lr_frames, hr_frames, inputs):
        # The main thread is held here, so the frame the next output adds (t + 1 + r) can
        # only arrive through the background reader.
        following = min(inputs.t + 1 + r, n - 1)
        assert lr.read[following].wait(PATIENCE_S)
        return np.zeros((16, 16), np.float32), None

    frames = list(stream_frames(lr, hr, timeline, fuse_one))
    assert [f.t for f in frames] == list(range(n))
    assert all(lr.threads[i].startswith("xfusion-reader") for i in range(r + 1, n))


def test_background_writer_writes_in_its_own_thread(tmp_path):
    frames = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    stack = open_writer(tmp_path / "out.tif", (6, 7), np.float32, n_frames=5)
    threads = set()
    append = stack._append

    def recording(frame):
        threads.add(threading.current_thread().name)
        append(frame)

    stack._append = recording
    with BackgroundWriter(stack, convert=lambda f: f * 2) as writer:
        for frame in frames:
            writer.write(frame)
    assert threads == {"xfusion-writer"}
    np.testing.assert_array_equal(read_stack(tmp_path / "out.tif").compute(), frames * 2)


def test_background_writer_error_reaches_the_caller_and_leaves_no_output(tmp_path):
    stack = open_writer(tmp_path / "out.tif", (6, 7), np.float32, n_frames=5)
    with pytest.raises(StackError, match="shape"):
        with BackgroundWriter(stack) as writer:
            writer.write(np.zeros((6, 7), np.float32))
            writer.write(np.zeros((3, 3), np.float32))  # wrong shape: fails in the thread
            for _ in range(10):
                writer.write(np.zeros((6, 7), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_interrupted_background_writer_keeps_the_frames_written(tmp_path):
    stack = open_writer(tmp_path / "out.tif", (6, 7), np.float32, n_frames=5)
    with pytest.raises(KeyboardInterrupt):
        with BackgroundWriter(stack) as writer:
            for i in range(3):
                writer.write(np.full((6, 7), i, np.float32))
            raise KeyboardInterrupt
    assert not (tmp_path / "out.tif").exists()
    kept = read_stack(tmp_path / "out.incomplete.tif").compute()
    np.testing.assert_array_equal(kept[:, 0, 0], [0, 1, 2])
