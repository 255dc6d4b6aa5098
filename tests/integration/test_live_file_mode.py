"""Frames through HDF5 files, as areaDetector writes them, into the live plugin; all real:

    beamline IOC (caproto subprocess, loopback) --HDF1: Stream mode--> frames_dir/*.h5
    ophyd SimXrayDetectorHDF5 (HDF5Plugin_V34 + FileStoreHDF5IterativeWrite)
        -> RunEngine: Resource (AD_HDF5) / Datum / events carrying Datum ids
        -> TiledWriter (SimpleTiledServer, readable_storage=[frames_dir])
        -> SymDenoise (fills the frames with event_model.Filler) -> derived run -> TiledWriter
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from bluesky_symdenoise.stream.callback import SymDenoise
from tests.helpers import count_and_drain, running_beamline_ioc

# ~35 s on 2 shared cores: the Tiled server start (~11 s) and the denoiser warm-up dominate.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SHAPE = (64, 64)
N_FRAMES = 4
FIELD = "det_image"


@pytest.fixture(scope="module")
def beamline_ioc():
    with running_beamline_ioc(SHAPE, seed=4) as ioc:
        yield ioc


def test_frames_through_hdf5_files_are_filled_and_denoised(beamline_ioc, RE, collector,
                                                            derived, tmp_path):
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    from bluesky_symdenoise.detector.devices import SimXrayDetectorHDF5, make_beamline_devices

    frames_dir = tmp_path / "frames"
    det, _, _ = make_beamline_devices(beamline_ioc.prefix, frames_dir=frames_dir)
    assert isinstance(det, SimXrayDetectorHDF5)
    det.cam.acquire_time.put(0.05, wait=True)

    with SimpleTiledServer(directory=tmp_path / "catalog",
                           readable_storage=[frames_dir]) as server:
        client = from_uri(server.uri)
        try:
            writer = TiledWriter(client)
            sd = SymDenoise(FIELD, poni=str(beamline_ioc.poni_path),
                            mask=str(beamline_ioc.mask_path), budget_s=0)
            sd.subscribe(writer)
            sd.subscribe(derived)
            for callback in (collector, writer, sd):
                RE.subscribe(callback)
            uid = count_and_drain(RE, det, sd, N_FRAMES)

            # The raw run: Datum ids in the events, not arrays; one AD_HDF5 Resource.
            (descriptor,) = collector.of("descriptor")
            key = descriptor["data_keys"][FIELD]
            assert key["external"] == "FILESTORE:" and key["shape"] == list(SHAPE)
            assert key["dtype_numpy"] == "<i4"
            (resource,) = collector.of("resource")
            assert resource["spec"] == "AD_HDF5"
            assert resource["resource_kwargs"] == {"frame_per_point": 1}
            datum_ids = {d["datum_id"]: d["datum_kwargs"]["point_number"]
                         for d in collector.of("datum")}
            events = collector.of("event")
            assert len(events) == N_FRAMES
            assert [datum_ids[e["data"][FIELD]] for e in events] == list(range(N_FRAMES))
            assert collector.unchanged(), "a raw document was changed"
            collector.validate()

            # The file the IOC wrote, under frames_dir, as areaDetector lays it out.
            path = frames_dir / resource["resource_path"]
            assert resource["root"] == str(frames_dir.resolve()) and path.is_file()
            with h5py.File(path, "r") as handle:
                dataset = handle["/entry/data/data"]
                assert dataset.shape == (N_FRAMES, *SHAPE) and dataset.dtype == np.int32
                assert dataset.chunks == (1, *SHAPE) and dataset.maxshape[0] is None
                on_disk = dataset[()]
            assert on_disk.sum() > 0 and len({f.tobytes() for f in on_disk}) == N_FRAMES

            # The catalog reads the same frames from the file (AD_HDF5, frame_per_point 1:
            # one frame per event).
            raw = client[uid]["primary"][FIELD].read()
            np.testing.assert_array_equal(np.asarray(raw).reshape(on_disk.shape), on_disk)

            # The derived run: 4 denoised frames of the detector's shape, in the catalog too.
            denoised = derived.stream("denoised")
            assert [e["data"]["raw_seq_num"] for e in denoised] == list(range(1, N_FRAMES + 1))
            frames = np.stack([e["data"][f"{FIELD}_denoised"] for e in denoised])
            assert frames.shape == (N_FRAMES, *SHAPE) and np.all(np.isfinite(frames))
            (stop,) = derived.of("stop")
            assert stop["exit_status"] == "success"
            derived.validate()
            derived_uid = derived.of("start")[0]["uid"]
            stored = client[derived_uid]["denoised"][f"{FIELD}_denoised"].read()
            np.testing.assert_allclose(np.asarray(stored), frames)
        finally:
            client.context.close()
