"""One router per resource: health, prompts, jobs."""
