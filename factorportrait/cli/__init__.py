"""Command-line entry points (console scripts; ``tools/*.py`` call the same ``main``)."""
