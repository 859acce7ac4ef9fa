"""Command-line entry points of pmni (console scripts wired in pyproject.toml)."""
