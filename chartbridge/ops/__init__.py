"""Operations: the repairs (repair.py, shared with the CLI) and the operator console at
/ops/ (console.py; who may use it: access.py; per-target health: health.py)."""
from .console import make_blueprint

__all__ = ["make_blueprint"]
