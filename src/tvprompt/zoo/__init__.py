"""The shipped mini zoo: tiny MLLMs of real transformers architectures and a tiny CLIP guide.

| module / folder | owns |
|---|---|
| ``catalog`` | ``zoo:<name>`` ids -> directories, manifests (stdlib only; the model registry names it) |
| ``recipes`` | what each member is: family, sizes, training schedule |
| ``build`` | ``tvp zoo build``: trains every member on ShapeWorld through the adapters |
| ``geometry`` | how many patches per side a member sees the prompt's border as |
| ``weights/<name>/`` | the shipped checkpoints (``save_pretrained`` directories + ``manifest.json``) |

The zoo only consumes :mod:`tvprompt.models` (each family keeps its own tiny spec); models reach
the catalog by name, never by import, so the two packages do not import each other.
"""
