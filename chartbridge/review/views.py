from flask import Blueprint


def make_blueprint(engine, jobs) -> Blueprint:
    return Blueprint("review", __name__)
