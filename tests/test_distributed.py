"""Fusion on a dask cluster: same output as one process, retries, failures, the CLI."""

import sys

import numpy as np
import pytest
import tifffile

distributed = pytest.importorskip("distributed")

import cloudpickle  # noqa: E402  (a dependency of distributed)
import torch  # noqa: E402

from napari_xfusion import distributed as xdist  # noqa: E402
from napari_xfusion import pipeline  # noqa: E402
from napari_xfusion.attention import attention_csv_path  # noqa: E402
from napari_xfusion.cli import main  # noqa: E402
from napari_xfusion.config import (  # noqa: E402
    EngineConfig,
    ModelConfig,
    NoiseConfig,
    OpticsConfig,
    TimeModel,
)
from napari_xfusion.io import incomplete_path, read_metadata, read_stack  # noqa: E402
from napari_xfusion.methods import create_method  # noqa: E402
from napari_xfusion.models import build_model, save_weights  # noqa: E402
from napari_xfusion.pipeline import fuse_to_file, prepare_inputs  # noqa: E402
from napari_xfusion.simulate import simulate_experiment  # noqa: E402

# Every test here starts or uses a cluster of worker processes.
pytestmark = pytest.mark.slow

TIME_MODEL = TimeModel(spacing=5)

# The fault-injection helpers below run on the workers (other processes), which cannot
# import this test module by name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny", arch="stf"))
    with torch.no_grad():
        model.conv_last.weight.mul_(5.0)  # make the network's own residual visible
    return save_weights(model, tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def read_output(path):
    return np.asarray(read_stack(path))


def single_process(lr, hr, method, output, **options):
    inputs = prepare_inputs(lr, hr, TIME_MODEL)
    return fuse_to_file(inputs, create_method(method, **options), output)


@pytest.mark.parametrize(
    "method, suffix", [("bicubic", ".tif"), ("transfer", ".zarr"), ("bayes", ".tif")]
)
def test_output_equals_single_process_run(client, tmp_path, stack_files, method, suffix):
    lr, hr, _ = stack_files
    reference = single_process(lr, hr, method, tmp_path / f"ref{suffix}")
    out = tmp_path / f"fused{suffix}"
    calls = []
    result = xdist.fuse_distributed(
        lr, hr, TIME_MODEL, method, out, client, chunk_frames=3,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert result.path == out and result.frames == 16 and result.attention_path is None
    fused, expected = read_output(out), read_output(reference.path)
    assert fused.dtype == expected.dtype == np.uint16
    np.testing.assert_array_equal(fused, expected)
    assert read_metadata(out)["napari_xfusion"] == read_metadata(reference.path)["napari_xfusion"]
    assert read_metadata(out)["complete"] is True
    # One call per chunk of 3 frames, in frames done.
    assert len(calls) == 6 and calls[-1] == (16, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["lr.tif", "hr.tif", "truth.tif", f"ref{suffix}", f"fused{suffix}"]
    )


def test_network_output_and_attention_equal_single_process_run(
    client, tmp_path, stack_files, tiny_weights, same_network_output
):
    lr, hr, _ = stack_files
    options = {"weights": tiny_weights, "engine": EngineConfig(device="cpu")}
    reference = single_process(lr, hr, "stf", tmp_path / "ref.tif", **options)
    out = tmp_path / "fused.tif"
    result = xdist.fuse_distributed(
        lr, hr, TIME_MODEL, "stf", out, client, method_options=options, chunk_frames=4
    )
    same_network_output(read_output(out), read_output(reference.path))
    assert result.attention_path == attention_csv_path(out)
    scores, expected = (np.genfromtxt(path, delimiter=",", names=True)
                        for path in (result.attention_path, reference.attention_path))
    assert scores.dtype.names == expected.dtype.names
    for name in expected.dtype.names:
        np.testing.assert_allclose(scores[name], expected[name], rtol=1e-5, atol=1e-6)


def test_in_memory_arrays_and_a_frame_subset(client, tmp_path, small_experiment):
    exp = small_experiment
    frames = [9, 3, 4, 15, 0]
    reference = fuse_to_file(
        prepare_inputs(exp.lr, exp.hr, TIME_MODEL), create_method("transfer"),
        tmp_path / "ref.zarr", frames=frames,
    )
    out = tmp_path / "fused.zarr"
    xdist.fuse_distributed(
        exp.lr, exp.hr, TIME_MODEL, "transfer", out, client, chunk_frames=2, frames=frames
    )
    fused = read_output(out)
    assert fused.dtype == np.float32 and len(fused) == 5
    np.testing.assert_array_equal(fused, read_output(reference.path))


def test_workers_filter_the_lr_frames_of_a_blurred_camera_as_one_process_does(
    client, tmp_path, small_experiment
):
    # Noisy, so that the filter's two forms differ: transfer reads the smooth one.
    exp = simulate_experiment(small_experiment.truth, TIME_MODEL, NoiseConfig(target_psnr=30),
                              optics=OpticsConfig(blur=1.5, shift=(0.5, 0.5)))
    inputs = prepare_inputs(exp.lr, exp.hr, TIME_MODEL)
    assert inputs.lr_filter is not None
    reference = fuse_to_file(inputs, create_method("transfer"), tmp_path / "ref.zarr")
    out = tmp_path / "fused.zarr"
    xdist.fuse_distributed(exp.lr, exp.hr, TIME_MODEL, "transfer", out, client, chunk_frames=5)
    np.testing.assert_array_equal(read_output(out), read_output(reference.path))
    assert "lr_filter" in read_metadata(out)["napari_xfusion"]


def _fail(flag_path, t_fail):
    """On a worker: make detail transfer raise at time ``t_fail``.

    With ``flag_path``, only the first time in the whole cluster (the flag file marks that
    it happened); without, every time.
    """
    import os

    from napari_xfusion.methods.classical import DetailTransfer

    original = DetailTransfer.fuse_frame

    def failing(self, lr, hr, inputs):
        if inputs.t == t_fail and (flag_path is None or not os.path.exists(flag_path)):
            if flag_path is not None:
                open(flag_path, "x").close()
            raise RuntimeError(f"injected failure at frame {t_fail}")
        return original(self, lr, hr, inputs)

    failing.original = original
    DetailTransfer.fuse_frame = failing


def _restore():
    from napari_xfusion.methods.classical import DetailTransfer

    fuse_frame = DetailTransfer.fuse_frame
    DetailTransfer.fuse_frame = getattr(fuse_frame, "original", fuse_frame)


@pytest.fixture
def failing(client):
    """``failing(flag_path, t)`` installs a failure on every worker; removed afterwards."""
    yield lambda flag, t: client.run(_fail, None if flag is None else str(flag), t)
    client.run(_restore)


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_a_failed_chunk_is_retried(client, tmp_path, stack_files, failing, suffix):
    lr, hr, _ = stack_files
    reference = single_process(lr, hr, "transfer", tmp_path / f"ref{suffix}")
    flag = tmp_path / "failed-once"
    failing(flag, 7)
    out = tmp_path / f"fused{suffix}"
    result = xdist.fuse_distributed(lr, hr, TIME_MODEL, "transfer", out, client, chunk_frames=3)
    assert flag.exists()  # the failure did happen
    assert result.frames == 16
    fused = read_output(out)
    assert fused.shape == (16, 64, 96)
    np.testing.assert_array_equal(fused, read_output(reference.path))
    assert not incomplete_path(out).exists()
    assert not incomplete_path(out).with_suffix(".parts").exists()


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_a_permanent_failure_leaves_nothing_under_the_output_name(
    client, tmp_path, stack_files, failing, suffix
):
    lr, hr, _ = stack_files
    failing(None, 7)
    out = tmp_path / f"fused{suffix}"
    with pytest.raises(RuntimeError, match="injected failure at frame 7"):
        xdist.fuse_distributed(
            lr, hr, TIME_MODEL, "transfer", out, client, chunk_frames=3, retries=1
        )
    assert not out.exists()
    assert not incomplete_path(out).with_suffix(".parts").exists()
    partial = incomplete_path(out)
    if partial.exists():
        assert read_metadata(partial)["complete"] is False
    if suffix == ".zarr":
        # The frames of the chunks that finished are kept, and the store says which.
        meta = read_metadata(partial)
        spans = meta["written_frames"]
        assert meta["frames_written"] == sum(stop - start for start, stop in spans) > 0
        assert [6, 9] not in spans  # the chunk of frame 7 never finished
        kept = read_output(partial)
        for start, stop in spans:
            assert kept[start:stop].any()


def test_cli_with_a_local_cluster(tmp_path, capsys, stack_files, monkeypatch):
    lr, hr, _ = stack_files
    args = ["fuse", lr, hr, "--spacing", 5, "--method", "transfer"]
    assert main([str(a) for a in [*args, "-o", tmp_path / "ref.tif"]]) == 0
    opened = []

    def counted(*a, **k):
        opened.append(a[:2])
        return prepare_inputs(*a, **k)

    # The CLI opens the recording for its warnings; the cluster run must not open it again.
    monkeypatch.setattr(pipeline, "prepare_inputs", counted)
    monkeypatch.setattr(xdist, "prepare_inputs", counted)
    code = main([
        str(a) for a in [*args, "-o", tmp_path / "fused.tif", "--scheduler", "local",
                         "--workers", 2, "--chunk-frames", 5]
    ])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "wrote 16 fused frames" in out and len(opened) == 1
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "fused.tif"), tifffile.imread(tmp_path / "ref.tif")
    )


