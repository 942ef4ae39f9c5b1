"""The saved dataset: ``save_to_disk``'s files (``disk_layout``), writing a folder without losing data
(``output``), and what made it (``provenance``)."""
