"""The embedded accident-intake agent: a call script walked turn by turn, with no network and no model.

The call it runs is data: ``callagent/data/intake.toml`` (or any file given to ``load_script``)
holds the steps of the call, what each one says, the intents it listens for and where each answer
leads. The package is layered, each module with one job:

- ``understanding``: what an utterance says, as a phone line's recogniser delivers it (the
  vocabulary of ``callagent/data/speech.toml``, folded text, intents, spoken numbers);
- ``extractors`` and ``plates``: slot values in an utterance (phone numbers, places, vehicles,
  injuries; plates);
- ``speaking``: values read back the way a synthesizer should say them;
- ``script``: the schema of a checked script; ``loader`` reads one from TOML (through
  ``tables``), ``checker`` cross-checks its references;
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
