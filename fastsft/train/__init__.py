"""``fastsft train``: configuration (``config``), varlen attention (``attention``), the trainer (``trainer``)."""
