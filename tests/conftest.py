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
    if name.startswith("cuda"):
        # The tests compare algorithms in float32. PyTorch's CUDA convolutions default to TF32
        # (10-bit mantissas, ~1e-3 off), which the engine keeps for speed: test_tf32_keeps_the_boxes.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return name
