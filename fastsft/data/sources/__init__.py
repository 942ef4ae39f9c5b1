"""Sources: ``dataset_info.json`` and files (``parser``), raw rows → conversations (``converter``),
LLaMA-Factory's mixing (``mixing``) and splits (``splitting``), and reading them in batches (``reading``)."""
