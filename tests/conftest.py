import os
import sys

# Every test runs offline: tiny random configs, models saved to temp dirs, generated data.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))
