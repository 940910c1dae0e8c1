"""The six stages, one module each; each reads and writes a run folder and never imports another.

``stats`` -> ``train`` -> ``export`` -> ``evaluate`` / ``dlpk`` / ``stac``.
"""
