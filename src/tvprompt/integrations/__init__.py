"""Bridges to other tools. Nothing here is imported by tvprompt itself; each module imports its tool lazily."""
