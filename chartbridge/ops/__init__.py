"""Operations: the repairs (repair.py) and the operator console at /ops/."""
