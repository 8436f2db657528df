import os

import pytest
import torch

# Unit tests are tiny; two threads match the CI machine and keep timings predictable.
THREADS = min(2, os.cpu_count() or 1)
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    # a test that trains with train.threads=N changes torch's global thread count; restore
    # it so later tests do not run (and round) differently depending on test order
    torch.set_num_threads(THREADS)
