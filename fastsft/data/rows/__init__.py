"""Rows: conversations → encoded samples (``encoder``, in worker processes with ``workers``) → output
rows in LLaMA-Factory's layout (``builder``), samples held for whole-dataset packing (``spill``)."""
