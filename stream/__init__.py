"""The Faust streaming layer: contract, settings, topics, agents and metrics.

Kept import-free so `stream.contract` and `stream.privacy` load without Faust.
"""
