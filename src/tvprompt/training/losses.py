"""The TVP loss terms (DESIGN §1, Eq. 4–6) as pure tensor functions.

``L(δ) = L_LLM(δ) + λ1·L_FCA(δ) − λ2·L_TSE(δ)``

``L_LLM`` comes from the adapter (``adapter.lm_loss``). This module holds the two extra terms
and the sum; nothing here knows about models, prompts or data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UsageError

TSE_FORMS = ("similarity", "contrastive")


def fca_loss(feats: torch.Tensor, ref_feats: torch.Tensor) -> torch.Tensor:
    """Feature-consistency alignment (Eq. 4): ``½‖f − f_ref‖²`` over the feature dim, mean over the rest.

    ``feats`` and ``ref_feats`` are (B, N, D) (or (B, D)) vision features of the prompted image and
    of the reference image. The squared L2 norm is taken over the last dimension and averaged over
    batch and tokens, so the value does not grow with the number of tokens. Computed in float32.
    """
    if feats.shape != ref_feats.shape:
        raise ValueError(f"fca_loss: feature shapes differ: {tuple(feats.shape)} vs {tuple(ref_feats.shape)}")
    diff = feats.float() - ref_feats.to(device=feats.device).float()
    return 0.5 * diff.pow(2).sum(dim=-1).mean()


def tse_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    logit_scale: float | torch.Tensor,
    form: str = "similarity",
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Task-semantics enrichment (Eq. 5): a score to *maximise* (the total loss subtracts it).

    ``img_emb``: (B, D) L2-normalised guide embeddings of the prompted images.
    ``txt_emb``: (B, D) per-sample text embeddings, or (T, D) all task texts with ``labels`` (B,)
    giving each sample's row. Both L2-normalised.

    - ``similarity`` (released code): ``mean_b s·cos(g_img(x_b), g_txt(t_b))``.
    - ``contrastive``: ``mean_b log softmax_t(s·cos(g_img(x_b), g_txt(t)))[label_b]`` — the negative
      cross-entropy over all task texts, so that higher is better in both forms.
    """
    if form not in TSE_FORMS:
        raise UsageError(f"tse form {form!r} is not one of {', '.join(TSE_FORMS)}")
    img = img_emb.float()
    txt = txt_emb.to(device=img.device).float()
    scale = torch.as_tensor(logit_scale, dtype=torch.float32, device=img.device)
    if form == "similarity":
        if labels is not None:
            txt = txt[labels.to(img.device)]
        if txt.shape != img.shape:
            raise ValueError(f"tse_loss: text embeddings {tuple(txt.shape)} do not match images {tuple(img.shape)}")
        return (scale * (img * txt).sum(dim=-1)).mean()
    if labels is None:
        raise ValueError("tse_loss: form='contrastive' needs labels indexing the task texts")
    logits = scale * img @ txt.T
    return -F.cross_entropy(logits, labels.to(img.device))


def total_loss(
    llm: torch.Tensor, fca: torch.Tensor | None, tse: torch.Tensor | None, lambda_fca: float, lambda_tse: float
) -> torch.Tensor:
    """Eq. 6: ``L_LLM + λ1·L_FCA − λ2·L_TSE``; a missing term (None) counts as 0."""
    out = llm.float()
    if fca is not None and lambda_fca:
        out = out + lambda_fca * fca.to(out.device)
    if tse is not None and lambda_tse:
        out = out - lambda_tse * tse.to(out.device)
    return out
