"""Simulated caproto IOCs: an X-ray detector, a sample environment and a shutter.

Each module runs alone (``python -m sim_iocs.xray_detector``, ``sim_iocs.sample_environment``,
``sim_iocs.shutter``); :mod:`sim_iocs.beamline` serves all three from one process, the
sample temperature and the shutter driving what the detector sees. Start them with
:func:`bluesky_symdenoise.detector.launch.start_beamline_ioc`, which keeps Channel Access on
loopback.
"""
