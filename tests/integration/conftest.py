"""The live-plugin tests use the shared fixtures of ``tests/conftest.py`` (a real RunEngine,
the scene and its exposures, document collectors, the thread-leak check) and the helpers of
``tests/helpers.py``."""
