"""The serve worker's pieces without a bus: derived-run filtering, payload limit, CLI."""

from __future__ import annotations

import event_model
import numpy as np
import pytest

from bluesky_symdenoise.cli import main
from bluesky_symdenoise.remote import DerivedRunFilter


def run_documents(metadata=None):
    bundle = event_model.compose_run(metadata=metadata or {})
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "x": {"source": "s", "dtype": "number", "shape": []}})
    event = desc.compose_event(data={"x": 1.0}, timestamps={"x": 0.0})
    return [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
            ("event", event), ("stop", bundle.compose_stop())]


def test_filter_drops_every_document_of_a_derived_run_only():
    seen = DerivedRunFilter()
    raw = run_documents()
    derived = run_documents({"original_run_uid": raw[0][1]["uid"]})
    interleaved = [raw[0], derived[0], raw[1], derived[1], derived[2], raw[2], derived[3],
                   raw[3]]
    kept = [name for name, doc in interleaved if not seen.is_derived(name, doc)]
    assert kept == ["start", "descriptor", "event", "stop"]
    assert all(not seen.is_derived(n, d) for n, d in run_documents())


def test_nats_publisher_never_sends_a_document_over_max_payload():
    pytest.importorskip("bluesky_nats")
    from bluesky_symdenoise.remote.jetstream import _publisher_class

    class Outbox:
        sent: list = []

        def record_subject(self, subject):
            pass

        def spawn_and_wait(self, coro):
            self.sent.append(coro)
            coro.close()

    outbox = Outbox()
    publisher = _publisher_class()(outbox, js=None, subject_factory="events",
                                   max_payload=2000)
    (_, start), _, _, (_, stop) = run_documents()
    publisher("start", start)
    publisher("event", {"data": {"img": np.zeros((64, 64), np.float32)}})
    publisher("stop", stop)
    assert publisher.oversize == 1
    assert len(outbox.sent) == 2


def test_serve_needs_a_transport(capsys):
    assert main(["serve"]) == 2
    assert "--from and --to" in capsys.readouterr().err
    assert main(["serve", "--nats", "nats://127.0.0.1:1"]) == 2
    assert "--subject" in capsys.readouterr().err


def test_replay_needs_runs(tmp_path, capsys):
    assert main(["replay", "--catalog", str(tmp_path)]) == 2
    assert "nothing to replay" in capsys.readouterr().err


def test_full_network_flag_asks_for_the_default_network_on_a_cpu():
    """replay/serve take the live CPU settings unless --full-network asks for width 16 and
    test-time averaging; the settings then leave the caller's choice alone."""
    import argparse

    from bluesky_symdenoise.cli import _add_denoiser_arguments, _denoiser_options
    from bluesky_symdenoise.denoise.live import live_cpu_settings

    parser = argparse.ArgumentParser()
    _add_denoiser_arguments(parser)
    plain = _denoiser_options(parser.parse_args([]))
    full = _denoiser_options(parser.parse_args(["--full-network"]))
    assert plain["config"] is None
    assert full["config"] == {"width": 16, "test_time_flips": 4}
    assert live_cpu_settings(full["config"]) == {}
