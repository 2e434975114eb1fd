import math

import pytest
import torch
import torch.nn.functional as F

from tvprompt.errors import UsageError
from tvprompt.training.losses import fca_loss, total_loss, tse_loss


def test_fca_is_half_squared_norm_over_features_mean_over_batch_and_tokens():
    f = torch.zeros(2, 3, 4)
    r = torch.zeros(2, 3, 4)
    f[0, 0] = torch.tensor([1.0, 2.0, 0.0, 0.0])  # ‖·‖² = 5
    f[1, 2, 3] = 3.0  # ‖·‖² = 9
    assert fca_loss(f, r).item() == pytest.approx(0.5 * (5 + 9) / 6)
    assert fca_loss(r, r).item() == 0.0


def test_fca_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        fca_loss(torch.zeros(2, 3, 4), torch.zeros(2, 4, 4))


def test_tse_similarity_is_scaled_mean_cosine():
    img = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    expected = 100 * (1.0 + math.sqrt(0.5)) / 2
    assert tse_loss(img, txt, 100.0).item() == pytest.approx(expected)
    # the same with (T, D) texts and labels
    assert tse_loss(img, txt, 100.0, labels=torch.tensor([0, 1])).item() == pytest.approx(expected)


def test_tse_contrastive_is_negative_cross_entropy_over_all_texts():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(4, 5, generator=g), dim=-1)
    txt = F.normalize(torch.randn(3, 5, generator=g), dim=-1)
    labels = torch.tensor([0, 2, 1, 2])
    logits = 7.0 * img @ txt.T
    expected = -F.cross_entropy(logits, labels)
    assert tse_loss(img, txt, 7.0, form="contrastive", labels=labels).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="labels"):
        tse_loss(img, txt, 7.0, form="contrastive")
    with pytest.raises(UsageError, match="tse form"):
        tse_loss(img, txt, 7.0, form="cosine")


def test_total_loss_adds_fca_and_subtracts_tse():
    llm, fca, tse = torch.tensor(2.0), torch.tensor(10.0), torch.tensor(30.0)
    assert total_loss(llm, fca, tse, 0.5, 0.1).item() == pytest.approx(2.0 + 5.0 - 3.0)
    assert total_loss(llm, None, None, 0.5, 0.1).item() == 2.0