def test_cli_refuses_cluster_flags_without_a_scheduler(tmp_path, capsys, stack_files):
    lr, hr, _ = stack_files
    code = main([str(a) for a in ["fuse", lr, hr, "-o", tmp_path / "f.tif", "--workers", 2]])
    assert code == 2
    assert "--scheduler" in capsys.readouterr().err
    assert not (tmp_path / "f.tif").exists()


def test_chunks_cover_the_frames_once():
    assert xdist.chunk_bounds(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert xdist.chunk_bounds(2, 64) == [(0, 2)]
    with pytest.raises(ValueError, match="chunk"):
        xdist.chunk_bounds(5, 0)


@pytest.mark.parametrize(
    "device, name, gpus, expected",
    [
        ("auto", 3, 2, "cuda:1"),  # LocalCluster worker 3 on a 2-GPU machine
        ("auto", "SLURMCluster-12-1", 4, "cuda:1"),  # second process of a job
        ("auto", "tcp://10.0.0.5:40121", 4, "auto"),  # no index: first visible GPU
        ("auto", 5, 1, "auto"),  # one visible GPU (CUDA_VISIBLE_DEVICES)
        ("cuda:2", 0, 4, "cuda:2"),  # an explicit device is kept
    ],
)
def test_worker_device(device, name, gpus, expected):
    assert xdist.worker_device(device, name, gpus) == expected


def test_missing_distributed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"napari-xfusion\[distributed\]"):
        xdist.import_distributed()


def test_cluster_runs_are_quiet_unless_verbose(tmp_path, stack_files):
    import subprocess

    lr, hr, _ = stack_files
    run = subprocess.run(
        [sys.executable, "-m", "napari_xfusion.cli", "fuse", str(lr), str(hr), "-o",
         str(tmp_path / "f.tif"), "--spacing", "5", "--method", "bicubic", "--scheduler",
         "local", "--workers", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    # The progress bar only: none of dask's connection logs.
    lines = [line for line in run.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(line.startswith("fusing (bicubic, cluster)") for line in lines), lines


def test_an_input_replaced_during_a_cluster_run_is_an_error(client, tmp_path, stack_files):
    import os
    import shutil

    lr, hr, _ = stack_files
    copy = tmp_path / "copy.tif"
    shutil.copy(lr, copy)
    out = tmp_path / "fused.tif"

    def replace_once(done, total):
        if copy.exists():
            os.replace(copy, lr)

    with pytest.raises(ValueError, match="changed while it was being fused"):
        xdist.fuse_distributed(lr, hr, TimeModel(spacing=5), "bicubic", out, client,
                               chunk_frames=4, progress=replace_once)
    assert not out.exists()
