"""One adapter module per Hugging Face MLLM family, each with its tiny test spec.

Every module registers its adapter with ``@register_family`` and its tiny, offline checkpoint with
``@register_tiny``; :mod:`tvprompt.models.registry` imports them on first use.
"""
