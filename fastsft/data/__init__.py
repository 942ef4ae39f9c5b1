"""The data pipeline: raw rows → conversations → segments → token ids → rows (see ``pipeline``).

Packages, in the order data flows: ``sources`` (dataset_info, reading, conversion, mixing,
splitting) → ``chat`` (templates) → ``rows`` (encoding, row building, packing) → ``store``
(the saved layout, safe output, provenance); ``data_args`` declares every option and
``accounting`` counts what every stage did.

Names are imported on first use, so reading the option spec (``fastsft --help``) stays cheap.
"""

from __future__ import annotations

from fastsft.lazy import lazy_getattr

_HOMES = {
    "DATA_KEYS": "data_args",
    "DataArgs": "data_args",
    "SamplePolicy": "accounting",
    "SampleRef": "accounting",
    "Summary": "accounting",
    "PreparedRun": "pipeline",
    "build_dataset": "pipeline",
    "build_to_disk": "pipeline",
    "load_or_build": "pipeline",
    "make_encoder": "pipeline",
    "prepare_run": "pipeline",
    "plan_splits": "sources.splitting",
    "split_names": "sources.splitting",
}
__all__ = sorted(_HOMES)

__getattr__ = lazy_getattr(__name__, _HOMES)
