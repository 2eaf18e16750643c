"""Implementations in plain NumPy. `<component>.py` run in float64 is the harness's reference."""
