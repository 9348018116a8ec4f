"""One device and precision policy (config `device:`): resolved once, in the keys, and honoured."""

import pytest
import torch

from tokenweight.config import DeviceConfig
from tokenweight.device_policy import DeviceError, Placement, placement
from tokenweight.components.finetune_loop import TrainSettings, batch_order, train_on_targets


def test_auto_is_the_cpu_in_float32_here_and_a_missing_gpu_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert placement(DeviceConfig()) == Placement("cpu", "float32")
    assert placement(DeviceConfig(dtype="bfloat16")) == Placement("cpu", "bfloat16")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        placement(DeviceConfig(device="cuda"))


def _rows(n=6):
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 2000, (10 + 3 * i,), generator=g).tolist() for i in range(n)]
    return rows, [[0] * 5 + [1] * (len(r) - 5) for r in rows]


@pytest.mark.parametrize("train_layers", [None, 2])
def test_bfloat16_reaches_the_discriminators_forward_and_loss(smol_tokenizer, train_layers):
    """Under the bf16 policy the discriminator's loop runs its forward and loss in bf16 (the losses
    differ from fp32's, by rounding only) and keeps fp32 weights."""
    from helpers import make_tiny_model

    rows, masks = _rows()
    settings = TrainSettings(epochs=1.0, learning_rate=1e-3, warmup_share=0.0, weight_decay=0.0, batch_tokens=64,
                             train_layers=train_layers, seed=0, chunk_rows=16)
    order = batch_order([len(r) for r in rows], settings)
    results = {}
    for dtype in ("float32", "bfloat16"):
        model = make_tiny_model(smol_tokenizer)
        results[dtype] = train_on_targets(model, rows, masks, settings, smol_tokenizer.pad_token_id, order=order,
                                          autocast=Placement("cpu", dtype).autocast)
        assert all(p.dtype == torch.float32 for p in model.parameters())
    fp32, bf16 = torch.tensor(results["float32"]), torch.tensor(results["bfloat16"])
    assert not torch.equal(fp32, bf16)
    assert torch.allclose(fp32, bf16, atol=0.1)
