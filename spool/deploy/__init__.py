"""Putting spool on a machine: Supervisor configs (`supervisor`), `spool up` (`up`) and the
checks of a root and its filesystem (`doctor`).
"""
