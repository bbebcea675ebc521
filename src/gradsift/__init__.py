"""gradsift: find the training samples that hurt a model from its per-sample gradients.

The public API (see the README):

    from gradsift import Attributor, AttributionCallback, Trim
    from gradsift.attribution import PerSampleGradients, DropoutCompressor
    from gradsift.scoring import IsolationForestScorer

``gradsift.run(cfg, output_dir)`` runs the whole flow from a composed config; the packaged Hydra configs are in
``CONFIG_DIR`` (add your own folders with ``hydra.searchpath``).
"""

from pathlib import Path

from gradsift.lazy import lazy_exports
from gradsift.resolvers import register as _register_resolvers

__version__ = "0.1.0"

#: the packaged Hydra configs (``config.yaml`` and one folder per group)
CONFIG_DIR = Path(__file__).resolve().parent / "conf"

_EXPORTS = {
    "Attributor": ".attributor",
    "Attribution": ".attributor",
    "AttributionCallback": ".callback",
    "Trim": ".trim",
    "run": ".pipeline",
}
__all__ = ["CONFIG_DIR", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

_register_resolvers()
