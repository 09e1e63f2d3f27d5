import os
import sys

# Every test runs offline: tiny random configs, models saved to temp dirs, generated data. Set here, once, before any
# test module imports transformers / huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`), restored after it.

    The models are tiny: one thread is as fast, and far faster when other processes share the CPU cores (OpenMP
    workers spin-waiting under contention made a tiny forward 50x slower).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
