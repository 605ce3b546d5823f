"""What the benchmark scripts share: model specs (models), synthetic inputs (inputs), the generation variants
compared (variants) and the figures they print (report). Nothing here imports Ray (the GPU machines have none)."""

import os

# Before torch and transformers load, in every script that imports from here: no Hub calls, no tokenizer threads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
