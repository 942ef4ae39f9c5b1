"""The saved dataset: ``save_to_disk``'s files (``disk_layout``) and what made it (``provenance``);
it is written without losing data by ``fastsft.safe_output``."""
