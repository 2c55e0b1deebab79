"""Sup-tickets (Yin et al., UAI 2022) on dynamic sparse training: the package the stages call."""
