"""Command-line tools: dataset conversion, replay and evaluation."""
