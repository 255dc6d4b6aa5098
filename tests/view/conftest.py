"""The live-view tests draw with the Agg backend (no screen)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")


