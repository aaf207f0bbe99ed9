"""Whether this process takes new connections: False once it drains (SIGTERM), so new
sockets are sent elsewhere (1012) and `/readyz` answers 503."""

_accepting = True


def accepting() -> bool:
    return _accepting


def stop_accepting() -> None:
    global _accepting
    _accepting = False
