"""The benchmark driver behind ``scripts/bench``: our server against Synapse, side by side.

Modules: ``client`` (a minimal Matrix client over aiohttp), ``servers`` (starting and stopping
the servers under test), ``scenarios`` (what is measured), ``runner`` (the order of runs),
``report`` (table, JSON, chart).
"""
