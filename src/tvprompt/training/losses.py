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


FCA_DISTANCES = ("squared", "l2")


def fca_loss(feats: torch.Tensor, ref_feats: torch.Tensor, distance: str = "squared") -> torch.Tensor:
    """Feature-consistency alignment (Eq. 4): a per-token distance over the feature dim, mean over the rest.

    ``feats`` and ``ref_feats`` are (B, N, D) (or (B, D)) vision features of the prompted image and
    of the reference image. ``squared``: ``½‖f − f_ref‖²`` (the paper's Eq. 4, per token);
    ``l2``: ``‖f − f_ref‖`` (the released code: ``norm(diff, dim=-1).mean()``). Averaged over batch
    and tokens, so the value does not grow with the number of tokens. Computed in float32.
    """
    if distance not in FCA_DISTANCES:
        raise UsageError(f"fca distance {distance!r} is not one of {', '.join(FCA_DISTANCES)}")
    if feats.shape != ref_feats.shape:
        raise ValueError(f"fca_loss: feature shapes differ: {tuple(feats.shape)} vs {tuple(ref_feats.shape)}")
    diff = feats.float() - ref_feats.to(device=feats.device).float()
    if distance == "l2":
        # torch's norm has gradient 0 where diff = 0 (at δ = 0 in the first step), as in the released code
        return torch.linalg.vector_norm(diff, dim=-1).mean()
    return 0.5 * diff.pow(2).sum(dim=-1).mean()


def tse_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    logit_scale: float | torch.Tensor,
    form: str = "similarity",
    labels: torch.Tensor | None = None,
    scale_clamp: float = 0.0,
) -> torch.Tensor:
    """Task-semantics enrichment (Eq. 5): a score to *maximise* (the total loss subtracts it).

    ``img_emb``: (B, D) L2-normalised guide embeddings of the prompted images.
    ``txt_emb``: (B, D) per-sample text embeddings, or (T, D) all task texts with ``labels`` (B,)
    giving each sample's row. Both L2-normalised. ``scale_clamp`` > 0 caps the logit scale (the
    released code clamps CLIP's at 100).

    - ``similarity`` (released code): ``mean_b s·cos(g_img(x_b), g_txt(t_b))``.
    - ``contrastive``: ``mean_b log softmax_t(s·cos(g_img(x_b), g_txt(t)))[label_b]`` — the negative
      cross-entropy over all task texts, so that higher is better in both forms.
    """
    if form not in TSE_FORMS:
        raise UsageError(f"tse form {form!r} is not one of {', '.join(TSE_FORMS)}")
    img = img_emb.float()
    txt = txt_emb.to(device=img.device).float()
    scale = torch.as_tensor(logit_scale, dtype=torch.float32, device=img.device)
    if scale_clamp > 0:
        scale = scale.clamp(max=scale_clamp)
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
