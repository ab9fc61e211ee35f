"""callagent's FastGPT upstream: the client (``client.py``), its interactive-node voicing
(``interactive.py``) and the edge where FastGPT's failures become typed errors (``errors.py``)."""

from .client import FastGPTClient
from .interactive import INTERACTIVE_KEY, choose_option

__all__ = ["INTERACTIVE_KEY", "FastGPTClient", "choose_option"]
