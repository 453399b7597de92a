"""Configuration: the typed settings (:mod:`config.settings`) and the documented file ``pediface.yaml``.

The ground floor of pediface: it imports nothing of the project, and every other part may import it.
"""
