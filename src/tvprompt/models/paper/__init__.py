"""The paper's own MLLMs, composed from transformers' classes: MiniGPT-4, VPGTrans, BLIVA, VisualGLM.

``arch`` holds their configs and composed models, ``minigpt4`` / ``bliva`` / ``visualglm`` their
adapters, ``convert`` and ``lavis_keys`` turn the released LAVIS-style checkpoints into
``save_pretrained`` directories (``tvp convert``).
"""
