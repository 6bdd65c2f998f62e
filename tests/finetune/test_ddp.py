"""Scale-out mechanics on CPU: a 2-process Fabric DDP run (gloo) of every variant keeps both ranks' weights
identical and has the loss (and weights) of one process with the same global batch.

litgpt pretrain's own multi-process path (DDP over gloo on the CPU) is in tests/plugin/test_pretrain_processes.py,
FSDP2 sharding of every variant in tests/attention/test_fsdp2.py, meta-device initialisation in tests/plugin/test_initialization.py.
"""

import lightning as L
import pytest
import torch

from tests.conftest import PROJECT_ROOT
from tests.builders import VARIANTS
from tests.finetune.ddp_worker import train
from tests.helpers import run_worker


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    run_worker(PROJECT_ROOT / "tests" / "finetune" / "ddp_worker.py", out, *VARIANTS)
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_ddp_ranks_agree_and_match_one_process(variant, ddp_results):
    rank0 = torch.load(ddp_results / f"{variant}-rank0.pt")
    rank1 = torch.load(ddp_results / f"{variant}-rank1.pt")
    for name, tensor in rank0["weights"].items():
        torch.testing.assert_close(rank1["weights"][name], tensor, rtol=0, atol=0, msg=name)
    assert rank0["losses"] == rank1["losses"]

    single = train(L.Fabric(accelerator="cpu", devices=1), variant)
    torch.testing.assert_close(torch.tensor(rank0["losses"]), torch.tensor(single["losses"]), rtol=1e-5, atol=1e-5)
    for name, tensor in single["weights"].items():
        torch.testing.assert_close(rank0["weights"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert single["losses"][-1] < single["losses"][0]  # the steps did train
