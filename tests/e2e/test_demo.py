"""``bluesky-symdenoise demo`` end to end: IOC, live denoising, catalog, PNG, summary."""

from __future__ import annotations

import json

from .conftest import executable, run


def test_demo_cli(tmp_path, e2e_env):
    out = tmp_path / "demo"
    proc = run(
        [executable("bluesky-symdenoise"), "demo", "--out", str(out), "--frames", "6",
         "--size", "128", "--budget", "3"],
        env=e2e_env, cwd=tmp_path, timeout=150)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "PSNR" in proc.stdout and "frames dropped" in proc.stdout, output

    summary = json.loads((out / "summary.json").read_text())
    # The default: frames through the detector's HDF5 plugin, read back by Resource/Datum
    # (AD_HDF5, one frame per point: the catalog gives (events, 1, rows, cols)).
    assert summary["frames_via"] == "hdf5"
    assert list((out / "frames").rglob("*.h5"))
    assert summary["errors"] == []
    assert summary["catalog"]["raw_frames"] == [6, 1, 128, 128]
    assert summary["catalog"]["denoised_frames"] == [6, 128, 128]
    assert summary["catalog"]["derived_exit_status"] == "success"
    rows = summary["per_frame"]
    assert len(rows) == 6
    assert all(row["psnr_den"] > row["psnr_raw"] for row in rows)
    assert (out / "catalog" / "catalog.db").exists()
    assert list((out / "snapshots").glob("*.png"))

    # The catalog read back independently: raw run and the derived run linked to it.
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    with SimpleTiledServer(directory=out / "catalog",
                           readable_storage=[out / "frames"]) as server:
        client = from_uri(server.uri)
        try:
            raw_uid = summary["catalog"]["raw_uid"]
            assert client[raw_uid]["primary"]["det_image"].read().shape == (6, 1, 128, 128)
            derived = client[summary["catalog"]["derived_uid"]]
            assert derived.metadata["start"]["original_run_uid"] == raw_uid
            assert derived["integrated"]["det_image_iq_denoised"].read().shape[0] == 6
        finally:
            client.context.close()
