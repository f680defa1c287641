"""Review-and-approve pages for drafts bound for targets that need a clinician's approval."""
from .views import make_blueprint

__all__ = ["make_blueprint"]
