"""Transfer evaluation and the paper's analyses.

| module | owns |
|---|---|
| ``evaluate`` | the transfer matrix (no prompt / prompt x model) -> per-sample records, resumable cells |
| ``fingerprint`` | what a cached eval cell depends on (task, data files, model, prompt, version) |
| ``attention`` | Fig. 4: attention rollout over the vision tower, with and without a prompt |
| ``metrics`` | metric functions over per-sample records |
| ``report`` | tables and plots from records (reads only) |
| ``analyses`` | Tab. 2-4, 9 and Fig. 5 of the paper: ablation, width, data scale, cross-dataset, corruptions |
| ``efficiency`` | Tab. 5: time and memory of VP / EVP / TVP (and LoRA) per update |
"""
