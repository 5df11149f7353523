"""Offline replay: the dispatch core over a whole trace, its figures, and the LP bound."""
