"""The VP / EVP / TVP trainer.

| module | owns |
|---|---|
| ``config`` | ``TrainConfig``, the method presets, config files and flags -> one resolved config |
| ``objective``, ``losses`` | the per-batch objective (ensembles, FCA references, TSE texts); Eq. 3-6 |
| ``augment`` | input diversity (flip, scale, translate) |
| ``updates`` | the update rules (SGD with momentum; Eq. 7's normalised step) and the schedule |
| ``loop`` | ``train()``: set-up, one update, validation and selection, checkpoint, write-out |
| ``validation`` | ranking accuracy on the validation split |
| ``checkpoint``, ``distributed``, ``runlog`` | bit-exact resume, data parallel processes, metrics.jsonl and progress |
| ``trackers`` | ``--report-to``: accelerate's experiment trackers |
"""
