"""The embedded accident-intake agent: a call script walked turn by turn, with no network and no model.

The call it runs is data: ``callagent/data/intake.toml`` (or any file given to ``load_script``)
holds the steps of the call, what each one says, the intents it listens for and where each answer
leads. The package is layered, each module with one job:

- ``understanding``: what an utterance says (folded text, intents, spoken numbers);
- ``extractors``: slot values in an utterance (plates, phone numbers, places, vehicles);
- ``script``: the schema of a checked script; ``loader`` reads one from TOML, ``checker``
  cross-checks its references;
- ``dialogue``: the state machine running one turn of one call.

``callagent.upstream.local.LocalAgent`` adapts it to the ``Upstream`` protocol.
"""

from __future__ import annotations

from .dialogue import AgentReply, reply
from .extractors import Extraction, Extractor
from .loader import load_script
from .script import Script, default_script
from .understanding import SpokenNumbers, Utterance

__all__ = [
    "AgentReply",
    "Extraction",
    "Extractor",
    "Script",
    "SpokenNumbers",
    "Utterance",
    "default_script",
    "load_script",
    "reply",
]
