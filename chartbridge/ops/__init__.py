"""Operations: the repairs (repair.py, shared with the CLI) and the operator console at
/ops/ (console.py; who may use it: access.py; per-target health: health.py). The console
(Flask, the review pages' sign-in pieces) is imported only when the web app asks for it,
so `from chartbridge.ops import repair` stays light for the CLI."""


def make_blueprint(engine, jobs):
    from .console import make_blueprint as make
    return make(engine, jobs)


__all__ = ["make_blueprint"]
