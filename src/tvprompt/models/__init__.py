"""Model adapters: the only place in tvprompt that knows a model class."""
