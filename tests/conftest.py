import pytest
import torch

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def lite0():
    from vidsearch.backbones import load_backbone

    return load_backbone("efficientnet_lite0")
