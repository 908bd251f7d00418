import pytest
import torch

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def lite0():
    from vidsearch.backbones import load_backbone

    return load_backbone("efficientnet_lite0")


@pytest.fixture(scope="session")
def device() -> str:
    """Where the engine tests run: the CPU, or VIDSEARCH_TEST_DEVICE=cuda (bench/gpu.sh)."""
    import os

    name = os.environ.get("VIDSEARCH_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("VIDSEARCH_TEST_DEVICE asks for CUDA but none is available")
    return name
