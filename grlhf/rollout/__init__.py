"""Generation backends behind one protocol (``base.py``) and the token-sampling math (``sampling.py``)."""
